"""The two ONNX exporters behind `export_onnx`: which one runs for an opset, the exact opset written (converted down
from 18 where torch.export cannot write it), the batch dimension, warnings surfaced, custom ops, and every recipe
family through torch.export with the same graph checks and parity as the TorchScript path."""

import functools
import logging
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effexport.backends.onnxruntime import OrtRunner
from effexport.errors import ExportError, UsageError
from effexport.exporter import onnx as onnx_stage
from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.rewrite import apply_rewrites
from effexport.recipes import RecipeParams, configure, get_recipe

pytest.importorskip("onnxscript")


class _Small(nn.Module):
    """Conv-BN-HardSwish (opset 14's op), a channel Pad and a channel split (Pad-18 and Split-18 have no converter
    adapter), a global mean (ReduceMean's opset-18 form) and a 10-class head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.bn(self.conv(x)))
        x = F.pad(x, (0, 0, 0, 0, 0, 2))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b, a * 2], dim=1)
        return self.head(x.mean((2, 3)))


def _small() -> nn.Module:
    torch.manual_seed(0)
    model = _Small().eval()
    randomize_batchnorm(model, seed=3)
    return model


def _run(path, x: np.ndarray) -> np.ndarray:
    with OrtRunner(path) as runner:
        return runner.run(x)


def _assert_same(path, model: nn.Module, batch: int = 3, size: int = 16) -> float:
    x = np.random.default_rng(batch).normal(size=(batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = _run(path, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    return float(np.abs(out - ref).max() / (ref.max() - ref.min()))


def _batch_dims(path) -> tuple:
    model = onnx.load(str(path))
    ios = [*model.graph.input, *model.graph.output]
    return tuple((v.name, v.type.tensor_type.shape.dim[0].dim_param or v.type.tensor_type.shape.dim[0].dim_value)
                 for v in ios)


@pytest.mark.parametrize("opset", [11, 17])
def test_torchscript_writes_the_asked_opset(tmp_path, opset):
    model, path = _small(), tmp_path / "m.onnx"
    record = onnx_stage.export_onnx(model, torch.randn(1, 3, 16, 16), path, opset, False, exporter="torchscript")
    assert (record.exporter, record.opset) == ("torchscript", opset)
    assert onnx_stage.model_opset(onnx.load(str(path))) == opset
    _assert_same(path, model, batch=1)


@pytest.mark.parametrize("opset", [18, 20])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_dynamo_writes_the_asked_opset_with_the_torchscript_names(tmp_path, opset, dynamic):
    model, path = _small(), tmp_path / "m.onnx"
    record = onnx_stage.export_onnx(model, torch.randn(2, 3, 16, 16), path, opset, dynamic, exporter="dynamo")
    assert (record.exporter, record.opset) == ("dynamo", opset)
    assert onnx_stage.model_opset(onnx.load(str(path))) == opset
    if dynamic:
        assert _batch_dims(path) == (("input", "batch"), ("logits", "batch"))
        for batch in (1, 5):
            _assert_same(path, model, batch=batch)
    else:
        assert _batch_dims(path) == (("input", 2), ("logits", 2))
        _assert_same(path, model, batch=3)  # the runner chunks and pads to the static batch


def test_dynamic_batch_from_a_batch_of_one_is_still_symbolic(tmp_path):
    """A batch-1 sample would specialise torch.export's dimension; the stage widens it."""
    model, path = _small(), tmp_path / "m.onnx"
    onnx_stage.export_onnx(model, torch.randn(1, 3, 16, 16), path, 18, True, exporter="dynamo")
    assert _batch_dims(path) == (("input", "batch"), ("logits", "batch"))
    _assert_same(path, model, batch=4)


def test_dynamo_artifacts_carry_no_local_paths(tmp_path):
    path = tmp_path / "m.onnx"
    onnx_stage.export_onnx(_small(), torch.randn(1, 3, 16, 16), path, 18, False, exporter="dynamo")
    model = onnx.load(str(path))
    assert not [p.key for n in model.graph.node for p in n.metadata_props]
    assert b"stack_trace" not in path.read_bytes()


@pytest.mark.parametrize("opset", [14, 17])
def test_dynamo_below_18_is_converted_down_and_computes_the_same(tmp_path, opset):
    model, path = _small(), tmp_path / "m.onnx"
    record = onnx_stage.export_onnx(model, torch.randn(2, 3, 16, 16), path, opset, True, exporter="dynamo")
    assert (record.exporter, record.opset) == ("dynamo+converted-from-18", opset)
    written = onnx.load(str(path))
    assert onnx_stage.model_opset(written) == opset and [o.domain for o in written.opset_import] == [""]
    onnx.checker.check_model(written, full_check=True)
    ops = Counter(n.op_type for n in written.graph.node)
    assert ops["HardSwish"] == 1 and ops["Pad"] == 1 and ops["Split"] == 1 and ops["ReduceMean"] == 1
    reduce_mean = next(n for n in written.graph.node if n.op_type == "ReduceMean")
    assert [a.name for a in reduce_mean.attribute if a.name == "axes"]  # an attribute below 18, not an input
    _assert_same(path, model, batch=3)


