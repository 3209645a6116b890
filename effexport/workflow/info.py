"""What `effexport list` and `effexport info` report, computed on the meta device (no weights allocated)."""

from __future__ import annotations

import inspect
import os
from functools import partial
from importlib import metadata
from pathlib import Path

import torch

from effexport.errors import UsageError
from effexport.exporter.artifacts import read_json, write_json
from effexport.exporter.labels import IMAGENET_CLASSES
from effexport.exporter.onnx import INPUT_NAME, OUTPUT_NAME
from effexport.exporter.profile import build_on_meta, count_macs, count_params
from effexport.recipes import Recipe, RecipeParams, build_recipe, configure, get_recipe, list_recipes
from effexport.version import __version__


def recipe_rows() -> list[dict]:
    """One row per recipe. Parameter counts take a meta-device build each (seconds for all recipes), so they
    are cached per effexport and timm version in the user's cache folder."""
    cache_path = _cache_dir() / f"params-{__version__}-timm{metadata.version('timm')}.json"
    cached = read_json(cache_path) or {}
    rows = []
    for recipe in list_recipes():
        if recipe.name not in cached:
            cached[recipe.name] = count_params(build_on_meta(recipe.build))
        rows.append({"name": recipe.name, "family": recipe.family, "input_size": list(recipe.input_size),
                     "params": cached[recipe.name], "aliases": list(recipe.aliases), "heavy": recipe.heavy})
    try:
        write_json(cache_path, cached)
    except OSError:  # a read-only home is no reason to fail a listing
        pass
    return rows


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "effexport"


def _doc(fn) -> str:
    return (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")


def recipe_info(name: str, img_size: int | None = None, params: RecipeParams | None = None,
                num_classes: int | None = None) -> dict:
    """What one recipe builds; `num_classes` as `--num-classes` gives it (a fine-tuned head)."""
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise UsageError(f"--num-classes must be a positive whole number, got {num_classes!r}")
    recipe: Recipe = configure(get_recipe(name), params or RecipeParams(), img_size=img_size)
    pp = recipe.preprocess.at(img_size) if img_size else recipe.preprocess
    model = build_on_meta(partial(build_recipe, recipe, num_classes=num_classes))
    with torch.no_grad():
        out = model(torch.zeros(1, pp.channels, *pp.crop_size, device="meta"))
    return {
        "name": recipe.name,
        "family": recipe.family,
        "aliases": list(recipe.aliases),
        "source": recipe.source,
        "paper": recipe.paper,
        "generic": recipe.generic,
        "params": count_params(model),
        "macs": count_macs(model, (pp.channels, *pp.crop_size)),
        "macs_note": "multiply-accumulates of one image, what this field's papers call FLOPs",
        "input": {"name": INPUT_NAME, "shape": [1, pp.channels, *pp.crop_size], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "shape": list(out.shape)},
        "num_classes": int(out.shape[1]),
        "labels": "ImageNet-1k (timm's class descriptions)" if out.shape[1] == IMAGENET_CLASSES else
                  "none by default: pass --labels FILE",
        "preprocessing": pp.to_dict(),
        "rewrites": [{"name": r.__name__, "doc": _doc(r)} for r in recipe.rewrites],
        "checkpoint_layouts": ["timm" if recipe.source.startswith("timm") else "the model's own state dict",
                               *dict.fromkeys(layout.name for layout in recipe.layouts)],
        "layout_notes": {layout.name: layout.note for layout in recipe.layouts if layout.note},
        "pretrained_available": recipe.pretrained_available,
        "heavy": recipe.heavy,
        "notes": recipe.notes,
        "configuration": dict(recipe.configuration),
    }
