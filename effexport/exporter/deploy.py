"""Backend artifacts of one recipe: built from the shared verified ONNX, checked against PyTorch, reused.

Layout under `<out>/<recipe>/`: the verified `model.onnx` (+ report.json) that `effexport onnx --dynamic-batch`
also writes, `reference.npz` (the PyTorch outputs), and one folder per backend and precision,
`<backend>-<precision>/` (e.g. `openvino-fp32/model.xml`, `onnxruntime-fp16/model.onnx`,
`tensorrt-fp16/model.plan`), each with its report.json. A second run with nothing changed reuses every file.
Backends use a dynamic-batch ONNX so that one export serves every batch size (bench, TensorRT profiles).

INT8: the recipe's one calibration (calibration.json, the INT8 forms and the range cache, beside model.onnx, as
`effexport calibrate` writes them) gives each backend its form, which becomes `<backend>-int8/` like any other
artifact: copied (ONNX Runtime's CPU form, OpenVINO's NNCF IR) or built (TensorRT, from the Q/DQ ONNX), then
compared with PyTorch on photographs the calibration did not see (`reference-int8.npz`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from effexport import __version__
from effexport.calibration.build import RANDOM_NOTE, Int8Options, Int8Result, ensure_int8, form_for_backend
from effexport.calibration.heldout import int8_parity_inputs
from effexport.errors import MissingDependencyError, ParityError, UsageError
from effexport.exporter import onnx as onnx_stage
from effexport.exporter.artifacts import (
    DEFAULT_OUT,
    Staging,
    key_digest,
    recipe_dir,
    reusable_record,
    sha256_of,
    write_json,
)
from effexport.exporter.backends import Availability, Backend, get_backend
from effexport.exporter.parity import ParityReport, Tolerance, compare, tolerance_for
from effexport.exporter.pipeline import OnnxOptions, OnnxResult, Progress, WeightsSpec, export_recipe
from effexport.exporter.reference import Reference, cached_reference, images_key, reference_for
from effexport.recipes import Preprocess, Recipe, RecipeParams, configure, get_recipe

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
INT8_REFERENCE_FILE = "reference-int8.npz"


@dataclass(frozen=True)
class SourceSpec:
    """Which verified ONNX the backends start from: the recipe's weights, its options (the point of a slimmable
    recipe and its BatchNorm calibration images) and the export settings."""

    weights: WeightsSpec = WeightsSpec()
    opset: int = onnx_stage.DEFAULT_OPSET
    img_size: int | None = None
    simplify: bool = True
    params: RecipeParams = RecipeParams()

    def onnx_options(self) -> OnnxOptions:
        p = self.params
        return OnnxOptions(opset=self.opset, dynamic_batch=True, img_size=self.img_size, simplify=self.simplify,
                           calib=p.calib, width=p.width, resolution=p.resolution, budget_mflops=p.budget_mflops,
                           query_table=p.query_table)


@dataclass
class Artifact:
    recipe: str
    backend: str
    precision: str  # the precision the files were built for
    path: Path  # the file a runner opens
    report: dict
    reused: bool = False
    availability: Availability | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent


@dataclass(frozen=True)
class Int8Spec:
    """The one calibration every INT8 artifact of a recipe comes from (effexport.calibration.build)."""

    calib: Path | None = None  # image folder or .npy/.npz; None: the built-in photographs
    options: Int8Options = Int8Options()


@dataclass
class Context:
    """What every artifact of one recipe shares: the recipe, the verified ONNX, the PyTorch reference and, for
    INT8, the calibration."""

    recipe: Recipe
    source: SourceSpec
    onnx: OnnxResult
    out: Path
    images: Path | None = None
    progress: Progress | None = None
    int8: Int8Spec = Int8Spec()
    _references: dict[str, Reference] = field(default_factory=dict, repr=False)
    _int8_result: Int8Result | None = field(default=None, repr=False)

    def say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    @property
    def folder(self) -> Path:
        return recipe_dir(self.out, self.recipe.name)

    @property
    def preprocess(self) -> Preprocess:
        return self.recipe.preprocess.at(self.source.img_size) if self.source.img_size else self.recipe.preprocess

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
                photos = int8_parity_inputs(self.preprocess, self.images, self.int8_build().manifest["data"])
                digest = hashlib.sha256(photos.inputs.tobytes()).hexdigest()[:16]
                self._references[kind] = cached_reference(self.recipe, self.source.weights, self.onnx, self.out,
                                                          INT8_REFERENCE_FILE, digest,
                                                          lambda: (photos.inputs, photos.description), self.progress)
            else:
                self._references[kind] = reference_for(self.recipe, self.source.weights, self.source.img_size,
                                                       self.onnx, self.images, self.out, self.progress)
        return self._references[kind]

    def int8_build(self) -> Int8Result:
        """Calibrate once (or reuse the calibration) and build every INT8 form beside the verified ONNX. Parity of
        the forms with FP32 is recorded there; each backend's artifact is then judged against PyTorch."""
        if self._int8_result is None:
            self._int8_result = ensure_int8(self.recipe, self.onnx.path, self.preprocess, self.int8.calib,
                                            self.int8.options, random_weights=self.random_weights,
                                            images=self.images, enforce=(), progress=self.progress)
        return self._int8_result


