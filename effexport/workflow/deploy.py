"""Backend artifacts of one job: built from the shared verified ONNX, checked against PyTorch, reused.

Layout under `<out>/<model>/` (`<v>` is the export variant, e.g. `-160px-opset13`, empty for the defaults):

    onnx-dynamic<v>/       the verified dynamic-batch model.onnx every backend starts from (+ reference.npz)
    <backend>-<precision>[-<profile>]<v>/   e.g. openvino-fp32/, onnxruntime-fp16/, tensorrt-fp16-b1-8-32/
    int8-<method>[-n<N>-seed<S>]<v>/        the INT8 forms of one calibration (+ calibration.json)
    calibration-cache/     tensor ranges, keyed by model, data contents, preprocessing and method

Each artifact folder holds its files and a report.json with the identity (fingerprint) it was built from; a
second run with the same identity reuses it, judged again under the tolerance asked for now. A build that fails
its checks goes to `rejected/` inside the folder and leaves the verified files beside it untouched. Backends
whose artifacts depend on a batch profile (TensorRT) name it in the folder, so engines with other profiles live
side by side, and `find_artifact` picks an existing one that covers a batch.

INT8: the job's one calibration (`Int8Options`) gives each backend its form, which becomes `<backend>-int8/` like
any other artifact: copied (ONNX Runtime's CPU form, OpenVINO's NNCF IR) or built (TensorRT, from the Q/DQ ONNX),
then compared with PyTorch on photographs the calibration did not see (`reference-int8.npz` in the INT8 folder).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from effexport.backends import Availability, Backend, get_backend
from effexport.calibration.heldout import int8_parity_inputs
from effexport.calibration.int8 import RANDOM_NOTE, Int8Result, ensure_int8, form_for_backend
from effexport.errors import MissingDependencyError, ParityError, UsageError
from effexport.exporter.artifacts import (
    Staging,
    command_line,
    folder_lock,
    key_digest,
    read_json,
    reusable_record,
    sha256_of,
    write_json,
)
from effexport.exporter.inputs import images_key
from effexport.exporter.parity import ParityReport, Tolerance, compare
from effexport.recipes import Preprocess, Recipe
from effexport.version import __version__
from effexport.workflow.export import OnnxResult, Progress, export_recipe, recheck_reused
from effexport.workflow.job import Job
from effexport.workflow.reference import Reference, cached_reference, reference_for

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
INT8_REFERENCE_FILE = "reference-int8.npz"
CACHE_DIR = "calibration-cache"


@dataclass
class Artifact:
    recipe: str
    backend: str
    precision: str  # the precision the files were built for
    path: Path  # the file a runner opens
    report: dict
    reused: bool = False
    availability: Availability | None = None
    calibration: Int8Result | None = None  # an INT8 artifact's calibration, as `deploy` found it

    @property
    def folder(self) -> Path:
        return self.path.parent


@dataclass
class Context:
    """What every artifact of one job shares: the job (on the dynamic-batch export), the verified ONNX, the
    PyTorch reference and, for INT8, the calibration."""

    job: Job
    onnx: OnnxResult
    progress: Progress | None = None
    _references: dict[str, Reference] = field(default_factory=dict, repr=False)
    _int8_result: Int8Result | None = field(default=None, repr=False)

    def say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    @property
    def recipe(self) -> Recipe:
        return self.job.recipe

    @property
    def folder(self) -> Path:
        return self.job.folder

    @property
    def out(self) -> Path:
        return self.job.out

    @property
    def preprocess(self) -> Preprocess:
        return self.job.preprocess

    @property
    def int8_folder(self) -> Path:
        return self.folder / f"{self.job.calibration.tag}{self.job.variant}"

    @property
    def random_weights(self) -> bool:
        return (self.onnx.report.get("weights") or {}).get("source") == "random"

    def enforced(self, precision: str) -> bool:
        """Whether a parity failure at `precision` is an error: always, except INT8 of a random-weights model."""
        return precision != "int8" or not self.random_weights

    def reference(self, precision: str = "fp32") -> Reference:
        """PyTorch FP32 on the parity inputs; for INT8 on photographs the calibration did not see."""
        kind = "int8" if precision == "int8" else "parity"
        if kind not in self._references:
            if kind == "int8":
                photos = int8_parity_inputs(self.preprocess, self.job.images, self.int8_build().manifest["data"],
                                            self.job.calibration.heldout)
                digest = hashlib.sha256(photos.inputs.tobytes()).hexdigest()[:16]
                self._references[kind] = cached_reference(self.job, self.onnx, self.int8_folder / INT8_REFERENCE_FILE,
                                                          digest, lambda: (photos.inputs, photos.description),
                                                          self.progress)
            else:
                self._references[kind] = reference_for(self.job, self.onnx, self.progress)
        return self._references[kind]

    def int8_build(self, enforce: tuple[str, ...] | None = ()) -> Int8Result:
        """Calibrate once (or reuse the calibration) and build every INT8 form into `int8_folder`. By default
        parity of the forms with FP32 is recorded, not enforced: each backend's artifact is judged against PyTorch
        itself; `effexport calibrate` enforces every form (`enforce=None`)."""
        if self._int8_result is None:
            with folder_lock(self.folder, command_line(), self.progress):
                self._int8_result = ensure_int8(
                    self.recipe, self.onnx.path, self.preprocess, self.job.calibration, self.int8_folder,
                    self.folder / CACHE_DIR, tolerance=self.job.tolerance("int8"), random_weights=self.random_weights,
                    images=self.job.images, enforce=enforce, force=self.job.force, progress=self.progress,
                    graph_io=self.job.export.graph_io)
        return self._int8_result


def open_context(job: Job, progress: Progress | None = None) -> Context:
    """Export (or reuse) the job's verified dynamic-batch ONNX, the source of every backend artifact."""
    job = job.for_backends()
    return Context(job, export_recipe(job, progress), progress)


