"""INT8 artifacts of the backends: each backend gets its own form of the recipe's one calibration, is verified
against PyTorch on photographs the calibration did not see, and random weights are reported, not enforced."""

import json

import pytest
import torch

from effexport.backends.tensorrt_qdq import check_tensorrt_qdq
from effexport.calibration.int8 import RANDOM_NOTE
from effexport.calibration.options import Int8Options
from effexport.errors import ParityError
from effexport.exporter.parity import tolerance_for
from effexport.recipes import get_recipe
from effexport.workflow import deploy
from effexport.workflow.deploy import ensure_artifact, open_context
from effexport.workflow.export import build_model
from effexport.workflow.job import ExportOptions, WeightsSpec, resolve_job
from tests.calibration.conftest import calibration_folder

RECIPE = "mobilenetv3_small"


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return calibration_folder(tmp_path_factory.mktemp("calib"), 5)


SMALL = ExportOptions(img_size=64)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, calib):
    return open_context(resolve_job(RECIPE, export=SMALL, calibration=Int8Options(source=calib, calib_size=4),
                                    out=tmp_path_factory.mktemp("int8")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint file: to effexport these are real weights, so INT8 parity is enforced."""
    model, _ = build_model(get_recipe(RECIPE), WeightsSpec())
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save(model.state_dict(), path)
    return path


def test_each_backend_builds_from_its_own_form_of_one_calibration(ctx):
    files = {backend: deploy._source_for(ctx, "int8", backend).path.name
             for backend in ("onnxruntime", "tensorrt")}
    assert files == {"onnxruntime": "model_int8_ort_cpu.onnx", "tensorrt": "model_int8_qdq.onnx"}
    assert ctx.int8_folder.name == "int8-minmax-n4-seed0-64px"
    assert check_tensorrt_qdq(ctx.int8_folder / files["tensorrt"]).passed
    manifest = json.loads((ctx.int8_folder / "calibration.json").read_text())
    assert manifest["data"]["count"] == 4 and manifest["parity_enforced"] == []  # random weights
    assert manifest["cpu"]["reduced_weights"] in (True, False) and manifest["cpu"]["why"]


def test_onnxruntime_int8_artifact_is_the_cpu_form_verified_on_held_out_photos(ctx):
    artifact = ensure_artifact(ctx, "onnxruntime", "int8")
    assert artifact.folder.name == "onnxruntime-int8-64px" and artifact.path.name == "model.onnx"
    report = artifact.report
    assert report["int8"]["form"] == "ort_cpu"
    assert report["int8"]["calibration"] == "int8-minmax-n4-seed0-64px/calibration.json"
    assert report["int8"]["calibration_data"]["count"] == 4 and report["int8"]["keep_float"]
    assert report["source_onnx"]["file"] == "int8-minmax-n4-seed0-64px/model_int8_ort_cpu.onnx"
    assert artifact.path.read_bytes() == (ctx.int8_folder / "model_int8_ort_cpu.onnx").read_bytes()
    parity = report["parity"]
    assert parity["samples"] == 126 and "held-out" in parity["inputs"] and parity["tolerance"]["min_top1"] == 0.95
    assert parity["enforced"] is False and parity["note"] == RANDOM_NOTE
    assert ctx.reference("int8").inputs.shape == (126, 3, 64, 64)
    assert (ctx.int8_folder / "reference-int8.npz").is_file()
    assert ensure_artifact(ctx, "onnxruntime", "int8").reused


@pytest.mark.openvino
def test_openvino_int8_artifact_is_the_nncf_model(ctx):
    pytest.importorskip("nncf")
    assert deploy._source_for(ctx, "int8", "openvino").path.name == "model_int8.xml"
    artifact = ensure_artifact(ctx, "openvino", "int8")
    assert artifact.folder.name == "openvino-int8-64px" and (artifact.folder / "model.bin").is_file()
    assert artifact.report["source_model"]["file"] == "int8-minmax-n4-seed0-64px/model_int8.xml"
    assert artifact.report["execution"]["execution_precision"] == "int8"
    assert artifact.report["execution"]["float_layers"] == "fp32"  # the f32 hint, no silent bf16
    assert artifact.report["int8"]["form"] == "openvino"
    # the NNCF weights are part of what is reused: a changed .bin is a rebuild of the calibration's forms
    (ctx.int8_folder / "model_int8.bin").write_bytes(b"not the weights")
    fresh = open_context(ctx.job)
    assert not fresh.int8_build().reused and fresh.int8_build().files["openvino"].with_suffix(".bin").read_bytes() \
        != b"not the weights"


def test_a_model_with_real_weights_is_held_to_the_int8_tolerance(tmp_path, calib, trained):
    ctx = open_context(resolve_job(RECIPE, weights=trained, export=SMALL, out=tmp_path,
                                   calibration=Int8Options(source=calib, calib_size=4, openvino=False)))
    assert not ctx.random_weights and ctx.enforced("int8")
    folder = ctx.folder / "onnxruntime-int8-64px"
    with pytest.raises(ParityError, match="onnxruntime int8 differs from PyTorch on 126 views of 42 held-out"):
        ensure_artifact(ctx, "onnxruntime", "int8", tolerance=tolerance_for("int8", min_cosine=1.01))
    assert not (folder / "model.onnx").exists() and not (folder / "report.json").exists()  # nothing verified yet
    assert json.loads((folder / "rejected" / "report.json").read_text())["status"] == "failed"
    accepted = ensure_artifact(ctx, "onnxruntime", "int8", tolerance=tolerance_for("int8", min_cosine=0.0,
                                                                                      min_top1=0.0))
    assert accepted.report["status"] == "passed" and "enforced" not in accepted.report["parity"]
    # The accepted artifact is reused only under a tolerance it meets; a verify at the default policy fails
    # without touching it (the user accepted it knowingly).
    with pytest.raises(ParityError, match="outside the tolerance asked for"):
        ensure_artifact(ctx, "onnxruntime", "int8", tolerance=tolerance_for("int8", min_cosine=1.01))
    assert (folder / "model.onnx").is_file()
