"""Recipe registry: one module per architecture family registers its variants here.

A recipe says how to build a model, at which input size it is deployed, how it is preprocessed, which
deploy rewrites it needs and which upstream checkpoint layouts it reads.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from effexport.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from effexport.exporter.rewrite import Rewrite

FAMILY_MODULES = ("rexnet", "tresnet", "efficientnet", "resnext_wsl", "mobile")
GENERIC_PREFIX = "timm:"


@dataclass(frozen=True)
class Preprocess:
    """How a photograph becomes the model input: resize the short side, center-crop, scale, normalize."""

    crop_size: tuple[int, int]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def resize(self) -> int:
        return int(round(min(self.crop_size) / self.crop_pct))

    def at(self, size: int) -> Preprocess:
        return Preprocess((size, size), self.crop_pct, self.interpolation, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resize": self.resize}


@dataclass(frozen=True)
class CheckpointLayout:
    """An upstream checkpoint key layout this family can read, with its converter to our model's keys."""

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    # When set, loading this layout into this recipe is refused with this message (wrong variant).
    refuse: str | None = None


@dataclass(frozen=True)
class KeepFloat:
    """Layers INT8 leaves in float: a regular expression searched in ONNX node names, and why.

    The pattern FIRST_CONV stands for the first convolution in graph order, whatever its name.
    """

    pattern: str
    reason: str


FIRST_CONV = ":first-conv"


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    build: Callable[[bool], nn.Module]  # build(pretrained) -> model in eval mode
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
    # Layers kept in float by every INT8 form (QDQ ONNX and NNCF); empty means effexport's default (first conv).
    int8_keep_float: tuple[KeepFloat, ...] = ()

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, *self.preprocess.crop_size)


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


def get_recipe(name: str) -> Recipe:
    """Resolve a recipe name, an alias (timm's own name for the same model) or `timm:<model>`."""
    _load_families()
    if name in _RECIPES:
        return _RECIPES[name]
    if name in _ALIASES:
        return _RECIPES[_ALIASES[name]]
    if name.startswith(GENERIC_PREFIX):
        from effexport.recipes.generic import generic_timm_recipe

        return generic_timm_recipe(name[len(GENERIC_PREFIX):])
    known = list(_RECIPES) + list(_ALIASES)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise UsageError(f"unknown recipe {name!r}.{hint} Run 'effexport list' for all recipes, or use "
                     f"'{GENERIC_PREFIX}<model>' for any other timm model.")