def artifact_folder(job: Job, backend: str, precision: str, options: Any = None) -> Path:
    """`<out>/<model>/<backend>-<precision>[-<profile>]<variant>`: the options that shape the files, readable."""
    module = get_backend(backend).load()
    profile = module.profile_tag(options) if hasattr(module, "profile_tag") and options is not None else ""
    return job.folder / f"{backend}-{precision}{'-' + profile if profile else ''}{job.variant}"


def artifact_precision(backend: Backend, precision: str) -> str:
    """The precision of the files a backend runs `precision` from (OpenVINO's bf16 runs the fp32 IR)."""
    module = backend.load()
    return module.artifact_precision(precision) if hasattr(module, "artifact_precision") else precision


def backend_options(backend: Backend, ctx: Context, options: Any) -> Any:
    module = backend.load()
    return module.default_options(options, ctx.folder) if hasattr(module, "default_options") else options


def ensure_artifact(ctx: Context, backend_name: str, precision: str, options: Any = None,
                    tolerance: Tolerance | None = None, force: bool | None = None) -> Artifact:
    """The backend's artifact for `precision`: reused when its identity is unchanged (and judged again under
    `tolerance`), else built from the verified ONNX, run on the parity inputs and compared with PyTorch. A build
    outside the tolerance raises ParityError; its files go to `rejected/` and a verified artifact stays."""
    backend = get_backend(backend_name)
    if precision not in backend.precisions:
        raise UsageError(f"{backend.name} supports {', '.join(backend.precisions)}, not {precision}")
    found = backend.ensure_available(f"the {backend.name} {precision} artifact")
    built_for = artifact_precision(backend, precision)
    tolerance = tolerance or ctx.job.tolerance(built_for)
    if backend.name == "onnxruntime" and built_for == "fp32":
        recheck_reused(ctx.onnx.report, "onnxruntime", tolerance, "the verified export", ctx.onnx.path.parent)
        return Artifact(ctx.recipe.name, backend.name, "fp32", ctx.onnx.path, ctx.onnx.report, ctx.onnx.reused, found)
    force = ctx.job.force if force is None else force
    module = backend.load()
    options = backend_options(backend, ctx, options)
    with folder_lock(ctx.folder, command_line(), ctx.progress):
        source = _source_for(ctx, module.source_precision(built_for, options), backend.name)
        folder = artifact_folder(ctx.job, backend.name, built_for, options)
        reference = ctx.reference(built_for) if built_for == "int8" else None  # INT8: which photographs is part of it
        identity = artifact_identity(source, backend.name, found, built_for, options, ctx.job.images,
                             reference.description if reference else None)
        fingerprint = key_digest(identity)
        if not force and (previous := reusable_artifact(folder, fingerprint)) is not None:
            ctx.say(f"reusing the verified {backend.name} {built_for} artifact")
            if ctx.enforced(built_for):
                recheck_reused(previous, "", tolerance, f"the verified {backend.name} {built_for} artifact", folder)
            return Artifact(ctx.recipe.name, backend.name, built_for, folder / previous["artifact"]["file"], previous,
                            True, found)
        return _build(ctx, backend.name, module, built_for, found, source, options, tolerance, folder, identity,
                      reference or ctx.reference(built_for))


