"""INT8 from one calibration: the calibration cache, every INT8 form, its checks and the calibration manifest.

`ensure_int8` writes into the folder it is given (the workflow names it `<out>/<model>/int8-<method>.../`):

    model_int8_qdq.onnx       portable QDQ: TensorRT (ONNX Runtime and OpenVINO run it slowly or, on CPUs without
                              VNNI, unfaithfully)
    model_int8_ort_cpu.onnx   ONNX Runtime on a CPU
    model_int8.xml/.bin       OpenVINO-native NNCF INT8 (when openvino and nncf are installed)
    calibration.json          the calibration manifest

and keeps the tensor ranges in `<cache_dir>/<method>-<key>.json`, keyed by model, preprocessing, data contents and
method. The backend commands call it through effexport.workflow.deploy (Context.int8_build) with nothing enforced
and verify the form each backend runs against PyTorch themselves; `effexport calibrate` and `onnx --int8` enforce
INT8 parity on every form.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from effexport.backends.tensorrt_qdq import check_tensorrt_qdq
from effexport.calibration import qdq, sensitivity
from effexport.calibration.data import CalibrationData, load_calibration
from effexport.calibration.heldout import NOT_IMAGENET_NOTE, heldout_digest, int8_parity_inputs
from effexport.calibration.nncf_ov import NNCF_BIN, NNCF_XML, nncf_available, quantize_openvino
from effexport.calibration.options import Int8Options
from effexport.errors import ExportError, ParityError, UsageError
from effexport.exporter.artifacts import (
    Staging,
    key_digest,
    reusable_record,
    sha256_of,
    write_json,
)
from effexport.exporter.inputs import images_key
from effexport.exporter.io_spec import GraphIO
from effexport.exporter.parity import ParityReport, Tolerance, compare, recheck, tolerance_for
from effexport.exporter.timing import BenchConfig, measure
from effexport.recipes import Preprocess, Recipe
from effexport.version import __version__

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MANIFEST_FILE = "calibration.json"
CACHE_DIR = "calibration-cache"
OPENVINO_FORM = "openvino"
RANDOM_NOTE = ("INT8 PARITY NOT ENFORCED: the model has random weights, and the agreement of a random model's INT8 "
               "and FP32 outputs says nothing about a trained one; the numbers are reported only. Pass --weights "
               "PATH or --pretrained to have INT8 parity checked")


# Which INT8 file each backend runs (measured: bench/int8.py). verify/bench/trt/openvino --int8 look it up here.
BACKEND_FORMS = {"onnxruntime": "ort_cpu", "openvino": OPENVINO_FORM, "tensorrt": "qdq"}


def form_for_backend(backend: str) -> str:
    """The Int8Result.files key of the INT8 form `backend` should run."""
    if backend not in BACKEND_FORMS:
        raise UsageError(f"no INT8 form for backend {backend!r}; INT8 exists for {', '.join(BACKEND_FORMS)}")
    return BACKEND_FORMS[backend]


@dataclass
class Int8Result:
    """What one INT8 build produced. `files` maps a form to its path: "qdq" (TensorRT, OpenVINO),
    "ort_cpu" (ONNX Runtime CPU), "openvino" (NNCF OpenVINO IR .xml, when built)."""

    recipe: str
    dest: Path
    fp32: Path
    files: dict[str, Path]
    manifest_path: Path
    manifest: dict
    cache_path: Path
    cache_reused: bool
    reused: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def parity(self) -> dict[str, dict]:
        return self.manifest.get("parity", {})


def tool_versions() -> dict[str, str]:
    versions = {"effexport": __version__, "python": platform.python_version()}
    for dist in ("onnx", "onnxruntime", "openvino", "nncf", "numpy", "timm", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def cache_key(model_sha256: str, data: CalibrationData, options: Int8Options) -> str:
    """Model hash + preprocessing + data manifest + method (+ the ONNX Runtime that computed the ranges)."""
    key = {"model": model_sha256, "data": data.digest(), "preprocessing": data.preprocessing,
           "method": options.method, "percentile": options.percentile if options.method == "percentile" else None,
           "onnxruntime": tool_versions()["onnxruntime"]}
    return key_digest(key)


def int8_parity(reference: np.ndarray, candidate_path: Path, inputs: np.ndarray,
                tolerance: Tolerance | None = None) -> ParityReport:
    """Run an INT8 ONNX (ONNX Runtime) or OpenVINO IR (.xml) on `inputs`, compare with the FP32 reference
    outputs under the INT8 policy (cosine >= 0.99, top-1 agreement >= 95% unless overridden)."""
    return compare(reference, run_model(candidate_path, inputs), tolerance or tolerance_for("int8"))


# A form that passes the gate by a hair is one another CPU's float kernels or another photograph will flip: on the
# held-out photographs a form is expected to use at most MARGIN_SHARE of the gate's cosine and top-1 error budgets
# (min cosine 0.993 for the gate's 0.99; top-1 97% on the views where FP32 is confident for the gate's 95%). A form
# inside the gate but outside that margin is delivered, with its numbers in the manifest and a warning.
MARGIN_SHARE = {"min_cosine": 0.7, "top1_confident": 0.6}


def heldout_margin(reference: np.ndarray, outputs: np.ndarray, parity: ParityReport) -> dict | None:
    """The form's standing against the gate with a margin (MARGIN_SHARE) on the INT8 parity inputs, from the gate's
    own report (its min cosine) and top-1 on the confident views; None where the rule has no cosine (the label-set
    rule of multi-label heads)."""
    tolerance = parity.tolerance
    if tolerance.min_cosine is None:
        return None
    ref = reference.reshape(len(reference), -1)
    confident = sensitivity.confident_rows(ref)
    cosine = parity.min_cosine
    top1 = float((ref.argmax(1) == outputs.reshape(len(outputs), -1).argmax(1))[confident].mean())
    want_cos = 1.0 - (1.0 - tolerance.min_cosine) * MARGIN_SHARE["min_cosine"]
    want_top1 = 1.0 - (1.0 - (tolerance.min_top1 or 0.0)) * MARGIN_SHARE["top1_confident"]
    return {"min_cosine": round(cosine, 5), "min_cosine_target": round(want_cos, 5),
            "top1_confident": round(top1, 4), "top1_confident_target": round(want_top1, 4),
            "confident_views": int(confident.sum()), "confident_from": sensitivity.CONFIDENT,
            "met": cosine >= want_cos and top1 >= want_top1}


def margin_warnings(manifest: dict) -> list[str]:
    """One line for each form that passed the gate without the margin on the held-out photographs."""
    return [f"INT8 ({form}) passes the gate without a margin on {manifest['parity_inputs']['description']}: min "
            f"cosine {m['min_cosine']:.4f} (margin target {m['min_cosine_target']:.3f}), top-1 "
            f"{m['top1_confident']:.1%} on the {m['confident_views']} views where FP32 is confident (target "
            f"{m['top1_confident_target']:.0%}); "
            f"another CPU or photograph may put it outside: consider --calib with your own images"
            for form, m in (manifest.get("margin") or {}).items()
            if m and not m["met"] and manifest.get("parity", {}).get(form, {}).get("passed")
            and manifest.get("weights") != "random"]


def run_model(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Outputs of an ONNX file (ONNX Runtime, CPU) or an OpenVINO IR (OpenVINO, CPU), through the backends'
    runners; OpenVINO runs its INT8 model as the openvino backend does (f32 for the layers left in float)."""
    path = Path(path)
    if path.suffix == ".xml":
        from effexport.backends import openvino

        runner = openvino.open_runner(path, precision="int8")
    else:
        from effexport.backends.onnxruntime import OrtRunner

        runner = OrtRunner(path)
    with runner:
        return runner.run(inputs)


