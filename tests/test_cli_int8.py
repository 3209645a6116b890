"""`effexport calibrate` and `effexport onnx --int8`, run in-process through main() for real exit codes."""

import json

import pytest

from effexport.calibration.data import builtin_files
from tests.calibration.conftest import calibration_folder, write_corrupt
from tests.test_cli import _leftovers, run

RECIPE = "mobilenetv3_small"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")  # shared, so the FP32 export is made once


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return calibration_folder(tmp_path_factory.mktemp("calib"), 6)


def test_calibrate_builds_reports_skips_and_reuses(capsys, out, calib):
    args = ["calibrate", RECIPE, "--calib", str(calib), "--calib-size", "4", "--img-size", "64", "--no-openvino",
            "--out", str(out)]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    folder = out / RECIPE / "int8-minmax-n4-seed0-64px"
    manifest = json.loads((folder / "calibration.json").read_text())
    assert (folder / "model_int8_qdq.onnx").is_file() and (folder / "model_int8_ort_cpu.onnx").is_file()
    assert manifest["data"]["count"] == 4 and manifest["method"] == "minmax"
    flat = " ".join(stdout.split())
    assert "written" in flat and "QDQ form check (TensorRT rules): passed" in flat
    assert "kept in float" in flat and "random weights" in err
    skipped = {s["file"] for s in manifest["data"]["skipped"]}
    for name in skipped:
        assert name in err
    code, stdout, err = run(args, capsys)
    assert code == 0 and "reused" in stdout
    assert _leftovers(out) == [".lock"]


def test_onnx_int8_uses_the_same_library(capsys, out, calib):
    code, stdout, err = run(["onnx", RECIPE, "--img-size", "64", "--int8", "--calib", str(calib), "--out", str(out)],
                            capsys)
    assert code == 0, err
    manifest = json.loads((out / RECIPE / "int8-minmax-64px" / "calibration.json").read_text())
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


# ---------------------------------------------------------------------------------------------- backend commands


