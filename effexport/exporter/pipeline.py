"""The export pipeline: recipe -> model with weights -> deploy rewrites -> ONNX -> parity -> report.

Each stage is a function in its own module; this one only strings them together, stages the files and
writes the report. The CLI calls `export_recipe` and nothing else for `effexport onnx`.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from effexport import __version__
from effexport.errors import ExportError, ParityError, UsageError
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
from effexport.exporter.checkpoint import load_weights, randomize_batchnorm
from effexport.exporter.inputs import parity_inputs
from effexport.exporter.parity import ParityReport, compare, tolerance_for
from effexport.exporter.profile import count_macs, count_params
from effexport.exporter.rewrite import RewriteRecord, apply_rewrites
from effexport.recipes import Preprocess, Recipe, RecipeParams, configure, get_recipe

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
RANDOM_SEED = 0
MODEL_FILE = "model.onnx"
REJECTED_FILE = "model.rejected.onnx"
REPORT_FILE = "report.json"
RANDOM_WEIGHTS_NOTE = ("RANDOM weights (seed 0, random BatchNorm statistics): the model's outputs are meaningless; "
                       "pass --weights PATH or --pretrained for a real model")


@dataclass(frozen=True)
class WeightsSpec:
    """Where the weights come from: a file, timm's pretrained weights, or (neither) random."""

    path: Path | None = None
    pretrained: bool = False
    use_ema: bool = False

    def __post_init__(self):
        if self.path is not None and self.pretrained:
            raise UsageError("give either --weights or --pretrained, not both")

    def identity(self, recipe: Recipe) -> str:
        if self.path is not None:
            return f"file:{sha256_of(Path(self.path))}:{'ema' if self.use_ema else ''}"
        return f"pretrained:{recipe.source}" if self.pretrained else f"random:{RANDOM_SEED}"


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = onnx_stage.DEFAULT_OPSET
    batch: int = 1
    dynamic_batch: bool = False
    img_size: int | None = None
    simplify: bool = True
    images: Path | None = None
    max_rel: float | None = None
    force: bool = False
    calib: Path | None = None  # calibration images: slimmable BN re-estimation, INT8
    width: float | None = None  # slimmable recipes: the point to export, or a budget to choose it by
    resolution: int | None = None
    budget_mflops: float | None = None
    query_table: Path | None = None

    @property
    def recipe_params(self) -> RecipeParams:
        return RecipeParams(width=self.width, resolution=self.resolution, budget_mflops=self.budget_mflops,
                            query_table=self.query_table, calib=self.calib)

    def __post_init__(self):
        if self.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {self.batch}")
        if self.img_size is not None and self.img_size < 32:
            raise UsageError(f"--img-size must be at least 32, got {self.img_size}")


@dataclass
class PreparedModel:
    """A deploy-ready model with the reference outputs of the original model on the parity inputs."""

    recipe: Recipe
    model: nn.Module
    preprocess: Preprocess
    weights: dict
    rewrites: list[RewriteRecord]
    params: int
    macs: int
    inputs: np.ndarray
    inputs_description: str
    reference: np.ndarray


@dataclass
class OnnxResult:
    path: Path | None
    report_path: Path
    report: dict
    reused: bool = False
    parity: dict = field(default_factory=dict)


