"""INT8 ONNX with explicit QuantizeLinear/DequantizeLinear, built with ONNX Runtime's quantization tools.

Two forms come from one calibration (one table of tensor ranges), because no single file is both fast and
faithful everywhere (measured on this 2-core AVX2 CPU without VNNI; numbers in bench/int8.py's table):

- `model_int8_qdq.onnx`, the portable form, for TensorRT: symmetric INT8 activations (per-tensor, zero point
  0) and per-channel INT8 weights on the output-channel axis, Q/DQ only on the inputs of Conv/Gemm/MatMul,
  none on their outputs or biases. TensorRT accepts only this and fuses each Conv with the activation after
  it. Quantizing a Conv output before its ReLU6 spends the 8-bit range on values the clip discards (measured
  on EfficientNet-Lite0: top-1 agreement 49% with that placement, 93% without). Other runtimes run this file
  but badly here: ONNX Runtime's CPU kernels fuse only DQ -> Conv -> Q into an integer convolution, so it
  dequantizes and runs float convolutions (2.5x to 2.8x slower than FP32); OpenVINO's int8 kernels on x86 without
  VNNI overflow on 8-bit weights (its output differed from ONNX Runtime's on the same file: cosine 0.64).
- `model_int8_ort_cpu.onnx`, for ONNX Runtime on a CPU: UINT8 asymmetric activations on every operator's
  inputs and outputs (DQ -> Conv -> Q fuses into QLinearConv, ReLU/Clip fold into the ranges) and per-channel
  8-bit weights: INT8 (U8S8) on a CPU with VNNI or AMX; UINT8 (U8U8) on x86 without them, where ONNX Runtime
  multiplies u8 by s8 with VPMADDUBSW, whose 16-bit sums saturate, and ONNX Runtime's quantization guide names
  U8U8 (no saturation) and reduce_range (7-bit weights) as the ways out. 7-bit weights were too coarse for the
  trained EfficientNet-Lite0: min cosine 0.968 against FP32 on the 126 held-out views, 0.993 with U8U8 (both
  computed exactly on an AMD EPYC with VNNI, where neither saturates). Signed activations ran 3x slower than
  unsigned in ONNX Runtime here.

OpenVINO gets its own model from NNCF (nncf_ov.py).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from effexport.calibration.options import METHODS
from effexport.errors import MissingDependencyError, UsageError
from effexport.recipes import FIRST_CONV, KeepFloat, Recipe

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
DEFAULT_KEEP_FLOAT = (KeepFloat(FIRST_CONV, "the first convolution sees the normalized image through 3 input "
                                            "channels: little compute to gain, the largest error to lose"),)


@dataclass(frozen=True)
class QdqForm:
    """One INT8 ONNX layout and the backends it is for."""

    name: str
    filename: str
    backends: tuple[str, ...]
    signed_activations: bool
    op_types: tuple[str, ...] | None  # None: every operator ONNX Runtime can quantize
    description: str
    unsigned_weights: bool = False  # UINT8 weights (U8U8 kernels), symmetric: zero point 128

    def extra_options(self) -> dict:
        # QDQDisableWeightAdjustForInt32Bias: ONNX Runtime otherwise widens weight scales (up to 9x measured on
        # EfficientNet-Lite0) so that an int32 bias would fit, even with QuantizeBias off and the bias in float.
        options = {"WeightSymmetric": True, "QuantizeBias": False, "QDQDisableWeightAdjustForInt32Bias": True}
        if self.signed_activations:
            options["ActivationSymmetric"] = True
            options["OpTypesToExcludeOutputQuantization"] = list(WEIGHTED_OPS)
        return options


PORTABLE = QdqForm("qdq", "model_int8_qdq.onnx", ("tensorrt",), signed_activations=True,
                   op_types=WEIGHTED_OPS,
                   description="symmetric INT8 Q/DQ on Conv/Gemm inputs, per-channel weights: TensorRT (ONNX "
                               "Runtime runs it slower than FP32; OpenVINO on CPUs without VNNI, unfaithfully)")
ORT_CPU = QdqForm("ort_cpu", "model_int8_ort_cpu.onnx", ("onnxruntime",), signed_activations=False,
                  op_types=None,
                  description="UINT8 activations, per-channel INT8 weights (U8S8, a CPU with VNNI or AMX): ONNX "
                              "Runtime on a CPU")
ORT_CPU_NO_VNNI = ("UINT8 activations, per-channel UINT8 weights (U8U8: no saturation without VNNI): ONNX Runtime on "
                   "a CPU")
FORMS: dict[str, QdqForm] = {f.name: f for f in (PORTABLE, ORT_CPU)}


def cpu_int8_choice() -> dict:
    """Whether 8-bit u8 x s8 products saturate here (x86 without VNNI/AMX), which decides the weights of the CPU
    INT8 forms; recorded in the manifest."""
    from effexport.exporter.cpu_env import INT8_DOT_FLAGS, cpu_flags, cpu_model, int8_weights_overflow

    flags = cpu_flags()
    reduced = int8_weights_overflow(flags)
    return {"cpu": cpu_model(), "int8_dot_product": [f for f in INT8_DOT_FLAGS if f in flags],
            "reduced_weights": reduced,
            "why": "no VNNI/AMX: u8 x s8 products would saturate 16-bit sums, so ONNX Runtime's form has UINT8 weights "
                   "(U8U8) and OpenVINO's 7-bit weights (NNCF overflow fix on every layer)" if reduced else
                   "8-bit multiply-accumulate in 32 bits (or not x86): full 8-bit weights"}


def forms_for(cpu: dict) -> dict[str, QdqForm]:
    """The forms to build on this CPU: the ONNX Runtime CPU form has UINT8 weights where INT8 ones would saturate.
    The portable form never changes: TensorRT's INT8 arithmetic does not overflow."""
    if not cpu["reduced_weights"]:
        return FORMS
    return {**FORMS, ORT_CPU.name: replace(ORT_CPU, unsigned_weights=True, description=ORT_CPU_NO_VNNI)}


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


