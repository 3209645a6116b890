"""PaddlePaddle `.pdparams` files written without Paddle, as `paddle.save(layer.state_dict(), path)` writes them.

paddle.save (python/paddle/framework/io.py) turns each tensor into a numpy array, appends the
`StructuredToParameterName@@` table, then, under pickle protocols 2 and 3, flattens every array of more than
(2^30 - 1) / itemsize elements into `name@@.i` parts listed in `UnpackBigParamInfor@@`, and pickles the dict.

The Paddle-named dicts are built by walking timm models the way PaddleClas's model code nests its layers (its
`ppcls/arch/backbone/model_zoo/efficientnet.py` and `resnext101_wsl.py`), independently of effexport's converters,
with the parameter names its ParamAttr calls give.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
from torch import nn

NAME_TABLE = "StructuredToParameterName@@"
SPLIT_TABLE = "UnpackBigParamInfor@@"


def write_pdparams(path: Path, params: dict[str, np.ndarray], names: dict[str, str] | None = None, *,
                   protocol: int = 4, split_over: int | None = None) -> Path:
    """Write `params` as paddle.save does. `split_over`: the element count above which an array is cut (Paddle's
    (2^30 - 1) // itemsize under protocols 2 and 3, never under 4); given, it applies under any protocol."""
    saved = {k: np.ascontiguousarray(v) for k, v in params.items()}
    saved[NAME_TABLE] = dict(names if names is not None else {k: k for k in params})
    info = {}
    for key, value in list(saved.items()):
        if not isinstance(value, np.ndarray):
            continue
        limit = split_over if split_over is not None else (
            (2**30 - 1) // value.dtype.itemsize if 1 < protocol < 4 else None)
        if limit is None or value.size <= limit:
            continue
        flat = value.reshape(-1)
        parts = [f"{key}@@.{i}" for i in range(math.ceil(value.size / limit))]
        info[key] = {"OriginShape": value.shape, "slices": parts}
        del saved[key]
        for i, part in enumerate(parts):
            saved[part] = flat[i * limit:(i + 1) * limit]
    if info:
        saved[SPLIT_TABLE] = info
    with open(path, "wb") as f:
        pickle.dump(saved, f, protocol=protocol)
    return path


class _Named:
    """Collects Paddle's structured name -> array and structured name -> parameter name."""

    def __init__(self, tensors: bool):
        self.tensors = tensors  # keep torch tensors (meta ones included) instead of numpy arrays
        self.params: dict[str, np.ndarray] = {}
        self.names: dict[str, str] = {}

    def put(self, key: str, tensor, name: str, transpose: bool = False) -> None:
        tensor = tensor.detach()
        if self.tensors:
            self.params[key] = tensor.t() if transpose else tensor
        else:
            value = tensor.cpu().numpy()
            self.params[key] = np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
        self.names[key] = name

    def conv(self, key: str, conv: nn.Conv2d, name: str, weight: str = "_weights", bias: str = "_offset") -> None:
        self.put(f"{key}.weight", conv.weight, name + weight)
        if conv.bias is not None:
            self.put(f"{key}.bias", conv.bias, name + bias)

    def bn(self, key: str, bn: nn.BatchNorm2d, name: str, suffixes=("_scale", "_offset", "_mean", "_variance")) -> None:
        for ours, theirs, suffix in zip(("weight", "bias", "running_mean", "running_var"),
                                        ("weight", "bias", "_mean", "_variance"), suffixes, strict=True):
            self.put(f"{key}.{theirs}", getattr(bn, ours), name + suffix)


def efficientnet_to_paddle(model: nn.Module, tensors: bool = False) -> tuple[dict, dict[str, str]]:
    """A timm EfficientNet as PaddleClas's EfficientNet state dict: EfficientNet(_ef = ExtractFeatures(_conv_stem,
    blocks added as "_blocks.{i}." / "block.{i}."), _conv, _fc); a ConvBNLayer is Conv2ds `_conv` (Conv2D `_conv`)
    + BatchNorm `_bn`; MbConvBlock has _ecn (expand), _dcn (depthwise), _se (_conv1, _conv2), _pcn (project)."""
    out = _Named(tensors)
    out.conv("_ef._conv_stem._conv._conv._conv", model.conv_stem, "_conv_stem")
    out.bn("_ef._conv_stem._conv._bn", model.bn1, "_bn0")
    index = 0
    for stage in model.blocks:
        for j, block in enumerate(stage):
            key, name = f"_ef.{'_blocks' if j == 0 else 'block'}.{index}..", f"_blocks.{index}."
            if hasattr(block, "conv_pwl"):  # expansion block
                out.conv(f"{key}_ecn._conv._conv._conv", block.conv_pw, name + "_expand_conv")
                out.bn(f"{key}_ecn._conv._bn", block.bn1, name + "_bn0")
                depthwise, depthwise_bn, project, project_bn = block.conv_dw, block.bn2, block.conv_pwl, block.bn3
            else:  # the first block, expansion ratio 1
                depthwise, depthwise_bn, project, project_bn = block.conv_dw, block.bn1, block.conv_pw, block.bn2
            out.conv(f"{key}_dcn._conv._conv._conv", depthwise, name + "_depthwise_conv")
            out.bn(f"{key}_dcn._conv._bn", depthwise_bn, name + "_bn1")
            if hasattr(block.se, "conv_reduce"):
                out.conv(f"{key}_se._conv1._conv", block.se.conv_reduce, name + "_se_reduce")
                out.conv(f"{key}_se._conv2._conv", block.se.conv_expand, name + "_se_expand")
            out.conv(f"{key}_pcn._conv._conv._conv", project, name + "_project_conv")
            out.bn(f"{key}_pcn._conv._bn", project_bn, name + "_bn2")
            index += 1
    out.conv("_conv._conv._conv", model.conv_head, "_conv_head")
    out.bn("_conv._bn", model.bn2, "_bn1")
    out.put("_fc.weight", model.classifier.weight, "_fc_weights", transpose=True)
    out.put("_fc.bias", model.classifier.bias, "_fc_offset")
    return out.params, out.names


def resnext_to_paddle(model: nn.Module, tensors: bool = False) -> tuple[dict, dict[str, str]]:
    """A timm ResNeXt-101 as PaddleClas's ResNeXt101WSL state dict: _conv_stem, BottleneckBlocks `_conv{s}_{i}`
    of ConvBNLayers _conv0.._conv2 and `_short._conv` (Conv2D `_conv` + BatchNorm `_bn`), Linear `_out`; its
    parameter names are torchvision's (`layer1.0.conv1.weight`, `layer1.0.downsample.1.running_mean`).
    `tensors`: torch tensors instead of numpy arrays (works on the meta device)."""
    out = _Named(tensors)
    bn_names = (".weight", ".bias", ".running_mean", ".running_var")
    out.conv("_conv_stem._conv", model.conv1, "conv1", weight=".weight")
    out.bn("_conv_stem._bn", model.bn1, "bn1", bn_names)
    for s in range(1, 5):
        for i, block in enumerate(getattr(model, f"layer{s}")):
            key, name = f"_conv{s}_{i}.", f"layer{s}.{i}."
            for j in range(3):
                out.conv(f"{key}_conv{j}._conv", getattr(block, f"conv{j + 1}"), f"{name}conv{j + 1}", ".weight")
                out.bn(f"{key}_conv{j}._bn", getattr(block, f"bn{j + 1}"), f"{name}bn{j + 1}", bn_names)
            if block.downsample is not None:
                out.conv(f"{key}_short._conv._conv", block.downsample[0], f"{name}downsample.0", ".weight")
                out.bn(f"{key}_short._conv._bn", block.downsample[1], f"{name}downsample.1", bn_names)
    out.put("_out.weight", model.fc.weight, "fc.weight", transpose=True)
    out.put("_out.bias", model.fc.bias, "fc.bias")
    return out.params, out.names