def _build(ctx: Context, backend: str, module, precision: str, found: Availability, source: SourceModel, options: Any,
           tolerance: Tolerance, folder: Path, identity: dict, reference: Reference) -> Artifact:
    started = time.perf_counter()
    with Staging(folder) as staging:
        ctx.say(f"building the {backend} {precision} artifact")
        output = module.build(source.path, staging.path, precision, options)
        ctx.say(f"verifying the {backend} {precision} artifact against PyTorch")
        with module.open_runner(staging.path / output.main, precision=precision, options=options) as runner:
            candidate = runner.run(reference.inputs)
            execution = dict(runner.execution)
        parity = compare(reference.outputs, candidate, tolerance)
        report = _report(ctx, backend, precision, found, source, output.info, execution, parity, reference,
                         identity, time.perf_counter() - started)
        report["artifact"] = {"file": output.main, "files": {f: sha256_of(staging.path / f) for f in output.files}}
        if not ctx.enforced(precision):
            report["parity"].update(enforced=False, note=RANDOM_NOTE)
        if not parity.passed and ctx.enforced(precision):
            report["status"] = "failed"
            rejected = staging.reject(output.files, REPORT_FILE, report)
            accept = f"; to accept it: --tolerance {precision}:min_top1=..." if precision == "int8" else ""
            kept = (f"; the verified artifact in {folder} is unchanged" if (folder / REPORT_FILE).is_file() else "")
            raise ParityError(f"{ctx.recipe.name}: {backend} {precision} differs from PyTorch on "
                              f"{reference.description}: {'; '.join(parity.failures)}{accept} "
                              f"(rejected build: {rejected}{kept})", report=rejected)
        report["status"] = "passed"
        staging.publish(output.files)
        write_json(folder / REPORT_FILE, report)
    return Artifact(ctx.recipe.name, backend, precision, folder / output.main, report, False, found)


def existing_options(ctx: Context, backend_name: str, precision: str, batch: int | None = None) -> Any:
    """The options of an artifact already built for this backend and precision (by `effexport trt`, say) whose
    batch profile covers `batch` (any when None), preferring one optimised for it; None when there is none or the
    backend has no profiles. verify and bench use the user's engine this way instead of building another."""
    backend = get_backend(backend_name)
    module = backend.load()
    if not hasattr(module, "options_from_record"):
        return None
    built_for = artifact_precision(backend, precision)
    found = []
    for report_path in ctx.folder.glob(f"{backend.name}-{built_for}-*/{REPORT_FILE}"):
        report = read_json(report_path)
        if not report or report.get("status") != "passed" or not isinstance(report.get("options"), dict):
            continue
        options = backend_options(backend, ctx, module.options_from_record(report["options"]))
        if artifact_folder(ctx.job, backend.name, built_for, options) != report_path.parent:
            continue  # another export variant
        if batch is not None and not module.covers(options, batch):
            continue
        optimised = batch is None or getattr(options, "opt_batch", None) == batch
        found.append((not optimised, -report_path.stat().st_mtime, str(report_path), options))
    return min(found, key=lambda f: f[:3])[3] if found else None


@dataclass
class SourceModel:
    """The model an artifact is built from, named by its own identity (`sha256` holds that fingerprint)."""

    path: Path
    precision: str
    sha256: str
    info: dict = field(default_factory=dict)


def _source_for(ctx: Context, precision: str, backend: str) -> SourceModel:
    """The model a build starts from: the verified export, its verified variant (fp16 graph, ...), or for INT8
    the form of the recipe's calibration that this backend runs (calibration.int8.BACKEND_FORMS)."""
    if precision == "fp32":
        return SourceModel(ctx.onnx.path, "fp32", ctx.onnx.report["fingerprint"])
    if precision == "int8":
        return _int8_source(ctx, backend)
    variant = ensure_artifact(ctx, "onnxruntime", precision)
    return SourceModel(variant.path, precision, variant.report["fingerprint"])


