"""Padding-free downsampling and the hybrid stem ("Lightweight Deep Neural Network Model With Padding-free
Downsampling"; code: xiaohe725/Padding-free-Downsampling-And-Hybrid-Stem) on MobileNetV3-large (arXiv 1905.02244),
GhostNet (arXiv 1911.11907) and ShuffleNetV2 1.0x (arXiv 1807.11164), each in an ImageNet form (224, 1000 classes)
and a CIFAR form (32, 100 classes), next to the unmodified baselines built the same way, so `effexport info` shows
the change like for like. The ImageNet baselines of MobileNetV3 and GhostNet are timm's (`mobilenetv3_large`,
`ghostnet` in mobile.py); ShuffleNetV2's is torchvision's.

The modules, applied to the library's own models (torchvision's MobileNetV3 and ShuffleNetV2, the layout of the
paper's code; timm's GhostNet, the layout of the original GhostNet code):
- padding-free downsampling: every stride-2 depthwise convolution loses its padding (kernel 3: 0, kernel 5: 1),
  and a max-pool of its input with the same kernel, stride and padding is added to the branch's output, where the
  paper's code adds it: after the activation (MobileNetV3), after the BatchNorm (GhostNet), straight after the
  convolution (ShuffleNetV2, where the BatchNorm then normalises the sum and folds into a per-channel Mul/Add).
  GhostNet's stride-2 depthwise shortcut loses its padding too, without a pool, as in the paper's code.
  Both export as plain Conv and MaxPool nodes (the pool's padding is an attribute): no Pad node.
- hybrid stem: a 3x3 convolution, then a depthwise 3x3 convolution of its output concatenated with a 3x3 max-pool
  of it, fused by a 1x1 convolution. ShuffleNetV2's stem also replaces its max-pool, so at ImageNet size both
  branches stride 2, as in the paper's code.
CIFAR forms (the paper's code): the stem and the first stride-2 stage keep the resolution (ShuffleNetV2: the stem
convolution and its max-pool), so a 32x32 image is downsampled 8x.
Rewrites: the generic ones (BatchNorm folding).
Checkpoints: the library layouts, and the paper's code (`*_ours.py`: `StemBlock`, `ConvBNActivation` with
conv/norm/activate, `depthwise_conv` with dwconv), which registers the same layers in the same order. Its GhostNet
keeps a `bn1` that its forward never runs; those entries are dropped.
Known difference: the paper's `mobilenet_v3_ours.py` picks a 5x5 pool for kernel-5 convolutions and then overwrites
it with a 3x3 unpadded one (`self.max` is assigned twice); the output sizes agree, so checkpoints trained with that
file saw 3x3 pools there. These recipes follow the paper's definition (same kernel as the convolution), and a
checkpoint in that file's layout gets the 3x3 pools it was trained with, so the export computes what was trained.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn

from effexport.errors import ExportError
from effexport.exporter.checkpoint import map_by_order
from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import CheckpointLayout, Preprocess, Recipe, register

PAPER = "Lightweight Deep Neural Network Model With Padding-free Downsampling (xiaohe725/Padding-free-Downsampling-" \
        "And-Hybrid-Stem)"
IMAGENET = Preprocess((224, 224), crop_pct=0.875, interpolation="bilinear")
CIFAR100 = Preprocess((32, 32), crop_pct=1.0, interpolation="bilinear", mean=(0.5071, 0.4865, 0.4409),
                      std=(0.2673, 0.2564, 0.2762))

# GhostNet 1.0x stages (kernel, expansion, channels, SE ratio, stride), as in the original GhostNet code.
GHOSTNET_CFGS = [
    [[3, 16, 16, 0, 1]],
    [[3, 48, 24, 0, 2]],
    [[3, 72, 24, 0, 1]],
    [[5, 72, 40, 0.25, 2]],
    [[5, 120, 40, 0.25, 1]],
    [[3, 240, 80, 0, 2]],
    [[3, 200, 80, 0, 1], [3, 184, 80, 0, 1], [3, 184, 80, 0, 1], [3, 480, 112, 0.25, 1], [3, 672, 112, 0.25, 1]],
    [[5, 672, 160, 0.25, 2]],
    [[5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1], [5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1]],
]


# ---------------------------------------------------------------------------------------------- the two modules


class PaddingFreeDown(nn.Module):
    """A stride-2 branch whose depthwise convolution lost its padding, plus a max-pool of the branch's input with
    the convolution's kernel, stride and padding: the pool carries what the unpadded border no longer sees."""

    def __init__(self, body: nn.Module, kernel: int, stride: int, padding: int):
        super().__init__()
        self.body = body
        self.pool = nn.MaxPool2d(kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.pool(x)


def _is_strided_depthwise(module: nn.Module | None) -> bool:
    return (isinstance(module, nn.Conv2d) and module.stride == (2, 2) and module.groups == module.in_channels > 1
            and module.kernel_size[0] in (3, 5))


def drop_padding(conv: nn.Conv2d) -> int:
    """Unpad a stride-2 depthwise convolution the paper's way (kernel 3: padding 0, kernel 5: 1)."""
    if not _is_strided_depthwise(conv):
        raise ExportError(f"padding-free downsampling expects a stride-2 3x3/5x5 depthwise convolution, got {conv}")
    padding = (conv.kernel_size[0] - 3) // 2
    conv.padding = (padding, padding)
    return padding


def padding_free(body: nn.Module, conv: nn.Conv2d) -> PaddingFreeDown:
    """`body` (which starts with `conv`) with `conv` unpadded and the max-pool branch added."""
    padding = drop_padding(conv)
    return PaddingFreeDown(body, conv.kernel_size[0], conv.stride[0], padding)


def _conv_bn_act(in_chs: int, out_chs: int, kernel: int, stride: int, act: type[nn.Module],
                 groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_chs), act())


