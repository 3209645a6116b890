"""`effexport verify`: every requested backend and precision on the same inputs, against PyTorch FP32, in one
table. The table is always written to `<out>/<recipe>/verify.json`; any failing row fails the command."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from effexport.calibration.build import RANDOM_NOTE, Int8Result
from effexport.errors import EffexportError, UsageError
from effexport.exporter.artifacts import DEFAULT_OUT, write_json
from effexport.exporter.backends import BACKENDS, get_backend
from effexport.exporter.deploy import Int8Spec, SourceSpec, ensure_artifact, open_context, run_parity
from effexport.exporter.parity import POLICY, ParityReport, Tolerance
from effexport.exporter.pipeline import Progress, tool_versions

log = logging.getLogger(__name__)

VERIFY_FILE = "verify.json"


@dataclass
class VerifyRow:
    backend: str
    precision: str
    status: str  # passed | failed | error | not supported | not enforced (INT8 of random weights, outside)
    artifact: str | None = None
    execution: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    note: str = ""
    inputs: str = ""  # what the row was compared on (INT8 rows: photographs calibration did not see)

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "error")


@dataclass
class VerifyResult:
    recipe: str
    inputs: str
    rows: list[VerifyRow]
    policy: dict[str, Tolerance]
    path: Path
    weights: dict | None = None
    int8: Int8Result | None = None  # the calibration the INT8 rows come from

    @property
    def passed(self) -> bool:
        return not any(r.failed for r in self.rows)

    @property
    def failures(self) -> list[VerifyRow]:
        return [r for r in self.rows if r.failed]


def policy_with(overrides: dict[str, Tolerance] | None) -> dict[str, Tolerance]:
    return {**POLICY, **(overrides or {})}


def check_backends(backends: list[str], precisions: list[str]) -> None:
    """Fail in one line, before any work, when a requested backend cannot run here."""
    for name in backends:
        get_backend(name).ensure_available(f"effexport verify --backends {name}")
    supported = {p for name in backends for p in BACKENDS[name].precisions}
    if not set(precisions) & supported:
        raise UsageError(f"none of {', '.join(backends)} supports {', '.join(precisions)}")


def verify_recipe(name: str, backends: list[str], precisions: list[str], source: SourceSpec | None = None,
                  images: Path | None = None, tolerances: dict[str, Tolerance] | None = None,
                  out: Path = DEFAULT_OUT, options: dict[str, Any] | None = None,
                  progress: Progress | None = None, int8: Int8Spec | None = None) -> VerifyResult:
    """Build (or reuse) each backend's artifact, run it on the parity inputs, compare with PyTorch FP32. INT8 rows
    come from one calibration (`int8`), each backend running its own form, compared on photographs the
    calibration did not see; with random weights they are reported, not enforced."""
    check_backends(backends, precisions)
    policy = policy_with(tolerances)
    ctx = open_context(name, source or SourceSpec(), out, images, progress, int8)
    reference = ctx.reference()
    rows = []
    for backend in backends:
        for precision in precisions:
            if precision not in BACKENDS[backend].precisions:
                rows.append(VerifyRow(backend, precision, "not supported",
                                      note=f"{backend} runs {', '.join(BACKENDS[backend].precisions)}"))
                continue
            ctx.say(f"verifying {backend} {precision}")
            rows.append(_verify_one(ctx, backend, precision, policy[precision], (options or {}).get(backend)))
    calibration = ctx.int8_build() if "int8" in precisions and any(r.precision == "int8" and r.artifact
                                                                   for r in rows) else None
    result = VerifyResult(ctx.recipe.name, reference.description, rows, policy, ctx.folder / VERIFY_FILE,
                          ctx.onnx.report.get("weights"), calibration)
    write_json(result.path, {
        "recipe": result.recipe,
        "reference": "PyTorch FP32 (eager, before deploy rewrites)",
        "inputs": result.inputs,
        "source_onnx": {"file": str(ctx.onnx.path), "sha256": ctx.onnx.report["artifact"]["sha256"]},
        "weights": ctx.onnx.report.get("weights"),
        "policy": {k: _tol(v) for k, v in policy.items()},
        **({"int8_calibration": str(calibration.manifest_path)} if calibration else {}),
        "rows": [asdict(r) for r in rows],
        "passed": result.passed,
        "versions": tool_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return result


def _verify_one(ctx, backend: str, precision: str, tolerance: Tolerance, options: Any) -> VerifyRow:
    try:
        # The artifact is built (or reused) under the default policy; this row judges it under `tolerance`.
        artifact = ensure_artifact(ctx, backend, precision, options)
        reference = ctx.reference(precision)
        report, execution = run_parity(artifact, precision, reference, tolerance, options)
    except EffexportError as exc:
        log.info("%s %s: %s", backend, precision, exc)
        return VerifyRow(backend, precision, "error", note=str(exc), parity=_failed_parity(ctx, backend, precision))
    status = "passed" if report.passed else "failed" if ctx.enforced(precision) else "not enforced"
    note = "; ".join(report.failures) + (f" ({RANDOM_NOTE})" if status == "not enforced" else "")
    return VerifyRow(backend, precision, status,
                     artifact=str(artifact.path.relative_to(ctx.out)) if artifact.path.is_relative_to(ctx.out)
                     else str(artifact.path), execution=execution, parity=_parity_dict(report), note=note,
                     inputs=reference.description)


def _parity_dict(report: ParityReport) -> dict:
    return report.to_dict()


def _failed_parity(ctx, backend: str, precision: str) -> dict | None:
    """The numbers of a build whose own parity check failed, from the report it left."""
    from effexport.exporter.artifacts import read_json
    from effexport.exporter.deploy import REPORT_FILE, artifact_folder, artifact_precision

    built_for = artifact_precision(get_backend(backend), precision)
    report = read_json(artifact_folder(ctx, backend, built_for) / REPORT_FILE) or {}
    return report.get("parity") if report.get("status") == "failed" else None


def _tol(tolerance: Tolerance) -> dict:
    return {k: v for k, v in asdict(tolerance).items() if v is not None}
