"""The CUDA runtime, driver and GPUs as the CUDA runtime reports them: cuda-python's bindings when installed
(torch's CUDA wheels bring them), else torch.cuda; the driver's own version string through NVML (pynvml) when
installed. Imported lazily, and never raises: a machine without a GPU gets the reason instead."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def cuda_environment() -> dict[str, Any]:
    """CUDA runtime and driver versions and the visible GPUs, read through the CUDA runtime (cuda-python's
    bindings, else torch.cuda); never raises."""
    env: dict[str, Any] = {"cuda_runtime": None, "driver_cuda_version": None, "driver": None, "torch_cuda": None,
                           "gpus": [], "error": None}
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        _read_cudart(cudart, env)
    else:
        _read_torch_cuda(env)
    env["driver"] = _nvml_driver_version()
    env["torch_cuda"] = _torch_cuda_version()  # the CUDA build the TensorRT runner's device buffers come from
    return env


def _torch_cuda_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def _cuda_version(code: int) -> str | None:
    return f"{code // 1000}.{code % 1000 // 10}" if code else None


def _read_cudart(cudart: ModuleType, env: dict) -> None:
    ok = cudart.cudaError_t.cudaSuccess
    err, version = cudart.cudaRuntimeGetVersion()
    env["cuda_runtime"] = _cuda_version(version) if err == ok else None
    err, version = cudart.cudaDriverGetVersion()
    env["driver_cuda_version"] = _cuda_version(version) if err == ok else None
    err, count = cudart.cudaGetDeviceCount()
    if err != ok:
        env["error"] = cudart.cudaGetErrorString(err)[1].decode()
        return
    for index in range(count):
        err, props = cudart.cudaGetDeviceProperties(index)
        if err == ok:
            name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else props.name
            env["gpus"].append({"index": index, "name": name, "compute_capability": f"{props.major}.{props.minor}"})


def _read_torch_cuda(env: dict) -> None:
    try:
        import torch
    except ImportError:
        env["error"] = "neither cuda-python nor torch is installed"
        return
    env["cuda_runtime"] = torch.version.cuda
    if not torch.cuda.is_available():
        env["error"] = "torch sees no CUDA device" + ("" if torch.version.cuda else " (a CPU-only torch build)")
        return
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        env["gpus"].append({"index": index, "name": torch.cuda.get_device_name(index),
                            "compute_capability": f"{major}.{minor}"})


def _nvml_driver_version() -> str | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # NVML raises its own error types when no driver is loaded
        return None
