"""`effexport bench`: every backend timed by the one harness in exporter/timing.py, PyTorch eager as the baseline in the
same run, written to `<out>/<model>/bench.json` and `bench.png` with the machine and versions it ran on.

Besides latency, each row says how close it came to the machine: the model's MACs per image x batch / p50 is the
rate it achieved, set against this machine's peak GEMM rate in the precision the row executed (measured once per
run, macs.py); INT8 rows add the share of MACs the runtime really ran on integer kernels. torch.compile (inductor)
is a second PyTorch baseline, timed by the same harness with its compile time reported apart.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from effexport.backends import BACKENDS, get_backend
from effexport.backends.openvino import runs_f16
from effexport.errors import MissingDependencyError, UsageError
from effexport.exporter.artifacts import write_json
from effexport.exporter.cpu_env import cpu_flags, cpu_model
from effexport.exporter.graph_io import wrap
from effexport.exporter.macs import Int8Share, Peak, achieved_gmacs, int8_share, measure_peaks
from effexport.exporter.parity import POLICY, compare
from effexport.exporter.timing import BenchConfig, LatencyStats, LoadWatch, Warmup, measure, speedup
from effexport.workflow.deploy import Artifact, Context, ensure_artifact, existing_options, open_context
from effexport.workflow.export import Progress, build_model
from effexport.workflow.job import Job

log = logging.getLogger(__name__)

BASELINE = "torch"
COMPILED = "torch-compile"  # torch.compile (inductor) of the baseline's model: not a backend with artifacts
TORCH_BACKENDS = (BASELINE, COMPILED)
BENCH_FILE = "bench.json"
CHART_FILE = "bench.png"
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                         "amx_int8", "avx_vnni")
OnRun = Callable[[str, int, int], None]  # (what is being timed, runs done, runs in total)


def known_backends() -> list[str]:
    """What `--backends` accepts: the two PyTorch baselines and every runtime backend."""
    return [*TORCH_BACKENDS, *BACKENDS]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _significant(value: float | None, digits: int = 4) -> float | None:
    """Rates and percentages span orders of magnitude (0.02% of peak for eager PyTorch on a tiny model)."""
    return None if value is None else float(f"{value:.{digits}g}")


@dataclass
class BenchEntry:
    backend: str
    precision: str
    batch: int
    stats: LatencyStats | None  # None: the row could not run, `unavailable` says why
    warmup: Warmup | None
    execution: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None  # against PyTorch eager at the same batch size
    speedup_vs_compiled: float | None = None  # against torch.compile at the same batch size, when that row ran
    gmacs: float | None = None  # model MACs x batch / p50
    peak_precision: str | None = None  # the precision whose peak the row is held against (what it executed)
    percent_of_peak: float | None = None
    int8: Int8Share | None = None  # int8 rows: the share of MACs the runtime ran on integer kernels
    compile_s: float | None = None  # torch-compile: the first call at this batch size, not part of latency
    unavailable: str | None = None

    def to_dict(self) -> dict:
        row = {"backend": self.backend, "precision": self.precision}
        if self.stats is None:
            return {**row, "batch": self.batch, "unavailable": self.unavailable, "execution": self.execution}
        return {**row, **self.stats.to_dict(), "speedup_vs_torch": _round(self.speedup, 3),
                "speedup_vs_torch_compile": _round(self.speedup_vs_compiled, 3),
                "gmacs": _significant(self.gmacs), "peak_precision": self.peak_precision,
                "percent_of_peak": _significant(self.percent_of_peak),
                "int8_macs": self.int8.to_dict() if self.int8 else None, "compile_s": _round(self.compile_s, 2),
                "warmup_runs": self.warmup.runs, "warmup_stable": self.warmup.stable, "execution": self.execution}


@dataclass
class BenchResult:
    recipe: str
    entries: list[BenchEntry]
    machine: dict[str, Any]
    json_path: Path
    chart_path: Path | None
    macs: int | None = None  # per image
    peaks: dict[str, Peak] = field(default_factory=dict)
    load: LoadWatch | None = None


def int8_slower(entries: list[BenchEntry]) -> list[dict]:
    """Each backend and batch size whose INT8 row ran slower than its FP32 row in this run: INT8 is not faster
    on every CPU (ONNX Runtime ran MobileNetV3-large's INT8 0.88x as fast as FP32 on an AMD EPYC with VNNI), and
    where it is not, FP32 is what to serve there."""
    timed = {(e.backend, e.precision, e.batch): e.stats for e in entries if e.stats is not None}
    return [{"backend": backend, "batch": batch, "int8_p50_ms": round(stats.p50 * 1e3, 3),
             "fp32_p50_ms": round(timed[(backend, "fp32", batch)].p50 * 1e3, 3),
             "recommendation": f"serve fp32 on {backend} at batch {batch} on this CPU"}
            for (backend, precision, batch), stats in timed.items()
            if precision == "int8" and (backend, "fp32", batch) in timed
            and stats.p50 > timed[(backend, "fp32", batch)].p50]


class TorchRunner:
    """PyTorch eager, the baseline: the model as built (before deploy rewrites), inference mode. Also runs the
    torch.compile module of that model (`mode` says which)."""

    def __init__(self, model, threads: int, mode: str = "eager, inference_mode"):
        import torch

        self.torch = torch
        self.model = model
        torch.set_num_threads(threads)
        self.execution = {"device": "CPU", "threads": torch.get_num_threads(), "mode": mode,
                          "torch": torch.__version__, "execution_precision": "fp32"}

    def __enter__(self) -> TorchRunner:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()


class CompiledTorch:
    """torch.compile (inductor, CPU) of the eager baseline's model, specialised per batch size (dynamic=False: the
    kernels a deployment at a fixed batch would run). Each batch size compiles on its first call, timed here and
    reported apart from latency; warm-up then absorbs any later recompile. A failure (inductor needs a C++ compiler
    at run time; an operator it cannot lower) makes the rows unavailable with a one-line reason, never a crash, and
    a compiled model whose outputs differ from eager beyond the fp32 tolerance is not timed."""

    MODE = "torch.compile(backend='inductor', dynamic=False), inference_mode"

    def __init__(self, model, threads: int, compile_fn: Callable | None = None):
        import torch

        self.torch = torch
        self.model = model
        self.threads = threads
        torch.set_num_threads(threads)  # before compiling: inductor's C++ kernels take the thread count then
        self.module = (compile_fn or (lambda m: torch.compile(m, backend="inductor", dynamic=False)))(model)
        self.failure: str | None = None
        self.compiled_batches: list[int] = []

    def open(self, x: np.ndarray) -> tuple[TorchRunner, float]:
        """Compile for `x`'s batch size: the runner and the compile time in seconds."""
        if self.failure:
            raise MissingDependencyError(self.failure)
        limit = self._recompile_limit()
        if len(x) not in self.compiled_batches and len(self.compiled_batches) >= limit:
            raise MissingDependencyError(f"torch.compile specialises a model to at most {limit} shapes "
                                         "(torch._dynamo.config.recompile_limit): bench fewer batch sizes")
        torch = self.torch
        inputs = torch.from_numpy(x)
        with torch.inference_mode():
            start = time.perf_counter()
            try:
                out = self.module(inputs).numpy()
            except Exception as exc:  # inductor raises many types (InductorError, BackendCompilerFailed, ...)
                log.debug("torch.compile failed", exc_info=True)
                self.failure = f"torch.compile (inductor) failed: {_one_line(exc)}"
                raise MissingDependencyError(self.failure) from exc
            seconds = time.perf_counter() - start
            reference = self.model(inputs).numpy()
        if len(x) not in self.compiled_batches:
            self.compiled_batches.append(len(x))
        parity = compare(reference, out, POLICY["fp32"])
        if not parity.passed:
            raise MissingDependencyError(f"torch.compile's outputs differ from eager: {'; '.join(parity.failures)}")
        runner = TorchRunner(self.module, self.threads, self.MODE)
        runner.execution.update({"compile_s": round(seconds, 2), "max_rel_vs_eager": float(f"{parity.max_rel:.3g}")})
        return runner, seconds

    def _recompile_limit(self) -> int:
        config = self.torch._dynamo.config
        return int(getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 8)))


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (inductor's run to a page), with its type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"--batch takes comma-separated integers, got {text!r}") from None
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"--batch sizes must be positive integers, got {text!r}")
    return list(dict.fromkeys(batches))


