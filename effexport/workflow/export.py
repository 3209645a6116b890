"""The export pipeline: recipe -> model with weights -> deploy rewrites -> ONNX -> parity -> report.

Each stage is a function in its own module; this one only strings them together for one Job, stages the files and
writes the report. The CLI calls `export_recipe` and nothing else for `effexport onnx`.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from effexport.calibration.data import BUILTIN_WARNING as CALIBRATION_BUILTIN_WARNING
from effexport.calibration.data import CalibrationData, load_calibration
from effexport.errors import CheckpointError, ExportError, ParityError, UsageError
from effexport.exporter import onnx as onnx_stage
from effexport.exporter.artifacts import (
    Staging,
    command_line,
    content_digest,
    folder_lock,
    key_digest,
    reusable_record,
    sha256_of,
    write_json,
)
from effexport.exporter.checkpoint import (
    checkpoint_classes,
    checkpoint_in_chans,
    load_weights,
    model_head,
    randomize_batchnorm,
    read_state_dict,
)
from effexport.exporter.graph_io import wrap
from effexport.exporter.inputs import IMAGE_SUFFIXES, parity_inputs
from effexport.exporter.labels import IMAGENET_CLASSES, Labels, check_count, imagenet_labels
from effexport.exporter.parity import ParityReport, Tolerance, compare, recheck
from effexport.exporter.profile import build_on_meta, count_macs, count_params
from effexport.exporter.rewrite import RewriteRecord, apply_rewrites
from effexport.recipes import Preprocess, Recipe, build_recipe
from effexport.version import __version__
from effexport.workflow.job import Job, WeightsSpec

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
RANDOM_SEED = 0
MODEL_FILE = "model.onnx"
# What an export holds besides the graph; bumped when that changes, so older exports are rebuilt, not reused
# (2: metadata_props with recipe, preprocessing and weights; no intermediate value_info in dynamic-batch exports;
# 3: the input and output contracts, the class count and labels in metadata_props, and the exporter path).
EXPORT_FORMAT = 3
REPORT_FILE = "report.json"
# What preprocess_images (inputs.py) does besides the recipe's numbers: a file read without effexport must say it too.
INPUT_CONVENTION = {"resize_side": "short", "crop": "center", "channel_order": "RGB", "input_range": (0, 1),
                    "normalize": "(x - mean) / std", "layout": "NCHW"}
RANDOM_WEIGHTS_NOTE = ("RANDOM weights (seed 0, random BatchNorm statistics): the model's outputs are meaningless; "
                       "pass --weights PATH or --pretrained for a real model")


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
    labels: Labels | None = None

    @property
    def num_classes(self) -> int:
        return int(self.reference.shape[1])


@dataclass
class OnnxResult:
    path: Path | None
    report_path: Path
    report: dict
    reused: bool = False
    parity: dict = field(default_factory=dict)


def tool_versions() -> dict[str, str]:
    versions = {"effexport": __version__, "python": platform.python_version()}
    for dist in ("torch", "timm", "onnx", "onnxruntime", "onnxslim", "onnxscript", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def finalize_images(source: Path | None, pp: Preprocess, *, at_most: int) -> CalibrationData:
    """The images a recipe's finalize step reads (slimmable nets re-estimate BatchNorm on them): INT8 calibration's
    loader, so --calib means the same everywhere, without views (a mean over the given photographs is wanted, not
    extra crops of them) and without INT8's warning about the built-in photographs, which speaks of INT8 ranges."""
    data = load_calibration(source, pp, views=False, at_most=at_most)
    data.warnings = [w for w in data.warnings if w != CALIBRATION_BUILTIN_WARNING]
    return data


def grey_scale_recipe(recipe: Recipe, weights: Path, use_ema: bool = False) -> Recipe:
    """The recipe for a grey-scale checkpoint (its first convolution over one image channel) of a family whose
    builder takes `in_chans` (timm's): a 1-channel model, photographs as 8-bit luminance (Preprocess.grey).
    `recipe` itself for an RGB checkpoint, and for any other, which build_model then refuses naming both counts."""
    if not recipe.takes_in_chans:
        return recipe
    sd = read_state_dict(weights, use_ema=use_ema)
    head = model_head(build_on_meta(partial(build_recipe, recipe)))
    found = checkpoint_in_chans(head, sd)
    if found is None or head.in_chans is None or found == head.in_chans:
        return recipe
    grey = replace(recipe, preprocess=recipe.preprocess.grey(), build=partial(recipe.build, in_chans=1))
    grey_head = model_head(build_on_meta(partial(build_recipe, grey)))  # TResNet: 16 after its space-to-depth
    return grey if found == grey_head.in_chans else recipe


