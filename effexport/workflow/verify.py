"""`effexport verify`: every requested backend and precision on the same inputs, against PyTorch FP32, in one
table. The table is always written to `<out>/<model>/verify.json`; any failing row fails the command."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from effexport.backends import BACKENDS, get_backend
from effexport.calibration.int8 import RANDOM_NOTE, Int8Result
from effexport.errors import EffexportError, ParityError, UsageError
from effexport.exporter.artifacts import write_json
from effexport.exporter.parity import POLICY, ParityReport, Tolerance, looser, tolerance_for
from effexport.workflow.deploy import ensure_artifact, existing_options, open_context, run_parity
from effexport.workflow.export import Progress, tool_versions
from effexport.workflow.job import Job

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

    def error(self) -> ParityError | None:
        """The error that ends the command when a row failed (raised after the table is written), else None."""
        if self.passed:
            return None
        rows = ", ".join(f"{r.backend} {r.precision} ({r.note or r.status})" for r in self.failures)
        return ParityError(f"{len(self.failures)} of {len(self.rows)} checks failed: {rows} (table: {self.path})",
                           report=self.path)


def check_backends(backends: list[str], precisions: list[str]) -> None:
    """Fail in one line, before any work, when a requested backend cannot run here."""
    for name in backends:
        get_backend(name).ensure_available(f"effexport verify --backends {name}")
    supported = {p for name in backends for p in BACKENDS[name].precisions}
    if not set(precisions) & supported:
        raise UsageError(f"none of {', '.join(backends)} supports {', '.join(precisions)}")


def verify_recipe(job: Job, backends: list[str], precisions: list[str], options: dict[str, Any] | None = None,
                  progress: Progress | None = None) -> VerifyResult:
    """Build (or reuse) each backend's artifact, run it on the parity inputs, compare with PyTorch FP32 under the
    job's tolerances. An artifact the user built (a TensorRT engine with their batch profile) is used when it
    matches. INT8 rows come from the job's one calibration, each backend running its own form, compared on
    photographs the calibration did not see; with random weights they are reported, not enforced."""
    check_backends(backends, precisions)
    policy = {p: job.tolerance(p) for p in POLICY}
    ctx = open_context(job, progress)
    reference = ctx.reference()
    rows = []
    for backend in backends:
        for precision in precisions:
            if precision not in BACKENDS[backend].precisions:
                rows.append(VerifyRow(backend, precision, "not supported",
                                      note=f"{backend} runs {', '.join(BACKENDS[backend].precisions)}"))
                continue
            ctx.say(f"verifying {backend} {precision}")
            chosen = (options or {}).get(backend) or existing_options(ctx, backend, precision)
            rows.append(_verify_one(ctx, backend, precision, policy[precision], chosen))
    calibration = ctx.int8_build() if "int8" in precisions and any(r.precision == "int8" and r.artifact
                                                                   for r in rows) else None
    result = VerifyResult(ctx.recipe.name, reference.description, rows, policy,
                          ctx.folder / f"verify{ctx.job.variant}.json", ctx.onnx.report.get("weights"), calibration)
    write_json(result.path, {
        "recipe": result.recipe,
        "reference": "PyTorch FP32 (eager, before deploy rewrites)",
        "inputs": result.inputs,
        "source_onnx": {"file": str(ctx.onnx.path), "fingerprint": ctx.onnx.report["fingerprint"]},
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
        # Built (or reused) under the looser of the two: a row outside the user's tolerance fails, it is not rebuilt
        artifact = ensure_artifact(ctx, backend, precision, options,
                                   looser(tolerance, tolerance_for(precision, rule=tolerance.rule)))
        reference = ctx.reference(precision)
        report, execution = run_parity(artifact, precision, reference, tolerance, options)
    except ParityError as exc:  # its build was outside the tolerance (and went to rejected/): a failed row
        log.info("%s %s: %s", backend, precision, exc)
        return VerifyRow(backend, precision, "failed", note=str(exc), parity=_failed_parity(exc))
    except EffexportError as exc:
        log.info("%s %s: %s", backend, precision, exc)
        return VerifyRow(backend, precision, "error", note=str(exc), parity=_failed_parity(exc))
    status = "passed" if report.passed else "failed" if ctx.enforced(precision) else "not enforced"
    note = "; ".join(report.failures) + (f" ({RANDOM_NOTE})" if status == "not enforced" else "")
    return VerifyRow(backend, precision, status,
                     artifact=str(artifact.path.relative_to(ctx.out)) if artifact.path.is_relative_to(ctx.out)
                     else str(artifact.path), execution=execution, parity=_parity_dict(report), note=note,
                     inputs=reference.description)


def _parity_dict(report: ParityReport) -> dict:
    return report.to_dict()


def _failed_parity(exc: EffexportError) -> dict | None:
    """The numbers of a build whose own parity check failed, from the report the error names."""
    from effexport.exporter.artifacts import read_json

    parity = (read_json(exc.report) or {}).get("parity") if exc.report else None
    return parity.get("onnxruntime", parity) if parity else None  # an export report keys parity by runtime


def _tol(tolerance: Tolerance) -> dict:
    return {k: v for k, v in asdict(tolerance).items() if v is not None}
