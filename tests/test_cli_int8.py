"""`effexport calibrate` and `effexport onnx --int8`, run in-process through main() for real exit codes."""

import json

import pytest

from tests.calibration.conftest import write_corrupt, write_images
from tests.test_cli import _leftovers, run

RECIPE = "mobilenetv3_small"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")  # shared, so the FP32 export is made once


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    write_images(folder, 6)
    write_corrupt(folder)
    return folder


def test_calibrate_builds_reports_skips_and_reuses(capsys, out, calib):
    args = ["calibrate", RECIPE, "--calib", str(calib), "--calib-size", "4", "--img-size", "64", "--no-openvino",
            "--out", str(out)]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    folder = out / RECIPE
    manifest = json.loads((folder / "calibration.json").read_text())
    assert (folder / "model_int8_qdq.onnx").is_file() and (folder / "model_int8_ort_cpu.onnx").is_file()
    assert manifest["data"]["count"] == 4 and manifest["method"] == "minmax"
    flat = " ".join(stdout.split())
    assert "written" in flat and "QDQ form check (TensorRT rules): passed" in flat
    assert "kept in float" in stdout and "random weights" in err
    skipped = {s["file"] for s in manifest["data"]["skipped"]}
    for name in skipped:
        assert name in err
    code, stdout, err = run(args, capsys)
    assert code == 0 and "reused" in stdout
    assert _leftovers(out) == []


def test_onnx_int8_uses_the_same_library(capsys, out, calib):
    code, stdout, err = run(["onnx", RECIPE, "--img-size", "64", "--int8", "--calib", str(calib), "--out", str(out)],
                            capsys)
    assert code == 0, err
    manifest = json.loads((out / RECIPE / "calibration.json").read_text())
    assert manifest["data"]["count"] == 6 and manifest["data"]["source"] == str(calib)
    assert "parity vs PyTorch FP32" in " ".join(stdout.split()) and "INT8 forms" in stdout


def test_calibrate_on_a_folder_of_corrupt_files_exits_2(capsys, out, tmp_path):
    write_corrupt(tmp_path)
    code, _, err = run(["calibrate", RECIPE, "--calib", str(tmp_path), "--img-size", "64", "--no-openvino",
                        "--out", str(out)], capsys)
    assert code == 2 and "could be read" in err and "Traceback" not in err


def test_calibrate_with_an_unknown_method_exits_2(capsys, out):
    code, _, err = run(["calibrate", RECIPE, "--method", "kl", "--out", str(out)], capsys)
    assert code == 2 and "minmax" in err
