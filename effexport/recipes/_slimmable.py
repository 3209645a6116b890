"""Universally slimmable MobileNetV1/V2 (US-Nets, Yu & Huang, ICCV 2019; MutualNet, Yang et al., ECCV 2020) and
the step that makes one width of them a static network: sliced plain layers with re-estimated BatchNorm statistics.

The slimmable layers hold the full-width weights; a layer's width is set by `set_width` and its channel count at
width w is `make_divisible(channels * w / ratio, 8) * ratio`, the rule of both original codes (an early MutualNet
commit rounded to whole channels; its published query tables match multiples of 8 at every point, so the released
models use 8). Modules are registered under the names of the original code (`features.N.body.M`, `classifier.0`),
so its checkpoints load by name once their per-width BatchNorm statistics (`bn.N`, kept only for the widths
trained) are set aside: every exported width gets statistics re-estimated at its own resolution, as the original
code does before evaluating any width.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from effexport.errors import UsageError


def slim_channels(channels: int, width: float, ratio: int = 1) -> int:
    """The channel count at `width` of a slimmable layer with `channels` at full width."""
    from timm.layers import make_divisible  # the TF-slim rounding rule the original code uses

    # Same operation order as the original code (channels * w / ratio), so float rounding agrees too.
    return int(make_divisible(channels * width / ratio, 8, min_value=1)) * ratio


class _Slimmable:
    """Mixin state: the width that picks a slice of the full-width parameters."""

    width: float = 1.0


class USConv2d(nn.Conv2d, _Slimmable):
    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, padding: int, *,
                 depthwise: bool = False, slim_in: bool = True, slim_out: bool = True,
                 ratio: tuple[int, int] = (1, 1)):
        super().__init__(in_chs, out_chs, kernel, stride, padding, groups=in_chs if depthwise else 1, bias=False)
        self.depthwise, self.slim, self.ratio = depthwise, (slim_in, slim_out), ratio

    def channels(self) -> tuple[int, int]:
        c_in = slim_channels(self.in_channels, self.width, self.ratio[0]) if self.slim[0] else self.in_channels
        c_out = slim_channels(self.out_channels, self.width, self.ratio[1]) if self.slim[1] else self.out_channels
        return c_in, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in, c_out = self.channels()
        return F.conv2d(x, self.weight[:c_out, :c_in], None, self.stride, self.padding, self.dilation,
                        c_in if self.depthwise else 1)


class USBatchNorm2d(nn.BatchNorm2d, _Slimmable):
    """Full-width affine parameters and running statistics; a width uses their first channels."""

    def __init__(self, channels: int, ratio: int = 1):
        super().__init__(channels)
        self.ratio = ratio

    def channels(self) -> int:
        return slim_channels(self.num_features, self.width, self.ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels()
        factor = 0.0
        if self.training:
            self.num_batches_tracked += 1
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # The slices are views: updating them in training mode updates the full-width buffers in place.
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, factor, self.eps)


class USLinear(nn.Linear, _Slimmable):
    """A classifier whose input width follows the network's (its output, the classes, never slims)."""

    def channels(self) -> int:
        return slim_channels(self.in_features, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, :self.channels()], self.bias)


SLIMMABLE = (USConv2d, USBatchNorm2d, USLinear)


