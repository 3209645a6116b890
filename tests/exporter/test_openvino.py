"""OpenVINO IR: FP32 saved without FP16 compression and run with the f32 hint (read back from the compiled
model), FP16 weights held to the reduced-precision tolerance, reuse, and failures that publish nothing."""

import pytest

from effexport.errors import ParityError
from effexport.exporter.deploy import SourceSpec, ensure_artifact, open_context, run_parity
from effexport.exporter.parity import tolerance_for

pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return open_context("mobilenetv3_small", SourceSpec(img_size=64), tmp_path_factory.mktemp("ov"))


def _element_types(xml_path):
    import xml.etree.ElementTree as ET

    root = ET.parse(xml_path).getroot()
    return {layer.find("data").get("element_type") for layer in root.iter("layer")
            if layer.get("type") == "Const" and layer.find("data") is not None}


def test_fp32_ir_is_uncompressed_and_runs_in_f32(ctx):
    artifact = ensure_artifact(ctx, "openvino", "fp32")
    assert artifact.path.name == "model.xml" and (artifact.folder / "model.bin").is_file()
    assert "f16" not in _element_types(artifact.path)
    report = artifact.report
    assert report["execution"]["precision_hint"] == "f32" and report["execution"]["execution_precision"] == "fp32"
    assert report["parity"]["passed"] and report["parity"]["max_rel"] <= 1e-4
    assert ensure_artifact(ctx, "openvino", "fp32").reused


def test_fp16_ir_has_fp16_weights_and_the_reduced_tolerance(ctx):
    artifact = ensure_artifact(ctx, "openvino", "fp16")
    assert "f16" in _element_types(artifact.path)
    fp32 = ensure_artifact(ctx, "openvino", "fp32")
    assert (artifact.folder / "model.bin").stat().st_size < 0.6 * (fp32.folder / "model.bin").stat().st_size
    assert artifact.report["parity"]["tolerance"] == {"min_cosine": 0.999, "min_top1": 0.99}
    assert artifact.report["parity"]["max_abs"] > 0


def test_bf16_runs_the_fp32_ir_and_reports_what_really_executed(ctx):
    artifact = ensure_artifact(ctx, "openvino", "bf16")
    assert artifact.folder.name == "openvino-fp32"
    report, execution = run_parity(artifact, "bf16", ctx.reference(), tolerance_for("bf16"))
    assert execution["precision_hint"] == "bf16"
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert execution["execution_precision"] == ("bf16" if "BF16" in caps else "fp32")
    assert report.passed


def test_parity_failure_raises_and_publishes_nothing(ctx):
    folder = ctx.folder / "openvino-fp32"
    with pytest.raises(ParityError, match="openvino fp32 differs from PyTorch on"):
        ensure_artifact(ctx, "openvino", "fp32", tolerance=tolerance_for("fp32", max_rel=1e-12))
    assert not (folder / "model.xml").exists() and not (folder / "model.bin").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    import json

    assert json.loads((folder / "report.json").read_text())["status"] == "failed"
    assert not ensure_artifact(ctx, "openvino", "fp32").reused  # rebuilt under the default policy
