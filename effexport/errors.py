"""One exception hierarchy. The CLI turns each into one line and the documented exit code."""

from __future__ import annotations

import importlib
from types import ModuleType


class EffexportError(Exception):
    """Base of every error effexport raises on purpose. `report`: the report file that holds the details."""

    exit_code = 1

    def __init__(self, message: str = "", *, report=None):
        super().__init__(message)
        self.report = report


class UsageError(EffexportError):
    """Bad input from the user: an unknown recipe, an unsupported option value."""

    exit_code = 2


class CheckpointError(UsageError):
    """A checkpoint that cannot be read safely or does not match the model."""


class ParityError(EffexportError):
    """An artifact does not compute the same function as the PyTorch model."""

    exit_code = 3


class MissingDependencyError(EffexportError):
    """An optional package, runtime or device is absent."""

    exit_code = 4


class ExportError(EffexportError):
    """A stage failed to produce a valid artifact (exporter error, checker failure, forbidden node)."""

    exit_code = 5


def require(package: str, extra: str | None, purpose: str) -> ModuleType:
    """Import an optional package or raise one line naming the pip extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        how = f"pip install 'effexport[{extra}]'" if extra else f"pip install {package}"
        raise MissingDependencyError(f"{purpose} needs the {package} package, which is not installed "
                                     f"({type(exc).__name__}: {exc}); install it with {how}") from exc


EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: the traceback is printed)",
    UsageError.exit_code: "bad input: unknown recipe, bad option, unreadable or mismatched checkpoint",
    ParityError.exit_code: "parity failure: an artifact differs from PyTorch beyond the tolerance",
    MissingDependencyError.exit_code: "missing optional dependency, runtime or device",
    ExportError.exit_code: "export or build failure: the artifact could not be produced or failed its checks",
}
