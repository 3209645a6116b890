"""ReXNet-lite (original repository layout, [N, classes] at every batch size) and EfficientNet-B0-small (no SE)."""

import numpy as np
import pytest
import torch

from effexport.backends.onnxruntime import OrtRunner
from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.profile import build_on_meta, count_macs, count_params
from effexport.recipes import get_recipe
from effexport.recipes.rexnet_lite import LinearBottleneck
from effexport.workflow.export import build_model, export_recipe
from effexport.workflow.job import ExportOptions, WeightsSpec, resolve_job

# The repository's README: FLOPs (multiply-adds) and parameters of the lite models.
README = {"rexnet_lite_1.0": (0.41e9, 4.7e6), "rexnet_lite_1.3": (0.65e9, 6.8e6), "rexnet_lite_1.5": (0.84e9, 8.3e6),
          "rexnet_lite_2.0": (1.5e9, 13e6)}


@pytest.mark.parametrize("name", sorted(README))
def test_rexnet_lite_sizes_match_the_repository(name):
    model = build_on_meta(get_recipe(name).build)
    macs, params = README[name]
    assert abs(count_macs(model, (3, 224, 224)) - macs) < 0.02 * macs
    assert abs(count_params(model) - params) < 0.02 * params


def test_rexnet_lite_shortcut_is_the_partial_channel_add():
    block = LinearBottleneck(16, 27, 6, 1).eval()
    randomize_batchnorm(block, seed=1)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        expected = block.out(x)
        expected[:, :16] += x
        torch.testing.assert_close(block(x), expected)


def test_rexnet_lite_loads_the_original_layout_and_keeps_the_batch_dimension(tmp_path):
    recipe = get_recipe("rexnet_lite_1.0")
    source, _ = build_model(recipe, WeightsSpec())
    sd = source.state_dict()
    # The names rexnetv1_lite.py registers: stem conv/BN/ReLU6, blocks with `.out.N`, head conv, BN, classifier conv.
    assert {"features.0.weight", "features.1.running_var", "features.3.out.0.weight", "output.0.bias",
            "output.1.running_mean", "output.4.weight"} <= set(sd)
    ckpt = tmp_path / "rexnet_lite_1.0.pth"
    torch.save(sd, ckpt)
    job = resolve_job(recipe.name, weights=ckpt, export=ExportOptions(dynamic_batch=True, img_size=128),
                      out=tmp_path / "out")
    result = export_recipe(job)
    counts = result.report["node_counts"]
    assert "Slice" not in counts and "Concat" not in counts and counts["Pad"] >= 10
    inputs = np.random.default_rng(0).normal(size=(3, 3, 128, 128)).astype(np.float32)
    with OrtRunner(result.path) as runner:
        assert runner.run(inputs[:1]).shape == (1, 1000)
        assert runner.run(inputs).shape == (3, 1000)
    assert source(torch.from_numpy(inputs[:1])).shape == (1, 1000)


def test_efficientnet_b0_small_is_b0_without_squeeze_excitation(tmp_path):
    small = get_recipe("efficientnet_b0_small").build(False)
    b0 = get_recipe("efficientnet_b0").build(False)
    assert not [m for m in small.modules() if type(m).__name__ == "SqueezeExcite"]
    se_params = sum(p.numel() for m in b0.modules() if type(m).__name__ == "SqueezeExcite" for p in m.parameters())
    assert count_params(small) == count_params(b0) - se_params == 4_652_008  # PaddleClas: 4.65M
    assert all(m.eps == 1e-3 for m in small.modules() if isinstance(m, torch.nn.BatchNorm2d))
    result = export_recipe(resolve_job("efficientnet_b0_small", export=ExportOptions(img_size=96), out=tmp_path))
    assert result.report["node_counts"]["GlobalAveragePool"] == 1  # only the head's: no SE block left
