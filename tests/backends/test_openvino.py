"""OpenVINO IR: FP32 saved without FP16 compression and run with the f32 hint (read back from the compiled
model), FP16 weights held to the reduced-precision tolerance, bf16 reported as what the runtime runs, reuse, and
failures that leave the verified artifact in place."""

import json

import pytest

from effexport.backends import openvino as ov_backend
from effexport.errors import ParityError
from effexport.exporter.cpu_env import cpu_flags
from effexport.exporter.parity import tolerance_for
from effexport.workflow.deploy import ensure_artifact, open_context, run_parity
from effexport.workflow.job import ExportOptions, resolve_job

pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return open_context(resolve_job("mobilenetv3_small", export=ExportOptions(img_size=64),
                                    out=tmp_path_factory.mktemp("ov")))


def _element_types(xml_path):
    import xml.etree.ElementTree as ET

    root = ET.parse(xml_path).getroot()
    return {layer.find("data").get("element_type") for layer in root.iter("layer")
            if layer.get("type") == "Const" and layer.find("data") is not None}


def test_fp32_ir_is_uncompressed_and_runs_in_f32(ctx):
    artifact = ensure_artifact(ctx, "openvino", "fp32")
    assert artifact.path.name == "model.xml" and (artifact.folder / "model.bin").is_file()
    assert artifact.folder.name == "openvino-fp32-64px"
    assert "f16" not in _element_types(artifact.path)
    report = artifact.report
    assert report["execution"]["precision_hint"] == "f32" and report["execution"]["execution_precision"] == "fp32"
    assert report["parity"]["passed"] and report["parity"]["max_rel"] <= 1e-4
    assert set(report["artifact"]["files"]) == {"model.xml", "model.bin"}  # every file is part of the identity
    assert ensure_artifact(ctx, "openvino", "fp32").reused


def test_fp16_ir_has_fp16_weights_and_never_runs_bf16_silently(ctx):
    artifact = ensure_artifact(ctx, "openvino", "fp16")
    assert "f16" in _element_types(artifact.path)
    fp32 = ensure_artifact(ctx, "openvino", "fp32")
    assert (artifact.folder / "model.bin").stat().st_size < 0.6 * (fp32.folder / "model.bin").stat().st_size
    assert artifact.report["parity"]["tolerance"] == {"min_cosine": 0.999, "min_top1": 0.99}
    assert artifact.report["parity"]["max_abs"] > 0
    import openvino as ov
    import openvino.properties.hint as hints

    # what the runtime itself does under the f16 hint, asked directly of the compiled artifact
    asked = ov.Core().compile_model(str(artifact.path), "CPU", {hints.inference_precision: "f16"})
    computes_f16 = asked.get_property(hints.inference_precision).to_string() == "f16"
    assert artifact.report["execution"]["precision_hint"] == ("f16" if computes_f16 else "f32")
    assert artifact.report["execution"]["execution_precision"] == ("fp16" if computes_f16 else "fp32")


def test_bf16_runs_the_fp32_ir_and_reports_what_really_executed(ctx):
    artifact = ensure_artifact(ctx, "openvino", "bf16")
    assert artifact.folder.name == "openvino-fp32-64px"
    report, execution = run_parity(artifact, "bf16", ctx.reference(), tolerance_for("bf16"))
    assert execution["precision_hint"] == "bf16"
    import openvino as ov
    import openvino.properties.hint as hints

    compiled = ov.Core().compile_model(str(artifact.path), "CPU", {hints.inference_precision: "bf16"})
    runtime = compiled.get_property(hints.inference_precision).to_string()  # what the runtime itself says
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    expected = {"f32": "fp32", "bf16": "bf16" if native else "bf16 (emulated)"}[runtime]
    assert execution["execution_precision"] == expected
    assert report.passed  # random weights: bf16 rounding stays far inside the policy on this small model


@pytest.mark.parametrize("flags, used, expected", [
    ({"avx2"}, "f32", "fp32"),
    ({"avx2", "avx512f", "avx512_vnni"}, "bf16", "bf16 (emulated)"),
    ({"avx512f", "avx512_bf16"}, "bf16", "bf16"),
    ({"amx_tile", "amx_bf16", "amx_int8"}, "bf16", "bf16"),
])
def test_execution_is_described_per_cpu_class(flags, used, expected):
    assert ov_backend.describe_execution(used, flags) == expected


def test_fp16_hint_follows_fp16_arithmetic():
    assert ov_backend.execution_hint("fp16", computes_f16=False) == "f32"  # f16 would run bf16 there
    assert ov_backend.execution_hint("fp16", computes_f16=True) == "f16"
    assert ov_backend.execution_hint("fp32", computes_f16=True) == "f32"


def test_parity_failure_raises_and_keeps_the_verified_artifact(ctx):
    good = ensure_artifact(ctx, "openvino", "fp32")
    folder = good.folder
    before = (folder / "model.xml").read_bytes(), (folder / "report.json").read_bytes()
    with pytest.raises(ParityError, match="openvino fp32 differs from PyTorch on") as failure:
        ensure_artifact(ctx, "openvino", "fp32", tolerance=tolerance_for("fp32", max_rel=1e-12), force=True)
    assert "unchanged" in str(failure.value)
    assert ((folder / "model.xml").read_bytes(), (folder / "report.json").read_bytes()) == before
    rejected = folder / "rejected"
    assert (rejected / "model.xml").is_file() and (rejected / "model.bin").is_file()
    assert json.loads((rejected / "report.json").read_text())["status"] == "failed"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert ensure_artifact(ctx, "openvino", "fp32").reused  # the verified one is still good
    # Reused, but judged under a stricter tolerance than it was built with: an error, and nothing moves
    with pytest.raises(ParityError, match="outside the tolerance asked for"):
        ensure_artifact(ctx, "openvino", "fp32", tolerance=tolerance_for("fp32", max_rel=1e-12))
    assert (folder / "model.xml").read_bytes() == before[0]


def test_the_same_onnx_converts_to_the_same_ir_bytes_whatever_ran_before(ctx, tmp_path):
    """OpenVINO numbers the nodes it names from a process-wide counter; the IR must not depend on it (a sharded
    build's artifacts are compared byte for byte with a full build's)."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):  # the second conversion runs after the first has advanced the counter
        folder.mkdir()
        ov_backend.build(ctx.onnx.path, folder, "fp32")
    assert (first / "model.xml").read_bytes() == (second / "model.xml").read_bytes()
    assert (first / "model.bin").read_bytes() == (second / "model.bin").read_bytes()
