import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from effexport.backends.onnxruntime import OrtRunner
from effexport.errors import UsageError
from effexport.exporter import onnx as onnx_stage
from effexport.exporter.checkpoint import randomize_batchnorm


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 20])
def test_export_writes_exactly_the_requested_opset(tmp_path, opset):
    path = tmp_path / "m.onnx"
    onnx_stage.export_onnx(_tiny(), torch.randn(1, 3, 8, 8), path, opset, dynamic_batch=False)
    assert onnx_stage.model_opset(onnx.load(str(path))) == opset


@pytest.mark.parametrize("opset", [5, 99])
def test_unsupported_opset_is_a_usage_error(opset):
    with pytest.raises(UsageError, match=f"opset {opset} is not supported"):
        onnx_stage.check_opset(opset)


def test_eliminate_identity_rewires_consumers_and_outputs():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["c"]), helper.make_node("Identity", ["c"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_stage.eliminate_identity(model) == 2
    assert [n.op_type for n in model.graph.node] == ["Relu", "Neg"]
    onnx.checker.check_model(model)
    import onnxruntime as ort

    out = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.array([1.0, -2.0], np.float32)})[0]
    assert out.tolist() == [-1.0, 0.0]


def test_check_graph_flags_forbidden_and_shape_nodes():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    s = helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Shape", ["x"], ["s"])], "g", [x], [s]))
    assert onnx_stage.check_graph(model, static_shape=True).problems
    assert not onnx_stage.check_graph(model, static_shape=False).problems


def test_large_models_are_saved_with_one_external_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_stage, "EXTERNAL_DATA_THRESHOLD", 1000)
    raw = tmp_path / "raw.onnx"
    model = _tiny()
    onnx_stage.export_onnx(model, torch.randn(1, 3, 8, 8), raw, 17, dynamic_batch=True)
    files = onnx_stage.save_onnx(onnx_stage.load_onnx(raw), tmp_path / "model.onnx")
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    onnx_stage.check_model(tmp_path / "model.onnx")
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    with OrtRunner(tmp_path / "model.onnx") as runner:
        out = runner.run(x)
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_static_batch_runner_chunks_and_pads(tmp_path):
    model = _tiny()
    path = tmp_path / "b2.onnx"
    onnx_stage.export_onnx(model, torch.randn(2, 3, 8, 8), path, 17, dynamic_batch=False)
    x = np.random.default_rng(1).normal(size=(5, 3, 8, 8)).astype(np.float32)
    with OrtRunner(path) as runner:
        assert runner.batch == 2
        out = runner.run(x)
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [7, 8])
def test_simplified_old_opset_keeps_every_initializer_a_graph_input(tmp_path, opset):
    """IR version 3 requires initializers to be graph inputs; the pipeline's order: export, simplify, save, check."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    randomize_batchnorm(model, seed=1)
    raw = tmp_path / "raw.onnx"
    onnx_stage.export_onnx(model, torch.randn(1, 3, 32, 32), raw, opset, dynamic_batch=False)
    exported = onnx_stage.load_onnx(raw)
    onnx_stage.eliminate_identity(exported)
    simplified = onnx_stage.simplify(exported)
    onnx_stage.eliminate_identity(simplified)
    assert simplified.ir_version < 4 and onnx_stage.model_opset(simplified) == opset
    assert {t.name for t in simplified.graph.initializer} <= {i.name for i in simplified.graph.input}
    assert simplified.graph.input[0].name == onnx_stage.INPUT_NAME
    onnx_stage.save_onnx(simplified, tmp_path / "model.onnx")
    onnx_stage.check_model(tmp_path / "model.onnx")  # rejected "... in initializer but not in graph input" before
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with OrtRunner(tmp_path / "model.onnx") as runner:
        out = runner.run(x)
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_restoring_initializer_inputs_leaves_newer_ir_versions_alone(tmp_path):
    path = tmp_path / "m.onnx"
    onnx_stage.export_onnx(_tiny(), torch.randn(1, 3, 8, 8), path, 17, dynamic_batch=False)
    model = onnx_stage.simplify(onnx_stage.load_onnx(path))
    assert onnx_stage.restore_initializer_inputs(model) == 0 and [i.name for i in model.graph.input] == ["input"]


def test_set_metadata_replaces_its_keys_and_keeps_the_others(tmp_path):
    path = tmp_path / "m.onnx"
    onnx_stage.export_onnx(_tiny(), torch.randn(1, 3, 8, 8), path, 7, dynamic_batch=False)  # IR version 3
    model = onnx_stage.load_onnx(path)
    onnx_stage.set_metadata(model, {"other": "kept", "effexport.recipe": "old"})
    onnx_stage.set_metadata(model, {"effexport.recipe": "new", "effexport.weights": "random:0"})
    onnx_stage.save_onnx(model, tmp_path / "model.onnx")
    onnx_stage.check_model(tmp_path / "model.onnx")
    assert onnx_stage.read_metadata(tmp_path / "model.onnx") == {"other": "kept", "effexport.recipe": "new",
                                                                  "effexport.weights": "random:0"}
    with pytest.raises(TypeError, match="effexport.seed"):
        onnx_stage.set_metadata(model, {"effexport.seed": 0})


def test_dropping_intermediate_value_info_keeps_the_symbolic_batch_on_input_and_output(tmp_path):
    raw = tmp_path / "raw.onnx"
    model = _tiny()
    onnx_stage.export_onnx(model, torch.randn(2, 3, 8, 8), raw, 17, dynamic_batch=True)
    exported = onnx_stage.simplify(onnx_stage.load_onnx(raw))
    recorded = len(exported.graph.value_info)
    assert recorded > 0 and onnx_stage.drop_intermediate_value_info(exported) == recorded
    assert not exported.graph.value_info
    io = onnx_stage.io_spec(exported)
    assert io["inputs"][0]["shape"][0] == "batch" and io["outputs"][0]["shape"][0] == "batch"
    onnx_stage.save_onnx(exported, tmp_path / "model.onnx")
    onnx_stage.check_model(tmp_path / "model.onnx")
    for batch in (1, 5):
        x = np.random.default_rng(batch).normal(size=(batch, 3, 8, 8)).astype(np.float32)
        with OrtRunner(tmp_path / "model.onnx") as runner:
            out = runner.run(x)
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