def tool_versions() -> dict[str, str]:
    versions = {"effexport": __version__, "python": platform.python_version()}
    for dist in ("torch", "timm", "onnx", "onnxruntime", "onnxslim", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def build_model(recipe: Recipe, weights: WeightsSpec) -> tuple[nn.Module, dict]:
    """Build the recipe's model in eval mode with its weights; returns the model and a weights record."""
    if weights.pretrained and not recipe.pretrained_available:
        raise UsageError(f"no pretrained weights are published for {recipe.name} through timm: pass --weights PATH")
    torch.manual_seed(RANDOM_SEED)
    model = recipe.build(weights.pretrained).eval()
    if weights.path is not None:
        loaded = load_weights(model, Path(weights.path), recipe, use_ema=weights.use_ema)
        info = {"source": "file", "path": loaded.path, "sha256": loaded.sha256, "layout": loaded.layout}
    elif weights.pretrained:
        info = {"source": "pretrained", "from": recipe.source}
    else:
        randomize_batchnorm(model, seed=RANDOM_SEED)
        info = {"source": "random", "seed": RANDOM_SEED, "note": RANDOM_WEIGHTS_NOTE}
    if recipe.finalize is not None:
        model, info["finalized"] = recipe.finalize(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), info


def run_torch(model: nn.Module, inputs: np.ndarray, batch: int = 8) -> np.ndarray:
    outs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            outs.append(model(torch.from_numpy(inputs[start:start + batch])).float().numpy())
    return np.concatenate(outs)


def prepare(recipe: Recipe, weights: WeightsSpec, img_size: int | None = None, images: Path | None = None,
            progress: Progress | None = None) -> PreparedModel:
    """Build, load weights, record reference outputs, then apply the deploy rewrites (each parity-checked)."""
    say = progress or (lambda _msg: None)
    say(f"building {recipe.name}")
    model, winfo = build_model(recipe, weights)
    pp = recipe.preprocess.at(img_size) if img_size else recipe.preprocess
    inputs, described = parity_inputs(pp, images_dir=images)
    say("running the PyTorch reference")
    reference = run_torch(model, inputs)
    params = count_params(model)
    macs = count_macs(model, (3, *pp.crop_size))
    say("applying deploy rewrites")
    model, records = apply_rewrites(model, recipe.rewrites, torch.from_numpy(inputs[:2]))
    return PreparedModel(recipe, model, pp, winfo, records, params, macs, inputs, described, reference)


def _fingerprint(recipe: Recipe, weights: WeightsSpec, options: OnnxOptions) -> str:
    opts = asdict(options)
    opts.pop("force")
    if recipe.finalize is None:  # calibration images change the FP32 model only through a recipe's finalize step
        opts.pop("calib")
    key = {"recipe": recipe.name, "weights": weights.identity(recipe), "options": opts,
           "versions": tool_versions()}
    return key_digest(key)


def find_reusable(dest: Path, fingerprint: str) -> dict | None:
    """A previous passing export with the same fingerprint whose model file is intact."""
    return reusable_record(dest / REPORT_FILE, fingerprint,
                           lambda report: {MODEL_FILE: report.get("artifact", {}).get("sha256")})


def export_recipe(name: str, weights: WeightsSpec = WeightsSpec(), options: OnnxOptions = OnnxOptions(),
                  out: Path = DEFAULT_OUT, progress: Progress | None = None) -> OnnxResult:
    """`effexport onnx`: export, check, simplify and verify one recipe; write model.onnx and report.json."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    recipe = configure(get_recipe(name), options.recipe_params, img_size=options.img_size)
    onnx_stage.check_opset(options.opset)
    tolerance = tolerance_for("fp32", max_rel=options.max_rel)
    dest = recipe_dir(out, recipe.name)
    fingerprint = _fingerprint(recipe, weights, options)
    if not options.force and (previous := find_reusable(dest, fingerprint)) is not None:
        say("reusing the verified export (nothing changed)")
        return OnnxResult(dest / MODEL_FILE, dest / REPORT_FILE, previous, reused=True, parity=previous["parity"])

    prepared = prepare(recipe, weights, options.img_size, options.images, progress)
    export_batch = 2 if options.dynamic_batch else options.batch
    sample = torch.from_numpy(np.resize(prepared.inputs[:1], (export_batch, *prepared.inputs.shape[1:])).copy())
    report: dict = {
        "recipe": recipe.name,
        "family": recipe.family,
        "source": recipe.source,
        "paper": recipe.paper,
        "generic_recipe": recipe.generic,
        **({"configuration": dict(recipe.configuration)} if recipe.configuration else {}),
        "weights": prepared.weights,
        "params": prepared.params,
        "macs": prepared.macs,
        "preprocessing": prepared.preprocess.to_dict(),
        "opset": options.opset,
        "exporter": "torch.onnx TorchScript exporter (dynamo=False)",
        "batch": "dynamic" if options.dynamic_batch else options.batch,
        "simplified": options.simplify,
        "rewrites": [asdict(r) for r in prepared.rewrites],
        "parity_inputs": prepared.inputs_description,
        "versions": tool_versions(),
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with Staging(dest) as staging:
        raw = staging.path / "raw" / MODEL_FILE
        raw.parent.mkdir()
        say(f"exporting ONNX (opset {options.opset})")
        onnx_stage.export_onnx(prepared.model, sample, raw, options.opset, options.dynamic_batch)
        del prepared.model
        model = onnx_stage.load_onnx(raw)
        if onnx_stage.model_opset(model) != options.opset:
            raise ExportError(f"the exporter wrote opset {onnx_stage.model_opset(model)}, not the requested "
                              f"{options.opset}")
        onnx_stage.eliminate_identity(model)
        if options.simplify:
            say("simplifying")
            model = onnx_stage.simplify(model)
            onnx_stage.eliminate_identity(model)
        files = onnx_stage.save_onnx(model, staging.path / MODEL_FILE)
        del model
        say("checking the graph")
        onnx_stage.check_model(staging.path / MODEL_FILE)
        model = onnx.load(str(staging.path / MODEL_FILE), load_external_data=False)
        graph = onnx_stage.check_graph(model, static_shape=not options.dynamic_batch)
        report.update(onnx_stage.io_spec(model))
        report["node_counts"] = graph.node_counts
        report["graph_problems"] = list(graph.problems)
        say("verifying parity in ONNX Runtime")
        parity = verify_in_onnxruntime(staging.path / MODEL_FILE, prepared, tolerance, options.dynamic_batch)
        report["parity"] = {"onnxruntime": parity.to_dict()}
        report["artifact"] = {"file": MODEL_FILE, "sha256": sha256_of(staging.path / MODEL_FILE),
                              "bytes": sum(f.stat().st_size for f in files),
                              "external_data": [f.name for f in files[1:]]}
        report["seconds"] = round(time.perf_counter() - started, 2)
        if graph.problems and recipe.strict_graph:
            return _reject(dest, staging, files, report, ExportError(
                f"{recipe.name}: the exported graph has {'; '.join(graph.problems)}; a rewrite is missing for "
                f"this architecture (report: {dest / REPORT_FILE})"))
        if not parity.passed:
            return _reject(dest, staging, files, report, ParityError(
                f"{recipe.name}: ONNX Runtime output differs from PyTorch: {'; '.join(parity.failures)} "
                f"(report: {dest / REPORT_FILE})"))
        report["status"] = "passed"
        staging.publish(f.name for f in files)
    (dest / REJECTED_FILE).unlink(missing_ok=True)
    write_json(dest / REPORT_FILE, report)
    return OnnxResult(dest / MODEL_FILE, dest / REPORT_FILE, report, parity=report["parity"])


def _reject(dest: Path, staging: Staging, files: list[Path], report: dict, error: Exception):
    """Keep the failing model only as model.rejected.onnx, write the report, raise `error`."""
    report["status"] = "failed"
    report["error"] = str(error)
    if len(files) == 1:  # external-data models are too large to keep around for debugging
        staging.publish([files[0].name])
        (dest / files[0].name).replace(dest / REJECTED_FILE)
        report["artifact"]["file"] = REJECTED_FILE
    for stale in (dest / MODEL_FILE, dest / (MODEL_FILE + ".data")):
        stale.unlink(missing_ok=True)  # the report no longer describes it
    write_json(dest / REPORT_FILE, report)
    raise error


def verify_in_onnxruntime(path: Path, prepared: PreparedModel, tolerance, dynamic_batch: bool) -> ParityReport:
    from effexport.exporter.backends.onnxruntime import OrtRunner

    with OrtRunner(path) as runner:
        candidate = runner.run(prepared.inputs)
        reference = prepared.reference
        if dynamic_batch:  # a dynamic-batch model must give the same answer at batch 1 as in a batch
            candidate = np.concatenate([candidate, runner.run(prepared.inputs[:1])])
            reference = np.concatenate([reference, reference[:1]])
    return compare(reference, candidate, tolerance)