@pytest.fixture(scope="module")
def deploy_out(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")  # shared: one dynamic-batch export and one calibration


SMALL = ["--img-size", "64"]


@pytest.mark.openvino
def test_openvino_int8_builds_reports_and_reuses(capsys, deploy_out, calib):
    pytest.importorskip("nncf")
    args = ["openvino", RECIPE, *SMALL, "--int8", "--calib", str(calib), "--out", str(deploy_out)]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    flat = " ".join(stdout.split())
    assert "openvino-int8-64px/model.xml (openvino int8, executes int8" in flat and "held-out photographs" in flat
    assert "INT8 from the calibration" in flat and "openvino form" in flat
    assert "INT8 PARITY NOT ENFORCED" in err and "skipped 2 unreadable file(s)" in err
    report = json.loads((deploy_out / RECIPE / "openvino-int8-64px" / "report.json").read_text())
    assert report["status"] == "passed" and report["parity"]["enforced"] is False
    code, stdout, _ = run(args, capsys)
    assert code == 0 and stdout.startswith("INT8 from the calibration") and "reused" in stdout
    assert _leftovers(deploy_out) == [".lock"]


@pytest.mark.openvino
def test_verify_int8_runs_each_backends_form_in_one_table(capsys, deploy_out, calib):
    pytest.importorskip("nncf")
    args = ["verify", RECIPE, *SMALL, "--precision", "fp32,int8", "--backends", "onnxruntime,openvino", "--calib",
            str(calib), "--out", str(deploy_out)]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    table = json.loads((deploy_out / RECIPE / "verify-64px.json").read_text())
    rows = {(r["backend"], r["precision"]): r for r in table["rows"]}
    assert rows["onnxruntime", "int8"]["artifact"].endswith("onnxruntime-int8-64px/model.onnx")
    assert rows["openvino", "int8"]["artifact"].endswith("openvino-int8-64px/model.xml")
    assert rows["onnxruntime", "int8"]["parity"]["samples"] == 126 and rows["onnxruntime", "fp32"]["parity"][
        "samples"] == 16
    assert table["policy"]["int8"] == {"min_cosine": 0.99, "min_top1": 0.95, "rule": "top-k"}
    assert table["int8_calibration"]
    flat = " ".join(stdout.split())
    assert "int8 compared over 126 views of 42 held-out photographs" in flat and "INT8 PARITY NOT ENFORCED" in err
    # random weights: outside an impossible tolerance is reported, not a failure
    code, _, err = run([*args, "--precision", "int8", "--tolerance", "int8:min_cosine=1.5"], capsys)
    assert code == 0 and "NOT ENFORCED" in err
    assert {r["status"] for r in json.loads((deploy_out / RECIPE / "verify-64px.json").read_text())["rows"]} == {
        "not enforced"}


def test_verify_int8_of_real_weights_exits_3_outside_the_tolerance(capsys, tmp_path, calib):
    import torch

    from effexport.recipes import get_recipe
    from effexport.workflow.export import build_model
    from effexport.workflow.job import WeightsSpec

    model, _ = build_model(get_recipe(RECIPE), WeightsSpec())
    torch.save(model.state_dict(), tmp_path / "model.pth")  # a checkpoint file: real weights to effexport
    args = ["verify", RECIPE, *SMALL, "--precision", "int8", "--backends", "onnxruntime", "--calib", str(calib),
            "--calib-size", "3", "--weights", str(tmp_path / "model.pth"), "--out", str(tmp_path / "out")]
    code, _, err = run([*args, "--tolerance", "int8:min_cosine=1.5"], capsys)
    assert code == 3 and "1 of 1 checks failed" in err and "NOT ENFORCED" not in err
    code, stdout, err = run([*args, "--tolerance", "int8:min_cosine=0", "--tolerance", "int8:min_top1=0"], capsys)
    assert code == 0 and "passed" in stdout, err


def test_bench_times_int8_next_to_fp32_and_torch(capsys, deploy_out, calib):
    code, stdout, err = run(["bench", RECIPE, *SMALL, "--backends", "torch,onnxruntime", "--precision", "fp32,int8",
                             "--batch", "1", "--iters", "3", "--max-warmup", "6", "--no-chart", "--calib", str(calib),
                             "--out", str(deploy_out)], capsys)
    assert code == 0, err
    data = json.loads((deploy_out / RECIPE / "bench-64px.json").read_text())
    assert [(r["backend"], r["precision"]) for r in data["results"]] == [
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert all(r["runs"] == 3 and r["p50_ms"] > 0 for r in data["results"])


@pytest.mark.tensorrt
def test_trt_int8_without_tensorrt_fails_in_one_line_before_any_work(capsys, tmp_path, calib):
    from effexport.backends import tensorrt

    if tensorrt.probe().available:
        pytest.skip("TensorRT and a GPU are present")
    code, _, err = run(["trt", RECIPE, "--int8", "--calib", str(calib), "--out", str(tmp_path)], capsys)
    assert code == 4 and err.startswith("error: effexport trt needs tensorrt:") and "Traceback" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    code, _, err = run(["trt", RECIPE, "--int8", "--fp16", "--out", str(tmp_path)], capsys)
    assert code == 2 and "exclude each other" in err


# ---------------------------------------------------------------------------------------------- recipe options


def test_backend_commands_export_the_chosen_point_of_a_slimmable_recipe(capsys, tmp_path):
    args = ["--width", "0.85", "--resolution", "64", "--out", str(tmp_path)]
    code, stdout, err = run(["verify", "mutualnet_mobilenet_v2", "--backends", "onnxruntime", *args], capsys)
    assert code == 0, err
    # the recipe's own warning reaches the user, with the count of built-in calibration photographs it used
    assert f"re-estimated on the {len(builtin_files())} built-in photographs" in err
    folder = tmp_path / "mutualnet_mobilenet_v2-w0.85-r64"
    report = json.loads((folder / "onnx-dynamic" / "report.json").read_text())
    assert report["configuration"]["width"] == 0.85 and report["inputs"][0]["shape"][2:] == [64, 64]
    assert "built-in photographs" in report["weights"]["finalized"]["source"]
    assert json.loads((folder / "verify.json").read_text())["passed"]
    assert not (tmp_path / "mutualnet_mobilenet_v2").exists()  # nothing at the default point
    code, _, err = run(["verify", "rexnet_1.0", "--backends", "onnxruntime", "--width", "0.5", "--out",
                        str(tmp_path)], capsys)
    assert code == 2 and "takes no --width option" in err


def test_calibrate_takes_the_recipe_options(capsys, tmp_path, calib):
    code, stdout, err = run(["calibrate", "mutualnet_mobilenet_v2", "--width", "0.85", "--resolution", "64",
                             "--calib", str(calib), "--calib-size", "3", "--no-openvino", "--out", str(tmp_path)],
                            capsys)
    assert code == 0, err
    folder = tmp_path / "mutualnet_mobilenet_v2-w0.85-r64"
    manifest = json.loads((folder / "int8-minmax-n3-seed0" / "calibration.json").read_text())
    assert manifest["recipe"] == "mutualnet_mobilenet_v2-w0.85-r64"
    assert manifest["data"]["preprocessing"]["crop_size"] == [64, 64]
    report = json.loads((folder / "onnx-dynamic" / "report.json").read_text())
    assert report["weights"]["finalized"]["source"] == str(calib)  # BatchNorm re-estimated on the --calib images


def test_calibrate_warns_when_int8_parity_ran_on_the_calibration_photographs(capsys, tmp_path, monkeypatch):
    from effexport.calibration import heldout
    from effexport.exporter.inputs import BUILTIN_DIR, image_files

    # held-out photographs that are the built-in ones: calibrated on those, no photograph is left that calibration
    # did not see
    monkeypatch.setattr(heldout, "photo_paths", lambda: image_files(BUILTIN_DIR))
    code, stdout, err = run(["calibrate", RECIPE, *SMALL, "--no-openvino", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "which were also the calibration data" in " ".join(stdout.split())
    assert "INT8 parity was measured on the calibration photographs themselves" in err

def test_calibrate_of_a_fine_tuned_head_judges_int8_on_your_held_out_photographs(capsys, tmp_path, calib):
    """--heldout end to end: a 12-class checkpoint calibrated on --calib, its INT8 forms judged on the user's own
    photographs (which the manifest names as the judging set), with no note recommending --heldout."""
    import torch

    from effexport.recipes import get_recipe
    from effexport.workflow.export import build_model
    from effexport.workflow.job import WeightsSpec
    from tests.calibration.conftest import write_images

    model, _ = build_model(get_recipe(RECIPE), WeightsSpec(), num_classes=12)  # random, non-trivial BatchNorm
    torch.save(model.state_dict(), tmp_path / "twelve.pth")
    held = tmp_path / "mine"
    write_images(held, 5, seed=21)
    code, stdout, err = run(["calibrate", RECIPE, "--img-size", "64", "--weights", str(tmp_path / "twelve.pth"),
                             "--calib", str(calib), "--heldout", str(held), "--no-openvino",
                             "--tolerance", "int8:min_top1=0", "--tolerance", "int8:min_cosine=0.9",
                             "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    (manifest_path,) = (tmp_path / "out").rglob("calibration.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["parity_inputs"]["kind"] == "user-heldout" and manifest["parity_inputs"]["count"] == 5
    assert str(held) in manifest["parity_inputs"]["description"]
    assert "heldout_note" not in manifest and "--heldout" not in err
    assert all(p["samples"] == 5 for p in manifest["parity"].values())
