"""OpenVINO-native INT8: NNCF post-training quantization of the OpenVINO model converted from the verified ONNX.

For OpenVINO only: NNCF quantizes non-negative activations to UINT8, which TensorRT rejects. The same
calibration inputs and the recipe's keep-float layers are used as for the QDQ forms; the ranges are NNCF's
own (NNCF's statistics over the same inputs), not the ONNX Runtime table. Four settings differ from NNCF's defaults:

- Activations are quantized per tensor. NNCF quantizes the input of a depthwise convolution per channel by
  default, with ranges fitted to each channel of the calibration data; on photographs calibration never saw, a
  channel whose calibration maximum was 0.06 carried values up to 6 (the ReLU6 range) and was clipped. Trained
  EfficientNet-Lite0, 126 held-out views, built-in calibration photographs, AMD EPYC with AVX-512 VNNI: per
  channel, min cosine 0.868 (top-1 agreement 98.4%); per tensor, 0.991 (99.2%).
- Activation ranges are the minimum and maximum over all calibration inputs (RangeEstimatorParametersSet.MINMAX),
  as the ONNX Runtime forms' minmax ranges are. NNCF's default for per-tensor activations is the mean over inputs of
  each input's minimum and maximum, which clips whatever exceeds the average input, on every input that does. Trained
  EfficientNet-Lite0, built-in calibration photographs, judged on the 126 held-out views, Intel Xeon with AMX: the
  tuned NNCF form reached min cosine 0.9935 with 14 layers in float under NNCF's default, 0.9965 with 8 under min/max.
- Full bias correction (BiasCorrection, not FastBiasCorrection): measured with a trained EfficientNet-Lite on an
  Intel Xeon with AVX-512 VNNI (130 crops of 13 photos), 93.1% -> 96.9% top-1 agreement; within noise on the
  EPYC above (min cosine 0.9906 fast, 0.9912 full).
- On a CPU with VNNI or AMX, no overflow fix. NNCF's default (FIRST_LAYER) gives the first quantized layer 7-bit
  weights that an 8-bit multiply-accumulate in 32 bits does not need (87.7% -> 93.1% on that Xeon); without VNNI
  every layer gets 7-bit weights (OverflowFix.ENABLE), since 8-bit weights saturate 16-bit accumulators there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from effexport.backends.openvino import copy_metadata, number_generated_names
from effexport.calibration.qdq import FloatLayer
from effexport.errors import MissingDependencyError

log = logging.getLogger(__name__)

NNCF_XML = "model_int8.xml"
NNCF_BIN = "model_int8.bin"


def nncf_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def require_nncf():
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise MissingDependencyError("OpenVINO INT8 needs openvino and nncf: pip install 'effexport[nncf]'") from exc
    return nncf, ov


WEIGHTED_OV_OPS = ("Convolution", "GroupConvolution", "MatMul")


def _ov_names(ov_model, keep_float: list[FloatLayer]) -> list[str]:
    """OpenVINO op names of the keep-float ONNX nodes. The ONNX frontend splits Conv/Gemm into the weighted op,
    named "<node>/WithoutBiases", and a bias Add that keeps the node's name; NNCF must ignore the weighted op."""
    wanted = {f.node + "/WithoutBiases" for f in keep_float} | {f.node for f in keep_float}
    return [op.get_friendly_name() for op in ov_model.get_ops()
            if op.get_type_name() in WEIGHTED_OV_OPS and op.get_friendly_name() in wanted]


def quantize_openvino(fp32_onnx: Path, inputs: np.ndarray, keep_float: list[FloatLayer], xml: Path,
                      overflow_fix: bool = False) -> dict:
    """Write `xml` (+ .bin) with NNCF INT8; returns what the manifest records about the run.

    `overflow_fix`: 7-bit weights on every layer (NNCF's OverflowFix.ENABLE), for CPUs without VNNI where 8-bit
    weights saturate OpenVINO's 16-bit accumulators; otherwise none (OverflowFix.DISABLE)."""
    nncf, ov = require_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.WARNING)  # NNCF logs every ignored node at INFO on its own handler
    model = ov.convert_model(str(fp32_onnx))
    ignored = _ov_names(model, keep_float)
    if len(ignored) != len(keep_float):
        log.warning("%d of %d keep-float layers have no OpenVINO op of the same name; NNCF quantizes them",
                    len(keep_float) - len(ignored), len(keep_float))
    dataset = nncf.Dataset(list(inputs), lambda x: x[None])
    fix = OverflowFix.ENABLE if overflow_fix else OverflowFix.DISABLE
    quantized = nncf.quantize(model, dataset, subset_size=len(inputs), fast_bias_correction=False,
                              ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
                              advanced_parameters=AdvancedQuantizationParameters(
                                  overflow_fix=fix, activations_quantization_params=QuantizationParameters(
                                      per_channel=False),
                                  activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX))
    # NNCF and the converter name the nodes they make from counters global to the process (`Reshape_1054083` in a
    # full build, `Reshape_12322` in a shard that built the model first): numbered in graph order, as the FP32 IR
    # is, the same model gives the same model.xml whichever process or shard built it.
    renamed = number_generated_names(quantized)
    # The FP32 export's metadata (recipe, preprocessing, class count, labels) into rt_info, as for the FP32 IR.
    copy_metadata(fp32_onnx, quantized)
    # compress_to_fp16=False: the non-quantized weights (keep-float layers, biases) stay FP32 as verified.
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return {"tool": "nncf.quantize", "preset": "performance (default)", "subset_size": len(inputs),
            "bias_correction": "full", "activations": "per tensor", "activation_ranges": "min/max over all inputs",
            "overflow_fix": fix.value, "ignored_ops": ignored, "generated_names_renumbered": renamed}
