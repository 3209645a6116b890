"""Backend artifacts of one recipe: built from the shared verified ONNX, checked against PyTorch, reused.

Layout under `<out>/<recipe>/`: the verified `model.onnx` (+ report.json) that `effexport onnx --dynamic-batch`
also writes, `reference.npz` (the PyTorch outputs), and one folder per backend and precision,
`<backend>-<precision>/` (e.g. `openvino-fp32/model.xml`, `onnxruntime-fp16/model.onnx`,
`tensorrt-fp16/model.plan`), each with its report.json. A second run with nothing changed reuses every file.
Backends use a dynamic-batch ONNX so that one export serves every batch size (bench, TensorRT profiles).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from effexport import __version__
from effexport.errors import ParityError, UsageError
from effexport.exporter import onnx as onnx_stage
from effexport.exporter.artifacts import DEFAULT_OUT, Staging, read_json, recipe_dir, write_json
from effexport.exporter.backends import Availability, Backend, get_backend
from effexport.exporter.checkpoint import sha256_of
from effexport.exporter.parity import ParityReport, Tolerance, compare, tolerance_for
from effexport.exporter.pipeline import OnnxOptions, OnnxResult, Progress, WeightsSpec, export_recipe
from effexport.exporter.reference import Reference, images_key, reference_for
from effexport.recipes import Recipe, get_recipe

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class SourceSpec:
    """Which verified ONNX the backends start from: the recipe's weights and export settings."""

    weights: WeightsSpec = WeightsSpec()
    opset: int = onnx_stage.DEFAULT_OPSET
    img_size: int | None = None
    simplify: bool = True

    def onnx_options(self) -> OnnxOptions:
        return OnnxOptions(opset=self.opset, dynamic_batch=True, img_size=self.img_size, simplify=self.simplify)


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


@dataclass
class Context:
    """What every artifact of one recipe shares: the recipe, the verified ONNX and the PyTorch reference."""

    recipe: Recipe
    source: SourceSpec
    onnx: OnnxResult
    out: Path
    images: Path | None = None
    progress: Progress | None = None
    _reference: Reference | None = field(default=None, repr=False)

    def say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    @property
    def folder(self) -> Path:
        return recipe_dir(self.out, self.recipe.name)

    def reference(self) -> Reference:
        if self._reference is None:
            self._reference = reference_for(self.recipe, self.source.weights, self.source.img_size, self.onnx,
                                            self.images, self.out, self.progress)
        return self._reference


def open_context(name: str, source: SourceSpec | None = None, out: Path = DEFAULT_OUT, images: Path | None = None,
                 progress: Progress | None = None) -> Context:
    """Export (or reuse) the recipe's verified dynamic-batch ONNX."""
    source = source or SourceSpec()
    recipe = get_recipe(name)
    onnx_result = export_recipe(recipe.name, source.weights, source.onnx_options(), out, progress)
    return Context(recipe, source, onnx_result, Path(out), images, progress)


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
    source = _source_for(ctx, module.source_precision(built_for, options))
    tolerance = tolerance or tolerance_for(built_for)
    folder = artifact_folder(ctx, backend.name, built_for)
    fingerprint = _fingerprint(source, backend.name, found, built_for, options, tolerance, ctx.images)
    if not force and (previous := _reusable(folder, fingerprint)) is not None:
        ctx.say(f"reusing the verified {backend.name} {built_for} artifact")
        return Artifact(ctx.recipe.name, backend.name, built_for, folder / previous["artifact"]["file"], previous,
                        True, found)
    reference = ctx.reference()
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
        if not parity.passed:
            report["status"] = "failed"
            for name in output.files:  # files of an earlier build no longer match this report
                (folder / name).unlink(missing_ok=True)
            write_json(folder / REPORT_FILE, report)
            raise ParityError(f"{ctx.recipe.name}: {backend.name} {built_for} differs from PyTorch: "
                              f"{'; '.join(parity.failures)} (report: {folder / REPORT_FILE})")
        report["status"] = "passed"
        staging.publish(output.files)
    write_json(folder / REPORT_FILE, report)
    return Artifact(ctx.recipe.name, backend.name, built_for, folder / output.main, report, False, found)


@dataclass
class _Source:
    path: Path
    precision: str
    sha256: str


def _source_for(ctx: Context, precision: str) -> _Source:
    """The ONNX a build starts from: the verified export, or its verified variant (fp16 graph, ...)."""
    if precision == "fp32":
        return _Source(ctx.onnx.path, "fp32", ctx.onnx.report["artifact"]["sha256"])
    variant = ensure_artifact(ctx, "onnxruntime", precision)
    return _Source(variant.path, precision, variant.report["artifact"]["files"][variant.path.name])


def _options_dict(options: Any) -> Any:
    if options is None:
        return None
    if hasattr(options, "identity"):
        return options.identity()
    return asdict(options) if is_dataclass(options) else str(options)


def _fingerprint(source: _Source, backend: str, found: Availability, precision: str, options: Any,
                 tolerance: Tolerance, images: Path | None) -> str:
    key = {"source": source.sha256, "backend": backend, "version": found.version, "device": found.device,
           "precision": precision, "options": _options_dict(options), "tolerance": asdict(tolerance),
           "images": images_key(images), "effexport": __version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reusable(folder: Path, fingerprint: str) -> dict | None:
    report = read_json(folder / REPORT_FILE)
    if not report or report.get("fingerprint") != fingerprint or report.get("status") != "passed":
        return None
    files = report.get("artifact", {}).get("files", {})
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or sha256_of(path) != digest:
            return None
    return report if files else None


def _report(ctx: Context, backend: str, precision: str, found: Availability, source: _Source, build_info: dict,
            execution: dict, parity: ParityReport, reference: Reference, fingerprint: str, seconds: float) -> dict:
    return {
        "recipe": ctx.recipe.name,
        "backend": backend,
        "precision": precision,
        "source_onnx": {"file": str(source.path.relative_to(ctx.folder)), "precision": source.precision,
                        "sha256": source.sha256},
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
