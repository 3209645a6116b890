"""MAC accounting for the bench: which share of a model's convolution and matmul MACs a runtime executes in INT8,
and how many MACs per second this machine reaches in each precision.

INT8 share. A quantized model is only as fast as the layers the runtime really runs on integer kernels, and that is
decided by the runtime, not by the file: ONNX Runtime fuses DequantizeLinear -> Conv -> QuantizeLinear into
QLinearConv only where the pattern is complete, and OpenVINO runs a convolution in u8/i8 only where its
low-precision transformations match. So the share is read from what the runtime made of the artifact:

- ONNX Runtime: the session's optimized graph (`SessionOptions.optimized_model_filepath`, at the optimization level
  the backend runs with: ONNX Runtime's default, ALL). Fusion renames nodes (`/c2/Conv_token_4`) and the NCHWc
  layout pass renames float weights (`reorder`), but integer kernels consume the quantized weight initializers
  under their own names. A layer of the artifact is INT8 when an integer operator of the optimized graph
  (QLinearConv, ConvInteger, MatMulInteger, QLinearMatMul, QGemm, ...) consumes its weight; every other layer is
  float. MACs come from the artifact's shapes (onnx.shape_inference at batch 1).
- OpenVINO: the compiled model's runtime graph (`get_runtime_model()`): each Convolution, GroupConvolution,
  MatMul or FullyConnected node's rt_info `runtimePrecision` (u8/i8 = INT8), MACs from its output and weight
  shapes there.

Peak. A square GEMM (512 x 512 x 512) per precision with the bench's thread count, timed best-of-runs for a fraction
of a second, in every installed runtime that computes that precision (ONNX Runtime MatMul and MatMulInteger,
OpenVINO MatMul under an inference-precision hint, an INT8 FullyConnected made by a FakeQuantize, and torch for bf16
when OpenVINO is absent); the fastest counts. bf16 and fp16 are measured only where the CPU computes them (bf16:
avx512_bf16/AMX; fp16: where OpenVINO says it computes f16 under the f16 hint), otherwise their peak is blank.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from effexport.errors import UsageError
from effexport.exporter.cpu_env import NATIVE_BF16

log = logging.getLogger(__name__)

# ONNX Runtime operators that multiply 8-bit integers (standard and com.microsoft).
ORT_INT8_OPS = frozenset({"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm",
                          "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
ONNX_CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv"})
ONNX_MATMUL_OPS = frozenset({"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"})
WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3}  # the weight's input index where it is not 1
OV_WEIGHTED_LAYERS = frozenset({"Convolution", "GroupConvolution", "MatMul", "FullyConnected"})
OV_INT8 = frozenset({"u8", "i8"})

PEAK_SIZE = 512  # M = N = K: 134 M MACs, a few ms per run, inside the caches of a server core
PEAK_BUDGET_S = 0.2  # per runtime and precision; the best run counts
PEAK_MIN_RUNS = 3


@dataclass(frozen=True)
class Layer:
    """One convolution or matmul: its MACs per image and the precision it runs in."""

    name: str
    op: str
    macs: int
    precision: str

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "macs": self.macs, "precision": self.precision}


@dataclass(frozen=True)
class Int8Share:
    """The share of a model's convolution and matmul MACs a runtime executes in INT8."""

    runtime: str
    int8_macs: int
    total_macs: int
    float_layers: tuple[Layer, ...]
    layers: int
    how: str

    @property
    def share(self) -> float:
        return self.int8_macs / self.total_macs if self.total_macs else 0.0

    def to_dict(self) -> dict:
        return {"share": round(self.share, 4), "int8_macs": self.int8_macs, "total_macs": self.total_macs,
                "layers": self.layers, "float_layers": [f.to_dict() for f in self.float_layers], "how": self.how}


# ---------------------------------------------------------------------------------------------- ONNX Runtime


def _static_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs have batch 1; any other symbolic dimension cannot be counted."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if index:
                raise UsageError(f"counting MACs needs a static input shape; input {value.name!r} has the symbolic "
                                 f"dimension {dim.dim_param or '?'} at axis {index}")
            dim.Clear()
            dim.dim_value = 1
    return model


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {i.name: tuple(i.dims) for i in inferred.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _weight_of(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], initializers: set[str]) -> str | None:
    """The initializer holding a layer's weight, through a DequantizeLinear in QDQ graphs."""
    candidates = [WEIGHT_INPUT.get(node.op_type, 1)]
    if node.op_type in ("MatMul", "MatMulInteger"):
        candidates.append(0)  # x @ W or W @ x
    for index in candidates:
        if index >= len(node.input):
            continue
        name = node.input[index]
        producer = producers.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            name = producer.input[0]
        if name in initializers:
            return name
    return None


