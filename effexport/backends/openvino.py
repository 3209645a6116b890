"""OpenVINO: the verified ONNX converted to IR (model.xml + model.bin) and run by the OpenVINO runtime.

Measured pitfalls shape this module. `ov.save_model` compresses weights to FP16 unless told not to, so the fp32 IR
is saved with `compress_to_fp16=False`. The CPU plugin's default inference precision is bf16 wherever it can run
bf16, natively (avx512_bf16, AMX) or, in OpenVINO 2026.4 on AVX-512 CPUs without them, emulated; and asked for the
f16 hint on a CPU without fp16 arithmetic it runs bf16 as well (both read back on an AMD EPYC with avx512_bf16).
So no precision is left to the device default: every runner sets a hint and reads back from the compiled model
what it really uses, which is what reports show, with "emulated" where the CPU has no bf16 instructions.

Precisions: fp32 = FP32 IR executed in f32; fp16 = FP16-compressed weights, executed in f16 where the runtime says
it computes f16 under the f16 hint (runs_f16) and in f32 elsewhere, never silently in bf16; bf16 = the FP32 IR
executed with the bf16 hint. Reduced modes are held to their tolerance, bf16 whether native or emulated: a trained
EfficientNet-Lite0 at 160 px under bf16 gave min cosine 0.9975 and one top-1 flip in 16 inputs on an AMD EPYC with
avx512_bf16 (0.9974 emulated on an AVX-512 Xeon), outside the bf16 policy, so verify reports it failed rather than
passing a looser number. int8 = the NNCF INT8 IR of the recipe's calibration (effexport.calibration), copied into
the artifact folder and run with the f32 hint, so that the layers INT8 leaves in float compute in f32.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effexport.backends import Availability, BuildOutput, run_in_batches
from effexport.errors import require
from effexport.exporter.cpu_env import NATIVE_BF16, cpu_flags

log = logging.getLogger(__name__)

EXTRA = "openvino"
MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
DEFAULT_DEVICE = "CPU"
# The inference-precision hint each precision runs with (fp16: see execution_hint).
EXECUTION_HINT = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "f32"}
METADATA_PREFIX = "effexport."  # the ONNX metadata_props keys copied into the IR
RT_INFO_SECTION = "effexport"
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
    renamed = number_generated_names(model)
    copied = copy_metadata(source, model)
    compress = artifact_precision(precision) == "fp16"
    ov.save_model(model, str(Path(folder) / MODEL_FILE), compress_to_fp16=compress)
    info = {"converter": "openvino.convert_model", "weights": "fp16 (compress_to_fp16=True)" if compress else
            "fp32 (compress_to_fp16=False)", "openvino": ov.get_version(), "rt_info": sorted(copied),
            "generated_names_renumbered": renamed}
    return BuildOutput(MODEL_FILE, [WEIGHTS_FILE, MODEL_FILE], info)


def number_generated_names(model: Any) -> int:
    """Give the nodes OpenVINO named itself (`<Type>_<N>`, N from a counter global to the process) names numbered
    in graph order; the exporter's names (`/features/conv/Conv`, `input`, `logits`) have no such form. Without this
    the same ONNX converts to a different model.xml depending on what the process converted before (measured:
    `Reshape_15` vs `Reshape_8842`), and a sharded build's IR would not be byte-equal to a full build's."""
    renamed = 0
    for index, op in enumerate(model.get_ordered_ops()):
        generated = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)_[0-9]+", op.get_friendly_name())
        if generated:  # also a folded constant, which keeps the generated name of the op it replaced
            op.set_friendly_name(f"{generated.group(1)}_{index}")
            renamed += 1
    return renamed


def copy_metadata(source: Path, model: Any) -> dict[str, str]:
    """The export's `effexport.*` ONNX metadata into the model's rt_info under `effexport` (read back with
    `get_rt_info(["effexport", "recipe"])`), so the IR says how to feed it as the ONNX file does. The ONNX frontend
    also copies metadata_props under `framework` with their full names, but that is its own convention, not ours
    to promise."""
    from effexport.exporter.onnx import read_metadata  # here: that module imports torch, which probe() never needs

    copied = {key.removeprefix(METADATA_PREFIX): value for key, value in read_metadata(source).items()
              if key.startswith(METADATA_PREFIX)}
    for key, value in copied.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    return copied


def execution_hint(precision: str, computes_f16: bool | None = None, device: str = DEFAULT_DEVICE) -> str:
    """The inference-precision hint for `precision`: f16 only where the device really computes in f16 under that
    hint, which is asked of the runtime (`runs_f16`), not guessed from CPU flags."""
    if precision == "fp16" and (runs_f16(device) if computes_f16 is None else computes_f16):
        return "f16"
    return EXECUTION_HINT[precision]


@functools.cache
def runs_f16(device: str = DEFAULT_DEVICE) -> bool:
    """Whether `device` computes in f16 when asked to: compile a one-layer model with the f16 hint and read back
    the precision the runtime chose (on a CPU without fp16 arithmetic OpenVINO 2026.4 answers bf16)."""
    ov = _ov()
    import openvino.properties.hint as hints
    from openvino import opset13 as ops

    param = ops.parameter([1, 8], ov.Type.f32)
    model = ov.Model([ops.matmul(param, ops.constant(np.ones((8, 8), np.float32)), False, False)], [param])
    used = ov.Core().compile_model(model, device, {hints.inference_precision: "f16"}).get_property(
        hints.inference_precision)
    return _precision_name(used.to_string() if hasattr(used, "to_string") else str(used)) == "fp16"


def describe_execution(used: str, flags: set[str] | None = None) -> str:
    """What the compiled model runs, in effexport's precision names; bf16 without bf16 instructions is emulated."""
    flags = cpu_flags() if flags is None else flags
    name = _precision_name(used)
    if name == "bf16" and flags and not any(f in flags for f in NATIVE_BF16):
        return "bf16 (emulated)"
    return name


def open_runner(artifact: Path, *, precision: str = "fp32", threads: int | None = None, batch: int | None = None,
                options: Any = None) -> OvRunner:
    device = getattr(options, "device", None) or DEFAULT_DEVICE
    runner = OvRunner(artifact, device=device, hint=execution_hint(precision, device=device), threads=threads,
                      batch=batch)
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
            "execution_precision": describe_execution(used.to_string() if hasattr(used, "to_string") else str(used))
            if device == "CPU" else _precision_name(used.to_string() if hasattr(used, "to_string") else str(used)),
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
