"""The backend commands (backends, openvino, trt, verify, bench), run in-process through main() so exit codes and
messages are the real ones. Small model, small input size."""

import json
import sys

import pytest

from tests.fakes.tensorrt import make_fake_tensorrt
from tests.test_cli import _leftovers, run

RECIPE = "mobilenetv3_small"
SMALL = ["--img-size", "64"]


def test_backends_lists_every_backend(capsys):
    code, out, _ = run(["backends", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == {"onnxruntime", "openvino", "tensorrt"}
    assert rows["onnxruntime"]["available"] and rows["onnxruntime"]["version"]
    assert rows["tensorrt"]["available"] or rows["tensorrt"]["reason"]


@pytest.mark.openvino
def test_openvino_shares_the_onnx_export_and_reuses(capsys, tmp_path):
    code, out, err = run(["onnx", RECIPE, "--dynamic-batch", *SMALL, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    onnx_file = tmp_path / RECIPE / "onnx-dynamic-64px" / "model.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    code, out, err = run(["openvino", RECIPE, *SMALL, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "wrote" in out and "openvino-fp32-64px" in out and "passed" in out and "RANDOM weights" in err
    assert onnx_file.stat().st_mtime_ns == stamp  # the verified export was reused, not redone
    report = json.loads((tmp_path / RECIPE / "openvino-fp32-64px" / "report.json").read_text())
    assert report["execution"]["execution_precision"] == "fp32"
    assert report["source_onnx"]["file"] == "onnx-dynamic-64px/model.onnx"
    code, out, _ = run(["openvino", RECIPE, *SMALL, "--out", str(tmp_path)], capsys)
    assert code == 0 and out.startswith("reused")
    code, out, err = run(["openvino", RECIPE, *SMALL, "--precision", "fp16", "--out", str(tmp_path)], capsys)
    assert code == 0 and "openvino fp16" in " ".join(out.split()), err  # rich wraps long lines
    assert _leftovers(tmp_path) == [".lock"]


def test_openvino_rejects_other_precisions(capsys, tmp_path):
    code, _, err = run(["openvino", RECIPE, "--precision", "bf16", "--out", str(tmp_path)], capsys)
    assert code == 2 and "fp32, fp16, int8" in err
    code, _, err = run(["openvino", RECIPE, "--int8", "--precision", "fp16", "--out", str(tmp_path)], capsys)
    assert code == 2 and "exclude each other" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.openvino
def test_verify_table_json_and_exit_codes(capsys, tmp_path):
    args = ["verify", RECIPE, *SMALL, "--backends", "onnxruntime,openvino", "--out", str(tmp_path)]
    code, out, err = run([*args, "--precision", "fp32,fp16"], capsys)
    assert code == 0, err
    assert "parity with PyTorch FP32" in " ".join(out.split()) and out.count("passed") == 4
    table = json.loads((tmp_path / RECIPE / "verify-64px.json").read_text())
    assert table["passed"] and [(r["backend"], r["precision"], r["status"]) for r in table["rows"]] == [
        ("onnxruntime", "fp32", "passed"), ("onnxruntime", "fp16", "passed"), ("openvino", "fp32", "passed"),
        ("openvino", "fp16", "passed")]
    assert table["policy"]["fp32"] == {"max_rel": 1e-4, "rule": "top-k"}

    code, out, err = run([*args, "--tolerance", "fp32:max_rel=1e-12"], capsys)
    assert code == 3 and "2 of 2 checks failed" in err and "relative error" in err
    table = json.loads((tmp_path / RECIPE / "verify-64px.json").read_text())
    assert not table["passed"] and {r["status"] for r in table["rows"]} == {"failed"}
    assert table["rows"][0]["parity"]["max_rel"] > 1e-12

    code, _, err = run([*args, "--precision", "fp16", "--tolerance", "fp16:min_cosine=1.5"], capsys)
    assert code == 3 and "cosine" in err
    code, _, err = run([*args, "--tolerance", "fp16:cosine=1"], capsys)
    assert code == 2 and "PRECISION:KEY=VALUE" in err


def test_verify_with_a_missing_backend_fails_before_any_work(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    from effexport.backends import tensorrt

    if tensorrt.probe().available:
        pytest.skip("TensorRT and a GPU are present")
    code, _, err = run(["verify", RECIPE, "--backends", "onnxruntime,tensorrt", "--out", str(tmp_path)], capsys)
    assert code == 4 and "needs tensorrt" in err and len(err.splitlines()) == 1
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.tensorrt
def test_trt_without_tensorrt_fails_in_one_line_before_any_work(capsys, tmp_path, monkeypatch):
    from effexport.backends import tensorrt

    if tensorrt.probe().available:
        pytest.skip("TensorRT and a GPU are present")
    code, out, err = run(["trt", "tresnet_m", "--fp16", "--out", str(tmp_path)], capsys)
    assert code == 4 and err.startswith("error: effexport trt needs tensorrt:") and "Traceback" not in err
    assert "TensorRT is not installed" in err or "no CUDA GPU" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("11.1.0"))  # TensorRT present, no GPU
    code, _, err = run(["trt", "tresnet_m", "--out", str(tmp_path)], capsys)
    assert code == 4 and "no CUDA GPU is visible" in err and "not installed" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_trt_option_errors_exit_2(capsys, tmp_path):
    code, _, err = run(["trt", RECIPE, "--batch", "2", "--max-batch", "4", "--out", str(tmp_path)], capsys)
    assert code == 2 and "exclude each other" in err
    code, _, err = run(["trt", RECIPE, "--hardware-compat", "volta", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--hardware-compat" in err


@pytest.mark.openvino
def test_bench_writes_table_json_and_chart(capsys, tmp_path):
    code, out, err = run(["bench", RECIPE, *SMALL, "--backends", "torch,onnxruntime,openvino", "--batch", "1,2",
                          "--iters", "3", "--max-warmup", "10", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    flat = " ".join(out.split())  # rich wraps long lines
    assert "latency in ms" in flat and "p99" in flat and "vs torch" in flat and "1.00x" in flat
    data = json.loads((tmp_path / RECIPE / "bench-64px.json").read_text())
    rows = [(r["backend"], r["batch"]) for r in data["results"]]
    assert rows == [("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2), ("openvino", 1),
                    ("openvino", 2)]
    assert all(r["runs"] == 3 and r["p50_ms"] > 0 and r["p50_ms"] <= r["p99_ms"] for r in data["results"])
    assert [r["speedup_vs_torch"] for r in data["results"][:2]] == [1.0, 1.0]
    machine = data["machine"]
    assert machine["threads"] >= 1 and machine["cpu"] and {"torch", "onnxruntime", "openvino"} <= set(
        machine["versions"])
    assert (tmp_path / RECIPE / "bench-64px.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _leftovers(tmp_path) == [".lock"]


def test_bench_rejects_unknown_backends(capsys, tmp_path):
    code, _, err = run(["bench", RECIPE, "--backends", "torch,tflite", "--out", str(tmp_path)], capsys)
    assert code == 2 and "unknown backend tflite" in err
