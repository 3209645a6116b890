"""OpenVINO: the verified ONNX converted to IR (model.xml + model.bin) and run by the OpenVINO runtime.

Two measured pitfalls shape this module. `ov.save_model` compresses weights to FP16 unless told not to, so the
fp32 IR is saved with `compress_to_fp16=False`. And on a CPU with AMX or avx512_bf16, OpenVINO computes in bf16
unless `INFERENCE_PRECISION_HINT=f32` is set; so fp32 always runs with that hint, and every runner reads back
from the compiled model the precision it really uses, which is what reports show.

Precisions: fp32 = FP32 IR executed in f32; fp16 = FP16-compressed weights executed at the device's default
precision (bf16 on AMX CPUs, f32 elsewhere); bf16 = the FP32 IR executed with the bf16 hint (the CPU falls back to
f32 where it has no bf16 arithmetic, and the report says so). Both reduced modes are held to the reduced-precision
tolerance. int8 = the NNCF INT8 IR of the recipe's calibration (effexport.calibration), copied into the artifact
folder and run with the f32 hint, so that the layers INT8 leaves in float compute in f32, not silently bf16.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effexport.exporter.backends import Availability, BuildOutput, require, run_in_batches

log = logging.getLogger(__name__)

EXTRA = "openvino"
MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
DEFAULT_DEVICE = "CPU"
# The inference-precision hint each precision runs with; None leaves the device default.
EXECUTION_HINT = {"fp32": "f32", "fp16": None, "bf16": "bf16", "int8": "f32"}
# What each precision's IR holds on disk: bf16 runs the fp32 IR.
ARTIFACT_PRECISION = {"fp32": "fp32", "fp16": "fp16", "bf16": "fp32", "int8": "int8"}


def _precision_name(ov_type: str) -> str:
    """OpenVINO's element type names in the precision names used everywhere else (f32 -> fp32)."""
    return {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(ov_type, ov_type)


@dataclass(frozen=True)
class OvOptions:
    device: str = DEFAULT_DEVICE


def _ov():
    return require("openvino", EXTRA, "the OpenVINO backend")


def probe() -> Availability:
    try:
        ov = _ov()
        core = ov.Core()
        devices = core.available_devices
        cpu = core.get_property("CPU", "FULL_DEVICE_NAME") if "CPU" in devices else None
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") if "CPU" in devices else []
    except Exception as exc:  # a broken install raises anything from its native libraries
        reason = str(exc) if type(exc).__name__ == "MissingDependencyError" else \
            f"openvino fails to start ({type(exc).__name__}: {exc}); pip install 'effexport[{EXTRA}]'"
        return Availability("openvino", False, reason=reason)
    return Availability("openvino", True, version=ov.get_version().split("-")[0], device=", ".join(devices),
                        details={"cpu": cpu, "cpu_capabilities": list(caps)})


def source_precision(precision: str, options: Any = None) -> str:
    return "int8" if precision == "int8" else "fp32"


def artifact_precision(precision: str) -> str:
    return ARTIFACT_PRECISION[precision]


def build(source: Path, folder: Path, precision: str, options: Any = None) -> BuildOutput:
    """Convert the verified ONNX with `ov.convert_model` and save the IR; weights FP16 only for fp16. For int8 the
    source is the calibration's NNCF IR, copied as it is (its .bin beside it)."""
    ov = _ov()
    if precision == "int8":
        shutil.copyfile(source, Path(folder) / MODEL_FILE)
        shutil.copyfile(Path(source).with_suffix(".bin"), Path(folder) / WEIGHTS_FILE)
        return BuildOutput(MODEL_FILE, [WEIGHTS_FILE, MODEL_FILE], {"from": Path(source).name,
                                                                     "what": "the calibration's NNCF INT8 IR (copied)",
                                                                     "openvino": ov.get_version()})
    model = ov.convert_model(str(source))
    compress = artifact_precision(precision) == "fp16"
    ov.save_model(model, str(Path(folder) / MODEL_FILE), compress_to_fp16=compress)
    info = {"converter": "openvino.convert_model", "weights": "fp16 (compress_to_fp16=True)" if compress else
            "fp32 (compress_to_fp16=False)", "openvino": ov.get_version()}
    return BuildOutput(MODEL_FILE, [WEIGHTS_FILE, MODEL_FILE], info)


def open_runner(artifact: Path, *, precision: str = "fp32", threads: int | None = None, batch: int | None = None,
                options: Any = None) -> OvRunner:
    device = getattr(options, "device", None) or DEFAULT_DEVICE
    runner = OvRunner(artifact, device=device, hint=EXECUTION_HINT[precision], threads=threads, batch=batch)
    if precision == "int8":  # the hint governs only the layers left in float; the quantized ones run int8
        runner.execution["float_layers"] = runner.execution["execution_precision"]
        runner.execution["execution_precision"] = "int8"
    return runner


class OvRunner:
    """Compiles an IR for one device; `batch` reshapes the model to that static batch (fastest on CPU)."""

    def __init__(self, path: Path, device: str = DEFAULT_DEVICE, hint: str | None = "f32", threads: int | None = None,
                 batch: int | None = None):
        ov = _ov()
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        model = core.read_model(str(path))
        if batch is not None:
            shape = model.input(0).get_partial_shape()
            shape[0] = batch
            model.reshape({model.input(0): shape})
        config: dict = {hints.performance_mode: hints.PerformanceMode.LATENCY}
        if hint is not None:
            config[hints.inference_precision] = hint
        if threads:
            config[props.inference_num_threads] = threads
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        static = model.input(0).get_partial_shape()[0]
        self.batch = static.get_length() if static.is_static else None
        used = self.compiled.get_property(hints.inference_precision)
        self.execution = {
            "device": device,
            "device_name": core.get_property(device, "FULL_DEVICE_NAME"),
            "precision_hint": hint or "device default",
            "execution_precision": _precision_name(used.to_string() if hasattr(used, "to_string") else str(used)),
            "threads": self.compiled.get_property(props.inference_num_threads),
            "openvino": ov.get_version(),
        }
        log.info("OpenVINO %s: asked %s, executes %s", device, hint or "default", self.execution["execution_precision"])

    def __enter__(self) -> OvRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.request = None
        self.compiled = None

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[self.compiled.output(0)])

    def run(self, x: np.ndarray) -> np.ndarray:
        return run_in_batches(self._infer, x, self.batch, self.batch)