def make_batch(inputs: np.ndarray, batch: int) -> np.ndarray:
    """`batch` inputs drawn cyclically from the parity inputs (real and image-like, not noise)."""
    dtype = np.uint8 if inputs.dtype == np.uint8 else np.float32  # a raw-pixel graph takes uint8
    return np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])), dtype=dtype)


def machine_info(threads: int, backends: list[str]) -> dict[str, Any]:
    flags = cpu_flags()
    versions = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "onnxruntime", "openvino", "tensorrt"):
        if dist in ("onnxruntime", "openvino", "tensorrt") and dist not in backends:
            continue
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": threads,
            "cpu_flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags], "platform": platform.platform(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()], "versions": versions}


def _plan(backends: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """The rows to time: the baselines first (eager always, torch.compile when asked), then each backend."""
    plan = [(BASELINE, "fp32")] + ([(COMPILED, "fp32")] if COMPILED in backends else [])
    for backend in backends:
        if backend not in TORCH_BACKENDS:
            plan += [(backend, p) for p in precisions if p in BACKENDS[backend].precisions]
    return plan


def check_backends(backends: list[str]) -> None:
    for name in backends:
        if name not in TORCH_BACKENDS:
            get_backend(name).ensure_available(f"effexport bench --backends {name}")


def peak_precision(entry: BenchEntry) -> str | None:
    """The precision a row executed, whose peak it is held against: what the runner reports (OpenVINO's bf16 hint
    may run f32; emulated bf16 has no bf16 peak), else what was asked."""
    runs = entry.execution.get("execution_precision") or entry.precision
    return runs if runs in ("fp32", "fp16", "bf16", "int8") else None


def add_rates(entries: list[BenchEntry], macs: int | None, peaks: dict[str, Peak]) -> None:
    """Achieved GMAC/s (model MACs x batch / p50) and its percentage of the peak of the executed precision."""
    for e in entries:
        if e.stats is None or not macs:
            continue
        e.gmacs = achieved_gmacs(macs, e.batch, e.stats.p50)
        e.peak_precision = peak_precision(e)
        peak = peaks.get(e.peak_precision) if e.peak_precision else None
        if peak is not None and peak.gmacs:
            e.percent_of_peak = 100 * e.gmacs / peak.gmacs


def bench_recipe(job: Job, backends: list[str], batches: list[int], precisions: tuple[str, ...] = ("fp32",),
                 threads: int | None = None, config: BenchConfig | None = None, options: dict[str, Any] | None = None,
                 chart: bool = True, progress: Progress | None = None, on_run: OnRun | None = None) -> BenchResult:
    """Time PyTorch eager (and torch.compile when asked) and each backend at each batch size; write bench.json and
    bench.png. Every artifact is verified (built or reused) first, INT8 ones from the job's one calibration. A
    backend whose artifacts have a batch profile (TensorRT) runs, at batch N, an engine whose profile covers N: the
    user's when one does, else one built for N."""
    check_backends(backends)
    config = config or BenchConfig()
    threads = threads or os.cpu_count() or 1
    load = LoadWatch.start()
    machine = machine_info(threads, backends)
    ctx = open_context(job, progress)
    plan = _plan(backends, list(precisions))
    if len(plan) == 1 and BASELINE not in backends:
        raise UsageError(f"none of {', '.join(backends)} runs {', '.join(precisions)}")
    artifacts = {(b, p, n): _artifact_for(ctx, b, p, n, (options or {}).get(b))
                 for b, p in plan if b not in TORCH_BACKENDS for n in batches}
    inputs = ctx.reference().inputs
    model = wrap(build_model(ctx.recipe, ctx.job.weights, ctx.job.num_classes)[0], ctx.job.export.graph_io,
                 ctx.preprocess)
    macs = ctx.onnx.report.get("macs")
    if progress:
        progress("measuring this machine's peak MAC rates")
    started = time.perf_counter()
    peaks = measure_peaks(threads, f16=runs_f16)  # asked only where OpenVINO is installed
    machine["peak_seconds"] = round(time.perf_counter() - started, 2)
    compiled = CompiledTorch(model, threads) if (COMPILED, "fp32") in plan else None
    total = len(plan) * len(batches) * config.iters
    done = 0
    entries: list[BenchEntry] = []
    shares: dict[Path, Int8Share | None] = {}
    load.sample("timing start")
    for backend, precision in plan:
        for batch in batches:
            x = make_batch(inputs, batch)
            label = f"{backend} {precision} batch {batch}"
            artifact = artifacts.get((backend, precision, batch))
            compile_s = None
            if backend == COMPILED:
                if progress:
                    progress(f"compiling {label} (torch.compile, inductor)")
                try:
                    runner, compile_s = compiled.open(x)
                except MissingDependencyError as exc:
                    log.warning("%s unavailable: %s", label, exc)
                    entries.append(BenchEntry(backend, precision, batch, None, None, {"mode": CompiledTorch.MODE},
                                              unavailable=str(exc)))
                    done += config.iters
                    continue
            else:
                runner = _open(backend, precision, batch, threads, model, artifact, options)
            if progress:
                progress(f"warming up {label}")
            with runner:
                warm, stats = measure(lambda r=runner, x=x: r.run(x), batch, config,
                                      on_run=lambda i, lbl=label, base=done: on_run and on_run(lbl, base + i, total))
                execution = dict(runner.execution)
                share = _int8_share(backend, artifact, runner, shares) if precision == "int8" else None
            done += config.iters
            load.sample(label)
            if artifact is not None:
                execution["artifact"] = str(artifact.folder.name)
            entries.append(BenchEntry(backend, precision, batch, stats, warm, execution, int8=share,
                                      compile_s=compile_s))
    load.sample("end")
    _add_speedups(entries)
    add_rates(entries, macs, peaks)
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    folder = ctx.folder
    variant = ctx.job.variant
    result = BenchResult(ctx.recipe.name, entries, machine, folder / f"bench{variant}.json", None, macs, peaks, load)
    if chart:
        from effexport.workflow.bench_chart import write_chart

        result.chart_path = write_chart(entries, folder / f"bench{variant}.png",
                                        title=f"{ctx.recipe.name} on {machine['cpu']}, {threads} threads",
                                        warning=load.warning)
    write_json(result.json_path, _to_json(ctx, result, config))
    return result


def _int8_share(backend: str, artifact: Artifact | None, runner: Any, cache: dict) -> Int8Share | None:
    """What the runtime runs in INT8: OpenVINO's from the compiled model just timed, ONNX Runtime's once per file
    (its optimized graph does not depend on the batch). A graph this cannot count is logged, not fatal."""
    if artifact is None:
        return None
    compiled = getattr(runner, "compiled", None) if backend == "openvino" else None
    if compiled is None and artifact.path in cache:
        return cache[artifact.path]
    try:
        share = int8_share(backend, artifact.path, compiled)
    except UsageError as exc:
        log.warning("INT8 MACs of %s not counted: %s", artifact.path, exc)
        share = None
    if compiled is None:
        cache[artifact.path] = share
    return share


def _artifact_for(ctx: Context, backend: str, precision: str, batch: int, given: Any) -> Artifact:
    """The artifact that runs `batch`: with batch profiles, the user's engine covering it or one built for it."""
    module = get_backend(backend).load()
    options = given
    if options is None and hasattr(module, "options_for_batch"):
        options = existing_options(ctx, backend, precision, batch) or module.options_for_batch(batch)
    return ensure_artifact(ctx, backend, precision, options)


def _open(backend: str, precision: str, batch: int, threads: int, model, artifact: Artifact | None,
          options: dict | None):
    if backend == BASELINE:
        return TorchRunner(model, threads)
    module = get_backend(backend).load()
    return module.open_runner(artifact.path, precision=precision, threads=threads, batch=batch,
                              options=(options or {}).get(backend))


def _add_speedups(entries: list[BenchEntry]) -> None:
    """Against eager PyTorch, and against torch.compile where that row ran, at the same batch size."""
    baseline = {e.batch: e.stats for e in entries if e.backend == BASELINE and e.stats}
    compiled = {e.batch: e.stats for e in entries if e.backend == COMPILED and e.stats}
    for e in entries:
        if e.stats is None:
            continue
        if e.batch in baseline:
            e.speedup = speedup(baseline[e.batch], e.stats)
        if e.batch in compiled:
            e.speedup_vs_compiled = speedup(compiled[e.batch], e.stats)


def _to_json(ctx: Context, result: BenchResult, config: BenchConfig) -> dict:
    return {
        "recipe": result.recipe,
        "baseline": "PyTorch eager FP32 (the model as built), same run",
        "second_baseline": f"{COMPILED}: {CompiledTorch.MODE} of the same model, compile time apart (compile_s)"
        if any(e.backend == COMPILED for e in result.entries) else None,
        "weights": ctx.onnx.report.get("weights"),
        "input_size": list(ctx.reference().inputs.shape[1:]),
        "harness": {"iters": config.iters, "warmup": {"min": config.min_warmup, "max": config.max_warmup,
                                                      "window": config.window, "stable_rel": config.stable_rel},
                    "latency": "one run() call on a host NumPy batch, including any host-device copies",
                    "throughput": "batch / p50 latency"},
        "machine": result.machine,
        "load_warning": result.load.warning if result.load else None,
        "load": result.load.to_dict() if result.load else None,
        "macs_per_image": result.macs,
        "peak": {p: peak.to_dict() for p, peak in result.peaks.items()},
        "rates": "gmacs = macs_per_image x batch / p50; percent_of_peak against peak[peak_precision], the "
                 "precision the row executed",
        "results": [e.to_dict() for e in result.entries],
        "int8_slower_than_fp32": int8_slower(result.entries),
        "chart": result.chart_path.name if result.chart_path else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
