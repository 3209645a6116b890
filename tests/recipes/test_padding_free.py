"""Padding-free downsampling and the hybrid stem: the modules themselves, their exported graph (plain MaxPool and
Conv, no Pad node), the like-for-like baselines, and checkpoints in the layout of the paper's code."""

import onnx
import pytest
import torch
from onnx import helper

from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.profile import count_macs, count_params
from effexport.recipes import get_recipe
from effexport.recipes.padding_free import VARIANTS, HybridStem, PaddingFreeDown
from effexport.workflow.export import build_model, export_recipe
from effexport.workflow.job import ExportOptions, WeightsSpec, resolve_job

# recipe: stride-2 depthwise convolutions that become padding-free (each adds one MaxPool; the stem adds one more)
STRIDED = {"mobilenetv3_large_pfd": 4, "mobilenetv3_large_pfd_cifar": 3, "ghostnet_pfd": 4, "ghostnet_pfd_cifar": 3,
           "shufflenetv2_pfd": 6, "shufflenetv2_pfd_cifar": 6}


def test_padding_free_block_is_conv_plus_same_shaped_maxpool():
    for kernel in (3, 5):
        conv = torch.nn.Conv2d(8, 8, kernel, 2, kernel // 2, groups=8, bias=False)
        from effexport.recipes.padding_free import padding_free

        block = padding_free(conv, conv)
        assert conv.padding == ((kernel - 3) // 2,) * 2 and block.pool.kernel_size == kernel
        for size in (7, 8, 15, 32):
            x = torch.randn(1, 8, size, size)
            expected = torch.nn.functional.conv2d(x, conv.weight, None, 2, (kernel - 3) // 2, groups=8) + \
                torch.nn.functional.max_pool2d(x, kernel, 2, (kernel - 3) // 2)
            torch.testing.assert_close(block(x), expected)


def test_hybrid_stem_concatenates_depthwise_and_pool_then_fuses():
    stem = HybridStem(3, 16, torch.nn.Hardswish, stride=2).eval()
    randomize_batchnorm(stem, seed=3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = stem.conv(x)
        expected = stem.fuse(torch.cat([stem.conv_dw(y), torch.nn.functional.max_pool2d(y, 3, 1, 1)], 1))
        torch.testing.assert_close(stem(x), expected)
    assert stem(x).shape == (2, 16, 32, 32)


@pytest.mark.parametrize("name", sorted(STRIDED))
def test_export_has_maxpool_branches_and_no_pad(name, tmp_path):
    cifar = VARIANTS[name][2]
    result = export_recipe(resolve_job(name, export=ExportOptions(img_size=None if cifar else 64), out=tmp_path))
    model = onnx.load(str(result.path))
    counts = result.report["node_counts"]
    assert "Pad" not in counts, counts
    assert counts["MaxPool"] == STRIDED[name] + 1  # + the hybrid stem's pool branch
    unpadded = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and attrs.get("group", 1) > 1 and attrs["strides"] == [2, 2]:
            if name.startswith("shufflenetv2_pfd") and node.name.startswith("/conv1/"):
                continue  # ShuffleNetV2's ImageNet stem keeps a padded stride-2 depthwise branch, as in the paper
            assert attrs["pads"] == [(attrs["kernel_shape"][0] - 3) // 2] * 4, (node.name, attrs)
            unpadded += 1
    # GhostNet's stride-2 shortcuts lose their padding too (without a pool branch).
    assert unpadded == STRIDED[name] * (2 if name.startswith("ghostnet") else 1)


@pytest.mark.parametrize("net", ["mobilenetv3_large", "ghostnet", "shufflenetv2"])
def test_cifar_forms_compare_like_for_like(net):
    base, pfd = get_recipe(f"{net}_cifar"), get_recipe(f"{net}_pfd_cifar")
    m_base, m_pfd = base.build(False), pfd.build(False)
    # The hybrid stem adds a depthwise 3x3 and a 2c -> c 1x1 convolution (with BatchNorm); nothing else has weights.
    stem_chs = 24 if net == "shufflenetv2" else 16
    assert count_params(m_pfd) - count_params(m_base) == 9 * stem_chs + 2 * stem_chs * stem_chs + 4 * stem_chs
    # Unpadded stride-2 convolutions shrink every later feature map: fewer MACs although the stem adds some.
    assert count_macs(m_pfd, (3, 32, 32)) < 0.82 * count_macs(m_base, (3, 32, 32))
    assert m_base(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


def _to_paper_ghostnet_keys(sd: dict) -> dict:
    """Our PFD GhostNet state dict under the key names of the paper's ghostnet_ours.py, with its unused bn1."""
    out = {}
    for key, value in sd.items():
        key = (key.replace("conv_stem.conv.", "conv_stem.stem_1.").replace("conv_stem.conv_dw.", "conv_stem.stem_1_1.")
               .replace("conv_stem.fuse.", "conv_stem.stem_3.").replace("conv_dw.body.0.", "conv_dw.")
               .replace("conv_dw.body.1.", "bn_dw."))
        out[key] = value
        if key == "conv_stem.stem_3.1.num_batches_tracked":
            out.update({"bn1.weight": torch.ones(16), "bn1.bias": torch.zeros(16), "bn1.running_mean": torch.zeros(16),
                        "bn1.running_var": torch.ones(16)})
    return out


def _to_paper_mobilenetv3_keys(sd: dict) -> dict:
    """Our PFD MobileNetV3 state dict under the names of the paper's mobilenet_v3_ours.py, whose ConvBNActivation
    names its layers conv/norm/activate where torchvision's is a Sequential."""
    out = {}
    for key, value in sd.items():
        for ours, paper in (("features.0.conv.", "features.0.stem_1."), ("features.0.conv_dw.", "features.0.stem_1_1."),
                            ("features.0.fuse.", "features.0.stem_3."), (".body.", ".")):
            key = key.replace(ours, paper)
        parts = key.split(".")
        if parts[0] == "features" and parts[-2] in ("0", "1"):
            parts[-2] = "conv" if parts[-2] == "0" else "norm"
        out[".".join(parts)] = value
    return out


def _same_function(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Randomly initialised classifiers give logits of about 1e-2, below assert_close's default atol: compare
    # against the logits' own scale.
    return bool((a - b).abs().max() <= 1e-6 * a.abs().max())


@pytest.mark.parametrize("name, to_paper", [("ghostnet_pfd_cifar", _to_paper_ghostnet_keys),
                                            ("mobilenetv3_large_pfd_cifar", _to_paper_mobilenetv3_keys)])
def test_checkpoint_in_the_paper_code_layout_loads(name, to_paper, tmp_path):
    recipe = get_recipe(name)
    source, _ = build_model(recipe, WeightsSpec())
    paper_sd = to_paper(source.state_dict())
    assert set(paper_sd) != set(source.state_dict())
    ckpt = tmp_path / "paper.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in paper_sd.items()}}, ckpt)
    loaded, info = build_model(recipe, WeightsSpec(path=ckpt))
    assert info["layout"].startswith("padding-free paper code")
    if name.startswith("mobilenetv3"):  # the paper code's 3x3 pools (next test)
        _use_3x3_pools(source)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _same_function(loaded(x), source(x))


def _use_3x3_pools(model: torch.nn.Module) -> None:
    for module in model.modules():  # set by hand: the pool mobilenet_v3_ours.py trains its kernel-5 blocks with
        if isinstance(module, PaddingFreeDown) and module.pool.kernel_size == 5:
            module.pool = torch.nn.MaxPool2d(3, 2, 0)


def test_paper_code_mobilenetv3_checkpoint_keeps_its_3x3_pools(tmp_path):
    """mobilenet_v3_ours.py trains its kernel-5 stride-2 blocks with a 3x3 unpadded pool (it overwrites the 5x5
    one); a checkpoint from it must run with that pool, not the recipe's 5x5 one."""
    recipe = get_recipe("mobilenetv3_large_pfd_cifar")
    source, _ = build_model(recipe, WeightsSpec())
    ckpt = tmp_path / "paper.pth"
    torch.save(_to_paper_mobilenetv3_keys(source.state_dict()), ckpt)
    loaded, _ = build_model(recipe, WeightsSpec(path=ckpt))
    kernels = [m.pool.kernel_size for m in loaded.modules() if isinstance(m, PaddingFreeDown)]
    assert kernels == [3, 3, 3]  # CIFAR form: the 40-channel (kernel 5), 80 (kernel 3) and 160 (kernel 5) blocks
    assert [m.pool.kernel_size for m in source.modules() if isinstance(m, PaddingFreeDown)] == [5, 3, 5]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with_5x5 = source(x)
        _use_3x3_pools(source)
        assert _same_function(loaded(x), source(x))
        assert not _same_function(loaded(x), with_5x5)  # the pool changes the function: the check can fail


def test_mobilenetv3_pfd_imagenet_matches_the_timm_baseline_in_params():
    pfd = count_params(get_recipe("mobilenetv3_large_pfd").build(False))
    base = count_params(get_recipe("mobilenetv3_large").build(False))
    assert pfd - base == 9 * 16 + 2 * 16 * 16 + 4 * 16
