"""`--exporter` through the commands: the path that ran is in report.json, the ONNX metadata and the folder name,
the written opset is exactly the one asked, and a torch without the TorchScript exporter (monkeypatched) still
exports 14 and up while 13 fails with the lowest opset it can reach named."""

from __future__ import annotations

import json

import onnx
import pytest

from effexport.exporter import onnx as onnx_stage
from tests.test_cli import run

pytest.importorskip("onnxscript")
SMALL = ["mobilenetv3_small", "--img-size", "64"]


def _exported(out, folder):
    report = json.loads((out / "mobilenetv3_small" / folder / "report.json").read_text())
    model = onnx.load(str(out / "mobilenetv3_small" / folder / "model.onnx"))
    metadata = {p.key: p.value for p in model.metadata_props}
    return report, onnx_stage.model_opset(model), metadata


def test_dynamo_at_18_and_torchscript_at_17_side_by_side(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["onnx", *SMALL, "--opset", "18", "--exporter", "dynamo", "--out", str(out)], capsys)
    assert code == 0, err
    report, opset, metadata = _exported(out, "onnx-b1-64px-opset18")  # auto's path at 18: no exporter tag
    assert (report["exporter"], opset, metadata["effexport.exporter"]) == ("dynamo", 18, "dynamo")
    assert report["parity"]["onnxruntime"]["passed"]
    code, _, err = run(["onnx", *SMALL, "--out", str(out)], capsys)
    assert code == 0, err
    report, opset, metadata = _exported(out, "onnx-b1-64px")
    assert (report["exporter"], opset, metadata["effexport.exporter"]) == ("torchscript", 17, "torchscript")


def test_dynamo_below_18_is_converted_down_into_its_own_folder(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["onnx", *SMALL, "--exporter", "dynamo", "--out", str(out)], capsys)
    assert code == 0, err
    report, opset, _ = _exported(out, "onnx-b1-64px-dynamo")  # not auto's path at 17: a folder of its own
    assert (report["exporter"], opset) == ("dynamo+converted-from-18", 17)
    assert report["parity"]["onnxruntime"]["passed"]
    assert report["identity"]["export"]["exporter"] == "dynamo"


def test_without_the_torchscript_exporter_17_still_exports_and_13_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_stage, "torchscript_available", lambda: False)
    out = tmp_path / "out"
    code, _, err = run(["onnx", *SMALL, "--opset", "17", "--out", str(out)], capsys)
    assert code == 0, err
    report, opset, _ = _exported(out, "onnx-b1-64px")  # auto's path now: no tag
    assert (report["exporter"], opset) == ("dynamo+converted-from-18", 17)
    code, _, err = run(["onnx", *SMALL, "--opset", "13", "--out", str(out)], capsys)
    assert code == 2 and "opset 13 is not supported" in err and "14" in err
    code, _, err = run(["onnx", *SMALL, "--exporter", "torchscript", "--out", str(out)], capsys)
    assert code == 2 and "no longer has the TorchScript exporter" in err


def test_an_unknown_exporter_is_refused_before_any_work(tmp_path, capsys):
    code, _, err = run(["onnx", *SMALL, "--exporter", "tracing", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "unknown exporter 'tracing'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.openvino
def test_int8_forms_build_from_a_torch_export_graph(tmp_path, capsys):
    """The rest of the chain takes the torch.export graph: the Q/DQ forms (TensorRT's rules checked) and NNCF's."""
    pytest.importorskip("nncf")
    out = tmp_path / "out"
    code, _, err = run(["calibrate", *SMALL, "--opset", "18", "--calib-size", "8", "--out", str(out)], capsys)
    assert code == 0, err
    source = json.loads((out / "mobilenetv3_small" / "onnx-dynamic-64px-opset18" / "report.json").read_text())
    assert source["exporter"] == "dynamo"
    (folder,) = (out / "mobilenetv3_small").glob("int8-*")
    manifest = json.loads((folder / "calibration.json").read_text())
    assert manifest["qdq_check"]["passed"] and sorted(manifest["forms"]) == ["openvino", "ort_cpu", "qdq"]
    # a loose bound: the forms differ by CPU (VNNI or not) and these weights are random; the INT8 policy is judged
    # elsewhere, here only that each form computes the model
    assert all(manifest["parity"][form]["min_cosine"] > 0.95 for form in manifest["forms"])
