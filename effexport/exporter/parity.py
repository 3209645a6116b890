"""Compare a candidate's outputs with the PyTorch FP32 reference: one measure, one policy per precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from effexport.errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    """Pass thresholds; a None threshold is not checked."""

    max_rel: float | None = None  # max |a - b| divided by the reference logit range
    min_cosine: float | None = None  # smallest per-sample cosine similarity
    min_top1: float | None = None  # fraction of samples whose top-1 class agrees

    def describe(self) -> str:
        parts = []
        if self.max_rel is not None:
            parts.append(f"rel <= {self.max_rel:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.min_top1 is not None:
            parts.append(f"top-1 >= {self.min_top1:.0%}")
        return ", ".join(parts)


POLICY: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-4),
    "fp16": Tolerance(min_cosine=0.999, min_top1=0.99),
    "bf16": Tolerance(min_cosine=0.999, min_top1=0.99),
    "int8": Tolerance(min_cosine=0.99, min_top1=0.95),
}


def tolerance_for(precision: str, *, max_rel: float | None = None, min_cosine: float | None = None,
                  min_top1: float | None = None) -> Tolerance:
    """The default policy for `precision`, with any threshold the user overrides."""
    if precision not in POLICY:
        raise UsageError(f"unknown precision {precision!r}; expected one of {', '.join(POLICY)}")
    overrides = {k: v for k, v in dict(max_rel=max_rel, min_cosine=min_cosine, min_top1=min_top1).items()
                 if v is not None}
    return replace(POLICY[precision], **overrides)


@dataclass(frozen=True)
class ParityReport:
    samples: int
    max_abs: float
    max_rel: float
    min_cosine: float
    mean_cosine: float
    top1_agreement: float
    top5_agreement: float  # reference top-1 class within the candidate's top 5
    tolerance: Tolerance
    passed: bool
    failures: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tolerance"] = {k: v for k, v in asdict(self.tolerance).items() if v is not None}
        d["failures"] = list(self.failures)
        return d

    def summary(self) -> str:
        return (f"max abs {self.max_abs:.2e}, rel {self.max_rel:.2e}, cosine {self.min_cosine:.6f}, "
                f"top-1 {self.top1_agreement:.1%}, top-5 {self.top5_agreement:.1%} over {self.samples} inputs")


def compare(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> ParityReport:
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    finite = bool(np.isfinite(cand).all())
    diff = np.abs(ref - cand)
    max_abs = float(diff.max()) if finite else float("inf")
    span = float(ref.max() - ref.min()) or 1.0
    max_rel = max_abs / span
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.maximum(norms, 1e-300), 1.0) if finite else \
        np.zeros(len(ref))
    top1_ref = ref.argmax(axis=1)
    top1 = float((top1_ref == cand.argmax(axis=1)).mean())
    k = min(5, ref.shape[1])
    top5_cand = np.argsort(-cand, axis=1)[:, :k]
    top5 = float((top5_cand == top1_ref[:, None]).any(axis=1).mean())

    failures = [] if finite else ["candidate output has NaN or Inf"]
    failures += recheck({"max_rel": max_rel, "min_cosine": float(cosine.min()), "top1_agreement": top1}, tolerance)
    return ParityReport(
        samples=len(ref),
        max_abs=max_abs,
        max_rel=max_rel,
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
        top1_agreement=top1,
        top5_agreement=top5,
        tolerance=tolerance,
        passed=not failures,
        failures=tuple(failures),
    )


def recheck(recorded: dict, tolerance: Tolerance) -> list[str]:
    """Judge a recorded ParityReport (its to_dict()) under another tolerance, without running anything: a reused
    artifact is held to the tolerance asked for now."""
    failures = []
    if tolerance.max_rel is not None and not recorded["max_rel"] <= tolerance.max_rel:
        failures.append(f"relative error {recorded['max_rel']:.2e} > {tolerance.max_rel:g}")
    if tolerance.min_cosine is not None and not recorded["min_cosine"] >= tolerance.min_cosine:
        failures.append(f"cosine {recorded['min_cosine']:.6f} < {tolerance.min_cosine:g}")
    if tolerance.min_top1 is not None and not recorded["top1_agreement"] >= tolerance.min_top1:
        failures.append(f"top-1 agreement {recorded['top1_agreement']:.1%} < {tolerance.min_top1:.0%}")
    return failures


def looser(a: Tolerance, b: Tolerance) -> Tolerance:
    """Each threshold at the less demanding of the two (None, unchecked, wins). verify and the backends' shared
    export build under the looser of the user's tolerance and the default, then judge under the user's: an
    artifact accepted with a loose --tolerance is kept, and a strict one fails rows instead of rebuilding."""
    def pick(x, y, worse):
        return None if x is None or y is None else worse(x, y)

    return Tolerance(max_rel=pick(a.max_rel, b.max_rel, max), min_cosine=pick(a.min_cosine, b.min_cosine, min),
                     min_top1=pick(a.min_top1, b.min_top1, min))
