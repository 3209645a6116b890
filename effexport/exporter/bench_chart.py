"""The bench chart: median latency (p90 whiskers) and throughput per backend and batch size, one PNG.
matplotlib is imported here only (the `bench` extra)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from effexport.exporter.artifacts import write_bytes
from effexport.exporter.backends import require


def write_chart(entries: Sequence, path: Path, title: str) -> Path:
    matplotlib = require("matplotlib", "bench", "the bench chart")
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(f"{e.backend} {e.precision}" for e in entries))
    batches = sorted({e.batch for e in entries})
    by_key = {(f"{e.backend} {e.precision}", e.batch): e for e in entries}
    width = 0.8 / max(1, len(series))
    fig, (lat_ax, thr_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, name in enumerate(series):
        xs, p50, p90, thr = [], [], [], []
        for j, batch in enumerate(batches):
            if (name, batch) in by_key:
                stats = by_key[(name, batch)].stats
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                p50.append(stats.p50 * 1e3)
                p90.append((stats.p90 - stats.p50) * 1e3)
                thr.append(stats.throughput)
        lat_ax.bar(xs, p50, width, yerr=[[0] * len(p90), p90], capsize=3, label=name)
        thr_ax.bar(xs, thr, width, label=name)
    for ax, ylabel, what in ((lat_ax, "latency per batch, ms (bar p50, whisker p90)", "latency"),
                             (thr_ax, "images / s (batch / p50)", "throughput")):
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel(ylabel)
        ax.set_title(what)
        ax.grid(axis="y", alpha=0.3)
    thr_ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(Path(path), buffer.getvalue())
    return Path(path)