def ensure_int8(recipe: Recipe, fp32: Path, pp: Preprocess, options: Int8Options, dest: Path, cache_dir: Path, *,
                tolerance: Tolerance | None = None, random_weights: bool = False, images: Path | None = None,
                enforce: Collection[str] | None = None, force: bool = False, time_forms: bool = True,
                progress: Progress | None = None, graph_io: GraphIO | None = None) -> Int8Result:
    """INT8 forms of the verified FP32 `fp32` (model.onnx) into `dest`, from one calibration on `options.source`
    whose tensor ranges are cached in `cache_dir`; reuses the cache and unchanged forms.

    INT8 parity is measured on photographs calibration did not see (heldout.int8_parity_inputs). `enforce` names
    the forms whose parity failure is an error (None: every form, the promise of `effexport calibrate`); the
    backend commands pass none, because they verify the form they run against PyTorch themselves. With random
    weights nothing is enforced (RANDOM_NOTE). A failing build goes to `dest/rejected/`; verified forms stay.
    `time_forms`: time each CPU form against FP32 on its backend (form_speed) and warn where INT8 is slower.
    """
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    dest = Path(dest)
    tolerance = tolerance or tolerance_for("int8")
    say("reading calibration data")
    data = load_calibration(options.source, pp, options.calib_size, options.seed, options.views)
    graph_io = graph_io or GraphIO()
    data.inputs = graph_io.encode(data.inputs, pp)  # what the graph takes: uint8 crops for a raw-pixel input
    model_sha = sha256_of(fp32)
    key = cache_key(model_sha, data, options)
    cache = Path(cache_dir) / f"{options.method}-{key}.json"
    want_openvino = nncf_available() if options.openvino is None else options.openvino
    rules = qdq.keep_float_rules(recipe)
    cpu = qdq.cpu_int8_choice()
    fingerprint = _fingerprint(key, want_openvino, rules, options, cpu, images, random_weights)
    if options.heldout is not None:  # the judging photographs change the verdict, not the forms
        fingerprint = key_digest({"forms": fingerprint, "heldout": images_key(options.heldout)})
    enforced = set() if random_weights else set(qdq.FORMS) | {OPENVINO_FORM} if enforce is None else set(enforce)
    if not force and (previous := _reusable(dest, fingerprint)) is not None and cache.is_file():
        say("reusing the INT8 artifacts and calibration cache (nothing changed)")
        _recheck(dest, previous, enforced, tolerance)
        return Int8Result(recipe.name, dest, fp32, _files(dest, previous), dest / MANIFEST_FILE, previous, cache,
                          cache_reused=True, reused=True,
                          warnings=[*data.warnings, *slower_warnings(previous), *_heldout_note(previous),
                                    *margin_warnings(previous)])

    fp32_model = onnx.load(str(fp32), load_external_data=False)
    keep_float = qdq.resolve_keep_float(fp32_model, rules)
    del fp32_model
    manifest: dict = {
        "recipe": recipe.name,
        "fp32_model": {"file": str(fp32), "sha256": model_sha},
        "weights": "random" if random_weights else "trained",
        "method": options.method,
        "percentile": options.percentile if options.method == "percentile" else None,
        "data": data.manifest(),
        "cache": {"file": str(cache), "key": key},
        "keep_float": [asdict(f) for f in keep_float],
        "cpu": cpu,
        "versions": tool_versions(),
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    cache_reused = cache.is_file() and not force
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".calibrate-{os.getpid()}-", dir=dest) as work:
        if cache_reused:
            say(f"reusing calibration cache {cache.name}")
        else:
            say(f"calibrating ({options.method}) on {len(data.inputs)} inputs from {data.count} images")
            qdq.calibrate_ranges(fp32, data.inputs, options.method, cache, Path(work), options.percentile)
    manifest["cache"]["reused"] = cache_reused
    tuning = None if random_weights else _tuning_set(fp32, data.inputs, tolerance)
    if tuning is not None:
        manifest["tuning_set"] = {"inputs": len(tuning.inputs), "confident": int(tuning.confident.sum()),
                                  "confident_from": sensitivity.CONFIDENT}
    say("reading the INT8 parity photographs")
    photos = int8_parity_inputs(pp, images, manifest["data"], options.heldout)
    photos.inputs = graph_io.encode(photos.inputs, pp)
    reference = run_model(fp32, photos.inputs)
    manifest["parity_inputs"] = photos.to_dict()
    manifest["parity_rule"] = tolerance.rule
    classes = _classes(fp32)
    if options.heldout is None and classes != IMAGENET_CLASSES:
        manifest["heldout_note"] = NOT_IMAGENET_NOTE.format(classes=classes)
    manifest["tolerance"] = {k: v for k, v in asdict(tolerance).items() if v is not None}
    with Staging(dest) as staging:
        forms = _build_forms(fp32, staging.path, cache, options, keep_float, data, cpu, want_openvino, say, manifest,
                             tuning)
        manifest["forms"] = forms
        say("checking INT8 parity")
        outputs = {name: run_model(staging.path / f["file"], photos.inputs) for name, f in forms.items()}
        reports = {name: compare(reference, y, tolerance) for name, y in outputs.items()}
        manifest["parity"] = {name: report.to_dict() for name, report in reports.items()}
        margins = {name: heldout_margin(reference, outputs[name], report) for name, report in reports.items()}
        if any(margins.values()):
            manifest["margin"] = margins
        manifest["parity_judged"] = not random_weights
        manifest["parity_enforced"] = sorted(enforced & set(forms))
        if random_weights:
            manifest["parity_note"] = RANDOM_NOTE
        if time_forms:
            say("timing INT8 against FP32 at batch 1")
            manifest["speed"] = form_speed(fp32, staging.path, forms)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        files = [name for f in forms.values() for name in (f.get("weights_file"), f["file"]) if name]
        failed = _outside(manifest, enforced)
        if failed:
            manifest["status"] = "failed"
            rejected = staging.reject(files, MANIFEST_FILE, manifest)
            kept = f"; the verified INT8 forms in {dest} are unchanged" if (dest / MANIFEST_FILE).is_file() else ""
            raise ParityError(f"{manifest['recipe']}: INT8 differs from FP32 beyond the tolerance on "
                              f"{manifest['parity_inputs']['description']} ({failed}); try more --calib images, "
                              f"--method percentile or entropy, or keep more layers in float, or accept it with "
                              f"--tolerance int8:min_top1=... (rejected build: {rejected}{kept})")
        manifest["status"] = "passed"
        staging.publish(files)
        _remove_stale(dest, want_openvino)
        write_json(dest / MANIFEST_FILE, manifest)
    return Int8Result(recipe.name, dest, fp32, _files(dest, manifest), dest / MANIFEST_FILE, manifest, cache,
                      cache_reused, warnings=[*data.warnings, *slower_warnings(manifest), *_heldout_note(manifest),
                                *margin_warnings(manifest)])


