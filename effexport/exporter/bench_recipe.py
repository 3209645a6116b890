"""`effexport bench`: every backend timed by the one harness in bench.py, PyTorch eager as the baseline in the
same run, written to `<out>/<model>/bench.json` and `bench.png` with the machine and versions it ran on."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from effexport.errors import UsageError
from effexport.exporter.artifacts import write_json
from effexport.exporter.backends import BACKENDS, get_backend
from effexport.exporter.bench import BenchConfig, LatencyStats, Warmup, measure, speedup
from effexport.exporter.cpu_env import cpu_flags, cpu_model
from effexport.exporter.deploy import Artifact, Context, ensure_artifact, existing_options, open_context
from effexport.exporter.pipeline import Progress, build_model
from effexport.job import Job

log = logging.getLogger(__name__)

BASELINE = "torch"
BENCH_FILE = "bench.json"
CHART_FILE = "bench.png"
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                         "amx_int8", "avx_vnni")
OnRun = Callable[[str, int, int], None]  # (what is being timed, runs done, runs in total)


@dataclass
class BenchEntry:
    backend: str
    precision: str
    batch: int
    stats: LatencyStats
    warmup: Warmup
    execution: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None  # against PyTorch eager at the same batch size

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, **self.stats.to_dict(),
                "speedup_vs_torch": None if self.speedup is None else round(self.speedup, 3),
                "warmup_runs": self.warmup.runs, "warmup_stable": self.warmup.stable, "execution": self.execution}


@dataclass
class BenchResult:
    recipe: str
    entries: list[BenchEntry]
    machine: dict[str, Any]
    json_path: Path
    chart_path: Path | None


class TorchRunner:
    """PyTorch eager, the baseline: the model as built (before deploy rewrites), inference mode."""

    def __init__(self, model, threads: int):
        import torch

        self.torch = torch
        self.model = model
        torch.set_num_threads(threads)
        self.execution = {"device": "CPU", "threads": torch.get_num_threads(), "mode": "eager, inference_mode",
                          "torch": torch.__version__}

    def __enter__(self) -> TorchRunner:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()


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
    return np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])), dtype=np.float32)


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
    plan = [(BASELINE, "fp32")]
    for backend in backends:
        if backend == BASELINE:
            continue
        plan += [(backend, p) for p in precisions if p in BACKENDS[backend].precisions]
    return plan


def check_backends(backends: list[str]) -> None:
    for name in backends:
        if name != BASELINE:
            get_backend(name).ensure_available(f"effexport bench --backends {name}")


def bench_recipe(job: Job, backends: list[str], batches: list[int], precisions: tuple[str, ...] = ("fp32",),
                 threads: int | None = None, config: BenchConfig | None = None, options: dict[str, Any] | None = None,
                 chart: bool = True, progress: Progress | None = None, on_run: OnRun | None = None) -> BenchResult:
    """Time PyTorch eager and each backend at each batch size; write bench.json and bench.png. Every artifact is
    verified (built or reused) first, INT8 ones from the job's one calibration. A backend whose artifacts have a
    batch profile (TensorRT) runs, at batch N, an engine whose profile covers N: the user's when one does, else
    one built for N."""
    check_backends(backends)
    config = config or BenchConfig()
    threads = threads or os.cpu_count() or 1
    machine = machine_info(threads, backends)
    ctx = open_context(job, progress)
    plan = _plan(backends, list(precisions))
    if len(plan) == 1 and BASELINE not in backends:
        raise UsageError(f"none of {', '.join(backends)} runs {', '.join(precisions)}")
    artifacts = {(b, p, n): _artifact_for(ctx, b, p, n, (options or {}).get(b))
                 for b, p in plan if b != BASELINE for n in batches}
    inputs = ctx.reference().inputs
    model = build_model(ctx.recipe, ctx.job.weights)[0]
    total = len(plan) * len(batches) * config.iters
    done = 0
    entries: list[BenchEntry] = []
    for backend, precision in plan:
        for batch in batches:
            x = make_batch(inputs, batch)
            label = f"{backend} {precision} batch {batch}"
            if progress:
                progress(f"warming up {label}")
            with _open(backend, precision, batch, threads, model, artifacts.get((backend, precision, batch)),
                       options) as runner:
                warm, stats = measure(lambda r=runner, x=x: r.run(x), batch, config,
                                      on_run=lambda i, lbl=label, base=done: on_run and on_run(lbl, base + i, total))
                execution = dict(runner.execution)
            done += config.iters
            artifact = artifacts.get((backend, precision, batch))
            if artifact is not None:
                execution["artifact"] = str(artifact.folder.name)
            entries.append(BenchEntry(backend, precision, batch, stats, warm, execution))
    _add_speedups(entries)
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    folder = ctx.folder
    variant = ctx.job.variant
    result = BenchResult(ctx.recipe.name, entries, machine, folder / f"bench{variant}.json", None)
    if chart:
        from effexport.exporter.bench_chart import write_chart

        result.chart_path = write_chart(entries, folder / f"bench{variant}.png",
                                        title=f"{ctx.recipe.name} on {machine['cpu']}, {threads} threads")
    write_json(result.json_path, _to_json(ctx, result, config))
    return result


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
    baseline = {e.batch: e.stats for e in entries if e.backend == BASELINE}
    for e in entries:
        if e.batch in baseline:
            e.speedup = speedup(baseline[e.batch], e.stats)


def _to_json(ctx: Context, result: BenchResult, config: BenchConfig) -> dict:
    return {
        "recipe": result.recipe,
        "baseline": "PyTorch eager FP32 (the model as built), same run",
        "weights": ctx.onnx.report.get("weights"),
        "input_size": list(ctx.reference().inputs.shape[1:]),
        "harness": {"iters": config.iters, "warmup": {"min": config.min_warmup, "max": config.max_warmup,
                                                      "window": config.window, "stable_rel": config.stable_rel},
                    "latency": "one run() call on a host NumPy batch, including any host-device copies",
                    "throughput": "batch / p50 latency"},
        "machine": result.machine,
        "results": [e.to_dict() for e in result.entries],
        "chart": result.chart_path.name if result.chart_path else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
