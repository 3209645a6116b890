"""ResNeXt-101 32xNd trained weakly supervised on Instagram hashtags (Mahajan et al., ECCV 2018,
arXiv 1805.00932), and the FixRes 32x48d fine-tuned at 320 (Touvron et al., NeurIPS 2019, arXiv 1906.06423).

Plain ResNeXt: only the generic rewrites (BN folding). The 32x48d has no timm entry point and is built from
timm's ResNet class with the published configuration (layers 3-4-23-3, cardinality 32, base width 48). Its
829M parameters (3.3 GB in FP32) export with ONNX external data. Original checkpoints (torch hub, FixRes)
use torchvision's key names, which timm's ResNet shares; FixRes's `model`/`module.` wrapping is unwrapped.
PaddleClas `.pdparams` (`ResNeXt101_32x{8,16,32,48}d_wsl`, `Fix_ResNeXt101_32x48d_wsl`) convert by name (see
_paddle_name); the file's width is told by its first block, so 32x16d weights given to the 32x8d recipe are refused
naming their recipe. The 32x48d and its FixRes fine-tune have the same shapes: the file cannot tell them apart.
"""

from __future__ import annotations

import re
from functools import partial

from torch import nn

from effexport.errors import CheckpointError, UsageError
from effexport.exporter.pdparams import BN_PARAMS, PADDLECLAS_EVAL, convert_named, pdparams_num_classes
from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import CheckpointLayout, Recipe, register
from effexport.recipes._timm import register_timm, timm_preprocess

PAPER = "Exploring the Limits of Weakly Supervised Pretraining, ECCV 2018 (arXiv 1805.00932)"
FIX_PAPER = "FixRes: Fixing the train-test resolution discrepancy, NeurIPS 2019 (arXiv 1906.06423)"

VARIANTS = {  # recipe name: (timm name, too large for the default test run)
    "resnext101_32x8d_wsl": ("resnext101_32x8d", False),
    "resnext101_32x16d_wsl": ("resnext101_32x16d", True),
    "resnext101_32x32d_wsl": ("resnext101_32x32d", True),
}

# PaddleClas (ppcls/arch/backbone/model_zoo/resnext101_wsl.py): `_conv_stem`, then blocks `_conv{stage}_{i}` of
# ConvBNLayers `_conv0.._conv2` (Conv2D `_conv` + BatchNorm `_bn`) and the shortcut `_short._conv`; the classifier
# `_out` is a Linear stored [in, out]. Its first block's width (cardinality x width) names the variant.
PADDLE_WIDTHS = {256: "ResNeXt101_32x8d_wsl", 512: "ResNeXt101_32x16d_wsl", 1024: "ResNeXt101_32x32d_wsl",
                 1536: "ResNeXt101_32x48d_wsl"}
PADDLE_RECIPES = {"ResNeXt101_32x8d_wsl": "resnext101_32x8d_wsl", "ResNeXt101_32x16d_wsl": "resnext101_32x16d_wsl",
                  "ResNeXt101_32x32d_wsl": "resnext101_32x32d_wsl",
                  "ResNeXt101_32x48d_wsl": "resnext101_32x48d_wsl (or fix_resnext101_32x48d_wsl for the FixRes one)"}
PADDLE_FIRST = "_conv1_0._conv0._conv.weight"
_LAYER = re.compile(r"layer(\d)\.(\d+)\.(?:(conv|bn)(\d)|downsample\.([01]))\.(\w+)")


def _paddle_name(key: str) -> str:
    """Our (torchvision / timm) key -> PaddleClas's structured name."""
    owner, _, param = key.rpartition(".")
    if owner in ("conv1", "bn1"):
        return f"_conv_stem.{'_conv.' + param if owner == 'conv1' else '_bn.' + BN_PARAMS[param]}"
    if owner == "fc":
        return f"_out.{param}"
    stage, block, kind, index, shortcut, param = _LAYER.fullmatch(key).groups()
    unit = f"_conv{stage}_{block}." + ("_short._conv" if shortcut else f"_conv{int(index) - 1}")
    is_conv = kind == "conv" or shortcut == "0"
    return f"{unit}.{'_conv.' + param if is_conv else '_bn.' + BN_PARAMS[param]}"


def _is_paddle_resnext(sd) -> bool:
    return "_conv_stem._conv.weight" in sd and PADDLE_FIRST in sd


def _convert_paddle(sd, model: nn.Module) -> dict:
    width = sd[PADDLE_FIRST].shape[0]
    found = PADDLE_WIDTHS.get(width, f"a ResNeXt of first-block width {width}")
    wanted = PADDLE_WIDTHS.get(model.layer1[0].conv1.out_channels)
    if found != wanted:
        use = f": use recipe {PADDLE_RECIPES[found]}" if found in PADDLE_RECIPES else ""
        raise CheckpointError(f"the weights are PaddleClas {found}; this recipe takes PaddleClas {wanted}{use}")
    names = {k: _paddle_name(k) for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    return convert_named(sd, model, names, transposed=("fc.weight",), what=f"PaddleClas {found}")


def _paddle_layout(model: str) -> CheckpointLayout:
    """PaddleClas ResNeXt `.pdparams`, whose weights carry PaddleClas's evaluation transform for `model`."""
    return CheckpointLayout(name="PaddleClas .pdparams", detect=_is_paddle_resnext, convert=_convert_paddle,
                            suffix=".pdparams", preprocess=PADDLECLAS_EVAL[model].preprocess(model),
                            num_classes=pdparams_num_classes,
                            note="PaddleClas's FLOPs column is not MACs: it fits 2 x (dense conv and FC MACs + grouped "
                                 "conv MACs / groups) (32x8d: 29.13 G against its 29.14 G)")


PADDLE_MODELS = {recipe.split(" ")[0]: model for model, recipe in PADDLE_RECIPES.items()}
PADDLE_MODELS["fix_resnext101_32x48d_wsl"] = "Fix_ResNeXt101_32x48d_wsl"

for _name, (_timm_name, _heavy) in VARIANTS.items():
    register_timm(_name, _timm_name, family="resnext-wsl", size=224, rewrites=GENERIC_REWRITES, paper=PAPER,
                  pretrained_tag="fb_wsl_ig1b_ft_in1k", aliases=(f"{_timm_name}.fb_wsl_ig1b_ft_in1k",),
                  heavy=_heavy, timm_alias=False, layouts=(_paddle_layout(PADDLE_MODELS[_name]),))


def build_resnext101_32x48d(pretrained: bool, num_classes: int | None = None):
    """timm's ResNet with the 32x48d configuration; timm ships no weights for it."""
    if pretrained:
        raise UsageError("timm has no pretrained weights for ResNeXt-101 32x48d: pass --weights PATH "
                         "(the WSL or FixRes checkpoint)")
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(block=Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=48,
                  num_classes=1000 if num_classes is None else num_classes).eval()


for _name, _size, _paper in (("resnext101_32x48d_wsl", 224, PAPER), ("fix_resnext101_32x48d_wsl", 320, FIX_PAPER)):
    register(Recipe(
        name=_name,
        family="resnext-wsl",
        build=partial(build_resnext101_32x48d),
        preprocess=timm_preprocess("resnext101_32x32d", _size, "fb_wsl_ig1b_ft_in1k"),
        rewrites=GENERIC_REWRITES,
        source="timm ResNet(Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=48)",
        paper=_paper,
        pretrained_available=False,
        layouts=(_paddle_layout(PADDLE_MODELS[_name]),),
        heavy=True,
        notes="over 2 GB of weights: the ONNX model stores them as external data (model.onnx.data)",
    ))
