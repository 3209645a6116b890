"""ReXNet-lite (clovaai/rexnet `rexnetv1_lite.py`; the ReXNet paper: Han et al., CVPR 2021, arXiv 2007.00992): the
official lite models, ReXNet without squeeze-excitation or SiLU (ReLU6 throughout), 3x3 depthwise convolutions
and a 1x1-convolution head with BatchNorm. timm has no lite form, so the network is defined here, registered under
the original repository's names (`features.N.out.M`, `output.0/1/4`): its checkpoints load by name.

Deploy form, written into the definition rather than added by rewrites:
- the shortcut adds into the first c_in channels only (`out[:, :c_in] += x`), which exports as Slice/Add/Concat;
  zero-padding the shortcut to the output width and adding computes the same in one Pad and one Add;
- the original head ends in `squeeze()`, which drops the batch dimension at batch 1 (an older version of the file;
  the current one flattens): the output here is always [N, classes].
Rewrites: the generic ones (BatchNorm folding, including the head's BatchNorm after its 1x1 convolution).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from effexport.exporter.rewrite import GENERIC_REWRITES, pad_channels
from effexport.recipes import Preprocess, Recipe, register

PAPER = "ReXNet, CVPR 2021 (arXiv 2007.00992); lite models from clovaai/rexnet"

VARIANTS = {  # recipe name: width multiplier (the repository's `multiplier`)
    "rexnet_lite_1.0": 1.0,
    "rexnet_lite_1.3": 1.3,
    "rexnet_lite_1.5": 1.5,
    "rexnet_lite_2.0": 2.0,
}
REPEATS = (1, 2, 2, 3, 3, 5)
STRIDES = (1, 2, 2, 2, 1, 2)


def _make_divisible(channels: float, divisor: int = 8) -> int:
    from timm.layers import make_divisible

    return make_divisible(channels, divisor)


def _conv_bn(layers: list[nn.Module], in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1,
             groups: int = 1, act: bool = True) -> None:
    layers += [nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False),
               nn.BatchNorm2d(out_chs)]
    if act:
        layers.append(nn.ReLU6(inplace=True))


class LinearBottleneck(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, expand: int, stride: int):
        super().__init__()
        self.use_shortcut = stride == 1 and in_chs <= out_chs
        self.extra_channels = out_chs - in_chs  # a Python int, so the pad exports as a constant
        layers: list[nn.Module] = []
        mid = in_chs * expand
        if expand != 1:
            _conv_bn(layers, in_chs, mid)
        _conv_bn(layers, mid, mid, 3, stride, groups=mid)
        _conv_bn(layers, mid, out_chs, act=False)
        self.out = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out(x)
        if not self.use_shortcut:
            return out
        return out + (pad_channels(x, self.extra_channels) if self.extra_channels else x)


class ReXNetLite(nn.Module):
    def __init__(self, multiplier: float = 1.0, num_classes: int = 1000, input_ch: int = 16, final_ch: int = 164):
        super().__init__()
        blocks = sum(REPEATS)
        strides = [stride if i == 0 else 1 for stride, n in zip(STRIDES, REPEATS, strict=True) for i in range(n)]
        expands = [1] * REPEATS[0] + [6] * (blocks - REPEATS[0])
        # The repository's channel schedule: a linear ramp from input_ch by final_ch over the blocks.
        inplanes = input_ch / multiplier if multiplier < 1.0 else input_ch
        stem = _make_divisible(int(round((32 / multiplier if multiplier < 1.0 else 32) * multiplier)))
        ins, outs = [stem], [_make_divisible(int(round(inplanes * multiplier)))]
        for _ in range(1, blocks):
            ins.append(_make_divisible(int(round(inplanes * multiplier))))
            inplanes += final_ch / (blocks - 1)
            outs.append(_make_divisible(int(round(inplanes * multiplier))))

        features: list[nn.Module] = []
        _conv_bn(features, 3, stem, 3, 2)
        for in_chs, out_chs, expand, stride in zip(ins, outs, expands, strides, strict=True):
            features.append(LinearBottleneck(in_chs, out_chs, expand, stride))
        pen = int(1280 * multiplier) if multiplier > 1 else 1280
        _conv_bn(features, outs[-1], pen)
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.output = nn.Sequential(nn.Conv2d(pen, 1024, 1, bias=True), nn.BatchNorm2d(1024),
                                    nn.ReLU6(inplace=True), nn.Dropout(0.2), nn.Conv2d(1024, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.avgpool(self.features(x))).flatten(1)


def build(multiplier: float, pretrained: bool, num_classes: int | None = None) -> nn.Module:
    """The lite weights are published on the repository's release page, not through a registry: use --weights."""
    return ReXNetLite(multiplier, num_classes=1000 if num_classes is None else num_classes).eval()


for _name, _multiplier in VARIANTS.items():
    register(Recipe(
        name=_name,
        family="rexnet-lite",
        build=partial(build, _multiplier),
        preprocess=Preprocess((224, 224), crop_pct=0.875, interpolation="bicubic"),
        rewrites=GENERIC_REWRITES,
        source="clovaai/rexnet rexnetv1_lite.py (ReXNetV1_lite)",
        paper=PAPER,
        pretrained_available=False,
        notes="checkpoints of the original repository load by name; the output is [N, classes] at every batch size",
    ))