@pytest.mark.openvino
def test_a_dynamo_export_runs_in_openvino_after_simplification(tmp_path):
    ov = pytest.importorskip("openvino")
    model, raw = _small(), tmp_path / "raw.onnx"
    onnx_stage.export_onnx(model, torch.randn(2, 3, 16, 16), raw, 18, True, exporter="dynamo")
    _pipeline_graph(raw, tmp_path / "model.onnx", dynamic=True)
    compiled = ov.Core().compile_model(str(tmp_path / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x)[0], model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_a_non_default_new_attribute_is_refused_not_dropped():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = onnx.helper.make_node("ReduceMax", ["x"], ["y"], noop_with_empty_axes=1)
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 18)])
    assert onnx_stage.drop_new_defaults(model) == 0
    with pytest.raises(ExportError, match="to opset 17 failed"):
        onnx_stage.convert_down(model, 17)


def test_a_failed_conversion_names_the_model_and_the_op(tmp_path):
    class Masked(nn.Module):
        def forward(self, x):
            return (x.to(torch.int32) & 3).to(torch.float32)  # BitwiseAnd: new in opset 18, no earlier form

    with pytest.raises(ExportError, match=r"Masked: converting .* to opset 14 failed.*BitwiseAnd"):
        onnx_stage.export_onnx(Masked(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", 14, False, exporter="dynamo")
    assert not (tmp_path / "m.onnx").exists()


def test_auto_keeps_torchscript_below_18_and_takes_dynamo_from_18():
    assert onnx_stage.torchscript_available()
    assert [onnx_stage.choose_exporter(o) for o in (11, 14, 17, 18, 23)] == ["torchscript"] * 3 + ["dynamo"] * 2
    assert onnx_stage.choose_exporter(17, "dynamo") == "dynamo"


@pytest.mark.parametrize("opset", range(14, 24))
def test_without_torchscript_auto_reaches_14_to_23(tmp_path, monkeypatch, opset):
    monkeypatch.setattr(onnx_stage, "torchscript_available", lambda: False)
    model, path = _small(), tmp_path / "m.onnx"
    record = onnx_stage.export_onnx(model, torch.randn(2, 3, 16, 16), path, opset, True)
    assert record.exporter == ("dynamo" if opset >= 18 else "dynamo+converted-from-18")
    assert onnx_stage.model_opset(onnx.load(str(path))) == opset
    _assert_same(path, model, batch=2)


def test_without_torchscript_13_names_the_lowest_reachable_opset(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_stage, "torchscript_available", lambda: False)
    with pytest.raises(UsageError, match="opset 13 is not supported.*reaches opset 14"):
        onnx_stage.export_onnx(_small(), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", 13, False)
    with pytest.raises(UsageError, match="no longer has the TorchScript exporter"):
        onnx_stage.check_opset(17, "torchscript")
    assert not (tmp_path / "m.onnx").exists()


def test_dynamo_below_14_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="opset 13 is not supported.*reaches opset 14"):
        onnx_stage.export_onnx(_small(), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", 13, False, exporter="dynamo")
    with pytest.raises(UsageError, match="unknown exporter 'onnx'"):
        onnx_stage.check_opset(17, "onnx")


def test_an_op_without_translation_names_the_model_and_the_op(tmp_path):
    class Twice(nn.Module):
        def forward(self, x):
            return torch.ops.effexport_test.twice(x)

    if not hasattr(torch.ops.effexport_test, "twice"):
        torch.library.custom_op("effexport_test::twice", lambda x: x * 2, mutates_args=(),
                                schema="(Tensor x) -> Tensor").register_fake(torch.empty_like)
    with pytest.raises(ExportError, match=r"Twice.*op: effexport_test\.twice\.default"):
        onnx_stage.export_onnx(Twice(), torch.randn(1, 3, 4, 4), tmp_path / "m.onnx", 18, False, exporter="dynamo")


def _space_to_depth_model():
    from effexport.recipes.tresnet import SpaceToDepthOp

    torch.manual_seed(0)
    return nn.Sequential(SpaceToDepthOp(4), nn.Conv2d(48, 5, 1)).eval()


@pytest.mark.parametrize(("exporter", "opset"), [("torchscript", 17), ("dynamo", 18), ("dynamo", 17)])
def test_tresnet_space_to_depth_is_one_node_under_both_exporters(tmp_path, exporter, opset):
    from timm.layers import SpaceToDepth

    model, path = _space_to_depth_model(), tmp_path / "m.onnx"
    onnx_stage.export_onnx(model, torch.randn(2, 3, 16, 16), path, opset, True, exporter=exporter)
    assert Counter(n.op_type for n in onnx.load(str(path)).graph.node) == {"SpaceToDepth": 1, "Conv": 1}
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():  # timm's view/permute form: the custom op must keep its element order
        np.testing.assert_allclose(_run(path, x.numpy()), model[1](SpaceToDepth(4)(x)).numpy(), rtol=1e-5, atol=1e-6)


class _Branchy(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # traced: one branch baked in, which the exporter warns about


def test_warnings_that_the_file_may_be_wrong_are_recorded_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="effexport.exporter.onnx"):
        record = onnx_stage.export_onnx(_Branchy(), torch.randn(1, 3, 4, 4), tmp_path / "m.onnx", 17, False,
                                        exporter="torchscript")
    assert any("might cause the trace to be incorrect" in w for w in record.warnings)
    surfaced = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(surfaced) == len(record.warnings) and all("\n" not in w for w in record.warnings)
    chatter = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("legacy TorchScript" in m for m in chatter)
    assert not any("legacy TorchScript" in w for w in record.warnings)


def test_an_opset_the_torchscript_exporter_does_not_support_is_surfaced(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="effexport.exporter.onnx"):
        record = onnx_stage.export_onnx(_small(), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", 21, False,
                                        exporter="torchscript")
    assert [w for w in record.warnings if "opset version 21 is not supported" in w]
    assert any("opset version 21 is not supported" in r.getMessage() for r in caplog.records)


def test_exporter_logger_warnings_are_collected_once_chatter_is_not():
    with onnx_stage._ExporterNotes() as notes:
        logging.getLogger("torch.onnx._internal.exporter._compat").warning("fell back to a decomposition\nmore")
        logging.getLogger("onnxscript.optimizer").info("folded a constant")
        warnings.warn("this API is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("unsupported opset for Resize", UserWarning, stacklevel=1)
    assert notes.problems == ("unsupported opset for Resize", "fell back to a decomposition")


# Every recipe family through torch.export: small variants at small inputs, random weights with non-trivial BN.
# Measured on 2 shared cores, a family takes 4 to 14 s per batch mode; the ones over ~20 s for both modes are slow.
FAMILIES = [
    ("rexnet_1.0", False),
    ("tresnet_m", True),  # its SpaceToDepth custom op also has a fast test above
    ("efficientnet_b0", False),
    ("tf_efficientnet_b0", False),  # SAME padding
    ("efficientnet_lite0", False),
    ("mobilenetv3_small", False),
    ("ghostnet", True),
    ("mobilenetv3_large_pfd", False),  # padding-free
    ("shufflenetv2", False),
    ("mutualnet_mobilenet_v2", False),  # slimmable, one (width, resolution) point
    ("rexnet_lite_1.0", False),
    ("timm:resnet18", False),
    ("resnext101_32x8d_wsl", True),
]
SIZE = 64


@functools.lru_cache(maxsize=1)  # a family's static and dynamic cases run one after the other
def _prepared(name: str) -> tuple[nn.Module, torch.Tensor, np.ndarray, np.ndarray]:
    """The recipe's model with its deploy rewrites applied, an export sample, parity inputs and torch's outputs."""
    recipe = get_recipe(name)
    if recipe.takes:
        recipe = configure(recipe, RecipeParams(width=0.7, resolution=SIZE))
    torch.manual_seed(0)
    model = recipe.build(False).eval()
    randomize_batchnorm(model, seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    sample = torch.randn(2, 3, SIZE, SIZE)
    model, _ = apply_rewrites(model, recipe.rewrites, sample)
    x = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    return model, sample, x, ref


def _pipeline_graph(raw, dest, dynamic: bool) -> onnx.ModelProto:
    """What pipeline.py does after the export: Identity removal, onnxslim, value_info, save, checker."""
    model = onnx_stage.load_onnx(raw)
    onnx_stage.eliminate_identity(model)
    model = onnx_stage.simplify(model)
    onnx_stage.eliminate_identity(model)
    if dynamic:
        onnx_stage.drop_intermediate_value_info(model)
    onnx_stage.save_onnx(model, dest)
    onnx_stage.check_model(dest)
    return model


# The default run exports four families (a plain CNN, SAME padding, a slimmable point, a generic timm model) both
# ways; TResNet's custom op has its own fast test above; `-m slow` runs every family both ways.
DEFAULT_FAMILIES = ("rexnet_1.0", "tf_efficientnet_b0", "mutualnet_mobilenet_v2", "timm:resnet18")


@pytest.mark.parametrize(("name", "dynamic"), [
    pytest.param(n, dynamic, id=f"{n}-{'dynamic' if dynamic else 'static'}",
                 marks=[pytest.mark.slow] if slow or n not in DEFAULT_FAMILIES else [])
    for n, slow in FAMILIES for dynamic in (False, True)])
def test_every_family_exports_through_torch_export(tmp_path, name, dynamic):
    model, sample, x, ref = _prepared(name)
    raw, dest = tmp_path / "raw.onnx", tmp_path / "model.onnx"
    record = onnx_stage.export_onnx(model, sample if dynamic else sample[:1], raw, 18, dynamic, exporter="dynamo")
    assert (record.exporter, record.opset, record.warnings) == ("dynamo", 18, ())
    graph = _pipeline_graph(raw, dest, dynamic)
    assert onnx_stage.check_graph(graph, static_shape=not dynamic).problems == ()
    batch = "batch" if dynamic else 1
    assert _batch_dims(dest) == (("input", batch), ("logits", batch))
    assert np.abs(_run(dest, x) - ref).max() / (ref.max() - ref.min()) < 1e-4  # the ONNX parity measure
