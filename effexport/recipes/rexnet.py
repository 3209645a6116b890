"""ReXNet (Han et al., "Rethinking Channel Dimensions for Efficient Model Design", CVPR 2021, arXiv 2007.00992).

Rewrites:
- pad_shortcut_add: the shortcut adds into the first c_in channels only (`out[:, :c_in] += x`), which exports
  as Slice/Add/Concat chains (22 Slice, 11 Concat for rexnet_1.0); zero-padding the shortcut to the output
  width and adding gives the same numbers with one Pad and one Add, and no shape arithmetic.
- the generic ones: BN folding (including the BN inside each SE block), dropout removal.
Checkpoints: timm's layout, and the original repository's `rexnetv1.py` layout (`features.N.out.M`,
1x1-conv classifier `output.1`), which registers the same layers in the same order.
"""

from __future__ import annotations

import torch
from torch import nn

from effexport.exporter.checkpoint import map_by_order
from effexport.exporter.rewrite import GENERIC_REWRITES, pad_channels, set_submodule
from effexport.recipes import FIRST_CONV, CheckpointLayout, KeepFloat
from effexport.recipes._timm import register_timm

PAPER = "ReXNet, CVPR 2021 (arXiv 2007.00992)"

VARIANTS = {  # recipe name: (timm name, width multiplier)
    "rexnet_0.9": ("rexnet_100", 0.9),
    "rexnet_1.0": ("rexnet_100", 1.0),
    "rexnet_1.3": ("rexnet_130", 1.3),
    "rexnet_1.5": ("rexnet_150", 1.5),
    "rexnet_2.0": ("rexnet_200", 2.0),
    "rexnet_3.0": ("rexnet_300", 3.0),
}


class PadShortcutBottleneck(nn.Module):
    """timm's ReXNet LinearBottleneck with the partial-channel shortcut as pad-then-add."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv_exp = block.conv_exp
        self.conv_dw = block.conv_dw
        self.se = block.se
        self.act_dw = block.act_dw
        self.conv_pwl = block.conv_pwl
        self.extra_channels = block.out_channels - block.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.conv_exp is not None:
            x = self.conv_exp(x)
        x = self.conv_dw(x)
        if self.se is not None:
            x = self.se(x)
        x = self.act_dw(x)
        x = self.conv_pwl(x)
        return x + pad_channels(shortcut, self.extra_channels)


def pad_shortcut_add(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Replace each partial-channel shortcut (Slice/Add/Concat) with a zero-pad and one Add."""
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "LinearBottleneck" and getattr(module, "use_shortcut", False):
            set_submodule(model, name, PadShortcutBottleneck(module))
    return model


# INT8 keep-float layers: the stem only. The squeeze-excitation convolutions are quantized: kept in float, they
# left float islands that ONNX Runtime runs between quantize/dequantize pairs (rexnet_1.0 INT8 at batch 1: 1.12x
# FP32 with them in float, 1.30x without; AMD EPYC with AVX-512 VNNI, bench/int8.py). No trained ReXNet is
# reachable here; with trained weights, INT8 tuning keeps in float any layer that proves sensitive
# (calibration/sensitivity.py).
INT8_KEEP_FLOAT = (
    KeepFloat(FIRST_CONV, "the stem sees the normalized image through 3 channels: little compute, large error"),
)

UPSTREAM = CheckpointLayout(
    name="rexnet original repository (rexnetv1.py)",
    detect=lambda sd: "features.0.weight" in sd and "output.1.weight" in sd,
    convert=map_by_order,
)

for _name, (_timm_name, _width) in VARIANTS.items():
    register_timm(
        _name,
        _timm_name,
        family="rexnet",
        size=224,
        rewrites=(pad_shortcut_add, *GENERIC_REWRITES),
        paper=PAPER,
        model_kwargs={"width_mult": _width} if _name == "rexnet_0.9" else None,
        layouts=(UPSTREAM,),
        int8_keep_float=INT8_KEEP_FLOAT,
        notes="width 0.9 has no timm entry point; built from timm's RexNet class" if _name == "rexnet_0.9" else "",
    )