def _onnx_layer_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """MACs of one convolution or matmul node at the shapes of its output, weight and first input."""
    out = shapes.get(node.output[0])
    if out is None:
        return None
    if node.op_type in ONNX_CONV_OPS:
        weight = shapes.get(node.input[WEIGHT_INPUT.get(node.op_type, 1)])
        return int(np.prod(out)) * int(np.prod(weight[1:])) if weight else None
    a = shapes.get(node.input[0])
    if a is None:
        return None
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return int(np.prod(out)) * a[0 if trans_a else 1]
    return int(np.prod(out)) * a[-1]


def onnx_layers(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str | None, int]]:
    """Every convolution and matmul of an ONNX graph with its weight initializer and MACs per image."""
    model = _static_batch(model)
    shapes = _shapes(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ONNX_CONV_OPS | ONNX_MATMUL_OPS or node.domain not in ("", "ai.onnx"):
            continue
        macs = _onnx_layer_macs(node, shapes)
        if macs is None:
            raise UsageError(f"cannot infer the shapes of {node.op_type} node {node.name!r} to count its MACs")
        layers.append((node, _weight_of(node, producers, initializers), macs))
    return layers


def optimized_onnx(path: Path, level: Any = None) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for `path`, at `level` (default: ONNX Runtime's own default,
    ORT_ENABLE_ALL, which is what the onnxruntime backend's sessions use)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="effexport-ort-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath, load_external_data=False)


def onnxruntime_int8_share(path: Path, level: Any = None) -> Int8Share:
    """The share of the artifact's convolution and matmul MACs that ONNX Runtime runs on integer kernels."""
    model = onnx.load(str(path), load_external_data=False)
    optimized = optimized_onnx(Path(path), level)
    consumed = {name for node in optimized.graph.node if node.op_type in ORT_INT8_OPS for name in node.input}
    int8_macs = total = 0
    floats = []
    layers = onnx_layers(model)
    for node, weight, macs in layers:
        total += macs
        if weight is not None and weight in consumed:
            int8_macs += macs
        else:
            floats.append(Layer(node.name or node.output[0], node.op_type, macs, "float"))
    return Int8Share("onnxruntime", int8_macs, total, tuple(floats), len(layers),
                     "layers whose weights an integer operator of ONNX Runtime's optimized graph consumes; MACs "
                     "from the artifact's shapes at batch 1")


def qdq_int8_share(path: Path) -> Int8Share:
    """The share of a QDQ file's convolution and matmul MACs whose weights the file quantizes: what an engine that
    honours every Q/DQ pair (TensorRT) runs in INT8. Not what ONNX Runtime's CPU kernels make of the file."""
    model = onnx.load(str(path), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    int8_macs = total = 0
    floats = []
    layers = onnx_layers(model)
    for node, _, macs in layers:
        total += macs
        source = producers.get(node.input[WEIGHT_INPUT.get(node.op_type, 1)]) if len(node.input) > 1 else None
        if source is not None and source.op_type == "DequantizeLinear":
            int8_macs += macs
        else:
            floats.append(Layer(node.name or node.output[0], node.op_type, macs, "float"))
    return Int8Share("qdq file", int8_macs, total, tuple(floats), len(layers),
                     "layers whose weight the file feeds through DequantizeLinear; MACs from its shapes at batch 1")


# ---------------------------------------------------------------------------------------------- OpenVINO


def _rt(info: Any, key: str) -> str:
    value = info[key] if key in info else ""
    return value.astype(str) if hasattr(value, "astype") else str(value)


def _ov_layer_macs(op: Any, layer_type: str) -> int | None:
    out = op.get_output_partial_shape(0)
    if not out.is_static or op.get_input_size() < 2:
        return None
    out = out.to_shape()
    weight = op.input(1).get_partial_shape()
    if layer_type in ("Convolution", "GroupConvolution"):
        if not weight.is_static:
            return None
        weight = list(weight.to_shape())
        # grouped weights are [groups, out/groups, in/groups, k...]: one output element sums in/groups x k MACs
        per_output = weight[2:] if len(weight) == len(out) + 1 else weight[1:]
        return int(np.prod(list(out))) * int(np.prod(per_output))
    first = op.input(0).get_partial_shape()
    if not first.is_static:
        return None
    return int(np.prod(list(out))) * int(first.to_shape()[-1])


def openvino_int8_share(model: Any, batch: int = 1) -> Int8Share:
    """The share of convolution and matmul MACs OpenVINO's CPU plugin runs in u8/i8. `model` is a compiled model
    (what a runner timed) or the path of an IR, compiled here at `batch` with the f32 hint the int8 backend uses."""
    if isinstance(model, (str, Path)):
        model = _compile_ir(Path(model), batch)
    images = 1
    first = model.input(0).get_partial_shape()
    if first.rank.is_static and first[0].is_static:
        images = first[0].get_length() or 1
    int8_macs = total = layers = 0
    floats = []
    for op in model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = _rt(info, "layerType")
        if layer_type not in OV_WEIGHTED_LAYERS:
            continue
        macs = _ov_layer_macs(op, layer_type)
        if macs is None:
            raise UsageError(f"OpenVINO layer {op.get_friendly_name()!r} has a dynamic shape; compile the model at "
                             "a static batch to count its MACs")
        macs //= images
        layers += 1
        total += macs
        precision = _rt(info, "runtimePrecision").lower()
        if precision in OV_INT8:
            int8_macs += macs
        else:
            floats.append(Layer(_rt(info, "originalLayersNames").split(",")[0] or op.get_friendly_name(),
                                layer_type, macs, precision))
    return Int8Share("openvino", int8_macs, total, tuple(floats), layers,
                     "runtime graph of the compiled model: runtimePrecision u8/i8 of each Convolution, "
                     "GroupConvolution, MatMul and FullyConnected node; MACs from its shapes, per image")


def _compile_ir(path: Path, batch: int) -> Any:
    from effexport.errors import require

    ov = require("openvino", "openvino", "counting OpenVINO's INT8 MACs")
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(str(path))
    shape = model.input(0).get_partial_shape()
    shape[0] = batch
    model.reshape({model.input(0): shape})
    return core.compile_model(model, "CPU", {hints.inference_precision: "f32"})


def int8_share(backend: str, artifact: Path, compiled: Any = None) -> Int8Share | None:
    """The INT8 share of a backend's int8 artifact; None for a backend this cannot look into (TensorRT)."""
    if backend == "onnxruntime":
        return onnxruntime_int8_share(artifact)
    if backend == "openvino":
        return openvino_int8_share(compiled if compiled is not None else artifact)
    return None


# ---------------------------------------------------------------------------------------------- peak rate


@dataclass(frozen=True)
class Peak:
    """The fastest MAC rate measured for one precision, or why there is none."""

    precision: str
    gmacs: float | None
    runtime: str | None
    note: str = ""
    tried: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict:
        return {"gmacs": None if self.gmacs is None else round(self.gmacs, 1), "runtime": self.runtime,
                "note": self.note, "tried": {name: round(rate, 1) for name, rate in self.tried}}


def best_rate(step: Callable[[], object], macs: int, budget_s: float = PEAK_BUDGET_S,
              min_runs: int = PEAK_MIN_RUNS, clock: Callable[[], float] = time.perf_counter) -> float:
    """GMAC/s of the fastest of repeated runs within `budget_s` (after one untimed run): on a shared machine the
    best run is the one least disturbed."""
    step()
    best = float("inf")
    runs = 0
    start = clock()
    while runs < min_runs or clock() - start < budget_s:
        t0 = clock()
        step()
        best = min(best, clock() - t0)
        runs += 1
    return macs / best / 1e9 if best > 0 else float("inf")


def _ort_gemm(threads: int, int8: bool, n: int) -> Callable[[], object]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:  # u8 activations x s8 weights, as the ONNX Runtime CPU INT8 form runs them
        op, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        weight = rng.integers(-127, 128, (n, n), dtype=np.int8)
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    else:
        op, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        weight = rng.standard_normal((n, n), dtype=np.float32)
        a = rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": a})


def _ov_gemm(threads: int, precision: str, n: int) -> Callable[[], object] | None:
    """An OpenVINO MatMul under the precision's hint (INT8: FakeQuantize -> i8 weights, which the CPU plugin turns
    into a u8 x i8 FullyConnected); None when the compiled layer does not run in that precision."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    param = ops.parameter([n, n], ov.Type.f32)
    if precision == "int8":
        low, high = ops.constant(np.float32(0)), ops.constant(np.float32(2.55))
        x = ops.fake_quantize(param, low, high, low, high, 256)
        weight = ops.multiply(ops.convert(ops.constant(rng.integers(-127, 128, (n, n), dtype=np.int8)), ov.Type.f32),
                              ops.constant(np.full((1, n), 0.01, np.float32)))
    else:
        x, weight = param, ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(x, weight, False, False)], [param])
    hint = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f16"}[precision]
    compiled = ov.Core().compile_model(model, "CPU", {hints.inference_precision: hint,
                                                      props.inference_num_threads: threads,
                                                      hints.performance_mode: hints.PerformanceMode.LATENCY})
    expected = {"fp32": {"f32"}, "int8": OV_INT8, "bf16": {"bf16"}, "fp16": {"f16"}}[precision]
    ran = {_rt(op.get_rt_info(), "runtimePrecision").lower() for op in compiled.get_runtime_model().get_ordered_ops()
           if _rt(op.get_rt_info(), "layerType") in OV_WEIGHTED_LAYERS}
    if not ran or not ran <= expected:
        log.info("OpenVINO ran the %s peak GEMM in %s; not counted", precision, ", ".join(sorted(ran)) or "nothing")
        return None
    request = compiled.create_infer_request()
    a = rng.random((n, n), dtype=np.float32)
    return lambda: request.infer({0: a})


def _torch_gemm(threads: int, precision: str, n: int) -> Callable[[], object]:
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    return lambda: torch.mm(a, b)


def _has(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def peak_candidates(precision: str, flags: set[str], f16: Callable[[], bool]) -> tuple[list[tuple[str, Callable]], str]:
    """The runtimes that can compute `precision` at full speed here, each with a maker of its GEMM, or why none."""
    openvino = _has("openvino")
    if precision in ("fp32", "int8"):
        op = "MatMulInteger" if precision == "int8" else "MatMul"
        candidates = [(f"onnxruntime {op}", lambda t, n: _ort_gemm(t, precision == "int8", n))]
        if openvino:
            layer = "FullyConnected u8 x i8" if precision == "int8" else "MatMul f32"
            candidates.append((f"openvino {layer}", lambda t, n: _ov_gemm(t, precision, n)))
        return candidates, ""
    if precision == "bf16":
        if not any(f in flags for f in NATIVE_BF16):
            return [], "the CPU has no bf16 instructions, neither avx512_bf16 nor AMX"
        if openvino:
            return [("openvino MatMul bf16", lambda t, n: _ov_gemm(t, "bf16", n))], ""
        return [("torch mm bf16", lambda t, n: _torch_gemm(t, "bf16", n))], ""
    if precision == "fp16":
        if not openvino:
            return [], "no runtime here says whether the CPU computes fp16: OpenVINO is not installed"
        if not f16():
            return [], "the CPU does not compute fp16: OpenVINO runs its f16 hint in another precision"
        return [("openvino MatMul f16", lambda t, n: _ov_gemm(t, "fp16", n))], ""
    raise UsageError(f"no peak for precision {precision!r}")


def measure_peaks(threads: int, precisions: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8"),
                  flags: set[str] | None = None, size: int = PEAK_SIZE, budget_s: float = PEAK_BUDGET_S,
                  f16: Callable[[], bool] = lambda: False) -> dict[str, Peak]:
    """This machine's peak MAC rate per precision at `threads` threads (about budget_s per runtime tried). `f16`
    says whether the CPU computes fp16 when asked (the OpenVINO backend's `runs_f16`, passed in by the caller)."""
    from effexport.exporter.cpu_env import cpu_flags

    flags = cpu_flags() if flags is None else flags
    peaks = {}
    for precision in precisions:
        candidates, why = peak_candidates(precision, flags, f16)
        tried, notes = [], []
        for name, make in candidates:
            try:
                step = make(threads, size)
            except Exception as exc:  # a runtime that cannot build the GEMM here is skipped, the others count
                notes.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            if step is None:
                notes.append(f"{name}: did not run in {precision}")
                continue
            tried.append((name, best_rate(step, size ** 3, budget_s)))
        if tried:
            name, rate = max(tried, key=lambda t: t[1])
            peaks[precision] = Peak(precision, rate, name, f"{size}x{size}x{size} GEMM, {threads} threads, best run",
                                    tuple(tried))
        else:
            peaks[precision] = Peak(precision, None, None, why or "; ".join(notes) or "no runtime computes it here")
    return peaks


def achieved_gmacs(macs_per_image: int, batch: int, seconds: float) -> float:
    return macs_per_image * batch / seconds / 1e9 if seconds > 0 else float("inf")
