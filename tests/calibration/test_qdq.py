"""The INT8 ONNX forms from one calibration, and the checker of TensorRT's QDQ form (with negative cases)."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from effexport.backends.onnxruntime import OrtRunner
from effexport.backends.tensorrt_qdq import check_tensorrt_qdq
from effexport.calibration import qdq
from effexport.errors import UsageError
from effexport.exporter.parity import compare, tolerance_for
from effexport.recipes import FIRST_CONV, KeepFloat


@pytest.fixture
def ranges(tiny_onnx, calib_inputs, tmp_path):
    cache = tmp_path / "cache.json"
    qdq.calibrate_ranges(tiny_onnx, calib_inputs, "minmax", cache, tmp_path)
    return cache


def _build(tiny_onnx, ranges, tmp_path, form, keep=()):
    out = tmp_path / form.filename
    qdq.build_form(tiny_onnx, out, form, ranges, "minmax", list(keep))
    return out


def test_portable_form_passes_the_tensorrt_check(tiny_onnx, ranges, tmp_path, calib_inputs):
    path = _build(tiny_onnx, ranges, tmp_path, qdq.PORTABLE)
    check = check_tensorrt_qdq(path)
    assert check.passed, check.problems
    assert check.weight_quantizers == 4 and check.activation_quantizers == 4  # the inputs of 3 convs and the fc
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    # no Q/DQ on outputs of convs: the stem conv feeds the Clip directly
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    assert all(c.op_type != "QuantizeLinear" for c in model.graph.node if stem.output[0] in c.input)
    assert ops.count("Conv") == 3
    with OrtRunner(tiny_onnx) as ref, OrtRunner(path) as cand:
        report = compare(ref.run(calib_inputs), cand.run(calib_inputs), tolerance_for("int8"))
    assert report.mean_cosine > 0.98


def test_ort_cpu_form_is_not_the_tensorrt_form(tiny_onnx, ranges, tmp_path):
    path = _build(tiny_onnx, ranges, tmp_path, qdq.ORT_CPU)
    check = check_tensorrt_qdq(path)
    assert not check.passed
    assert any("UINT8" in p for p in check.problems) and any("non-zero zero point" in p for p in check.problems)


def _portable_model(tiny_onnx, ranges, tmp_path) -> onnx.ModelProto:
    return onnx.load(str(_build(tiny_onnx, ranges, tmp_path, qdq.PORTABLE)))


def _init(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def test_checker_rejects_a_nonzero_zero_point(tiny_onnx, ranges, tmp_path):
    model = _portable_model(tiny_onnx, ranges, tmp_path)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zp = _init(model, q.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zp.name))
    assert any("non-zero zero point" in p for p in check_tensorrt_qdq(model).problems)


def test_checker_rejects_per_tensor_weights_and_per_channel_activations(tiny_onnx, ranges, tmp_path):
    model = _portable_model(tiny_onnx, ranges, tmp_path)
    init = {t.name for t in model.graph.initializer}
    weight_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init)
    scale = _init(model, weight_dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale)[:1].copy(), scale.name))
    act_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    act_scale = _init(model, act_q.input[1])
    act_scale.CopyFrom(numpy_helper.from_array(np.full(4, 0.1, np.float32), act_scale.name))
    problems = check_tensorrt_qdq(model).problems
    assert any("per-output-channel" in p for p in problems)
    assert any("per-tensor required" in p for p in problems)


def test_checker_rejects_a_model_without_quantized_weights(tiny_onnx):
    check = check_tensorrt_qdq(tiny_onnx)
    assert check.problems == [] and not check.passed  # the FP32 model is no INT8 model


def test_keep_float_layers_have_no_quantized_weights(tiny_onnx, ranges, tmp_path):
    model = onnx.load(str(tiny_onnx))
    keep = qdq.resolve_keep_float(model, (KeepFloat(FIRST_CONV, "stem"), KeepFloat("Gemm", "classifier")))
    assert [k.op_type for k in keep] == ["Conv", "Gemm"] and keep[0].reason == "stem"
    path = _build(tiny_onnx, ranges, tmp_path, qdq.PORTABLE, keep)
    out = onnx.load(str(path))
    assert check_tensorrt_qdq(out).weight_quantizers == 2
    float_nodes = {n.name: n for n in out.graph.node if n.name in {k.node for k in keep}}
    init = {t.name for t in out.graph.initializer}
    assert all(n.input[1] in init for n in float_nodes.values())  # the float weight, no DequantizeLinear
    with pytest.raises(UsageError, match="matches no"):
        qdq.resolve_keep_float(model, (KeepFloat("no_such_layer", "x"),))


@pytest.mark.parametrize("method", qdq.METHODS)
def test_every_method_calibrates_and_builds(tiny_onnx, calib_inputs, tmp_path, method):
    cache = tmp_path / f"{method}.json"
    qdq.calibrate_ranges(tiny_onnx, calib_inputs, method, cache, tmp_path)
    assert cache.is_file()
    out = tmp_path / "m.onnx"
    qdq.build_form(tiny_onnx, out, qdq.PORTABLE, cache, method, [])
    assert check_tensorrt_qdq(out).passed


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="minmax"):
        qdq.ort_method("kl")