# ---------------------------------------------------------------------------------------------- the networks


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            USConv2d(in_chs, in_chs, 3, stride, 1, depthwise=True), USBatchNorm2d(in_chs),
            nn.ReLU6(inplace=True),
            USConv2d(in_chs, out_chs, 1, 1, 0), USBatchNorm2d(out_chs), nn.ReLU6(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expand: int):
        super().__init__()
        self.residual = stride == 1 and in_chs == out_chs
        mid = in_chs * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [USConv2d(in_chs, mid, 1, 1, 0, ratio=(1, expand)),
                       USBatchNorm2d(mid, ratio=expand), nn.ReLU6(inplace=True)]
        layers += [USConv2d(mid, mid, 3, stride, 1, depthwise=True, ratio=(expand, expand)),
                   USBatchNorm2d(mid, ratio=expand), nn.ReLU6(inplace=True),
                   USConv2d(mid, out_chs, 1, 1, 0, ratio=(expand, 1)), USBatchNorm2d(out_chs)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x if self.residual else self.body(x)


class SlimmableNet(nn.Module):
    def __init__(self, features: list[nn.Module], classifier: nn.Module):
        super().__init__()
        self.features = nn.Sequential(*features, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _stem(chs: int) -> nn.Sequential:
    return nn.Sequential(USConv2d(3, chs, 3, 2, 1, slim_in=False), USBatchNorm2d(chs),
                         nn.ReLU6(inplace=True))


def mobilenet_v1(num_classes: int = 1000) -> SlimmableNet:
    features: list[nn.Module] = [_stem(32)]
    chs = 32
    for out_chs, repeats, stride in ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)):
        for i in range(repeats):
            features.append(DepthwiseSeparable(chs, out_chs, stride if i == 0 else 1))
            chs = out_chs
    return SlimmableNet(features, USLinear(chs, num_classes))


def mobilenet_v2(num_classes: int = 1000) -> SlimmableNet:
    features: list[nn.Module] = [_stem(32)]
    chs = 32
    for expand, out_chs, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(repeats):
            features.append(InvertedResidual(chs, out_chs, stride if i == 0 else 1, expand))
            chs = out_chs
    # The 1280-channel head does not slim, so it keeps a plain BatchNorm.
    features.append(nn.Sequential(USConv2d(chs, 1280, 1, 1, 0, slim_out=False), nn.BatchNorm2d(1280),
                                  nn.ReLU6(inplace=True)))
    return SlimmableNet(features, nn.Linear(1280, num_classes))


# ---------------------------------------------------------------------------------------------- one width of it


def set_width(model: nn.Module, width: float) -> nn.Module:
    for m in model.modules():
        if isinstance(m, SLIMMABLE):
            m.width = width
    return model


def _sliced(m: nn.Module) -> nn.Module:
    """The plain layer computing what slimmable layer `m` computes at its current width."""
    if isinstance(m, USConv2d):
        c_in, c_out = m.channels()
        new = nn.Conv2d(c_in, c_out, m.kernel_size, m.stride, m.padding, groups=c_in if m.depthwise else 1,
                        bias=False)
        new.weight = nn.Parameter(m.weight[:c_out, :new.weight.shape[1]].detach().clone())
        return new
    if isinstance(m, USBatchNorm2d):
        c = m.channels()
        new = nn.BatchNorm2d(c, eps=m.eps)
        for name in ("weight", "bias"):
            setattr(new, name, nn.Parameter(getattr(m, name)[:c].detach().clone()))
        new.running_mean, new.running_var = m.running_mean[:c].clone(), m.running_var[:c].clone()
        return new
    c = m.channels()
    new = nn.Linear(c, m.out_features)
    new.weight = nn.Parameter(m.weight[:, :c].detach().clone())
    new.bias = nn.Parameter(m.bias.detach().clone())
    return new


def slice_to_width(model: nn.Module, width: float) -> nn.Module:
    """A static copy of the slimmable `model` at `width`: every slimmable layer becomes a plain Conv2d, BatchNorm2d
    or Linear holding its slice, so the usual rewrites (BatchNorm folding) and exporters apply."""
    static = set_width(copy.deepcopy(model), width)
    for name, m in list(static.named_modules()):
        if isinstance(m, SLIMMABLE):
            parent, _, child = name.rpartition(".")
            setattr(static.get_submodule(parent) if parent else static, child, _sliced(m))
    return static.eval()


def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics on `batches`: reset, then a cumulative average over the
    batches (MutualNet's ComputePostBN). Only the BatchNorm layers run in training mode. Returns the count."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not batches:
        raise UsageError("BatchNorm re-estimation needs at least one calibration image")
    saved = [(m.momentum, m.training) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # torch's cumulative moving average: the mean over the batches seen
        m.train()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for m, (momentum, training) in zip(bns, saved, strict=True):
            m.momentum = momentum
            m.train(training)
    model.eval()
    return len(bns)
