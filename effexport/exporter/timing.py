"""One timing harness for every backend: warm up until stable, then time repeated runs.

Stable means: the median of the last `window` warm-up runs differs from the median of the `window` runs before
them by at most `stable_rel` (5%) of the earlier median; warm-up stops there, after at least `min_warmup` runs,
or at `max_warmup` runs or `max_warmup_s` seconds of runs (recorded as not stable). Medians make the rule robust
to single outliers (a context switch on a shared machine), and comparing two consecutive windows catches the
first-runs effects this is for (lazy allocation, kernel selection, caches, CPU frequency).

The statistics take a sequence of durations, and the harness takes its clock as an argument, so both are
tested on known sequences rather than on the wall clock.

Other work on the machine inflates every latency. `LoadWatch` samples the 1-minute load average before, during
(after each timed row) and after the timing; when it exceeds the CPUs available to the process, runnable threads
outnumbered the cores at some point and the numbers carry a warning. The load average is a one-minute moving
average, so it also counts the bench's own busy threads (up to `threads`) and lags by up to a minute.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from effexport.errors import UsageError

Clock = Callable[[], float]


@dataclass(frozen=True)
class BenchConfig:
    iters: int = 50  # timed runs per backend and batch size
    min_warmup: int = 5
    max_warmup: int = 100
    window: int = 5
    stable_rel: float = 0.05
    max_warmup_s: float = 20.0  # a slow model on a busy machine stops warming up after this long, not stable

    def __post_init__(self):
        if self.iters < 1:
            raise UsageError(f"--iters must be at least 1, got {self.iters}")
        if self.window < 1 or self.min_warmup < 0 or self.max_warmup < self.min_warmup:
            raise UsageError("warm-up needs window >= 1 and 0 <= min_warmup <= max_warmup")


@dataclass(frozen=True)
class Warmup:
    runs: int
    stable: bool
    last_median_s: float | None


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles (seconds) of one backend at one batch size, and the throughput they imply."""

    batch: int
    runs: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / self.p50 if self.p50 > 0 else float("inf")

    def to_dict(self) -> dict:
        ms = {k: round(getattr(self, k) * 1e3, 4) for k in ("p50", "p90", "p99", "mean", "std", "min", "max")}
        return {"batch": self.batch, "runs": self.runs, **{f"{k}_ms": v for k, v in ms.items()},
                "throughput_ips": round(self.throughput, 2)}


def summarize(durations: Sequence[float], batch: int) -> LatencyStats:
    """Percentiles by linear interpolation between order statistics (numpy's default)."""
    if not durations:
        raise ValueError("no timings to summarize")
    t = np.asarray(durations, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return LatencyStats(batch, len(t), float(p50), float(p90), float(p99), float(t.mean()), float(t.std()),
                        float(t.min()), float(t.max()))


def time_once(step: Callable[[], object], clock: Clock) -> float:
    start = clock()
    step()
    return clock() - start


def is_stable(durations: Sequence[float], window: int, stable_rel: float) -> bool:
    """The last window's median within `stable_rel` of the previous window's median."""
    if len(durations) < 2 * window:
        return False
    previous = float(np.median(durations[-2 * window:-window]))
    current = float(np.median(durations[-window:]))
    return abs(current - previous) <= stable_rel * previous


def warm_up(step: Callable[[], object], config: BenchConfig, clock: Clock = time.perf_counter) -> Warmup:
    durations: list[float] = []
    while len(durations) < config.max_warmup and sum(durations) < config.max_warmup_s:
        durations.append(time_once(step, clock))
        if len(durations) >= config.min_warmup and is_stable(durations, config.window, config.stable_rel):
            return Warmup(len(durations), True, float(np.median(durations[-config.window:])))
    last = float(np.median(durations[-config.window:])) if durations else None
    return Warmup(len(durations), config.max_warmup == 0, last)


def measure(step: Callable[[], object], batch: int, config: BenchConfig, clock: Clock = time.perf_counter,
            on_run: Callable[[int], None] | None = None) -> tuple[Warmup, LatencyStats]:
    """Warm up until stable, then time `config.iters` runs of `step` (one batch each)."""
    warm = warm_up(step, config, clock)
    durations = []
    for i in range(config.iters):
        durations.append(time_once(step, clock))
        if on_run:
            on_run(i + 1)
    return warm, summarize(durations, batch)


def speedup(baseline: LatencyStats, other: LatencyStats) -> float:
    """How many times faster than the baseline, by median latency at the same batch size."""
    return baseline.p50 / other.p50 if other.p50 > 0 else float("inf")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class LoadWatch:
    """1-minute load averages sampled around the timing, and whether they exceeded the available CPUs."""

    cpus: int
    samples: list[tuple[str, float]]
    getloadavg: Callable[[], tuple[float, float, float]] = os.getloadavg

    @classmethod
    def start(cls, cpus: int | None = None,
              getloadavg: Callable[[], tuple[float, float, float]] = os.getloadavg) -> LoadWatch:
        watch = cls(cpus or available_cpus(), [], getloadavg)
        watch.sample("start")
        return watch

    def sample(self, when: str) -> float:
        load = round(float(self.getloadavg()[0]), 2)
        self.samples.append((when, load))
        return load

    @property
    def peak(self) -> tuple[str, float]:
        return max(self.samples, key=lambda s: s[1])

    @property
    def warning(self) -> str | None:
        when, load = self.peak
        if load <= self.cpus:
            return None
        return (f"load average {load:g} (1 min, at {when}) exceeded the {self.cpus} CPUs available: other work "
                f"competed for the cores and latencies may be inflated")

    def to_dict(self) -> dict:
        return {"cpus": self.cpus, "samples": [{"at": when, "load_1min": load} for when, load in self.samples],
                "max_1min": self.peak[1], "warning": self.warning,
                "rule": "warn when a sampled 1-minute load average exceeds the CPUs available to the process"}