def _tuning_set(fp32: Path, inputs: np.ndarray, tolerance: Tolerance) -> sensitivity.TuningSet:
    chosen = sensitivity.spaced(inputs, sensitivity.TUNING_INPUTS)
    return sensitivity.TuningSet(chosen, run_model(fp32, chosen), sensitivity.tuning_target(tolerance))


def _build_forms(fp32: Path, folder: Path, cache: Path, options: Int8Options, keep_float, data: CalibrationData,
                 cpu: dict, want_openvino: bool, say: Progress, manifest: dict,
                 tuning: sensitivity.TuningSet | None) -> dict[str, dict]:
    """Every INT8 form into `folder` from the cached ranges (and NNCF's own statistics); checks the QDQ form.

    With a `tuning` set (trained weights), a form outside the tolerance on it keeps its most sensitive layers in
    float as well (sensitivity.py); the ranking is measured once, on the portable form as first built."""
    builders: dict[str, tuple[Path, Callable[[list], Path], dict]] = {}
    for form in qdq.forms_for(cpu).values():
        target = folder / form.filename

        def build(keep, form=form, target=target) -> Path:
            say(f"quantizing: {form.filename}" + (f" ({len(keep)} layers in float)" if keep else ""))
            qdq.build_form(fp32, target, form, cache, options.method, keep)
            return target

        builders[form.name] = (target, build, {"backends": list(form.backends), "description": form.description})
    if want_openvino:
        xml = folder / NNCF_XML
        nncf_info: dict = {}

        def build_openvino(keep) -> Path:
            say("quantizing for OpenVINO with NNCF" + (f" ({len(keep)} layers in float)" if keep else ""))
            nncf_info.update(quantize_openvino(fp32, data.inputs, keep, xml, overflow_fix=cpu["reduced_weights"]))
            return xml

        builders[OPENVINO_FORM] = (xml, build_openvino, {
            "backends": ["openvino"], "description": "NNCF INT8 OpenVINO IR (UINT8 activations: OpenVINO only)",
            "weights_file": NNCF_BIN, "nncf": nncf_info})
    ranking = _Ranking(fp32, folder, keep_float, tuning, say, manifest)
    weighted = _weighted_layers(fp32)
    forms = {}
    for name, (target, build, info) in builders.items():
        build(keep_float)
        if name == qdq.PORTABLE.name:
            ranking.keep_base(target)
        kept = [f.node for f in keep_float]
        if tuning is not None:
            tuned = sensitivity.tune_form(name, build, lambda path: run_model(path, tuning.inputs), tuning,
                                          keep_float, target, ranking, weighted)
            info["tuning"] = tuned.to_dict()
            kept += tuned.added
        if name == qdq.PORTABLE.name:
            _check_portable(target, manifest)  # the file as published, after any tuning
        info["int8_macs"] = _int8_macs(name, target)
        files = {target.name: sha256_of(target)}
        if target.suffix == ".xml":
            files[target.with_suffix(".bin").name] = sha256_of(target.with_suffix(".bin"))
        forms[name] = {"file": target.name, **info, "keep_float": kept, "sha256": files[target.name],
                       "bytes": sum((folder / f).stat().st_size for f in files), "files": files}
    return forms