def open_context(name: str, source: SourceSpec | None = None, out: Path = DEFAULT_OUT, images: Path | None = None,
                 progress: Progress | None = None, int8: Int8Spec | None = None) -> Context:
    """Export (or reuse) the recipe's verified dynamic-batch ONNX; a recipe that takes options (a slimmable
    network's width and resolution) is configured with `source.params` first, as `effexport onnx` does."""
    source = source or SourceSpec()
    recipe = configure(get_recipe(name), source.params, img_size=source.img_size)
    onnx_result = export_recipe(name, source.weights, source.onnx_options(), out, progress)
    return Context(recipe, source, onnx_result, Path(out), images, progress, int8 or Int8Spec())


def artifact_folder(ctx: Context, backend: str, precision: str) -> Path:
    return ctx.folder / f"{backend}-{precision}"


def artifact_precision(backend: Backend, precision: str) -> str:
    """The precision of the files a backend runs `precision` from (OpenVINO's bf16 runs the fp32 IR)."""
    module = backend.load()
    return module.artifact_precision(precision) if hasattr(module, "artifact_precision") else precision


def backend_options(backend: Backend, ctx: Context, options: Any) -> Any:
    module = backend.load()
    return module.default_options(options, ctx.folder) if hasattr(module, "default_options") else options


def ensure_artifact(ctx: Context, backend_name: str, precision: str, options: Any = None,
                    tolerance: Tolerance | None = None, force: bool = False) -> Artifact:
    """The backend's artifact for `precision`: reused when nothing changed, else built from the verified ONNX,
    run on the parity inputs and compared with PyTorch; a failure raises ParityError and publishes nothing."""
    backend = get_backend(backend_name)
    if precision not in backend.precisions:
        raise UsageError(f"{backend.name} supports {', '.join(backend.precisions)}, not {precision}")
    found = backend.ensure_available(f"the {backend.name} {precision} artifact")
    built_for = artifact_precision(backend, precision)
    if backend.name == "onnxruntime" and built_for == "fp32":
        return Artifact(ctx.recipe.name, backend.name, "fp32", ctx.onnx.path, ctx.onnx.report, ctx.onnx.reused, found)
    module = backend.load()
    options = backend_options(backend, ctx, options)
    source = _source_for(ctx, module.source_precision(built_for, options), backend.name)
    tolerance = tolerance or tolerance_for(built_for)
    folder = artifact_folder(ctx, backend.name, built_for)
    reference = ctx.reference(built_for) if built_for == "int8" else None  # INT8: which photographs is part of it
    fingerprint = _fingerprint(source, backend.name, found, built_for, options, tolerance, ctx.images,
                               reference.description if reference else None)
    if not force and (previous := _reusable(folder, fingerprint)) is not None:
        ctx.say(f"reusing the verified {backend.name} {built_for} artifact")
        return Artifact(ctx.recipe.name, backend.name, built_for, folder / previous["artifact"]["file"], previous,
                        True, found)
    reference = reference or ctx.reference(built_for)
    started = time.perf_counter()
    with Staging(folder) as staging:
        ctx.say(f"building the {backend.name} {built_for} artifact")
        output = module.build(source.path, staging.path, built_for, options)
        ctx.say(f"verifying the {backend.name} {built_for} artifact against PyTorch")
        with module.open_runner(staging.path / output.main, precision=built_for, options=options) as runner:
            candidate = runner.run(reference.inputs)
            execution = dict(runner.execution)
        parity = compare(reference.outputs, candidate, tolerance)
        report = _report(ctx, backend.name, built_for, found, source, output.info, execution, parity, reference,
                         fingerprint, time.perf_counter() - started)
        report["artifact"] = {"file": output.main, "files": {f: sha256_of(staging.path / f) for f in output.files}}
        if not ctx.enforced(built_for):
            report["parity"].update(enforced=False, note=RANDOM_NOTE)
        if not parity.passed and ctx.enforced(built_for):
            report["status"] = "failed"
            for name in output.files:  # files of an earlier build no longer match this report
                (folder / name).unlink(missing_ok=True)
            write_json(folder / REPORT_FILE, report)
            accept = f"; to accept it: --tolerance {built_for}:min_top1=..." if built_for == "int8" else ""
            raise ParityError(f"{ctx.recipe.name}: {backend.name} {built_for} differs from PyTorch on "
                              f"{reference.description}: {'; '.join(parity.failures)}{accept} "
                              f"(report: {folder / REPORT_FILE})")
        report["status"] = "passed"
        staging.publish(output.files)
    write_json(folder / REPORT_FILE, report)
    return Artifact(ctx.recipe.name, backend.name, built_for, folder / output.main, report, False, found)


