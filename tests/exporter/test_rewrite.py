"""Each rewrite on small hand-built modules with random BatchNorm statistics, before against after."""

import pytest
import torch
from torch import nn

from effexport.errors import ExportError
from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.rewrite import (
    ChannelAffine,
    apply_rewrites,
    fold_batchnorm,
    iabn_to_bn,
    remove_dropout,
    static_same_padding,
    swap_activations,
)
from tests.fakes.inplace_abn import InPlaceABN


def _check(model: nn.Module, rewrite, x: torch.Tensor, atol: float = 1e-5) -> nn.Module:
    model.eval()
    with torch.no_grad():
        before = model(x)
        model = rewrite(model, x)
        after = model(x)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=atol, rtol=1e-4)
    return model


def _count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


class SqueezeExcite(nn.Module):
    """A ReXNet-style SE block: 1x1 conv, BN, ReLU, 1x1 conv, sigmoid gate."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 2, 1)
        self.bn = nn.BatchNorm2d(c // 2)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.bn(self.fc1(s)))))


def test_fold_batchnorm_sequential_se_and_head():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, padding=1, bias=True), nn.BatchNorm2d(8),
        SqueezeExcite(8),
        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.Hardswish(),  # a 1x1 head conv with BN
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    randomize_batchnorm(model, seed=1)
    model = _check(model, fold_batchnorm, torch.randn(2, 3, 16, 16))
    assert _count(model, nn.BatchNorm2d) == 0
    assert _count(model, ChannelAffine) == 0


def test_fold_batchnorm_timm_batchnormact_keeps_activation():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 6, 3), BatchNormAct2d(6, act_layer=nn.SiLU), nn.Conv2d(6, 4, 1))
    randomize_batchnorm(model, seed=2)
    model = _check(model, fold_batchnorm, torch.randn(2, 3, 12, 12))
    assert _count(model, nn.BatchNorm2d) == 0
    assert _count(model, nn.SiLU) == 1


def test_lone_batchnorm_becomes_affine():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))  # BN after ReLU: nothing to fold into
    randomize_batchnorm(model, seed=3)
    model = _check(model, fold_batchnorm, torch.randn(2, 3, 10, 10))
    assert _count(model, nn.BatchNorm2d) == 0
    assert _count(model, ChannelAffine) == 1


def test_conv_feeding_two_batchnorms_is_not_folded_twice():
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn_a = nn.BatchNorm2d(4)
            self.bn_b = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn_a(y) + self.bn_b(y)

    model = Fork()
    randomize_batchnorm(model, seed=4)
    _check(model, fold_batchnorm, torch.randn(1, 3, 8, 8))


def test_iabn_to_bn_then_fold():
    torch.manual_seed(0)
    abn = InPlaceABN(8, activation="leaky_relu", activation_param=1e-3)
    with torch.no_grad():
        abn.weight.copy_(torch.randn(8))  # inplace-ABN stores signed weights and uses |w| + eps
        abn.bias.copy_(torch.randn(8))
        abn.running_mean.copy_(torch.randn(8) * 0.1)
        abn.running_var.copy_(torch.rand(8) + 0.5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), abn, nn.Conv2d(8, 2, 1))
    model = _check(model, iabn_to_bn, torch.randn(2, 3, 9, 9))
    assert not any(type(m).__name__ == "InPlaceABN" for m in model.modules())
    assert _count(model, nn.LeakyReLU) == 1
    model = _check(model, fold_batchnorm, torch.randn(2, 3, 9, 9))
    assert _count(model, nn.BatchNorm2d) == 0


@pytest.mark.parametrize("size", [(15, 15), (16, 17)])
def test_static_same_padding_matches_dynamic(size):
    from timm.layers import create_conv2d, create_pool2d

    torch.manual_seed(0)
    model = nn.Sequential(create_conv2d(3, 4, 3, stride=2, padding="same"),
                          create_pool2d("max", 3, stride=2, padding="same"),
                          create_conv2d(4, 4, 5, stride=1, padding="same", dilation=1))
    assert any(type(m).__name__ == "Conv2dSame" for m in model.modules())
    model = _check(model, static_same_padding, torch.randn(1, 3, *size))
    assert not any(type(m).__name__.endswith("Same") for m in model.modules())


def test_swap_activations_and_remove_dropout():
    from timm.layers.activations import HardSigmoid, HardSwish, Swish

    model = nn.Sequential(nn.Conv2d(3, 4, 1), Swish(), HardSwish(), nn.Dropout(0.5), HardSigmoid())
    model = _check(model, swap_activations, torch.randn(2, 3, 5, 5))
    assert [type(m) for m in model][1:] == [nn.SiLU, nn.Hardswish, nn.Dropout, nn.Hardsigmoid]
    model = _check(model, remove_dropout, torch.randn(2, 3, 5, 5))
    assert _count(model, nn.Dropout) == 0


def test_apply_rewrites_rejects_a_rewrite_that_changes_outputs():
    def break_it(model, sample):
        model[0].weight.data.mul_(2)
        return model

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ExportError, match="break_it changed the model's outputs"):
        apply_rewrites(model, (break_it,), torch.randn(1, 3, 6, 6))


def test_apply_rewrites_records_each_rewrite():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(), nn.Flatten())
    randomize_batchnorm(model)
    model, records = apply_rewrites(model, (remove_dropout, fold_batchnorm), torch.randn(2, 3, 6, 6))
    assert [r.name for r in records] == ["remove_dropout", "fold_batchnorm"]
    assert all(r.changed >= 1 and r.rel_diff <= 1e-4 for r in records)