class HybridStem(nn.Module):
    """3x3 conv, then [depthwise 3x3 conv | 3x3 max-pool] of its output concatenated and fused by a 1x1 conv."""

    def __init__(self, in_chs: int, chs: int, act: type[nn.Module], stride: int, branch_stride: int = 1):
        super().__init__()
        self.conv = _conv_bn_act(in_chs, chs, 3, stride, act)
        self.conv_dw = _conv_bn_act(chs, chs, 3, branch_stride, act, groups=chs)
        self.pool = nn.MaxPool2d(3, branch_stride, 1)
        self.fuse = _conv_bn_act(2 * chs, chs, 1, 1, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat((self.conv_dw(x), self.pool(x)), 1))


def _expect(count: int, expected: int, what: str) -> None:
    # The modules are applied to library models by structure: a library change must fail here, not export a
    # network that silently lacks them.
    if count != expected:
        raise ExportError(f"{what}: found {count} stride-2 depthwise convolutions, expected {expected}; the library "
                          f"model changed, this recipe needs updating")


# ---------------------------------------------------------------------------------------------- the three networks


def mobilenetv3_large(pfd: bool, cifar: bool, num_classes: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_large

    model = mobilenet_v3_large(num_classes=num_classes)
    features = model.features
    if cifar:
        features[0][0].stride = (1, 1)
        features[2].block[1][0].stride = (1, 1)  # the 16 -> 24 block keeps the resolution
    if pfd:
        features[0] = HybridStem(3, features[0][0].out_channels, nn.Hardswish, stride=features[0][0].stride[0])
        count = 0
        for block in features[1:-1]:
            for i, layer in enumerate(block.block):
                if isinstance(layer, nn.Sequential) and _is_strided_depthwise(layer[0]):
                    block.block[i] = padding_free(layer, layer[0])
                    count += 1
        _expect(count, 3 if cifar else 4, "MobileNetV3-large")
    return model.eval()


def ghostnet(pfd: bool, cifar: bool, num_classes: int) -> nn.Module:
    from timm.models.ghostnet import GhostBottleneck, GhostNet

    cfgs = copy.deepcopy(GHOSTNET_CFGS)
    if cifar:
        cfgs[1][0][4] = 1  # the 16 -> 24 stage keeps the resolution
    model = GhostNet(cfgs, num_classes=num_classes)
    if cifar:
        model.conv_stem.stride = (1, 1)
    if pfd:
        model.conv_stem = HybridStem(3, model.conv_stem.out_channels, nn.ReLU, stride=model.conv_stem.stride[0])
        model.bn1, model.act1 = nn.Identity(), nn.Identity()  # the stem ends in its own BatchNorm and ReLU
        count = 0
        for block in model.modules():
            if isinstance(block, GhostBottleneck) and block.conv_dw is not None:
                block.conv_dw = padding_free(nn.Sequential(block.conv_dw, block.bn_dw), block.conv_dw)
                block.bn_dw = nn.Identity()
                drop_padding(block.shortcut[0])  # keeps the shortcut's size equal to the main path's
                count += 1
        _expect(count, 3 if cifar else 4, "GhostNet")
    return model.eval()


def shufflenetv2(pfd: bool, cifar: bool, num_classes: int) -> nn.Module:
    from torchvision.models import shufflenet_v2_x1_0

    model = shufflenet_v2_x1_0(num_classes=num_classes)
    if cifar:
        model.conv1[0].stride = (1, 1)
        model.maxpool.stride = 1
    if pfd:
        stride = 1 if cifar else 2
        model.conv1 = HybridStem(3, model.conv1[0].out_channels, nn.ReLU, stride=stride, branch_stride=stride)
        model.maxpool = nn.Identity()  # the stem's pool branch replaces it
        count = 0
        for stage in (model.stage2, model.stage3, model.stage4):
            for block in stage:
                for branch, index in ((block.branch1, 0), (block.branch2, 3)):
                    if len(branch) > index and _is_strided_depthwise(branch[index]):
                        branch[index] = padding_free(branch[index], branch[index])
                        count += 1
        _expect(count, 6, "ShuffleNetV2")
    return model.eval()


BUILDERS = {"mobilenetv3": mobilenetv3_large, "ghostnet": ghostnet, "shufflenetv2": shufflenetv2}


def build(net: str, pfd: bool, cifar: bool, pretrained: bool, num_classes: int | None = None) -> nn.Module:
    """No weights are published for these forms (`pretrained` is refused before this is called)."""
    return BUILDERS[net](pfd, cifar, default_classes(cifar) if num_classes is None else num_classes)


def default_classes(cifar: bool) -> int:
    return 100 if cifar else 1000

VARIANTS = {  # recipe name: (network, padding-free modules, CIFAR form)
    "mobilenetv3_large_pfd": ("mobilenetv3", True, False),
    "mobilenetv3_large_cifar": ("mobilenetv3", False, True),
    "mobilenetv3_large_pfd_cifar": ("mobilenetv3", True, True),
    "ghostnet_pfd": ("ghostnet", True, False),
    "ghostnet_cifar": ("ghostnet", False, True),
    "ghostnet_pfd_cifar": ("ghostnet", True, True),
    "shufflenetv2": ("shufflenetv2", False, False),
    "shufflenetv2_pfd": ("shufflenetv2", True, False),
    "shufflenetv2_cifar": ("shufflenetv2", False, True),
    "shufflenetv2_pfd_cifar": ("shufflenetv2", True, True),
}

SOURCES = {"mobilenetv3": "torchvision mobilenet_v3_large", "ghostnet": "timm GhostNet (ghostnet_100 stages)",
           "shufflenetv2": "torchvision shufflenet_v2_x1_0"}
PAPERS = {"mobilenetv3": "MobileNetV3, ICCV 2019 (arXiv 1905.02244)", "ghostnet": "GhostNet, CVPR 2020 (arXiv "
          "1911.11907)", "shufflenetv2": "ShuffleNet V2, ECCV 2018 (arXiv 1807.11164)"}


# ---------------------------------------------------------------------------------------------- checkpoint layouts


def _convert_mobilenetv3(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    # mobilenet_v3_ours.py overwrites its kernel-5 blocks' 5x5 pool (padding 1) with a 3x3 unpadded one: same
    # output size, other values. Its checkpoints were trained with that pool, so the model gets it too.
    for module in model.modules():
        if isinstance(module, PaddingFreeDown) and module.pool.kernel_size == 5:
            module.pool = nn.MaxPool2d(3, module.pool.stride, 0)
    return map_by_order(sd, model)


def _convert_ghostnet(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    # The paper's GhostNet registers bn1 after its StemBlock but never runs it.
    return map_by_order({k: v for k, v in sd.items() if not k.startswith("bn1.")}, model)


UPSTREAM = {
    "mobilenetv3": CheckpointLayout(
        name="padding-free paper code (mobilenet_v3_ours.py; its 3x3 pools in the kernel-5 blocks kept)",
        detect=lambda sd: any(k.startswith("features.0.stem_1.") for k in sd),
        convert=_convert_mobilenetv3),
    "ghostnet": CheckpointLayout(
        name="padding-free paper code (ghostnet_ours.py)",
        detect=lambda sd: any(k.startswith("conv_stem.stem_1.") for k in sd) and "conv_head.weight" in sd,
        convert=_convert_ghostnet),
    "shufflenetv2": CheckpointLayout(
        name="padding-free paper code (shufflenet_v2_ours.py)",
        detect=lambda sd: any(k.startswith("conv_stem.stem_1.") for k in sd) and "conv5.0.weight" in sd,
        convert=map_by_order),
}

for _name, (_net, _pfd, _cifar) in VARIANTS.items():
    _form = "CIFAR-100 form (32x32, 100 classes; stem and first stride-2 stage keep the resolution)" if _cifar \
        else "ImageNet form (224x224, 1000 classes)"
    register(Recipe(
        name=_name,
        family=f"{_net}-pfd" if _pfd else _net,
        build=partial(build, _net, _pfd, _cifar),
        preprocess=CIFAR100 if _cifar else IMAGENET,
        rewrites=GENERIC_REWRITES,
        source=SOURCES[_net] + (" with padding-free downsampling and the hybrid stem" if _pfd else ""),
        paper=PAPER if _pfd or _cifar else PAPERS[_net],
        aliases=("shufflenet_v2_x1_0",) if _name == "shufflenetv2" else (),
        layouts=(UPSTREAM[_net],) if _pfd else (),
        pretrained_available=False,
        notes=_form + ("" if _pfd else "; the unmodified baseline"),
        num_classes=default_classes(_cifar),
    ))
