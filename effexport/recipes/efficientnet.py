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

EfficientNet-B0-small is B0 without squeeze-excitation, as PaddleClas ships it (`EfficientNetB0_small`: its
"DYNAMIC" padding is PyTorch's symmetric padding, BatchNorm eps 1e-3, swish). timm's builder adds SE to B0 whatever
it is told, so the network is timm's EfficientNet class built from B0's block table without the `se` entries.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from effexport.exporter.checkpoint import map_by_order
from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import FIRST_CONV, CheckpointLayout, KeepFloat, Preprocess, Recipe, register
from effexport.recipes._timm import register_timm

PAPER = "EfficientNet, ICML 2019 (arXiv 1905.11946)"
LITE_PAPER = "EfficientNet-Lite (TensorFlow TPU models, 2020), from EfficientNet (arXiv 1905.11946)"

SIZES = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
LITE_SIZES = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}
HEAVY_FROM = 5
# EfficientNet-B0's blocks in timm's notation, without the `_se0.25` of every stage (PaddleClas's B0-small).
B0_SMALL_ARCH = [["ds_r1_k3_s1_e1_c16"], ["ir_r2_k3_s2_e6_c24"], ["ir_r2_k5_s2_e6_c40"], ["ir_r3_k3_s2_e6_c80"],
                 ["ir_r3_k5_s1_e6_c112"], ["ir_r4_k5_s2_e6_c192"], ["ir_r1_k3_s1_e6_c320"]]

# INT8 keep-float layers, measured on the ImageNet-trained EfficientNet-Lite0 with held-out photos (bench/int8.py).
STEM_INT8 = KeepFloat(FIRST_CONV, "the stem sees the normalized image through 3 channels: little compute, large error")
FIRST_BLOCK_INT8 = KeepFloat(r"/blocks/blocks\.0/", "after BN folding the first depthwise block's per-channel weight "
                             "ranges do not fit 8 bits: quantizing its weights alone cost 7% top-1 agreement")
STAGE1_INT8 = KeepFloat(r"/blocks/blocks\.1/blocks\.1\.0/", "the first stride-2 expansion block is the next most "
                        "sensitive: keeping it float raised top-1 agreement on held-out photos from 93% to 96%")
# The squeeze-excitation convolutions of EfficientNet-B* are quantized (as for ReXNet and MobileNetV3, see
# recipes/rexnet.py: in float they slowed ONNX Runtime's INT8); with trained weights, INT8 tuning keeps any that
# proves sensitive.


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
                  heavy=_n >= HEAVY_FROM, int8_keep_float=(STEM_INT8, FIRST_BLOCK_INT8))
    register_timm(f"tf_efficientnet_b{_n}", f"tf_efficientnet_b{_n}", family="efficientnet", size=_size,
                  rewrites=GENERIC_REWRITES, paper=PAPER, layouts=(_layout(),), heavy=_n >= HEAVY_FROM,
                  notes="TF 'SAME' padding made static at the export size",
                  int8_keep_float=(STEM_INT8, FIRST_BLOCK_INT8))

for _n, _size in LITE_SIZES.items():
    register_timm(f"efficientnet_lite{_n}", f"tf_efficientnet_lite{_n}", family="efficientnet-lite", size=_size,
                  rewrites=GENERIC_REWRITES, paper=LITE_PAPER, layouts=(_layout(),),
                  int8_keep_float=(STEM_INT8, FIRST_BLOCK_INT8, STAGE1_INT8),
                  notes=f"the official TF-trained model (timm tf_efficientnet_lite{_n}); timm's own "
                        f"efficientnet_lite{_n} is a symmetric-padding re-implementation "
                        f"and is 'timm:efficientnet_lite{_n}'")


def build_b0_small(pretrained: bool, num_classes: int | None = None) -> nn.Module:
    """PaddleClas publishes B0-small as Paddle parameters only: no PyTorch weights exist to fetch."""
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    return EfficientNet(block_args=decode_arch_def(B0_SMALL_ARCH), num_features=1280, stem_size=32,
                        num_classes=1000 if num_classes is None else num_classes,
                        act_layer=nn.SiLU, norm_layer=partial(nn.BatchNorm2d, eps=1e-3), drop_rate=0.2).eval()


register(Recipe(
    name="efficientnet_b0_small",
    family="efficientnet",
    build=build_b0_small,
    preprocess=Preprocess((224, 224), crop_pct=0.875, interpolation="bilinear"),
    rewrites=GENERIC_REWRITES,
    source="timm EfficientNet, B0's blocks without squeeze-excitation (PaddleClas EfficientNetB0_small)",
    paper=PAPER + "; B0-small from PaddleClas",
    layouts=(_layout(),),
    pretrained_available=False,
    notes="EfficientNet-B0 without squeeze-excitation, symmetric padding, BatchNorm eps 1e-3 (PaddleClas)",
))
