"""What the core stages need to know of a recipe, declared in the core so that it never imports the registry above
it: how a photograph becomes the model input (Preprocess) and which upstream checkpoint layouts convert
(CheckpointLayout). Recipes fill them in; `effexport.recipes` re-exports both. Light on purpose: the registry is
read before torch is imported (`effexport list`, a mistyped name refused in milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Preprocess:
    """How a photograph becomes the model input: resize the short side, center-crop, scale, normalize.

    timm's evaluation transform by default: the short side to floor(crop / crop_pct), antialiased. Weights trained
    elsewhere carry their framework's transform (PaddleClas: the short side to crop + 32 with bilinear interpolation
    and no antialiasing), stated by `resize_size`, `antialias` and `origin`; those fields appear in `to_dict` (and so
    in reports and ONNX metadata) only when they differ from timm's, so timm-preprocessed artifacts keep their bytes.
    """

    crop_size: tuple[int, int]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize_size: int | None = None  # the short side before the crop; None: floor(crop / crop_pct)
    antialias: bool = True  # filter when shrinking (PIL, torchvision); cv2's INTER_LINEAR does not
    origin: str = "timm"  # whose evaluation transform this is

    @property
    def resize(self) -> int:
        if self.resize_size is not None:
            return self.resize_size
        # floor, as timm's eval transform (the function that makes the parity inputs) does: rounding reported
        # 267 for efficientnet_b1 (240 / 0.9) where the model was verified on 266
        return math.floor(min(self.crop_size) / self.crop_pct)

    @property
    def timm_transform(self) -> bool:
        """Whether timm's own eval transform computes this preprocessing."""
        return self.resize_size is None and self.antialias

    @property
    def channels(self) -> int:
        """Input channels: 3 (RGB), or 1 for a grey-scale model (one mean and one std)."""
        return len(self.mean)

    def grey(self) -> Preprocess:
        """The same transform for a grey-scale model: photographs become 8-bit luminance (Pillow's ITU-R 601-2
        `convert("L")`), normalized by the mean of the RGB means and stds. timm has no grey-scale convention of its
        own (its `--mean`/`--std` repeat one value over the channels), and the average is what a luminance image
        has under RGB statistics."""
        if self.channels == 1:
            return self
        return replace(self, mean=(round(sum(self.mean) / len(self.mean), 4),),
                       std=(round(sum(self.std) / len(self.std), 4),))

    def at(self, size: int) -> Preprocess:
        """The same transform at crop `size` (an explicit resize keeps its margin over the crop)."""
        resize = None if self.resize_size is None else size + self.resize_size - min(self.crop_size)
        return replace(self, crop_size=(size, size), resize_size=resize)

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "resize": self.resize}
        for name in ("resize_size", "antialias", "origin"):
            if data[name] == DEFAULTS[name]:
                del data[name]
        return data


DEFAULTS = {f.name: f.default for f in fields(Preprocess)}


@dataclass(frozen=True)
class CheckpointLayout:
    """An upstream checkpoint key layout this family can read, with its converter to our model's keys."""

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    # When set, loading this layout into this recipe is refused with this message (wrong variant).
    refuse: str | None = None
    # A layout told by the file's suffix (PaddleClas `.pdparams`) can say, before the file is read, what its weights
    # were evaluated with: that preprocessing replaces the recipe's; `native_size_only` refuses another --img-size.
    suffix: str | None = None
    preprocess: Preprocess | None = None
    native_size_only: str | None = None
    note: str | None = None  # what `effexport info` says of the layout beside its name
    # The class count of a checkpoint in this layout, where the generic search cannot read it (PaddleClas stores
    # Linear weights [in, out]); None: checkpoint.checkpoint_classes finds it.
    num_classes: Callable[[Mapping[str, torch.Tensor]], int | None] | None = None