class _Ranking:
    """The layer ranking, measured on the first call from the portable form as first built (kept aside, since
    tuning rebuilds that file) and shared by every form after."""

    def __init__(self, fp32: Path, folder: Path, keep_float, tuning: sensitivity.TuningSet | None, say: Progress,
                 manifest: dict):
        self.fp32, self.folder, self.keep_float, self.tuning, self.say = fp32, folder, keep_float, tuning, say
        self.manifest, self.base, self.scores = manifest, None, None

    def keep_base(self, portable: Path) -> None:
        if self.tuning is not None:
            self.base = self.folder / ".portable-base.onnx"  # inside the staging folder: never published
            self.base.write_bytes(portable.read_bytes())

    def __call__(self) -> list[sensitivity.LayerScore]:
        if self.scores is None:
            inputs = sensitivity.spaced(self.tuning.inputs, sensitivity.RANKING_INPUTS)
            reference = sensitivity.spaced(self.tuning.reference, sensitivity.RANKING_INPUTS)
            try:
                self.scores = sensitivity.rank_layers(self.fp32, self.base, inputs, reference,
                                                      {f.node for f in self.keep_float}, progress=self.say)
            finally:
                self.base.unlink(missing_ok=True)
            self.manifest["sensitivity"] = {"inputs": len(inputs), "measure": "gain in mean (1 - cosine) of the "
                                            "logits with the layer alone in float", "most_sensitive": [
                                                asdict(s) for s in self.scores[:10]]}
        return self.scores


