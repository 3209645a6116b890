"""The FP16 ONNX graph: FP16 weights and arithmetic, FP32 inputs and outputs.

This is what FP16 means for TensorRT 11 (strongly typed: precision comes from the graph, the FP16 builder flag
is gone) and what TensorRT 10 may use too; ONNX Runtime runs the same file on the CPU, which is where it is
verified against the PyTorch FP32 model. The conversion is ONNX Runtime's own converter
(onnxruntime.transformers.float16, a core dependency); its inserted input/output casts are appended at the end
of the node list, which the ONNX checker and some parsers reject, so the graph is sorted topologically after.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import onnx

from effexport.errors import ExportError
from effexport.exporter import onnx as onnx_stage

log = logging.getLogger(__name__)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP32 graph -> FP16 graph whose inputs and outputs stay FP32 (a Cast at each end)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings(record=True) as caught:
        # The converter warns for each weight it clamps into the FP16 range; the parity check judges the result.
        warnings.simplefilter("always")
        try:
            converted = convert_float_to_float16(model, keep_io_types=True)
        except Exception as exc:  # the converter raises whatever shape inference raises
            raise ExportError(f"could not convert the ONNX graph to FP16: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}") from exc
    for message in {str(w.message).splitlines()[0] for w in caught}:
        log.debug("fp16 converter: %s", message)
    return sort_topologically(converted)


def sort_topologically(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxslim.third_party import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.toposort()
    sorted_model = gs.export_onnx(graph)
    sorted_model.ir_version = model.ir_version
    del sorted_model.opset_import[:]
    sorted_model.opset_import.extend(model.opset_import)
    return sorted_model


def fp16_graph_file(source: Path, dest: Path) -> tuple[list[Path], dict]:
    """Write the FP16 graph of the ONNX file `source` to `dest`; returns the files written and a summary."""
    model = onnx_stage.load_onnx(source)
    converted = convert_to_fp16(model)
    del model
    files = onnx_stage.save_onnx(converted, dest)
    onnx_stage.check_model(dest)
    types = Counter(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in converted.graph.initializer)
    io = onnx_stage.io_spec(converted)
    return files, {"initializer_dtypes": dict(types), "inputs": io["inputs"], "outputs": io["outputs"],
                   "converter": "onnxruntime.transformers.float16 (keep_io_types=True)"}