# ---------------------------------------------------------------------------------------------- keep-float


@dataclass(frozen=True)
class FloatLayer:
    node: str
    op_type: str
    reason: str
    pattern: str


def keep_float_rules(recipe: Recipe) -> tuple[KeepFloat, ...]:
    return recipe.int8_keep_float or DEFAULT_KEEP_FLOAT


def resolve_keep_float(model: onnx.ModelProto, rules: tuple[KeepFloat, ...]) -> list[FloatLayer]:
    """The weighted nodes (Conv/Gemm/MatMul) each rule names; a rule that matches nothing is a recipe bug."""
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    out: dict[str, FloatLayer] = {}
    for rule in rules:
        if rule.pattern == FIRST_CONV:
            hits = [n for n in weighted if n.op_type == "Conv"][:1]
        else:
            hits = [n for n in weighted if re.search(rule.pattern, n.name)]
        if not hits:
            raise UsageError(f"INT8 keep-float pattern {rule.pattern!r} matches no Conv/Gemm/MatMul node of this "
                             f"model; the recipe's int8_keep_float is out of date")
        for node in hits:
            out.setdefault(node.name, FloatLayer(node.name, node.op_type, rule.reason, rule.pattern))
    return list(out.values())


# ---------------------------------------------------------------------------------------------- calibrate / build


class ArrayReader:
    """ONNX Runtime's CalibrationDataReader over an NCHW array, one sample at a time."""

    def __init__(self, inputs: np.ndarray, input_name: str):
        self.inputs, self.input_name, self.index = inputs, input_name, 0

    def get_next(self) -> dict | None:
        if self.index >= len(self.inputs):
            return None
        self.index += 1
        return {self.input_name: self.inputs[self.index - 1:self.index]}

    def rewind(self) -> None:
        self.index = 0

    def __len__(self) -> int:
        return len(self.inputs)


def _require_cache_api():
    try:
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    except ImportError as exc:
        raise MissingDependencyError("INT8 calibration caches need a newer onnxruntime (one whose quantize_static "
                                     "takes calibration_cache_path): pip install -U onnxruntime") from exc
    return create_calibrator, save_tensors_data


def calibrate_ranges(fp32: Path, inputs: np.ndarray, method: str, cache: Path, work: Path,
                     percentile: float = 99.999) -> None:
    """Run the calibration once over every tensor any form quantizes; write the range table to `cache`."""
    create_calibrator, save_tensors_data = _require_cache_api()
    options = {"percentile": percentile} if method == "percentile" else {}
    model = onnx.load(str(fp32), load_external_data=False)
    input_name = model.graph.input[0].name
    with _quiet_onnxruntime_logging():
        calibrator = create_calibrator(Path(fp32), None, augmented_model_path=str(work / "augmented.onnx"),
                                       calibrate_method=ort_method(method), extra_options=options)
        calibrator.collect_data(ArrayReader(inputs, input_name))
        save_tensors_data(calibrator.compute_data(), cache)
    del calibrator


@contextmanager
def _quiet_onnxruntime_logging():
    """ONNX Runtime's quantizer logs advice and per-weight notes on the root logger; keep them at debug level."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def build_form(fp32: Path, out: Path, form: QdqForm, cache: Path, method: str, keep_float: list[FloatLayer]) -> None:
    """Quantize `fp32` into `form` from the cached ranges (no calibration run happens here)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    _require_cache_api()
    with _quiet_onnxruntime_logging():
        quantize_static(
            str(fp32), str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(form.op_types) if form.op_types else None, per_channel=True,
            reduce_range=False,  # 7-bit weights: too coarse (module docstring)
            activation_type=QuantType.QInt8 if form.signed_activations else QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if form.unsigned_weights else QuantType.QInt8,
            nodes_to_exclude=[f.node for f in keep_float],
            calibrate_method=ort_method(method), extra_options=form.extra_options(),
            calibration_cache_path=str(cache),
        )