def _int8_macs(form: str, path: Path) -> dict:
    """The share of the form's MACs that run in INT8, read from what the runtime that serves it compiles (the
    portable form: from the file, since TensorRT is not here), with the weighted layers left in float."""
    from effexport.exporter import macs

    backend = TIMED_FORMS.get(form)
    share = macs.qdq_int8_share(path) if backend is None else macs.int8_share(backend, path)
    return {"share": round(share.share, 4), "runtime": share.runtime, "layers": share.layers,
            "float_layers": [f.name for f in share.float_layers],
            "float_macs_share": round(1 - share.share, 4)}


def _weighted_layers(fp32: Path) -> int:
    model = onnx.load(str(fp32), load_external_data=False)
    return sum(n.op_type in qdq.WEIGHTED_OPS for n in model.graph.node)


def _check_portable(path: Path, manifest: dict) -> None:
    check = check_tensorrt_qdq(path)
    manifest["qdq_check"] = check.to_dict()
    if not check.passed:
        raise ExportError(f"{qdq.PORTABLE.filename} is not in TensorRT's QDQ form: {'; '.join(check.problems[:3])}"
                          f" (onnxruntime {tool_versions()['onnxruntime']} quantizer output changed?)")


# The CPU forms and the backend each is served by; the portable form is for TensorRT (not timed on a CPU).
TIMED_FORMS = {qdq.ORT_CPU.name: "onnxruntime", OPENVINO_FORM: "openvino"}
SPEED_CHECK = BenchConfig(iters=20, min_warmup=3, max_warmup=40, max_warmup_s=5.0)
SPEED_ROUNDS = 3


