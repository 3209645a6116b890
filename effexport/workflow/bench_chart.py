"""The bench chart, one PNG: per batch size, the speed-up of every backend over PyTorch eager (linear axis, eager at
1.0x) beside its median latency on a log axis (p90 whisker), every bar labelled with its value. On one linear
latency axis eager PyTorch, several times slower than the rest, flattened every fast backend into a sliver; the
speed-up panel compares them directly and the log axis keeps their latencies apart. Horizontal bars keep eight or
more series readable: one row each, its name on the axis, its number at the bar's end. matplotlib is imported here
only (the `bench` extra)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from effexport.errors import require
from effexport.exporter.artifacts import write_bytes

ROW_INCHES = 0.36  # height of one bar row
LABEL_SIZE = 8.5
LABEL_FRACTION = 0.3  # of a latency panel's width, kept free right of a whisker for its label


def _label(entry) -> str:
    return f"{entry.backend} {entry.precision}"


def _latency_text(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def _log_limits(smallest: float, largest: float) -> tuple[float, float]:
    """Log-axis limits that leave LABEL_FRACTION of the width free right of the longest whisker: with
    l, p, u the logs of the lower limit, the whisker and the upper limit, u - p = f (u - l)."""
    low = math.log10(smallest / 1.6)
    high = (math.log10(largest) - LABEL_FRACTION * low) / (1 - LABEL_FRACTION)
    return 10 ** low, 10 ** high


def write_chart(entries: Sequence, path: Path, title: str, warning: str | None = None) -> Path:
    """The chart of `entries` as a PNG at `path`; `warning` (a load-average warning) goes under the title."""
    fig = draw_chart(entries, title, warning)
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def draw_chart(entries: Sequence, title: str, warning: str | None = None):
    """The matplotlib figure: one row of two panels per batch size (speed-up, log latency)."""
    matplotlib = require("matplotlib", "bench", "the bench chart")
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    series = list(dict.fromkeys(_label(e) for e in entries))
    batches = sorted({e.batch for e in entries})
    by_key = {(_label(e), e.batch): e for e in entries}
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(series)}
    height = len(batches) * (0.9 + ROW_INCHES * len(series)) + (0.8 if warning else 0.5)
    fig, axes = plt.subplots(len(batches), 2, figsize=(12, height), squeeze=False,
                             gridspec_kw={"height_ratios": [len(series)] * len(batches)})
    rows = list(range(len(series)))[::-1]  # first series at the top
    for (speed_ax, lat_ax), batch in zip(axes, batches, strict=True):
        shown = [by_key.get((name, batch)) for name in series]
        speeds = [e.speedup for e in shown if e is not None and e.speedup]
        timed = [e.stats for e in shown if e is not None and e.stats is not None]
        for row, name, e in zip(rows, series, shown, strict=True):
            if e is None:
                continue
            if e.stats is None:
                for ax in (speed_ax, lat_ax):
                    ax.text(0.01, row, "unavailable", transform=ax.get_yaxis_transform(), va="center",
                            fontsize=LABEL_SIZE, color="0.35", style="italic")
                continue
            if e.speedup:
                speed_ax.barh(row, e.speedup, color=colors[name], height=0.7)
                text = f"{e.speedup:.2f}x" if e.speedup < 10 else f"{e.speedup:.1f}x"
                speed_ax.text(e.speedup, row, f" {text}", va="center", fontsize=LABEL_SIZE)
            p50, p90 = e.stats.p50 * 1e3, e.stats.p90 * 1e3
            lat_ax.barh(row, p50, color=colors[name], height=0.7, xerr=[[0], [max(0.0, p90 - p50)]],
                        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.3"})
            lat_ax.text(p90, row, f"  {_latency_text(p50)}, {e.stats.throughput:.0f} img/s", va="center",
                        fontsize=LABEL_SIZE)
        speed_ax.axvline(1.0, color="0.3", linewidth=0.8, linestyle="--")
        speed_ax.set_xlim(0, max(speeds + [1.0]) * 1.22)
        speed_ax.set_title(f"batch {batch}: speed-up over PyTorch eager (p50)", fontsize=10, loc="left")
        if timed:
            lat_ax.set_xscale("log")
            low, high = _log_limits(min(t.p50 for t in timed) * 1e3, max(t.p90 for t in timed) * 1e3)
            lat_ax.set_xlim(low, high)
            # 1-2-5 ticks over a few decades; decades only when the span is wide (their labels would collide)
            subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 2.5 else (1.0,)
            lat_ax.xaxis.set_major_locator(ticker.LogLocator(subs=subs))
            lat_ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            lat_ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        lat_ax.set_title(f"batch {batch}: latency per batch, ms (log axis; bar p50, whisker p90)", fontsize=10,
                         loc="left")
        for ax in (speed_ax, lat_ax):
            ax.set_yticks(rows, series if ax is speed_ax else [""] * len(series), fontsize=9)
            ax.set_ylim(-0.6, len(series) - 0.4)
            ax.grid(axis="x", alpha=0.3, which="both")
            ax.tick_params(axis="y", length=0)
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    if warning:
        fig.text(0.01, 1 - 0.42 / height, f"WARNING: {warning}", color="firebrick", fontsize=9, ha="left",
                 va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.6 if warning else 0.3) / height))
    return fig