def checkpoint_num_classes(recipe: Recipe, sd: dict, num_classes: int | None, what: str) -> int | None:
    """The class count a checkpoint's classifier has (found on a meta-device build of the recipe), checked against
    `num_classes` (--num-classes) when given; refuses a first convolution over another number of input channels."""
    head = model_head(build_on_meta(partial(build_recipe, recipe, num_classes=num_classes)))
    layout = next((lay for lay in recipe.layouts if lay.num_classes is not None and lay.detect(sd)), None)
    found = layout.num_classes(sd) if layout is not None else checkpoint_classes(head, sd)
    if found is not None and num_classes is not None and found != num_classes:
        raise CheckpointError(f"{what}'s classifier has {found} classes, but --num-classes says {num_classes}: "
                              f"give --num-classes {found}, or the checkpoint trained for {num_classes} classes")
    in_chans = checkpoint_in_chans(head, sd)
    if in_chans is not None and head.in_chans is not None and in_chans != head.in_chans:
        grey = ("; grey-scale checkpoints are read for the families timm builds" if not recipe.takes_in_chans
                else "")
        raise CheckpointError(f"{what}'s first convolution ({head.first_conv}) takes {in_chans} input channels, "
                              f"{recipe.name}'s takes {head.in_chans}: effexport exports models of 3-channel RGB or "
                              f"1-channel grey-scale photographs (preprocessing, parity and calibration images are "
                              f"photographs), so a model trained on other inputs (extra bands) cannot be "
                              f"exported{grey}")
    return found if found is not None else num_classes


def build_model(recipe: Recipe, weights: WeightsSpec, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """Build the recipe's model in eval mode with its weights; returns the model and a weights record. The class
    count is the checkpoint's (its classifier's shape), else `num_classes`, else the recipe's own."""
    if weights.pretrained and not recipe.pretrained_available:
        raise UsageError(f"no pretrained weights are published for {recipe.name} through timm: pass --weights PATH")
    sd = None
    if weights.path is not None:
        sd = read_state_dict(Path(weights.path), use_ema=weights.use_ema)
        num_classes = checkpoint_num_classes(recipe, sd, num_classes, Path(weights.path).name)
    torch.manual_seed(RANDOM_SEED)
    model = build_recipe(recipe, weights.pretrained, num_classes).eval()
    if weights.path is not None:
        loaded = load_weights(model, Path(weights.path), recipe.layouts, use_ema=weights.use_ema, state_dict=sd)
        del sd
        info = {"source": "file", "path": loaded.path, "sha256": loaded.sha256, "layout": loaded.layout}
    elif weights.pretrained:
        info = {"source": "pretrained", "from": recipe.source}
    else:
        randomize_batchnorm(model, seed=RANDOM_SEED)
        info = {"source": "random", "seed": RANDOM_SEED, "note": RANDOM_WEIGHTS_NOTE}
    if recipe.finalize is not None:
        model, info["finalized"] = recipe.finalize(model, finalize_images)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), info


def run_torch(model: nn.Module, inputs: np.ndarray, batch: int = 8) -> np.ndarray:
    outs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            outs.append(model(torch.from_numpy(inputs[start:start + batch])).float().numpy())
    return np.concatenate(outs)


def prepare(job: Job, progress: Progress | None = None) -> PreparedModel:
    """Build, load weights, record reference outputs, then apply the deploy rewrites (each parity-checked)."""
    say = progress or (lambda _msg: None)
    recipe = job.recipe
    say(f"building {recipe.name}")
    model, winfo = build_model(recipe, job.weights, job.num_classes)
    pp = job.preprocess
    inputs, described = parity_inputs(pp, images_dir=job.images)
    io = job.export.graph_io
    # The reference is the model as built composed with the same graph ends, fed the same photographs as the
    # graph will be (uint8 crops for raw input): the comparison runs end to end.
    graph_inputs = io.encode(inputs, pp)
    say("running the PyTorch reference")
    reference = run_torch(wrap(model, io, pp), graph_inputs)
    labels = model_labels(job, reference.shape[1])
    params = count_params(model)
    macs = count_macs(model, (pp.channels, *pp.crop_size))
    say("applying deploy rewrites")
    model, records = apply_rewrites(model, recipe.rewrites, torch.from_numpy(inputs[:2]))
    return PreparedModel(recipe, wrap(model, io, pp), pp, winfo, records, params, macs, graph_inputs, described,
                         reference, labels)


def model_labels(job: Job, num_classes: int) -> Labels | None:
    """The labels given (checked against the model's class count, known for certain only now that the checkpoint
    is read), else ImageNet's for a 1000-class head, else none."""
    if job.labels is not None:
        check_count(job.labels, num_classes, f"the model ({job.recipe.name})")
        return job.labels
    return imagenet_labels() if num_classes == IMAGENET_CLASSES else None


