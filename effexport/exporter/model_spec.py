"""What the core stages need to know of a recipe, declared in the core so that it never imports the registry above
it: how a photograph becomes the model input (Preprocess) and which upstream checkpoint layouts convert
(CheckpointLayout). Recipes fill them in; `effexport.recipes` re-exports both. Light on purpose: the registry is
read before torch is imported (`effexport list`, a mistyped name refused in milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


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
        # floor, as timm's eval transform (the function that makes the parity inputs) does: rounding reported
        # 267 for efficientnet_b1 (240 / 0.9) where the model was verified on 266
        return math.floor(min(self.crop_size) / self.crop_pct)

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
