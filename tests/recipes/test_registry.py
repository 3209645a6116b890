"""Registry-wide: every recipe builds, its rewrites preserve its outputs, and it exports with ONNX Runtime
parity. Loops over list_recipes(), so a new family is covered without a test edit."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from effexport.errors import UsageError
from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.profile import build_on_meta, count_macs
from effexport.exporter.rewrite import apply_rewrites
from effexport.recipes import get_recipe, list_recipes
from effexport.workflow.export import export_recipe
from effexport.workflow.job import ExportOptions, resolve_job

# Exports above this run under `slow`: every family keeps its smallest members in the default run (the wider ReXNet,
# ReXNet-lite and EfficientNet variants, 0.65 to 1.0 GMACs, are the same code at more channels; 27 s of the default
# run on a 2-core Intel Xeon with AMX).
DEFAULT_RUN_GMACS = 0.6


def _gmacs(recipe) -> float:
    return count_macs(build_on_meta(recipe.build), recipe.input_size) / 1e9


RECIPES = list_recipes()
BUILD_PARAMS = [pytest.param(r.name, marks=pytest.mark.slow if r.heavy else ()) for r in RECIPES]
EXPORT_PARAMS = [pytest.param(r.name, marks=pytest.mark.slow if r.heavy or _gmacs(r) > DEFAULT_RUN_GMACS else ())
                 for r in RECIPES]


def test_names_aliases_and_unknown_names():
    assert get_recipe("rexnet_100") is get_recipe("rexnet_1.0")
    assert get_recipe("tf_efficientnet_lite0") is get_recipe("efficientnet_lite0")
    with pytest.raises(UsageError, match="Closest: .*rexnet_1.0"):
        get_recipe("rexnet_1.O")


def test_generic_timm_recipe():
    recipe = get_recipe("timm:resnet18")
    assert recipe.generic and not recipe.strict_graph
    with pytest.raises(UsageError, match="timm has no model"):
        get_recipe("timm:resnet_eighteen")


@pytest.mark.parametrize("name", BUILD_PARAMS)
def test_build_and_rewrites_preserve_outputs(name):
    recipe = get_recipe(name)
    torch.manual_seed(0)
    model = recipe.build(False).eval()
    randomize_batchnorm(model, seed=1)
    size = min(96, recipe.input_size[-1])  # CIFAR forms are built for 32x32
    x = torch.randn(2, 3, size, size)
    model, records = apply_rewrites(model, recipe.rewrites, x)  # raises if any rewrite changes the outputs
    assert [r.name for r in records] == [r.__name__ for r in recipe.rewrites]
    leftover = [type(m).__name__ for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) or type(m).__name__ in {"InPlaceABN", "Dropout"}]
    assert not leftover


@pytest.mark.parametrize("name", EXPORT_PARAMS)
def test_export_and_onnxruntime_parity(name, tmp_path):
    result = export_recipe(resolve_job(name, out=tmp_path))
    report = result.report
    assert report["status"] == "passed" and report["parity"]["onnxruntime"]["passed"]
    assert report["parity"]["onnxruntime"]["max_rel"] <= 1e-4
    model = onnx.load(str(result.path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"BatchNormalization", "Identity", "Shape"}, ops
    assert report["opset"] == 17 and report["inputs"][0]["shape"] == [1, *get_recipe(name).input_size]


def test_rexnet_shortcut_exports_without_slice_or_concat(tmp_path):
    result = export_recipe(resolve_job("rexnet_1.0", out=tmp_path))
    counts = result.report["node_counts"]
    assert "Slice" not in counts and "Concat" not in counts and counts["Pad"] == 11


def test_tresnet_space_to_depth_is_one_node(tmp_path):
    result = export_recipe(resolve_job("tresnet_m", export=ExportOptions(img_size=128), out=tmp_path))
    counts = result.report["node_counts"]
    assert counts["SpaceToDepth"] == 1 and not {"Reshape", "Transpose"} & set(counts)


def test_tf_same_padding_leaves_no_pad_or_shape_nodes(tmp_path):
    result = export_recipe(resolve_job("efficientnet_lite0", export=ExportOptions(img_size=160), out=tmp_path))
    assert not {"Pad", "Shape", "Gather"} & set(result.report["node_counts"])


def test_dynamic_batch_export_runs_at_any_batch(tmp_path):
    from effexport.backends.onnxruntime import OrtRunner

    result = export_recipe(resolve_job("efficientnet_b0", export=ExportOptions(dynamic_batch=True, img_size=128),
                                       out=tmp_path))
    assert result.report["inputs"][0]["shape"][0] == "batch"
    with OrtRunner(result.path) as runner:
        for n in (1, 3):
            assert runner.run(np.zeros((n, 3, 128, 128), np.float32)).shape == (n, 1000)


@pytest.mark.parametrize("name", [r.name for r in RECIPES] + ["timm:mobilenetv3_small_050"])
def test_every_recipe_builds_with_another_class_count_and_finds_its_classifier(name):
    """A fine-tuned head: every builder takes num_classes, and the classifier found is the layer that makes them."""
    from functools import partial

    from effexport.exporter.checkpoint import model_head
    from effexport.recipes import build_recipe

    recipe = get_recipe(name)
    default = model_head(build_on_meta(recipe.build))
    assert default.num_classes == recipe.num_classes and default.in_chans in (3, 48)  # TResNet: after SpaceToDepth
    model = build_on_meta(partial(build_recipe, recipe, num_classes=7))
    with torch.no_grad():
        out = model(torch.zeros(1, *recipe.input_size, device="meta"))
    head = model_head(model)
    assert tuple(out.shape) == (1, 7) and head.num_classes == 7 and head.in_features == default.in_features