def form_speed(fp32: Path, folder: Path, forms: dict[str, dict]) -> dict[str, dict]:
    """Batch-1 median latency of each CPU INT8 form against FP32 on the backend that serves it, on this CPU.

    INT8 is not faster everywhere: on an AVX2 CPU without VNNI, ONNX Runtime ran MobileNetV3-large's INT8 1.13x
    slower than FP32. So every build measures, and a form slower than FP32 is named with the faster precision
    (slower_warnings). The rounds alternate FP32 and INT8 with one runner open at a time (an idle ONNX Runtime
    session keeps its threads spinning) and each latency is the median of the rounds' medians: the machine may
    be shared. A measurement, recorded with the CPU; nothing is decided by it but the warning."""
    from effexport.backends import get_backend
    from effexport.exporter.cpu_env import cpu_model

    timed = {form: get_backend(name) for form, name in TIMED_FORMS.items() if form in forms}
    timed = {form: backend for form, backend in timed.items() if backend.probe().available}
    rng = np.random.default_rng(0)
    shape = _input_shape(fp32)
    x = rng.integers(0, 256, shape, dtype=np.uint8) if _input_dtype(fp32) == np.uint8 else \
        rng.standard_normal(shape, dtype=np.float32)
    speed = {}
    for form, backend in timed.items():
        runtime = backend.load()
        medians: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(SPEED_ROUNDS):
            for precision, path in (("fp32", fp32), ("int8", folder / forms[form]["file"])):
                with runtime.open_runner(path, precision=precision, batch=1) as runner:
                    medians[precision].append(measure(lambda r=runner: r.run(x), 1, SPEED_CHECK)[1].p50)
        fp32_s, int8_s = (float(np.median(medians[p])) for p in ("fp32", "int8"))
        speed[form] = {"backend": backend.name, "batch": 1, "fp32_ms": round(fp32_s * 1e3, 3),
                       "int8_ms": round(int8_s * 1e3, 3), "speedup": round(fp32_s / int8_s, 3),
                       "cpu": cpu_model(), "rounds": SPEED_ROUNDS, "runs_per_round": SPEED_CHECK.iters}
    return speed


