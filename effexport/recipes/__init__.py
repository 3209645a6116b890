"""Recipe registry: one module per architecture family registers its variants here.

A recipe says how to build a model, at which input size it is deployed, how it is preprocessed, which
deploy rewrites it needs and which upstream checkpoint layouts it reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from effexport.errors import UsageError
from effexport.exporter.model_spec import CheckpointLayout, Preprocess
from effexport.recipes.names import RECIPE_NAMES, closest

if TYPE_CHECKING:
    from torch import nn

    from effexport.exporter.rewrite import Rewrite

FAMILY_MODULES = ("rexnet", "tresnet", "efficientnet", "resnext_wsl", "mobile", "padding_free", "mutualnet",
                  "rexnet_lite")
GENERIC_PREFIX = "timm:"


@dataclass(frozen=True)
class RecipeParams:
    """Options only some recipes take. Slimmable networks export one (width, resolution) point, given directly or
    chosen under a MAC budget from a query table, and re-estimate BatchNorm statistics on `calib` images."""

    width: float | None = None
    resolution: int | None = None
    budget_mflops: float | None = None
    query_table: Path | None = None
    calib: Path | None = None  # recipes that re-estimate nothing ignore it

    def given(self) -> list[str]:
        """The point-choosing options that were set (`calib` is not one: every recipe accepts it)."""
        return [f.name for f in fields(self) if f.name != "calib" and getattr(self, f.name) is not None]


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class KeepFloat:
    """Layers INT8 leaves in float: a regular expression searched in ONNX node names, and why.

    The pattern FIRST_CONV stands for the first convolution in graph order, whatever its name.
    """

    pattern: str
    reason: str


FIRST_CONV = ":first-conv"


class ImageLoader(Protocol):
    """Preprocessed images from --calib (a folder or a .npy/.npz; None: the built-in photographs), at most `at_most`
    of them as a seeded sample. The workflow passes INT8 calibration's loader to a recipe's finalize step, so the
    recipes never import the calibration layer above them. The result has `inputs` (NCHW float32), `skipped`
    ((file, reason) pairs), `warnings` and `digest()`."""

    def __call__(self, source: Path | None, pp: Preprocess, *, at_most: int) -> Any: ...


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    # build(pretrained, num_classes=None) -> model in eval mode; num_classes None means the recipe's own count (a
    # fine-tuned checkpoint's classifier decides it, exporter/checkpoint.py)
    build: Callable[..., nn.Module]
    preprocess: Preprocess
    rewrites: tuple[Rewrite, ...] = ()
    source: str = ""
    paper: str = ""
    aliases: tuple[str, ...] = ()
    layouts: tuple[CheckpointLayout, ...] = ()
    pretrained_available: bool = True
    heavy: bool = False  # too large for the default test run
    generic: bool = False  # built through the generic timm path, no family-specific recipe
    strict_graph: bool = True  # forbid BN/Identity/shape arithmetic in the exported graph
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Recipes that take options (RecipeParams field names in `takes`) return a recipe specialised for them.
    takes: tuple[str, ...] = ()
    configure: Callable[[Recipe, RecipeParams], Recipe] | None = None
    # Runs once the weights are loaded, before anything is measured, with the calibration images' loader; returns
    # the model to export and a record for the report (slimmable recipes re-estimate BatchNorm statistics for their
    # width and resolution here).
    finalize: Callable[[nn.Module, ImageLoader], tuple[nn.Module, dict]] | None = None
    configuration: Mapping[str, Any] = field(default_factory=dict)  # what `configure` chose, for the report
    # Layers kept in float by every INT8 form (QDQ ONNX and NNCF); empty means effexport's default (first conv).
    int8_keep_float: tuple[KeepFloat, ...] = ()
    num_classes: int = 1000  # the classifier's width when neither a checkpoint nor --num-classes says otherwise

    # whether `build` takes `in_chans` (timm's models): a grey-scale checkpoint then gets a 1-channel model
    takes_in_chans: bool = False

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.preprocess.channels, *self.preprocess.crop_size)


_RECIPES: dict[str, Recipe] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register(recipe: Recipe) -> Recipe:
    for key in (recipe.name, *recipe.aliases):
        if key in _RECIPES or key in _ALIASES:
            raise ValueError(f"recipe name {key!r} registered twice")
    _RECIPES[recipe.name] = recipe
    for alias in recipe.aliases:
        _ALIASES[alias] = recipe.name
    return recipe


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(f"{__name__}.{module}")


def list_recipes() -> list[Recipe]:
    _load_families()
    return list(_RECIPES.values())


def configure(recipe: Recipe, params: RecipeParams, img_size: int | None = None) -> Recipe:
    """Specialise `recipe` for `params`; options the recipe does not take are a usage error."""
    if img_size is not None and "resolution" in recipe.takes:
        raise UsageError(f"{recipe.name} is exported at --resolution R (its BatchNorm statistics are re-estimated "
                         f"there), not --img-size")
    refused = [name for name in params.given() if name not in recipe.takes]
    if refused:
        takers = sorted({r.name for r in list_recipes() if set(refused) <= set(r.takes)})
        hint = f" (recipes that do: {', '.join(takers)})" if takers else ""
        raise UsageError(f"recipe {recipe.name} takes no {', '.join(map(option_flag, refused))} option{hint}")
    return recipe.configure(recipe, params) if recipe.configure is not None else recipe


def build_recipe(recipe: Recipe, pretrained: bool, num_classes: int | None = None) -> nn.Module:
    """`recipe.build` with `num_classes` outputs (None: the recipe's own count)."""
    return recipe.build(pretrained) if num_classes is None else recipe.build(pretrained, num_classes=num_classes)


def check_recipe_name(name: str) -> None:
    """Refuse a name that is neither a recipe, an alias nor `timm:<model>`, without importing torch or timm.

    The names come from the static index in names.py, so a typo is refused in milliseconds; a `timm:` name is
    checked by `get_recipe`, which needs timm for it.
    """
    if name in RECIPE_NAMES or name.startswith(GENERIC_PREFIX):
        return
    if any(name in aliases for aliases in RECIPE_NAMES.values()):
        return
    close = closest(name)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise UsageError(f"unknown recipe {name!r}.{hint} Run 'effexport list' for all recipes, or use "
                     f"'{GENERIC_PREFIX}<model>' for any other timm model.")


def get_recipe(name: str) -> Recipe:
    """Resolve a recipe name, an alias (timm's own name for the same model) or `timm:<model>`."""
    check_recipe_name(name)  # before the family modules load: they import torch and timm
    if name.startswith(GENERIC_PREFIX):
        from effexport.recipes.generic import generic_timm_recipe

        return generic_timm_recipe(name[len(GENERIC_PREFIX):])
    _load_families()
    if name in _ALIASES:
        return _RECIPES[_ALIASES[name]]
    return _RECIPES[name]