def weights_identity(weights: WeightsSpec, recipe: Recipe) -> str:
    """The weights by their contents (a file), their origin (pretrained) or their seed (random)."""
    if weights.path is not None:
        return f"file:{sha256_of(Path(weights.path))}:{'ema' if weights.use_ema else ''}"
    return f"pretrained:{recipe.source}" if weights.pretrained else f"random:{RANDOM_SEED}"


def export_identity(job: Job) -> dict:
    """Everything that shapes the bytes of the export and its report, every input by its contents."""
    recipe = job.recipe
    key = {"format": EXPORT_FORMAT, "recipe": recipe.name, "configuration": dict(recipe.configuration),
           "weights": weights_identity(job.weights, recipe), "num_classes": job.num_classes,
           "labels": job.labels.digest() if job.labels is not None else None, "export": job.export.identity(),
           "parity_images": content_digest(job.images, IMAGE_SUFFIXES), "versions": tool_versions()}
    if recipe.finalize is not None:  # calibration images change the FP32 model only through a recipe's finalize step
        key["calibration_data"] = content_digest(job.calibration.source)
    if job.params.query_table is not None:
        key["query_table"] = content_digest(job.params.query_table)
    return key


def onnx_folder(job: Job) -> Path:
    """`<out>/<model>/onnx-<b1|b8|dynamic>[-<img>px][-opset<N>][-nosimplify]/`: exports with other options live
    side by side."""
    return job.folder / f"onnx-{job.export.batch_tag}{job.variant}"


def find_reusable(dest: Path, fingerprint: str) -> dict | None:
    """A previous passing export with the same fingerprint whose files are all intact."""
    return reusable_record(dest / REPORT_FILE, fingerprint, lambda report: report.get("artifact", {}).get("files"))


def recheck_reused(report: dict, key: str, tolerance: Tolerance, what: str, folder: Path) -> None:
    """A reused artifact is judged again under the tolerance asked for now; outside it, that is a parity failure,
    and the artifact, verified under the tolerance it was built with, stays as it is."""
    failures = recheck(report["parity"][key] if key else report["parity"], tolerance)
    if failures:
        raise ParityError(f"{what} in {folder} (unchanged inputs, so not rebuilt) is outside the tolerance asked for: "
                          f"{'; '.join(failures)}; it was verified under "
                          f"{Tolerance(**(report['parity'][key] if key else report['parity'])['tolerance']).describe()}"
                          f" and stays as it is", report=folder / REPORT_FILE)


def export_recipe(job: Job, progress: Progress | None = None) -> OnnxResult:
    """`effexport onnx`: export, check, simplify and verify one recipe; model.onnx and report.json in
    `onnx_folder(job)`. A failing build goes to `rejected/` there and never touches the verified export."""
    with folder_lock(job.folder, command_line(), progress):
        return _export(job, progress)


