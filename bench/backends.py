"""Latency of every backend against PyTorch eager, for several recipes, in one markdown table.

    python bench/backends.py rexnet_1.0 tresnet_m --batch 1,8 --iters 50 [--threads 2] [--out DIR]

Each recipe runs through `effexport bench` (the same harness, PyTorch eager as the baseline in the same run);
the per-recipe bench.json and bench.png land in <out>/<recipe>/. Medians and ratios only; run on a quiet machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from effexport.exporter.timing import BenchConfig
from effexport.workflow.bench import bench_recipe, parse_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("effexport-out"))
    args = parser.parse_args()
    config = BenchConfig(iters=args.iters)
    print("| recipe | backend | precision | batch | p50 ms | p90 ms | p99 ms | images/s | vs torch |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for recipe in args.recipes:
        result = bench_recipe(recipe, args.backends.split(","), parse_batches(args.batch),
                              tuple(args.precision.split(",")), args.threads, config, out=args.out)
        for e in result.entries:
            s = e.stats
            runs = e.execution.get("execution_precision")
            precision = e.precision if runs in (None, e.precision) else f"{e.precision} ({runs})"
            print(f"| {recipe} | {e.backend} | {precision} | {e.batch} | {s.p50 * 1e3:.2f} | {s.p90 * 1e3:.2f} | "
                  f"{s.p99 * 1e3:.2f} | {s.throughput:.1f} | {e.speedup:.2f}x |", flush=True)
        m = result.machine
        print(f"<!-- {recipe}: {m['cpu']}, {m['threads']} threads, load average {m['load_average_at_start']} -> "
              f"{m['load_average_at_end']}, {m['versions']} -->", flush=True)


if __name__ == "__main__":
    main()
