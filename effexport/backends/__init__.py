"""One module per runtime backend: each builds an artifact from the verified ONNX and runs it on NumPy.

A backend module provides:

- ``probe() -> Availability``: whether its package (and device) is present, with version and device, or why not;
- ``source_precision(precision, options) -> str``: which ONNX variant its build starts from ("fp32", "fp16", ...);
- ``build(source, folder, precision, options) -> BuildOutput``: verified ONNX -> artifact files in ``folder``;
- ``open_runner(artifact, precision=..., threads=..., batch=..., options=...) -> Runner``: a context manager whose
  ``run(np.ndarray) -> np.ndarray`` computes the model, and whose ``execution`` dict says what really ran.

Adding a backend is one module here, one entry in ``BACKENDS`` and one extra in pyproject.toml. The optional
packages are imported only inside those functions, through ``effexport.errors.require``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from effexport.errors import MissingDependencyError, UsageError


@dataclass(frozen=True)
class Availability:
    """What `effexport backends` prints: available with version and device, or missing and why."""

    name: str
    available: bool
    version: str | None = None
    device: str | None = None
    reason: str | None = None  # one line that says what is missing and how to fix it
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildOutput:
    """Files a backend wrote into the staging folder; `main` is the one a runner opens."""

    main: str
    files: list[str]
    info: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    execution: dict[str, Any]  # what really computes: device, precision used, threads

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc) -> None: ...

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # the module under effexport.backends
    extra: str | None  # the pip extra that installs it (None: a core dependency)
    precisions: tuple[str, ...]  # precisions it can build or run
    summary: str

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")

    def probe(self) -> Availability:
        return self.load().probe()

    def ensure_available(self, command: str) -> Availability:
        """Raise MissingDependencyError in one line, before any work, when the backend cannot run here."""
        found = self.probe()
        if not found.available:
            raise MissingDependencyError(f"{command} needs {self.name}: {found.reason}")
        return found


# INT8 comes from one calibration of the recipe (effexport.calibration.int8), which makes one form per backend
# (calibration.int8.BACKEND_FORMS): each backend's source_precision("int8") is "int8", and deploy hands its build
# that backend's form (ONNX Runtime: the CPU form; OpenVINO: the NNCF IR; TensorRT: the portable Q/DQ ONNX).
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("onnxruntime", "onnxruntime", None, ("fp32", "fp16", "int8"),
                "ONNX Runtime on the CPU; fp16 is an FP16 ONNX graph with FP32 inputs and outputs, int8 the "
                "calibration's CPU form"),
        Backend("openvino", "openvino", "openvino", ("fp32", "fp16", "bf16", "int8"),
                "OpenVINO IR (model.xml/.bin); fp16 = FP16-compressed weights, bf16 = bf16 execution, int8 = NNCF"),
        Backend("tensorrt", "tensorrt", "tensorrt", ("fp32", "fp16", "int8"),
                "TensorRT 10.x/11.x engine (model.plan) on a CUDA GPU; fp16 from the FP16 ONNX graph, int8 from "
                "the Q/DQ ONNX"),
    )
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def parse_list(text: str, known: Iterable[str], what: str) -> list[str]:
    """'a,b' -> ['a', 'b'], each checked against `known`, order kept, duplicates dropped."""
    known = list(known)
    items = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in items if s not in known]
    if unknown or not items:
        raise UsageError(f"unknown {what} {', '.join(unknown) or repr(text)}; expected a comma-separated list of "
                         f"{', '.join(known)}")
    return items


def probe_all() -> list[Availability]:
    return [b.probe() for b in BACKENDS.values()]


def run_in_batches(infer: Callable[[np.ndarray], np.ndarray], x: np.ndarray, max_batch: int | None,
                   min_batch: int | None = None) -> np.ndarray:
    """Run `infer` on float32 `x` (uint8 stays uint8: a raw-pixel graph), in chunks of at most `max_batch`; a chunk
    below `min_batch` is padded by repeating its last sample and the padding's outputs are dropped (engines with a
    fixed or bounded batch)."""
    x = np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)
    low = min_batch or 1
    if max_batch is None or low <= len(x) <= max_batch:
        return infer(x)
    outs = []
    for start in range(0, len(x), max_batch):
        chunk = x[start:start + max_batch]
        pad = max(0, low - len(chunk))
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(infer(chunk)[: len(chunk) - pad])
    return np.concatenate(outs)