def _export(job: Job, progress: Progress | None) -> OnnxResult:
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    recipe, options = job.recipe, job.export
    onnx_stage.check_opset(options.opset, options.exporter)
    tolerance = job.tolerance("fp32")
    dest = onnx_folder(job)
    identity = export_identity(job)
    fingerprint = key_digest(identity)
    if not job.force and (previous := find_reusable(dest, fingerprint)) is not None:
        say("reusing the verified export (nothing changed)")
        recheck_reused(previous, "onnxruntime", tolerance, "the verified export", dest)
        return OnnxResult(dest / MODEL_FILE, dest / REPORT_FILE, previous, reused=True, parity=previous["parity"])

    prepared = prepare(job, progress)
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
        "num_classes": prepared.num_classes,
        "in_chans": recipe.input_size[0],
        "labels": prepared.labels.record() if prepared.labels is not None else None,
        "params": prepared.params,
        "macs": prepared.macs,
        "preprocessing": {**prepared.preprocess.to_dict(), **INPUT_CONVENTION},
        "opset": options.opset,
        "exporter": options.exporter,  # the path asked (resolved); the record below says which ran
        "batch": "dynamic" if options.dynamic_batch else options.batch,
        "simplified": options.simplify,
        "rewrites": [asdict(r) for r in prepared.rewrites],
        "parity_inputs": prepared.inputs_description,
        "graph_io": {"input": options.graph_io.client_contract(prepared.preprocess),
                     "output": options.graph_io.output_contract()},
        "versions": tool_versions(),
        "identity": identity,
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with Staging(dest) as staging:
        raw = staging.path / "raw" / MODEL_FILE
        raw.parent.mkdir()
        say(f"exporting ONNX (opset {options.opset})")
        record = onnx_stage.export_onnx(prepared.model, sample, raw, options.opset, options.dynamic_batch,
                                        exporter=options.exporter, output_name=options.graph_io.output_name)
        report["exporter"] = record.exporter  # "torchscript", "dynamo" or "dynamo+converted-from-18"
        report["exporter_warnings"] = list(record.warnings)
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
        if options.dynamic_batch:
            dropped = onnx_stage.drop_intermediate_value_info(model)
            log.debug("dropped %d intermediate value_info entries (symbolic batch)", dropped)
        report["onnx_metadata"] = onnx_metadata(report, prepared.labels)
        onnx_stage.set_metadata(model, report["onnx_metadata"])
        files = onnx_stage.save_onnx(model, staging.path / MODEL_FILE)
        del model
        say("checking the graph")
        onnx_stage.check_model(staging.path / MODEL_FILE)
        model = onnx.load(str(staging.path / MODEL_FILE), load_external_data=False)
        graph = onnx_stage.check_graph(model, static_shape=not options.dynamic_batch)
        report.update(onnx_stage.io_spec(model))
        if options.graph_io.raw:  # Triton's `format` of an image input (layouts.py)
            report["inputs"][0]["format"] = options.graph_io.layout
        report["node_counts"] = graph.node_counts
        report["graph_problems"] = list(graph.problems)
        say("verifying parity in ONNX Runtime")
        parity = verify_in_onnxruntime(staging.path / MODEL_FILE, prepared, tolerance, options.dynamic_batch)
        report["parity"] = {"onnxruntime": parity.to_dict()}
        report["artifact"] = {"file": MODEL_FILE, "sha256": sha256_of(staging.path / MODEL_FILE),
                              "files": {f.name: sha256_of(f) for f in files},
                              "bytes": sum(f.stat().st_size for f in files),
                              "external_data": [f.name for f in files[1:]]}
        report["seconds"] = round(time.perf_counter() - started, 2)
        if graph.problems and recipe.strict_graph:
            _reject(dest, staging, files, report, ExportError, f"{recipe.name}: the exported graph has "
                    f"{'; '.join(graph.problems)}; a rewrite is missing for this architecture")
        if not parity.passed:
            _reject(dest, staging, files, report, ParityError, f"{recipe.name}: ONNX Runtime output differs from "
                    f"PyTorch: {'; '.join(parity.failures)}")
        report["status"] = "passed"
        staging.publish(f.name for f in files)
        write_json(dest / REPORT_FILE, report)
    return OnnxResult(dest / MODEL_FILE, dest / REPORT_FILE, report, parity=report["parity"])


def onnx_metadata(report: dict, labels: Labels | None = None) -> dict[str, str]:
    """What a model file that travels without its report needs to be fed and trusted, as ONNX `metadata_props`
    (the OpenVINO IR copies them into its rt_info). `producer_name`/`producer_version` stay torch's: they name the
    exporter that wrote the graph, which is what an exporter bug is traced to; effexport's version has its own key."""
    return {
        "effexport.version": report["versions"]["effexport"],
        "effexport.recipe": report["recipe"],
        "effexport.preprocessing": json.dumps(report["preprocessing"], separators=(",", ":")),
        "effexport.weights": report["identity"]["weights"],
        "effexport.weights_random": "true" if report["weights"]["source"] == "random" else "false",
        "effexport.exporter": report["exporter"],
        "effexport.num_classes": str(report["num_classes"]),
        **({"effexport.labels": json.dumps(list(labels.names), ensure_ascii=False)} if labels is not None else {}),
        **{f"effexport.{end}": json.dumps(contract, separators=(",", ":"))
           for end, contract in report.get("graph_io", {}).items()},
    }


def _reject(dest: Path, staging: Staging, files: list[Path], report: dict, error: type[Exception], message: str):
    """Publish the failing build under rejected/ (its report says why) and raise; a verified export in `dest`
    stays untouched. External-data models keep only the report there: they are too large to keep for debugging."""
    report["status"] = "failed"
    report["error"] = message
    keep = [files[0].name] if len(files) == 1 else []
    rejected = staging.reject(keep, REPORT_FILE, report)
    kept = (f"; the verified {MODEL_FILE} in {dest} is unchanged" if (dest / REPORT_FILE).is_file()
            else "")
    raise error(f"{message} (rejected build: {rejected}{kept})", report=rejected)


def verify_in_onnxruntime(path: Path, prepared: PreparedModel, tolerance, dynamic_batch: bool) -> ParityReport:
    from effexport.backends.onnxruntime import OrtRunner

    with OrtRunner(path) as runner:
        candidate = runner.run(prepared.inputs)
        reference = prepared.reference
        if dynamic_batch:  # a dynamic-batch model must give the same answer at batch 1 as in a batch
            candidate = np.concatenate([candidate, runner.run(prepared.inputs[:1])])
            reference = np.concatenate([reference, reference[:1]])
    return compare(reference, candidate, tolerance)