@dataclass
class _Source:
    path: Path
    precision: str
    sha256: str
    info: dict = field(default_factory=dict)


def _source_for(ctx: Context, precision: str, backend: str) -> _Source:
    """The model a build starts from: the verified export, its verified variant (fp16 graph, ...), or for INT8
    the form of the recipe's calibration that this backend runs (calibration.build.BACKEND_FORMS)."""
    if precision == "fp32":
        return _Source(ctx.onnx.path, "fp32", ctx.onnx.report["artifact"]["sha256"])
    if precision == "int8":
        return _int8_source(ctx, backend)
    variant = ensure_artifact(ctx, "onnxruntime", precision)
    return _Source(variant.path, precision, variant.report["artifact"]["files"][variant.path.name])


def _int8_source(ctx: Context, backend: str) -> _Source:
    result = ctx.int8_build()
    form = form_for_backend(backend)
    if form not in result.files:
        raise MissingDependencyError(f"the {backend} INT8 model is made by NNCF, which is not installed: "
                                     f"pip install 'effexport[nncf]'")
    built = result.manifest["forms"][form]
    data = result.manifest["data"]
    info = {"form": form, "calibration": str(result.manifest_path.relative_to(ctx.folder)),
            "method": result.manifest["method"], "calibration_data": {k: data[k] for k in ("source", "kind", "count")},
            "skipped": len(data["skipped"]), "cache": result.manifest["cache"]["file"],
            "keep_float": [k["node"] for k in result.manifest["keep_float"]], "cpu": result.manifest.get("cpu"),
            "calibration_parity": result.manifest["parity"][form]}
    return _Source(result.files[form], f"int8 ({form})", built["sha256"], info)


def _options_dict(options: Any) -> Any:
    if options is None:
        return None
    if hasattr(options, "identity"):
        return options.identity()
    return asdict(options) if is_dataclass(options) else str(options)


def _fingerprint(source: _Source, backend: str, found: Availability, precision: str, options: Any,
                 tolerance: Tolerance, images: Path | None, inputs: str | None) -> str:
    key = {"source": source.sha256, "backend": backend, "version": found.version, "device": found.device,
           "precision": precision, "options": _options_dict(options), "tolerance": asdict(tolerance),
           "images": images_key(images), "inputs": inputs, "effexport": __version__}
    return key_digest(key)


def _reusable(folder: Path, fingerprint: str) -> dict | None:
    return reusable_record(folder / REPORT_FILE, fingerprint, lambda report: report.get("artifact", {}).get("files"))


def _report(ctx: Context, backend: str, precision: str, found: Availability, source: _Source, build_info: dict,
            execution: dict, parity: ParityReport, reference: Reference, fingerprint: str, seconds: float) -> dict:
    return {
        "recipe": ctx.recipe.name,
        "backend": backend,
        "precision": precision,
        "source_onnx" if source.path.suffix == ".onnx" else "source_model": {
            "file": str(source.path.relative_to(ctx.folder)), "precision": source.precision, "sha256": source.sha256},
        **({"int8": source.info} if source.info else {}),
        "weights": ctx.onnx.report.get("weights"),
        "build": build_info,
        "execution": execution,
        "parity": {"reference": "PyTorch FP32", "inputs": reference.description, **parity.to_dict()},
        "backend_version": found.version,
        "device": found.device,
        "fingerprint": fingerprint,
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
