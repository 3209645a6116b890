"""`effexport bench` end to end on a small model, in-process through main(): torch.compile's row unavailable when
inductor finds no C++ compiler, achieved GMAC/s against the measured peaks, the load record, and INT8 rows with the
share of MACs the runtime executes in INT8. No speed is asserted."""

import json
from pathlib import Path

import pytest

from effexport import printers
from effexport.exporter.macs import Int8Share, Layer, Peak
from effexport.exporter.timing import LoadWatch, Warmup, summarize
from effexport.workflow.bench import BenchEntry, BenchResult, _add_speedups, add_rates
from tests.calibration.conftest import write_images
from tests.test_cli import run

RECIPE = "mobilenetv3_small"
SMALL = ["--img-size", "64"]


def test_torch_compile_without_a_compiler_is_an_unavailable_row(capsys, tmp_path):
    import torch._inductor.config as inductor

    # inductor's own scoped patch: pytest's monkeypatch would delete the config entry on undo
    with inductor.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        code, out, err = run(["bench", RECIPE, *SMALL, "--backends", "torch,torch-compile,onnxruntime", "--batch",
                              "1,2", "--iters", "3", "--max-warmup", "6", "--no-chart", "--out", str(tmp_path)], capsys)
    assert inductor.cpp.cxx != ("/nonexistent/g++",)
    assert code == 0, err
    flat = " ".join(out.split())  # rich wraps long lines
    assert "unavailable" in flat and "GMAC/s" in flat and "% peak" in flat and "vs compile" not in flat
    assert "torch-compile fp32 batch 1 unavailable: torch.compile (inductor) failed:" in flat
    assert "% peak: GMAC/s (model MACs x batch / p50)" in flat and "fp32" in flat
    data = json.loads((tmp_path / RECIPE / "bench-64px.json").read_text())
    rows = {(r["backend"], r["batch"]): r for r in data["results"]}
    assert list(rows) == [("torch", 1), ("torch", 2), ("torch-compile", 1), ("torch-compile", 2),
                          ("onnxruntime", 1), ("onnxruntime", 2)]
    assert rows[("torch-compile", 2)]["unavailable"].startswith("torch.compile (inductor) failed:")
    assert "p50_ms" not in rows[("torch-compile", 1)]
    assert data["macs_per_image"] > 0 and data["peak"]["fp32"]["gmacs"] > 0 and data["peak"]["int8"]["runtime"]
    for key in (("torch", 1), ("onnxruntime", 2)):
        row = rows[key]
        assert row["peak_precision"] == "fp32" and row["percent_of_peak"] > 0
        assert row["gmacs"] == pytest.approx(data["macs_per_image"] * row["batch"] / row["p50_ms"] / 1e6, rel=1e-2)
        assert row["speedup_vs_torch_compile"] is None
    assert data["load"]["samples"][0]["at"] == "start" and data["load"]["samples"][-1]["at"] == "end"
    assert data["load_warning"] == data["load"]["warning"]


def _row(backend, batch, p50, execution=None):
    stats = None if p50 is None else summarize([p50] * 3, batch)
    warmup = None if p50 is None else Warmup(10, True, p50)
    precision = (execution or {}).get("execution_precision", "fp32")
    return BenchEntry(backend, precision, batch, stats, warmup, dict(execution or {}))


def test_the_table_shows_ratios_rates_int8_share_compile_times_and_the_load_warning(capsys):
    entries = [_row("torch", 1, 0.030), _row("torch-compile", 1, 0.015), _row("onnxruntime", 1, 0.010),
               _row("onnxruntime", 1, 0.005, {"execution_precision": "int8"}),
               _row("torch", 8, 0.200), _row("torch-compile", 8, None), _row("onnxruntime", 8, 0.050)]
    entries[3].int8 = Int8Share("onnxruntime", 986, 1000, (Layer("/stem/Conv", "Conv", 14, "float"),), 53, "how")
    entries[1].compile_s = 41.26
    entries[5].unavailable = "torch.compile (inductor) failed: InvalidCxxCompiler: No working C++ compiler found"
    peaks = {"fp32": Peak("fp32", 250.0, "onnxruntime MatMul"), "int8": Peak("int8", 900.0, "onnxruntime "
             "MatMulInteger"), "fp16": Peak("fp16", None, None, "the CPU does not compute fp16")}
    _add_speedups(entries)
    add_rates(entries, 600_000_000, peaks)
    load = LoadWatch.start(cpus=2, getloadavg=iter([(1.0, 0, 0), (3.2, 0, 0)]).__next__)
    load.sample("onnxruntime fp32 batch 8")
    machine = {"cpu": "AMD EPYC", "threads": 2, "load_average_at_start": [1.0], "load_average_at_end": [3.2],
               "versions": {"torch": "2.14.1"}, "cpu_flags": ["avx2"]}
    result = BenchResult("rexnet_1.0", entries, machine, Path("bench.json"), None, 600_000_000, peaks, load)
    printers.print_bench(result)
    captured = capsys.readouterr()
    out, err = " ".join(captured.out.split()), " ".join(captured.err.split())
    assert "vs compile" in out and "INT8 MACs" in out and "% peak" in out
    # 0.6 GMAC per image in 10 ms: 60 GMAC/s, 24% of the fp32 peak; 3x eager's 30 ms, 1.5x torch-compile's 15 ms
    assert "onnxruntime fp32 1 10.0 10.0 10.0 100.0 3.00x 1.50x 60.0 24.0% -" in out
    assert "onnxruntime int8 1 5.0 5.0 5.0 200.0 6.00x 3.00x 120.0 13.3% 98.6%" in out
    assert "torch-compile fp32 8 n/a - - - - - - - -" in out
    assert "torch-compile: compile time (not in latency) batch 1 41.3 s" in out
    assert "torch-compile fp32 batch 8 unavailable: torch.compile (inductor) failed: InvalidCxxCompiler" in out
    assert "onnxruntime int8 keeps 1 of 53 weighted layers in float: /stem/Conv (1.4%)" in out
    assert "fp32 250 GMAC/s (onnxruntime MatMul)" in out and "fp16 none, the CPU does not compute fp16" in out
    assert "600.0 M MACs per image" in out
    assert "warning: load average 3.2 (1 min, at onnxruntime fp32 batch 8) exceeded the 2 CPUs" in err


@pytest.mark.slow
@pytest.mark.openvino
def test_int8_rows_show_the_share_of_macs_run_in_int8(capsys, tmp_path):
    pytest.importorskip("nncf")
    calib = tmp_path / "calib"
    write_images(calib, 4)
    code, out, err = run(["bench", RECIPE, *SMALL, "--backends", "onnxruntime,openvino", "--precision", "int8",
                          "--batch", "1", "--iters", "3", "--max-warmup", "6", "--no-chart", "--calib", str(calib),
                          "--calib-size", "3", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    assert "INT8 MACs" in flat
    data = json.loads((tmp_path / "out" / RECIPE / "bench-64px.json").read_text())
    rows = {r["backend"]: r for r in data["results"]}
    for backend in ("onnxruntime", "openvino"):
        share = rows[backend]["int8_macs"]
        assert 0.5 < share["share"] < 1 and share["total_macs"] > 0  # the first convolution stays float
        assert share["int8_macs"] + sum(f["macs"] for f in share["float_layers"]) == share["total_macs"]
        assert f"{share['share']:.1%}" in flat and rows[backend]["peak_precision"] == "int8"
        kept = f"{backend} int8 keeps {len(share['float_layers'])} of {share['layers']} weighted layers in float"
        assert kept in flat
    assert rows["torch"]["int8_macs"] is None
