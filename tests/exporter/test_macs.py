"""MAC accounting: the INT8 share of small real models quantized by ONNX Runtime (and NNCF for OpenVINO), one layer
kept in float, against MACs the test computes from the layer shapes; the peak measurement on tiny GEMMs. No speed is
asserted: a rate is only checked to be a positive number."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from effexport.errors import UsageError
from effexport.exporter.macs import (
    best_rate,
    measure_peaks,
    onnx_layers,
    onnxruntime_int8_share,
    openvino_int8_share,
    peak_candidates,
)
from tests.calibration.conftest import Tiny

SIZE = 32


def conv_macs(out_channels, out_hw, in_per_group, kernel):
    return out_channels * out_hw * out_hw * in_per_group * kernel * kernel


# from the layer shapes: stride 2 halves 32 to 16; the depthwise conv sums 1 input channel per output
MACS = {"/stem/Conv": conv_macs(8, 16, 3, 3), "/dw/Conv": conv_macs(8, 16, 1, 3), "/pw/Conv": conv_macs(16, 16, 8, 1),
        "/fc/Gemm": 10 * 16}
TOTAL = sum(MACS.values())


def _inputs(n, seed=0):
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("macs") / "model.onnx"
    model = Tiny().eval()  # stem, depthwise and pointwise convolutions, linear head
    torch.onnx.export(model, torch.from_numpy(_inputs(1)), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def _quantize(source, dest, exclude=()):
    """The ONNX Runtime CPU form's settings: QDQ, UINT8 activations, per-channel INT8 weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[None]} for x in _inputs(4, seed=1)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(source), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                    extra_options={"WeightSymmetric": True, "QuantizeBias": False})
    return dest


def test_layer_macs_from_the_onnx_shapes(fp32_onnx):
    layers = onnx_layers(onnx.load(str(fp32_onnx)))
    assert {node.name: macs for node, _, macs in layers} == MACS
    assert [weight for _, weight, _ in layers] == ["stem.weight", "dw.weight", "pw.weight", "fc.weight"]


def test_fp32_model_runs_nothing_in_int8(fp32_onnx):
    share = onnxruntime_int8_share(fp32_onnx)
    assert share.share == 0 and share.total_macs == TOTAL and share.layers == 4
    assert [layer.name for layer in share.float_layers] == list(MACS)


def test_a_fully_quantized_model_runs_every_mac_in_int8(fp32_onnx, tmp_path):
    share = onnxruntime_int8_share(_quantize(fp32_onnx, tmp_path / "int8.onnx"))
    assert share.share == 1.0 and share.int8_macs == TOTAL and share.float_layers == ()
    assert share.to_dict()["share"] == 1.0


def test_an_excluded_layer_stays_float_and_lowers_the_share(fp32_onnx, tmp_path):
    import onnxruntime as ort

    path = _quantize(fp32_onnx, tmp_path / "int8-stem-float.onnx", exclude=["/stem/Conv"])
    expected = (TOTAL - MACS["/stem/Conv"]) / TOTAL
    # ALL (the backend's level) renames the float conv's weight for the NCHWc layout and the integer convs' nodes;
    # EXTENDED keeps both: the count must not depend on it
    for level in (None, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED):
        share = onnxruntime_int8_share(path, level)
        assert share.share == pytest.approx(expected) and share.share < 1
        assert [(f.name, f.op, f.macs) for f in share.float_layers] == [("/stem/Conv", "Conv", MACS["/stem/Conv"])]
        assert share.int8_macs + MACS["/stem/Conv"] == TOTAL


def test_matmul_and_transposed_gemm_macs():
    weight = numpy_helper.from_array(np.ones((16, 32), np.float32), "w")
    head = numpy_helper.from_array(np.ones((10, 32), np.float32), "h")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
         helper.make_node("Gemm", ["y", "h"], ["z"], name="gemm", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 10])], [weight, head])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert {n.name: (w, m) for n, w, m in onnx_layers(model)} == {"mm": ("w", 16 * 32), "gemm": ("h", 32 * 10)}


def test_a_symbolic_spatial_size_cannot_be_counted():
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")])
    with pytest.raises(UsageError, match="static input shape"):
        onnx_layers(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.openvino
def test_openvino_runs_the_nncf_model_in_int8_except_the_ignored_layer(fp32_onnx):
    nncf = pytest.importorskip("nncf")
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    model.reshape({model.input(0): [1, 3, SIZE, SIZE]})
    stem = next(op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    quantized = nncf.quantize(model, nncf.Dataset([x[None] for x in _inputs(4, seed=1)]), subset_size=4,
                              ignored_scope=nncf.IgnoredScope(names=[stem]))
    quantized.reshape({quantized.input(0): [2, 3, SIZE, SIZE]})
    compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    share = openvino_int8_share(compiled)  # batch 2: MACs are still counted per image
    assert share.total_macs == TOTAL and share.layers == 4
    assert share.share == pytest.approx((TOTAL - MACS["/stem/Conv"]) / TOTAL)
    assert [(f.name, f.macs, f.precision) for f in share.float_layers] == [(stem, MACS["/stem/Conv"], "f32")]
    fp32 = openvino_int8_share(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
    assert fp32.share == 0 and fp32.total_macs == TOTAL


def test_best_rate_counts_the_fastest_run():
    durations = iter([0.5, 0.004, 0.002, 0.003, 0.002])  # the untimed first run, then three timed ones
    now = [0.0]

    def clock():
        return now[0]

    def step():
        now[0] += next(durations)

    assert best_rate(step, macs=2_000_000, budget_s=0.0, min_runs=3, clock=clock) == pytest.approx(1.0)


def test_peaks_of_the_precisions_this_cpu_computes():
    peaks = measure_peaks(1, ("fp32", "int8", "bf16", "fp16"), flags=set(), size=64, budget_s=0.01,
                          f16=lambda: False)
    for precision in ("fp32", "int8"):
        assert peaks[precision].gmacs > 0 and peaks[precision].runtime.startswith(("onnxruntime", "openvino"))
        assert "64x64x64" in peaks[precision].note and peaks[precision].tried
    assert peaks["bf16"].gmacs is None and "no bf16 instructions" in peaks["bf16"].note
    assert peaks["fp16"].gmacs is None and peaks["fp16"].note
    assert peaks["int8"].to_dict()["runtime"] == peaks["int8"].runtime


def test_bf16_and_fp16_are_tried_only_where_the_cpu_computes_them():
    names = [name for name, _ in peak_candidates("bf16", {"avx512_bf16"}, lambda: False)[0]]
    assert names and all("bf16" in name for name in names)
    assert peak_candidates("fp16", set(), lambda: False)[0] == []
    assert [name for name, _ in peak_candidates("int8", set(), lambda: False)[0]][0] == "onnxruntime MatMulInteger"
