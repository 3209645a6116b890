"""MutualNet (Yang et al., "MutualNet: Adaptive ConvNet via Mutual Learning from Network Width and Resolution", ECCV
2020, arXiv 1909.12978) and US-Nets (Yu & Huang, "Universally Slimmable Networks and Improved Training Techniques",
ICCV 2019, arXiv 1903.05134): one checkpoint of MobileNetV1 or V2 holds every width in a range, at any resolution.

A recipe exports one point: `--width W --resolution R`, or `--budget-mflops F`, the most accurate point of a query
table whose MFLOPs fit F (MutualNet publishes one per model; `--query-table FILE` supplies one measured on your own
data). The export is a static network, because deployment runtimes have no notion of a width:
- the full-width weights are sliced to W into plain Conv2d/BatchNorm2d/Linear layers (_slimmable.slice_to_width);
- BatchNorm statistics are re-estimated for W at R on calibration images, as MutualNet does before evaluating any
  point (ComputePostBN: reset, then a cumulative average over a few batches). The images are preprocessed at R like
  deployment images (short side to R/0.875, center crop R; MutualNet crops 224 and interpolates to R, the same
  field of view). --calib is read by the INT8 calibration's loader: a folder of images, or a .npy/.npz of inputs
  already preprocessed at R. Without --calib the built-in photographs are used, with a warning: statistics
  estimated on data unlike the deployment data cost accuracy;
- the generic rewrites then fold BatchNorm into the convolutions.
Checkpoints: the original layout (USConv2d/USBatchNorm2d, per-width `bn.N` statistics, which are set aside since
every point is re-estimated), or the same keys with full-width running statistics.
MutualNet's README writes two MobileNetV1 points as "1.0-0.95" and "1.0-0.9"; their MFLOPs (518, 466) are width
0.95 and 0.9 at 224 (this code counts 517.6 and 466.2), which is how they are read here.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effexport.errors import UsageError
from effexport.exporter.checkpoint import strict_load
from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import CheckpointLayout, ImageLoader, Preprocess, Recipe, RecipeParams, register
from effexport.recipes._slimmable import mobilenet_v1, mobilenet_v2, recalibrate_batchnorm, slice_to_width

log = logging.getLogger(__name__)

MUTUALNET = "MutualNet, ECCV 2020 (arXiv 1909.12978)"
USNET = "Universally Slimmable Networks, ICCV 2019 (arXiv 1903.05134)"
IMAGENET = Preprocess((224, 224), crop_pct=0.875, interpolation="bilinear")
DEFAULT_RESOLUTION = 224
CALIB_BATCH = 32
CALIB_MAX_BATCHES = 8
BUILTIN_WARNING = ("no --calib images: BatchNorm statistics were re-estimated on the {n} built-in photographs, which "
                   "are unlike your deployment data and cost accuracy; pass --calib DIR with a few hundred images "
                   "from your own data")


@dataclass(frozen=True)
class QueryPoint:
    mflops: float
    width: float
    resolution: int
    top1: float


def _table(rows: str) -> tuple[QueryPoint, ...]:
    """`MFLOPs width-resolution top1` triples, as MutualNet's README prints them."""
    points = []
    for mflops, point, top1 in (row.split() for row in rows.strip().splitlines()):
        width, resolution = point.split("-")
        points.append(QueryPoint(float(mflops), float(width), int(resolution), float(top1)))
    return tuple(points)


MOBILENET_V1_QUERY = _table("""
569 1.0-224 72.4
518 0.95-224 71.7
466 0.9-224 71.2
418 1.0-192 70.9
380 0.95-192 70.6
342 0.9-192 70.2
309 0.85-192 69.7
269 0.8-192 69.1
239 0.75-192 68.4
215 0.85-160 67.7
187 0.8-160 67.2
166 0.75-160 66.5
146 0.7-160 65.6
127 0.65-160 64.7
111 0.6-160 63.5
76 0.5-160 60.3
63 0.45-160 58.9
41 0.35-160 54.4
30 0.25-192 52.7
21 0.25-160 50.1
13 0.25-128 45.5
""")

MOBILENET_V2_QUERY = _table("""
300 1.0-224 72.9
284 0.95-224 72.7
269 0.9-224 72.4
254 0.85-224 72.0
221 1.0-192 71.8
209 0.95-192 71.6
198 0.9-192 71.4
187 0.85-192 71.0
164 0.8-192 70.4
154 0.75-192 70.1
128 0.7-192 69.6
107 0.75-160 68.3
89 0.7-160 67.6
84 0.85-128 65.8
57 0.7-128 64.2
""")


