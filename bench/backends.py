"""Latency of every backend against PyTorch eager, for several recipes, in one markdown table.

    python bench/backends.py rexnet_1.0 tresnet_m --batch 1,8 --iters 50 [--threads 2] [--out DIR]
    python bench/backends.py rexnet_1.0 --exporter torchscript,dynamo --opset 18   # the two exporters' files

Each recipe runs through `effexport bench` (the same harness, PyTorch eager as the baseline in the same run);
the per-recipe bench.json and bench.png land in <out>/<recipe>/. Medians and ratios only; run on a quiet machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import effexport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("effexport-out"))
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--exporter", default="auto", help="comma-separated: one bench per exporter path")
    args = parser.parse_args()
    print("| recipe | exporter | backend | precision | batch | p50 ms | p90 ms | p99 ms | images/s | vs torch |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for recipe in args.recipes:
        for exporter in args.exporter.split(","):
            result = effexport.bench(recipe, backends=args.backends, batches=[int(b) for b in args.batch.split(",")],
                                     precisions=args.precision, threads=args.threads, iters=args.iters,
                                     opset=args.opset, exporter=exporter, chart=False, out=args.out)
            for e in result.entries:
                s = e.stats
                if s is None:
                    print(f"| {recipe} | {exporter} | {e.backend} | {e.precision} | {e.batch} | n/a: {e.unavailable} |")
                    continue
                runs = e.execution.get("execution_precision")
                precision = e.precision if runs in (None, e.precision) else f"{e.precision} ({runs})"
                print(f"| {recipe} | {exporter} | {e.backend} | {precision} | {e.batch} | {s.p50 * 1e3:.2f} | "
                      f"{s.p90 * 1e3:.2f} | {s.p99 * 1e3:.2f} | {s.throughput:.1f} | {e.speedup:.2f}x |", flush=True)
            m = result.machine
            print(f"<!-- {recipe} ({exporter}): {m['cpu']}, {m['threads']} threads, load average "
                  f"{m['load_average_at_start']} -> {m['load_average_at_end']}, {m['versions']} -->", flush=True)


if __name__ == "__main__":
    main()
