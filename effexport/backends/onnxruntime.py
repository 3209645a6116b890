"""ONNX Runtime (CPU): the reference runtime every ONNX export is verified in.

Its artifacts are ONNX files: the verified FP32 export itself, and ONNX *variants* (fp16: an FP16 graph with FP32
inputs and outputs, built from the FP32 export; int8: the calibration's ONNX Runtime CPU form). A variant builder
receives the model its precision starts from (`source_precision`) and writes the variant. Variants are also the
sources other backends build from (TensorRT's FP16 engine is built from the fp16 variant), so a new precision
that is a transformation of the ONNX graph plugs in here with `register_onnx_variant`. INT8 is the exception that
needs data: its forms come from one calibration (effexport.calibration.int8), one form per backend.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from effexport.backends import Availability, BuildOutput, run_in_batches
from effexport.errors import UsageError

MODEL_FILE = "model.onnx"

# precision -> builder(source_fp32_onnx, dest_onnx) -> (files written, info for the report)
OnnxVariantBuilder = Callable[[Path, Path], tuple[list[Path], dict]]
ONNX_VARIANTS: dict[str, OnnxVariantBuilder] = {}


def register_onnx_variant(precision: str, builder: OnnxVariantBuilder) -> None:
    ONNX_VARIANTS[precision] = builder


def _fp16_variant(source: Path, dest: Path) -> tuple[list[Path], dict]:
    from effexport.exporter.onnx_fp16 import fp16_graph_file

    return fp16_graph_file(source, dest)


def _int8_variant(source: Path, dest: Path) -> tuple[list[Path], dict]:
    """The source is already the calibrated ONNX Runtime CPU form: the artifact is a copy of it, verified against
    PyTorch in its own folder beside the other precisions."""
    shutil.copyfile(source, dest)
    return [dest], {"from": Path(source).name, "what": "the calibration's ONNX Runtime CPU form (copied)"}


register_onnx_variant("fp16", _fp16_variant)
register_onnx_variant("int8", _int8_variant)


def probe() -> Availability:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Availability("onnxruntime", False, reason=f"onnxruntime does not import ({exc}); pip install -e .")
    return Availability("onnxruntime", True, version=ort.__version__, device="CPU",
                        details={"providers": ort.get_available_providers()})


def source_precision(precision: str, options: Any = None) -> str:
    return "int8" if precision == "int8" else "fp32"


def build(source: Path, folder: Path, precision: str, options: Any = None) -> BuildOutput:
    """The ONNX variant for `precision`, written into `folder` (fp32 needs no build: it is the export)."""
    if precision not in ONNX_VARIANTS:
        raise UsageError(f"ONNX Runtime has no {precision} variant; available: fp32, {', '.join(ONNX_VARIANTS)}")
    files, info = ONNX_VARIANTS[precision](Path(source), Path(folder) / MODEL_FILE)
    return BuildOutput(MODEL_FILE, [f.name for f in files], info)


def open_runner(artifact: Path, *, precision: str = "fp32", threads: int | None = None, batch: int | None = None,
                options: Any = None) -> OrtRunner:
    runner = OrtRunner(artifact, threads=threads)
    # ONNX Runtime's CPU provider has FP16 kernels for few operators and casts around the others.
    runner.execution["execution_precision"] = precision
    if precision == "fp16":
        runner.execution["note"] = "FP16 graph; the CPU provider casts around operators without FP16 kernels"
    if precision == "int8":
        runner.execution["note"] = "Q/DQ graph: integer kernels where ONNX Runtime fuses DQ -> op -> Q"
    return runner


class OrtRunner:
    """Runs an ONNX model on NumPy NCHW batches, in chunks when the model's batch size is fixed."""

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.execution = {"device": "CPU", "providers": self.session.get_providers(),
                          "threads": threads or "onnxruntime default (physical cores)",
                          "onnxruntime": ort.__version__}

    def __enter__(self) -> OrtRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.session = None

    def run(self, x: np.ndarray) -> np.ndarray:
        return run_in_batches(lambda chunk: self.session.run(None, {self.input_name: chunk})[0], x, self.batch,
                              self.batch)
