"""TensorRT's explicit-quantization rules, checked on a Q/DQ ONNX before any GPU is involved.

TensorRT accepts only symmetric INT8 Q/DQ: every zero point 0, activations quantized per tensor, weights per output
channel, no quantized bias or output (TensorRT's developer guide, "Explicit Quantization"). The rules are TensorRT's,
so they live with its backend; the INT8 calibration asks them here after it builds and after it tunes the portable
form, and the backend asks again before it parses the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class QdqCheck:
    """Result of checking a QDQ model against TensorRT's explicit-quantization rules."""

    activation_quantizers: int = 0
    weight_quantizers: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and self.weight_quantizers > 0

    def to_dict(self) -> dict:
        return {"passed": self.passed, "activation_quantizers": self.activation_quantizers,
                "weight_quantizers": self.weight_quantizers, "problems": self.problems}


def _output_channel_axis(consumer: onnx.NodeProto, input_index: int) -> int | None:
    if consumer.op_type == "Conv" and input_index == 1:
        return 0
    if consumer.op_type == "Gemm" and input_index == 1:
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if consumer.op_type == "MatMul" and input_index == 1:
        return -1
    return None


def check_tensorrt_qdq(model: onnx.ModelProto | Path) -> QdqCheck:
    """Every zero point 0 (INT8), activations per-tensor, weights per output channel, no quantized bias or
    output, no BatchNormalization left."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    check = QdqCheck()
    problems = check.problems
    if any(n.op_type == "BatchNormalization" for n in graph.node):
        problems.append("BatchNormalization nodes remain (BN must be folded before quantizing)")
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} {node.name or node.output[0]}"
        if len(node.input) < 3 or node.input[2] not in init:
            problems.append(f"{where}: no constant zero point")
            continue
        zp = init[node.input[2]]
        if zp.data_type != onnx.TensorProto.INT8:
            problems.append(f"{where}: zero point is {onnx.TensorProto.DataType.Name(zp.data_type)}, not INT8")
        if np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{where}: non-zero zero point (asymmetric quantization)")
        scale = numpy_helper.to_array(init[node.input[1]]) if node.input[1] in init else None
        if scale is None:
            problems.append(f"{where}: scale is not a constant")
            continue
        if node.output[0] in outputs:
            problems.append(f"{where}: quantizes a graph output")
        is_weight = node.op_type == "DequantizeLinear" and node.input[0] in init
        if not is_weight:
            check.activation_quantizers += node.op_type == "QuantizeLinear"
            if scale.size != 1:
                problems.append(f"{where}: activation scale has {scale.size} values (per-tensor required)")
            continue
        check.weight_quantizers += 1
        weight = init[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        for consumer, index in consumers.get(node.output[0], []):
            expected = _output_channel_axis(consumer, index)
            if expected is None:
                problems.append(f"{where}: feeds input {index} of {consumer.op_type} (quantized bias or other)")
                continue
            rank = len(weight.dims)
            if scale.size != weight.dims[expected]:
                problems.append(f"{where}: {scale.size} weight scales for {weight.dims[expected]} output channels "
                                f"(per-output-channel required)")
            elif scale.size > 1 and axis % rank != expected % rank:
                problems.append(f"{where}: per-channel axis {axis}, output-channel axis is {expected % rank}")
    return check
