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
PaddleClas `.pdparams` (`EfficientNetB0..B7`, `EfficientNetB0_small`) convert by name (see PADDLE_UNITS); the file's
variant is told by its stem width, block count and head width, so B3 weights given to tf_efficientnet_b0 are refused
naming B3 and its recipe. Paddle's "SAME" padding is a fixed table for the native input size, equal to TF SAME
there only, so those weights hold at the recipe's own size.

EfficientNet-B0-small is B0 without squeeze-excitation, as PaddleClas ships it (`EfficientNetB0_small`: its
"DYNAMIC" padding is PyTorch's symmetric padding, BatchNorm eps 1e-3, swish). timm's builder adds SE to B0 whatever
it is told, so the network is timm's EfficientNet class built from B0's block table without the `se` entries.
"""

from __future__ import annotations

import re
from functools import partial

from torch import nn

from effexport.errors import CheckpointError
from effexport.exporter.checkpoint import map_by_order
from effexport.exporter.pdparams import BN_PARAMS, PADDLECLAS_EVAL, convert_named, pdparams_num_classes
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


# PaddleClas (ppcls/arch/backbone/model_zoo/efficientnet.py) names parameters by its layers' attributes: a unit
# (_ecn expand, _dcn depthwise, _pcn project) holds ConvBNLayer `_conv` = Conv2ds `_conv` (Conv2D `_conv`) + `_bn`.
# Blocks are numbered flat over the stages and registered as "_blocks.{i}." (a stage's first) or "block.{i}." (the
# rest): sublayer names ending in a dot, so their keys hold "..".
PADDLE_UNITS = {  # timm block attribute -> PaddleClas unit, by block kind
    "ds": {"conv_dw": "_dcn", "bn1": "_dcn", "conv_pw": "_pcn", "bn2": "_pcn"},
    "ir": {"conv_pw": "_ecn", "bn1": "_ecn", "conv_dw": "_dcn", "bn2": "_dcn", "conv_pwl": "_pcn", "bn3": "_pcn"},
}
PADDLE_SE = {"conv_reduce": "_se._conv1", "conv_expand": "_se._conv2"}
PADDLE_STEM, PADDLE_HEAD = "_ef._conv_stem._conv.", "_conv."  # ConvBNLayers
PADDLE_BLOCK = re.compile(r"^_ef\.(?:_blocks|block)\.(\d+)\.\.")
# PaddleClas model: (stem width, blocks, head width, squeeze-excitation), the recipe its weights need
PADDLE_EFFICIENTNETS = {
    **{f"EfficientNetB{n}": ((stem, blocks, head, True), f"tf_efficientnet_b{n}") for n, (stem, blocks, head) in
       enumerate(((32, 16, 1280), (32, 23, 1280), (32, 23, 1408), (40, 26, 1536), (48, 32, 1792), (48, 39, 2048),
                  (56, 45, 2304), (64, 55, 2560)))},
    "EfficientNetB0_small": ((32, 16, 1280, False), "efficientnet_b0_small"),
}


def _is_paddle_efficientnet(sd) -> bool:
    return f"{PADDLE_STEM}_conv._conv.weight" in sd


def _paddle_variant(signature: tuple) -> str:
    named = [name for name, (sig, _) in PADDLE_EFFICIENTNETS.items() if sig == signature]
    stem, blocks, head, se = signature
    return named[0] if named else (f"an EfficientNet of stem width {stem}, {blocks} blocks, head width {head}"
                                   f"{'' if se else ', without squeeze-excitation'}")


def _paddle_names(model: nn.Module) -> dict[str, str]:
    """Our key -> PaddleClas's structured name."""
    conv_bn = {"conv_stem": f"{PADDLE_STEM}_conv._conv", "bn1": f"{PADDLE_STEM}_bn",
               "conv_head": f"{PADDLE_HEAD}_conv._conv", "bn2": f"{PADDLE_HEAD}_bn", "classifier": "_fc"}
    blocks = {}
    for s, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            kind = "ir" if hasattr(block, "conv_pwl") else "ds"
            blocks[f"blocks.{s}.{j}"] = (f"_ef.{'_blocks' if j == 0 else 'block'}.{len(blocks)}..", kind)
    names = {}
    for key in model.state_dict():
        owner, _, param = key.rpartition(".")
        if param == "num_batches_tracked":  # Paddle keeps no counter; eval never reads it
            continue
        if owner in conv_bn:
            names[key] = f"{conv_bn[owner]}.{BN_PARAMS[param] if owner.startswith('bn') else param}"
            continue
        stage, j, attr, *rest = owner.split(".")[1:]
        prefix, kind = blocks[f"blocks.{stage}.{j}"]
        if attr == "se":
            names[key] = f"{prefix}{PADDLE_SE[rest[0]]}._conv.{param}"
        elif attr.startswith("bn"):
            names[key] = f"{prefix}{PADDLE_UNITS[kind][attr]}._conv._bn.{BN_PARAMS[param]}"
        else:
            names[key] = f"{prefix}{PADDLE_UNITS[kind][attr]}._conv._conv._conv.{param}"
    return names


def _convert_paddle(sd, model: nn.Module, accepts: str | None) -> dict:
    head = sd.get(f"{PADDLE_HEAD}_conv._conv.weight")
    found = _paddle_variant((sd[f"{PADDLE_STEM}_conv._conv.weight"].shape[0],
                             len({m.group(1) for k in sd if (m := PADDLE_BLOCK.match(k))}),
                             head.shape[0] if head is not None else 0, any("._se." in k for k in sd)))
    if found != accepts:
        recipe = PADDLE_EFFICIENTNETS[found][1] if found in PADDLE_EFFICIENTNETS else None
        this = (f"this recipe takes PaddleClas {accepts}" if accepts else
                "this recipe has symmetric padding and BatchNorm eps 1e-5, unlike every PaddleClas EfficientNet")
        raise CheckpointError(f"the weights are PaddleClas {found}; {this}"
                              + (f": use recipe {recipe}" if recipe else ""))
    return convert_named(sd, model, _paddle_names(model), transposed=("classifier.weight",),
                         what=f"PaddleClas {found}")


# How PaddleClas's model zoo counts the "FLOPs" it publishes: a fit to its table (its counter does not ship), e.g. B0
# 0.717 G against its 0.72, B3 3.437 against 3.43, B7 72.36 against 72.35.
PADDLECLAS_FLOPS = ("PaddleClas's FLOPs column is not MACs: it fits 2 x (dense conv and FC MACs + grouped conv MACs / "
                    "groups) + 2 per BatchNorm output (B0: 0.717 G against its 0.72 G)")


def _paddle_layout(accepts: str | None) -> CheckpointLayout:
    """PaddleClas EfficientNet `.pdparams`; `accepts`: the PaddleClas model this recipe takes (None: refuse all).
    Its weights carry PaddleClas's evaluation transform. PaddleClas's EfficientNetB0..B7 pad from a table fixed for
    the native size (the SAME padding there equals timm's tf_ models, 2.8e-5 of the logit range), so another size
    computes another model; B0_small pads symmetrically and takes any size."""
    if accepts is None:
        return CheckpointLayout(name="PaddleClas .pdparams", detect=_is_paddle_efficientnet,
                                convert=partial(_convert_paddle, accepts=accepts), suffix=".pdparams",
                                num_classes=pdparams_num_classes)
    fixed = None if accepts == "EfficientNetB0_small" else (
        f"PaddleClas's {accepts} computes its SAME padding from a table fixed for its native "
        f"{PADDLECLAS_EVAL[accepts].crop} px input, so at another size its weights describe another model")
    return CheckpointLayout(name="PaddleClas .pdparams", detect=_is_paddle_efficientnet,
                            convert=partial(_convert_paddle, accepts=accepts), suffix=".pdparams",
                            preprocess=PADDLECLAS_EVAL[accepts].preprocess(accepts), native_size_only=fixed,
                            note=PADDLECLAS_FLOPS, num_classes=pdparams_num_classes)


for _n, _size in SIZES.items():
    register_timm(f"efficientnet_b{_n}", f"efficientnet_b{_n}", family="efficientnet", size=_size,
                  rewrites=GENERIC_REWRITES, paper=PAPER, heavy=_n >= HEAVY_FROM,
                  layouts=(_layout(f"tf_efficientnet_b{_n}"), _paddle_layout(None)),
                  int8_keep_float=(STEM_INT8, FIRST_BLOCK_INT8))
    register_timm(f"tf_efficientnet_b{_n}", f"tf_efficientnet_b{_n}", family="efficientnet", size=_size,
                  rewrites=GENERIC_REWRITES, paper=PAPER, heavy=_n >= HEAVY_FROM,
                  layouts=(_layout(), _paddle_layout(f"EfficientNetB{_n}")),
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
    layouts=(_layout(), _paddle_layout("EfficientNetB0_small")),
    pretrained_available=False,
    notes="EfficientNet-B0 without squeeze-excitation, symmetric padding, BatchNorm eps 1e-3 (PaddleClas)",
))
