"""EfficientNet (Tan & Le, ICML 2019, arXiv 1905.11946) and EfficientNet-Lite (TensorFlow's edge variants).

Three forms, because checkpoints differ in padding and BatchNorm epsilon:
- `efficientnet_bN`: timm's PyTorch-native models (symmetric padding, BN eps 1e-5);
- `tf_efficientnet_bN`: the TensorFlow-trained weights (TF "SAME" padding, BN eps 1e-3);
- `efficientnet_liteN`: the official TF-trained lite models (no SE, ReLU6, TF "SAME" padding, BN eps 1e-3),
  built as timm's `tf_efficientnet_liteN`, which the published lite checkpoints need.
Rewrites: static_same_padding turns TF "SAME" padding, computed from the input shape at run time, into
static padding for the export size (no Shape/Gather arithmetic); BN folding; activation swaps.
Checkpoints: timm's layout, and the `efficientnet_pytorch` layout (`_conv_stem`, `_blocks.N._expand_conv`,
...), which registers the same layers in the same order. That package always uses TF padding and eps 1e-3,
so its checkpoints are refused for the symmetric-padding `efficientnet_bN` with a pointer to the right one.
"""

from __future__ import annotations

from effexport.exporter.checkpoint import map_by_order
from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import FIRST_CONV, CheckpointLayout, KeepFloat
from effexport.recipes._timm import register_timm

PAPER = "EfficientNet, ICML 2019 (arXiv 1905.11946)"
LITE_PAPER = "EfficientNet-Lite (TensorFlow TPU models, 2020), from EfficientNet (arXiv 1905.11946)"

SIZES = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
LITE_SIZES = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}
HEAVY_FROM = 5

# INT8 keep-float layers, measured on the ImageNet-trained EfficientNet-Lite0 with held-out photos (bench/int8.py).
STEM_INT8 = KeepFloat(FIRST_CONV, "the stem sees the normalized image through 3 channels: little compute, large error")
FIRST_BLOCK_INT8 = KeepFloat(r"/blocks/blocks\.0/", "after BN folding the first depthwise block's per-channel weight "
                             "ranges do not fit 8 bits: quantizing its weights alone cost 7% top-1 agreement")
STAGE1_INT8 = KeepFloat(r"/blocks/blocks\.1/blocks\.1\.0/", "the first stride-2 expansion block is the next most "
                        "sensitive: keeping it float raised top-1 agreement on held-out photos from 93% to 96%")
SE_INT8 = KeepFloat(r"/se/conv_(reduce|expand)/", "squeeze-excitation gates scale whole channels from a pooled "
                    "vector: no compute to gain, their error multiplies into every pixel")


def _is_efficientnet_pytorch(sd) -> bool:
    return "_conv_stem.weight" in sd and "_fc.weight" in sd


def _layout(refuse_for: str | None = None) -> CheckpointLayout:
    return CheckpointLayout(
        name="efficientnet_pytorch",
        detect=_is_efficientnet_pytorch,
        convert=map_by_order,
        refuse=(f"that package always uses TF 'SAME' padding and BatchNorm eps 1e-3, which this recipe does not; "
                f"use recipe {refuse_for}") if refuse_for else None,
    )


for _n, _size in SIZES.items():
    register_timm(f"efficientnet_b{_n}", f"efficientnet_b{_n}", family="efficientnet", size=_size,
                  rewrites=GENERIC_REWRITES, paper=PAPER, layouts=(_layout(f"tf_efficientnet_b{_n}"),),
                  heavy=_n >= HEAVY_FROM, int8_keep_float=(STEM_INT8, FIRST_BLOCK_INT8, SE_INT8))
    register_timm(f"tf_efficientnet_b{_n}", f"tf_efficientnet_b{_n}", family="efficientnet", size=_size,
                  rewrites=GENERIC_REWRITES, paper=PAPER, layouts=(_layout(),), heavy=_n >= HEAVY_FROM,
                  notes="TF 'SAME' padding made static at the export size",
                  int8_keep_float=(STEM_INT8, FIRST_BLOCK_INT8, SE_INT8))

for _n, _size in LITE_SIZES.items():
    register_timm(f"efficientnet_lite{_n}", f"tf_efficientnet_lite{_n}", family="efficientnet-lite", size=_size,
                  rewrites=GENERIC_REWRITES, paper=LITE_PAPER, layouts=(_layout(),),
                  int8_keep_float=(STEM_INT8, FIRST_BLOCK_INT8, STAGE1_INT8),
                  notes=f"the official TF-trained model (timm tf_efficientnet_lite{_n}); timm's own "
                        f"efficientnet_lite{_n} is a symmetric-padding re-implementation and is 'timm:efficientnet_lite{_n}'")
