"""The Python API (`import effexport`): the CLI's functions, returning result objects, importable without torch."""

import subprocess
import sys
import textwrap

import pytest

import effexport
from effexport.errors import UsageError
from tests.calibration.conftest import write_images

RECIPE = "mobilenetv3_small"
SMALL = {"img_size": 64}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")  # shared, so the dynamic-batch export is made once


def test_import_is_light_and_exports_the_documented_functions():
    code = ("import sys, effexport\n"
            "assert not {'torch', 'timm', 'onnx', 'onnxruntime'} & set(sys.modules), 'heavy import'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("export_onnx", "build_backend", "calibrate", "verify", "bench", "build"):
        assert name in effexport.__all__ and callable(getattr(effexport, name))


def test_export_onnx_returns_a_verified_file(tmp_path):
    result = effexport.export_onnx(RECIPE, out=tmp_path, **SMALL)
    assert result.path.is_file() and result.path.suffix == ".onnx"
    assert result.report["parity"]["onnxruntime"]["passed"] and not result.reused
    assert effexport.export_onnx(RECIPE, out=tmp_path, **SMALL).reused


def test_build_backend_builds_then_reuses(out):
    artifact = effexport.build_backend(RECIPE, "onnxruntime", "fp16", out=out, **SMALL)
    assert artifact.path.is_file() and artifact.report["parity"]["passed"] and not artifact.reused
    again = effexport.build_backend(RECIPE, "onnxruntime", "fp16", out=out, **SMALL)
    assert again.reused and again.path == artifact.path


def test_verify_returns_passed_rows(out):
    result = effexport.verify(RECIPE, backends=["onnxruntime"], precisions="fp32,fp16", out=out, **SMALL)
    assert result.passed and [(r.backend, r.precision, r.status) for r in result.rows] == [
        ("onnxruntime", "fp32", "passed"), ("onnxruntime", "fp16", "passed")]
    assert result.path.is_file()


def test_bench_returns_entries(out):
    result = effexport.bench(RECIPE, backends=("torch", "onnxruntime"), batches=(1,), iters=3, max_warmup=5,
                             chart=False, threads=1, out=out, **SMALL)
    assert {(e.backend, e.batch) for e in result.entries} == {("torch", 1), ("onnxruntime", 1)}
    assert all(e.stats.p50 > 0 for e in result.entries) and result.json_path.is_file()


def test_calibrate_writes_the_int8_forms(out, tmp_path):
    calib = tmp_path / "calib"
    write_images(calib, 4)
    result = effexport.calibrate(RECIPE, calib=calib, calib_size=3, openvino=False, enforce_all=False, out=out,
                                 **SMALL)
    assert {"qdq", "ort_cpu"} <= set(result.files) and "openvino" not in result.files
    assert all(path.is_file() for path in result.files.values()) and result.manifest_path.is_file()
    assert result.manifest["data"]["count"] == 3


def test_build_writes_the_manifest(tmp_path):
    path = tmp_path / "effexport.toml"
    path.write_text(textwrap.dedent(f"""\
        [models.small]
        recipe = "{RECIPE}"
        img_size = 64
        targets = ["onnx"]
        """))
    plan = effexport.build(path, dry_run=True)
    assert [(t.model, t.name, action) for t, action, _ in plan] == [("small", "onnx", "build")]
    result = effexport.build(path, out=tmp_path / "built")
    assert [r.status for r in result.results] == ["built"] and result.manifest_path.is_file()


@pytest.mark.parametrize("call", [
    lambda out: effexport.export_onnx("no_such_recipe", out=out),
    lambda out: effexport.build_backend(RECIPE, "no_such_backend", out=out),
    lambda out: effexport.build_backend(RECIPE, "onnxruntime", "int4", out=out),
    lambda out: effexport.verify(RECIPE, backends=["onnxruntime"], precisions=["fp8"], out=out),
    lambda out: effexport.bench(RECIPE, batches=(0,), out=out),
])
def test_bad_input_raises_usage_error_before_any_work(call, tmp_path):
    with pytest.raises(UsageError):
        call(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_api_takes_the_graph_ends_and_the_exporter(tmp_path):
    """The options of the commands reach the Python API too: a sigmoid head on raw NHWC bytes through torch.export."""
    import json

    import effexport

    result = effexport.export_onnx("mobilenetv3_small", img_size=64, opset=18, exporter="dynamo", output="sigmoid",
                                   input="uint8-nhwc", num_classes=5, out=tmp_path)
    report = json.loads(result.report_path.read_text())
    assert report["exporter"] == "dynamo" and report["num_classes"] == 5
    assert report["inputs"][0]["dtype"] == "uint8" and report["parity"]["onnxruntime"]["rule"] == "label-set@0.5"
