"""The options of one calibration, importable without onnx or onnxruntime (the CLI resolves them first)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from effexport.errors import UsageError

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Options:
    """The one calibration every INT8 artifact of a job comes from."""

    source: Path | None = None  # image folder or .npy/.npz; None: the built-in photographs
    method: str = "minmax"  # minmax | entropy | percentile
    calib_size: int | None = None  # deterministic seeded sample of this many images; None: all
    seed: int = 0
    percentile: float = 99.999  # for method "percentile"
    views: bool = True  # calibrate on 12 views of each photograph when there are few (data.SMALL_SET)
    openvino: bool | None = None  # NNCF OpenVINO model: None = when openvino and nncf are installed
    heldout: Path | None = None  # the photographs INT8 is judged on (none may be in the calibration set)

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}; expected one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile < 100.0:
            raise UsageError(f"percentile must be in (50, 100), got {self.percentile}")
        if self.calib_size is not None and self.calib_size < 1:
            raise UsageError(f"--calib-size must be at least 1, got {self.calib_size}")

    @property
    def tag(self) -> str:
        """The folder name of the INT8 forms: the options that shape them (the data counts by its contents)."""
        parts = ["int8", self.method]
        if self.calib_size is not None:
            parts.append(f"n{self.calib_size}-seed{self.seed}")
        return "-".join(parts)