def slower_warnings(manifest: dict) -> list[str]:
    """One line for each CPU form that ran slower than FP32 when it was built, naming the faster precision."""
    return [f"INT8 ({form}) ran {s['int8_ms']:.2f} ms against FP32's {s['fp32_ms']:.2f} ms at batch 1 in "
            f"{s['backend']} on this CPU ({s['cpu']}): serve FP32 on {s['backend']} here, or time both with "
            f"`effexport bench --precision fp32,int8`"
            for form, s in manifest.get("speed", {}).items() if s["speedup"] < 1.0]


IMAGENET_CLASSES = 1000


def _classes(fp32: Path) -> int:
    """The class count of the graph's output (its last dimension)."""
    model = onnx.load(str(fp32), load_external_data=False)
    return model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value


def _heldout_note(manifest: dict) -> list[str]:
    return [manifest["heldout_note"]] if manifest.get("heldout_note") else []


def _input_dtype(fp32: Path) -> np.dtype:
    model = onnx.load(str(fp32), load_external_data=False)
    return onnx.helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)


def _input_shape(fp32: Path) -> tuple[int, ...]:
    model = onnx.load(str(fp32), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return (1, *(d.dim_value for d in dims[1:]))


def _outside(manifest: dict, enforced: set[str]) -> str:
    """The enforced forms outside the tolerance, described; '' when none."""
    failed = {n: p for n, p in manifest.get("parity", {}).items() if n in enforced and not p["passed"]}
    return "; ".join(f"{n}: {', '.join(p['failures'])}" for n, p in failed.items())


def _recheck(dest: Path, manifest: dict, enforced: set[str], tolerance: Tolerance) -> None:
    """Reused forms judged again under the tolerance asked for now; outside it is a ParityError, nothing moves."""
    failed = {n: recheck(p, tolerance) for n, p in manifest.get("parity", {}).items() if n in enforced}
    failed = {n: f for n, f in failed.items() if f}
    if failed:
        detail = "; ".join(f"{n}: {', '.join(f)}" for n, f in failed.items())
        raise ParityError(f"{manifest['recipe']}: the verified INT8 forms in {dest} (unchanged inputs, so not "
                          f"rebuilt) are outside the tolerance asked for ({detail}); they stay as they are")


def _fingerprint(cache_key_: str, openvino: bool, rules, options: Int8Options, cpu: dict, images: Path | None,
                 random_weights: bool) -> str:
    key = {"cache": cache_key_, "openvino": openvino,
           **({"openvino_names": "generated names in graph order", "openvino_ranges": "minmax"} if openvino else {}),
           "rules": [asdict(r) for r in rules],
           "forms": [asdict(f) for f in qdq.forms_for(cpu).values()], "cpu": cpu,
           "parity_images": images_key(images),
           "heldout": heldout_digest(), "random_weights": random_weights, "versions": tool_versions(),
           "tuning": None if random_weights else {"inputs": sensitivity.TUNING_INPUTS, "multi_label": "label sets",
                                                  "ranking": sensitivity.RANKING_INPUTS,
                                                  "max_float_share": sensitivity.MAX_FLOAT_SHARE}}
    return key_digest(key)


def _files(dest: Path, manifest: dict) -> dict[str, Path]:
    return {name: dest / form["file"] for name, form in manifest.get("forms", {}).items()}


def _reusable(dest: Path, fingerprint: str) -> dict | None:
    """The passing manifest of the same calibration, if every file of every form is intact (the NNCF .bin too)."""
    return reusable_record(dest / MANIFEST_FILE, fingerprint, lambda manifest: {
        name: digest for f in manifest.get("forms", {}).values() for name, digest in f.get("files", {}).items()})


def _remove_stale(dest: Path, openvino_built: bool) -> None:
    if not openvino_built:  # an NNCF model from an earlier calibration no longer matches the manifest
        for name in (NNCF_XML, NNCF_BIN):
            (dest / name).unlink(missing_ok=True)
