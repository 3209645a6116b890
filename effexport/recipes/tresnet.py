"""TResNet (Ridnik et al., "TResNet: High Performance GPU-Dedicated Architecture", WACV 2021, arXiv 2003.13630).

Rewrites:
- space_to_depth_op: the stem's SpaceToDepth (view/permute/view, block 4) exports as Shape/Gather/Reshape/
  Transpose arithmetic; its element order is exactly ONNX's SpaceToDepth operator, so it becomes that one
  node (supported by ONNX Runtime, OpenVINO and TensorRT). It is a torch custom op (`effexport::space_to_depth`)
  inside an autograd.Function: the TorchScript exporter uses the Function's `symbolic`, the torch.export-based one
  the op's registered translation (effexport.exporter.onnx.register_translation).
- iabn_to_bn + fold_batchnorm: checkpoints trained with inplace-ABN fold like BatchNorm.
Checkpoints: timm's layout, and the original repository's (`body.conv1.0.weight`, InPlaceABN weights stored
raw: the BN weight is |w| + 1e-5), converted by timm's own TResNet filter.
"""

from __future__ import annotations

import torch
from torch import nn

from effexport.exporter.onnx import register_translation
from effexport.exporter.rewrite import GENERIC_REWRITES, modules_of, set_submodule
from effexport.recipes import CheckpointLayout
from effexport.recipes._timm import register_timm

PAPER = "TResNet, WACV 2021 (arXiv 2003.13630)"

VARIANTS = {  # recipe name: (timm name, input size, pretrained tag, too large for the default test run)
    "tresnet_m": ("tresnet_m", 224, "miil_in1k", False),
    "tresnet_l": ("tresnet_l", 224, "miil_in1k", False),
    "tresnet_xl": ("tresnet_xl", 224, "miil_in1k", True),
    "tresnet_m_448": ("tresnet_m", 448, "miil_in1k_448", True),
    "tresnet_l_448": ("tresnet_l", 448, "miil_in1k_448", True),
    "tresnet_xl_448": ("tresnet_xl", 448, "miil_in1k_448", True),
}


@torch.library.custom_op("effexport::space_to_depth", mutates_args=())
def space_to_depth(x: torch.Tensor, block: int) -> torch.Tensor:
    """timm's SpaceToDepth element order, which is ONNX's SpaceToDepth (DCR is DepthToSpace's mode only)."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, c * block * block, h // block, w // block)


@space_to_depth.register_fake
def _space_to_depth_shape(x: torch.Tensor, block: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.new_empty((n, c * block * block, h // block, w // block))


def _space_to_depth_onnx(x, block: int):
    from onnxscript import opset18

    return opset18.SpaceToDepth(x, blocksize=block)


# torch.export keeps the custom op as one node (it ignores autograd.Function.symbolic); this is its ONNX form.
register_translation(torch.ops.effexport.space_to_depth.default, _space_to_depth_onnx)


class _SpaceToDepthFn(torch.autograd.Function):
    """The TorchScript exporter's hook: `symbolic` replaces the traced op by the one ONNX node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: int) -> torch.Tensor:
        return space_to_depth(x, block)

    @staticmethod
    def symbolic(g, x, block: int):
        return g.op("SpaceToDepth", x, blocksize_i=block)


class SpaceToDepthOp(nn.Module):
    """SpaceToDepth that exports as the single ONNX operator of the same name."""

    def __init__(self, block: int = 4):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SpaceToDepthFn.apply(x, self.block)


def space_to_depth_op(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Replace the view/permute/view SpaceToDepth with the one-node ONNX SpaceToDepth."""
    for name, module in list(modules_of(model, {"SpaceToDepth", "SpaceToDepthModule"})):
        set_submodule(model, name, SpaceToDepthOp(getattr(module, "bs", 4)))
    return model


def _convert_upstream(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.tresnet import checkpoint_filter_fn

    # The blur filters of the anti-aliasing layers are fixed buffers (only saved with remove_aa_jit).
    sd = {k: v for k, v in sd.items() if not k.endswith(".filt")}
    return checkpoint_filter_fn(sd, model)


UPSTREAM = CheckpointLayout(
    name="TResNet original repository (inplace-ABN)",
    detect=lambda sd: "body.conv1.0.weight" in sd,
    convert=_convert_upstream,
)

for _name, (_timm_name, _size, _tag, _heavy) in VARIANTS.items():
    register_timm(
        _name,
        _timm_name,
        family="tresnet",
        size=_size,
        rewrites=(space_to_depth_op, *GENERIC_REWRITES),
        paper=PAPER,
        pretrained_tag=_tag,
        layouts=(UPSTREAM,),
        aliases=(f"{_timm_name}.{_tag}",),
        heavy=_heavy,
        timm_alias=_size == 224,
    )