@dataclass(frozen=True)
class Slimmable:
    arch: Callable[..., nn.Module]  # arch(num_classes) -> the full-width slimmable network
    widths: tuple[float, float]  # the trained range
    query: tuple[QueryPoint, ...]  # the published query table, if any
    paper: str
    source: str


VARIANTS = {
    "mutualnet_mobilenet_v1": Slimmable(mobilenet_v1, (0.25, 1.0), MOBILENET_V1_QUERY, MUTUALNET,
                                        "MutualNet models/mobilenet_v1.py"),
    "mutualnet_mobilenet_v2": Slimmable(mobilenet_v2, (0.7, 1.0), MOBILENET_V2_QUERY, MUTUALNET,
                                        "MutualNet models/mobilenet_v2.py"),
    "usnet_mobilenet_v1": Slimmable(mobilenet_v1, (0.25, 1.0), (), USNET, "slimmable_networks us_mobilenet_v1.py"),
    "usnet_mobilenet_v2": Slimmable(mobilenet_v2, (0.35, 1.0), (), USNET, "slimmable_networks us_mobilenet_v2.py"),
}
TAKES = ("width", "resolution", "budget_mflops", "query_table")


# ---------------------------------------------------------------------------------------------- choosing a point


def read_query_table(path: Path) -> tuple[QueryPoint, ...]:
    """A CSV query table with the columns mflops, width, resolution, top1 (one row per measured point)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        points = tuple(QueryPoint(float(r["mflops"]), float(r["width"]), int(r["resolution"]), float(r["top1"]))
                       for r in rows)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"query table {path} is unreadable ({type(exc).__name__}: {exc}); expected a CSV file with "
                         f"the columns mflops,width,resolution,top1") from exc
    if not points:
        raise UsageError(f"query table {path} has no rows")
    return points


def choose_point(name: str, variant: Slimmable, params: RecipeParams) -> tuple[float, int, QueryPoint | None]:
    """(width, resolution, query-table point or None) for `params`."""
    if params.budget_mflops is None:
        if params.query_table is not None:
            raise UsageError("--query-table is read only with --budget-mflops F")
        point = None
        width = variant.widths[1] if params.width is None else params.width
        resolution = DEFAULT_RESOLUTION if params.resolution is None else params.resolution
    else:
        if params.width is not None or params.resolution is not None:
            raise UsageError("give either --budget-mflops or --width/--resolution, not both")
        table = read_query_table(params.query_table) if params.query_table else variant.query
        if not table:
            raise UsageError(f"no query table is published for {name}: pass --query-table FILE (CSV columns "
                             f"mflops,width,resolution,top1) or --width W --resolution R")
        fits = [p for p in table if p.mflops <= params.budget_mflops]
        if not fits:
            low = min(table, key=lambda p: p.mflops)
            raise UsageError(f"no point of the query table fits {params.budget_mflops:g} MFLOPs; the cheapest is "
                             f"{low.mflops:g} MFLOPs (width {low.width:g}, resolution {low.resolution})")
        point = max(fits, key=lambda p: (p.top1, -p.mflops))
        width, resolution = point.width, point.resolution
    low, high = variant.widths
    if not low - 1e-9 <= width <= high + 1e-9:
        raise UsageError(f"width {width:g} is outside the range {name} was trained for ({low:g} to {high:g})")
    if resolution < 32:
        raise UsageError(f"resolution {resolution} is too small: at least 32 (the network downsamples 32x)")
    return width, resolution, point


# ---------------------------------------------------------------------------------------------- build, load, finalize


def build_static(arch: Callable[..., nn.Module], width: float, pretrained: bool,
                 num_classes: int | None = None) -> nn.Module:
    """The static network at `width` (no weights are published through a registry: `pretrained` is refused)."""
    return slice_to_width(arch(1000 if num_classes is None else num_classes), width)


PER_WIDTH_STATS = re.compile(r"\.bn\.\d+\.(running_mean|running_var|num_batches_tracked)$")


def convert_full_width(arch: Callable[..., nn.Module], width: float, sd: dict[str, torch.Tensor],
                       model: nn.Module) -> dict[str, torch.Tensor]:
    """Load a full-width slimmable checkpoint into the slimmable network, then slice it to `width`; the network
    has as many classes as `model`, the static one built for this checkpoint (the classifier never slims)."""
    full = arch(model.classifier[0].out_features)
    own = full.state_dict()
    kept = {k: v for k, v in sd.items() if not PER_WIDTH_STATS.search(k)}
    dropped = len(sd) - len(kept)
    # The original USBatchNorm2d keeps no full-width statistics; they are re-estimated for the width anyway.
    for key, value in own.items():
        if key not in kept and key.endswith(("running_mean", "running_var")):
            kept[key] = value
    strict_load(full, kept, "the slimmable checkpoint")
    if dropped:
        log.info("set aside %d per-width BatchNorm statistics: they are re-estimated for width %g", dropped, width)
    return slice_to_width(full, width).state_dict()


def calibration_batches(inputs: np.ndarray) -> list[torch.Tensor]:
    """Near-equal batches of about CALIB_BATCH preprocessed inputs."""
    x = torch.from_numpy(inputs)
    return list(torch.tensor_split(x, max(1, math.ceil(len(x) / CALIB_BATCH))))


def reestimate_batchnorm(resolution: int, calib: Path | None, model: nn.Module,
                         load_images: ImageLoader) -> tuple[nn.Module, dict]:
    # `load_images` is the loader INT8 calibration uses (the workflow passes it in), so --calib means the same
    # everywhere: a folder, or a .npy/.npz preprocessed at R (refused at any other size, never resized). No views:
    # a mean over the given photographs is what is wanted. At most CALIB_MAX_BATCHES batches, as a seeded sample.
    data = load_images(calib, IMAGENET.at(resolution), at_most=CALIB_BATCH * CALIB_MAX_BATCHES)
    batches = calibration_batches(data.inputs)
    layers = recalibrate_batchnorm(model, batches)
    used = sum(len(b) for b in batches)
    record = {"step": "BatchNorm statistics re-estimated (reset, cumulative average)", "layers": layers,
              "resolution": resolution, "images": used, "batches": len(batches),
              "source": "built-in photographs" if calib is None else str(calib), "data_digest": data.digest()}
    if data.skipped:
        record["skipped"] = [{"file": f, "reason": r} for f, r in data.skipped]
    warnings = [BUILTIN_WARNING.format(n=used)] if calib is None else []
    warnings += data.warnings  # without INT8's own warning about the built-in photographs: the loader drops it
    if warnings:
        record["warning"] = "; ".join(warnings)
        log.info(record["warning"])  # recorded in the report; the CLI prints it
    return model, record


def _is_original_layout(sd) -> bool:
    return any(PER_WIDTH_STATS.search(k) for k in sd)


def specialise(name: str, variant: Slimmable, _recipe: Recipe | None, params: RecipeParams) -> Recipe:
    """The recipe for one (width, resolution) point of `variant`."""
    width, resolution, point = choose_point(name, variant, params)
    convert = partial(convert_full_width, variant.arch, width)
    query = "" if point is None else (f"; chosen from the query table under {params.budget_mflops:g} MFLOPs: "
                                      f"{point.mflops:g} MFLOPs, top-1 {point.top1:g}%")
    return Recipe(
        name=f"{name}-w{width:g}-r{resolution}",
        family=name.split("_")[0],
        build=partial(build_static, variant.arch, width),
        preprocess=IMAGENET.at(resolution),
        rewrites=GENERIC_REWRITES,
        source=variant.source,
        paper=variant.paper,
        layouts=(CheckpointLayout("original US-Net layout (per-width bn.N statistics)", _is_original_layout, convert),
                 CheckpointLayout("full-width slimmable state dict", lambda sd: True, convert)),
        pretrained_available=False,
        notes=f"slimmable over widths {variant.widths[0]:g} to {variant.widths[1]:g}; exported at width {width:g}, "
              f"resolution {resolution}{query}; BatchNorm statistics are re-estimated there on the --calib images "
              f"(default: the built-in photographs)",
        takes=TAKES,
        configure=partial(specialise, name, variant),
        finalize=partial(reestimate_batchnorm, resolution, params.calib),
        configuration={"width": width, "resolution": resolution, "width_range": list(variant.widths),
                       "query_point": asdict(point) if point else None,
                       "calibration": str(params.calib) if params.calib else "built-in photographs"},
    )


for _name, _variant in VARIANTS.items():
    register(replace(specialise(_name, _variant, None, RecipeParams()), name=_name))