def _int8_source(ctx: Context, backend: str) -> SourceModel:
    result = ctx.int8_build()
    form = form_for_backend(backend)
    if form not in result.files:
        raise MissingDependencyError(f"the {backend} INT8 model is made by NNCF, which is not installed: "
                                     f"pip install 'effexport[nncf]'")
    built = result.manifest["forms"][form]
    data = result.manifest["data"]
    info = {"form": form, "calibration": str(result.manifest_path.relative_to(ctx.folder)),
            "calibration_fingerprint": result.manifest["fingerprint"],
            "method": result.manifest["method"], "calibration_data": {k: data[k] for k in ("source", "kind", "count")},
            "skipped": len(data["skipped"]), "cache": result.manifest["cache"]["file"],
            "keep_float": built["keep_float"], "cpu": result.manifest.get("cpu"),
            "calibration_parity": result.manifest["parity"][form]}
    if form in result.manifest.get("speed", {}):
        info["speed_at_build"] = result.manifest["speed"][form]
    return SourceModel(result.files[form], f"int8 ({form})", f"{result.manifest['fingerprint']}:{built['sha256']}",
                       info)


def _options_dict(options: Any) -> Any:
    if options is None:
        return None
    if hasattr(options, "identity"):
        return options.identity()
    return asdict(options) if is_dataclass(options) else str(options)


def artifact_identity(source: SourceModel, backend: str, found: Availability, precision: str, options: Any,
              images: Path | None, inputs: str | None) -> dict:
    """What shapes the artifact and its report: the source by its own identity, the backend and its version, the
    options and the parity images by their contents. Not the tolerance: a reused artifact is judged again."""
    return {"source": source.sha256, "backend": backend, "version": found.version, "device": found.device,
            "precision": precision, "options": _options_dict(options), "images": images_key(images),
            "inputs": inputs, "effexport": __version__}


def reusable_artifact(folder: Path, fingerprint: str) -> dict | None:
    """The passing report in `folder` with this fingerprint whose files are all intact."""
    return reusable_record(folder / REPORT_FILE, fingerprint, lambda report: report.get("artifact", {}).get("files"))


def _report(ctx: Context, backend: str, precision: str, found: Availability, source: SourceModel, build_info: dict,
            execution: dict, parity: ParityReport, reference: Reference, identity: dict, seconds: float) -> dict:
    return {
        "recipe": ctx.recipe.name,
        "backend": backend,
        "precision": precision,
        "source_onnx" if source.path.suffix == ".onnx" else "source_model": {
            "file": str(source.path.relative_to(ctx.folder)), "precision": source.precision, "sha256": source.sha256},
        **({"int8": source.info} if source.info else {}),
        "weights": ctx.onnx.report.get("weights"),
        "options": identity["options"],
        "build": build_info,
        "execution": execution,
        "parity": {"reference": "PyTorch FP32", "inputs": reference.description, **parity.to_dict()},
        "backend_version": found.version,
        "device": found.device,
        "identity": identity,
        "fingerprint": key_digest(identity),
        "seconds": round(seconds, 2),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_parity(artifact: Artifact, precision: str, reference: Reference, tolerance: Tolerance,
               options: Any = None, threads: int | None = None) -> tuple[ParityReport, dict]:
    """Run an artifact at `precision` on the reference inputs and compare; returns the report and what ran."""
    module = get_backend(artifact.backend).load()
    with module.open_runner(artifact.path, precision=precision, threads=threads, options=options) as runner:
        candidate = runner.run(reference.inputs)
        execution = dict(runner.execution)
    return compare(reference.outputs, candidate, tolerance), execution


def deploy(job: Job, backend: str, precision: str, options: Any = None, progress: Progress | None = None,
           command: str | None = None) -> Artifact:
    """`effexport openvino` / `effexport trt` / `effexport.build_backend`: the backend's artifact of the job at
    `precision`, built or reused, checked against PyTorch. The backend is asked first whether it can run here, so a
    missing one stops in one line before any export or calibration."""
    spec = get_backend(backend)
    if precision not in spec.precisions:
        raise UsageError(f"{backend} supports {', '.join(spec.precisions)}, not {precision}")
    spec.ensure_available(command or f"the {backend} {precision} artifact")
    ctx = open_context(job, progress)
    artifact = ensure_artifact(ctx, backend, precision, options)
    if precision == "int8":
        artifact.calibration = ctx.int8_build()
    return artifact


def calibrate(job: Job, enforce: tuple[str, ...] | None = None, progress: Progress | None = None) -> Int8Result:
    """`effexport calibrate`: every INT8 form of the job's one calibration, from the dynamic-batch export every
    backend shares; `enforce` names the forms whose INT8 parity failure is an error (None: all)."""
    return open_context(job, progress).int8_build(enforce=enforce)
