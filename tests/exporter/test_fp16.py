"""The FP16 ONNX graph (what TensorRT's FP16 engines are built from) is produced and verified here, on the CPU in
ONNX Runtime, against the PyTorch FP32 model with the FP16 tolerance."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from effexport.backends.onnxruntime import OrtRunner
from effexport.errors import ParityError
from effexport.exporter import onnx as onnx_stage
from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.onnx_fp16 import fp16_graph_file
from effexport.exporter.parity import compare, tolerance_for
from effexport.workflow.deploy import ensure_artifact, open_context
from effexport.workflow.job import ExportOptions, resolve_job


def _model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
                          nn.Conv2d(8, 8, 3, groups=8), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    randomize_batchnorm(model, seed=3)
    return model


def test_fp16_graph_keeps_fp32_io_is_sorted_and_checked(tmp_path):
    model = _model()
    src = tmp_path / "fp32.onnx"
    onnx_stage.export_onnx(model, torch.randn(2, 3, 16, 16), src, 17, dynamic_batch=True)
    files, info = fp16_graph_file(src, tmp_path / "fp16.onnx")
    converted = onnx.load(str(files[0]))
    assert info["inputs"][0]["dtype"] == "float32" and info["outputs"][0]["dtype"] == "float32"
    assert info["initializer_dtypes"].get("float16", 0) > 0 and "float32" not in info["initializer_dtypes"]
    produced = {i.name for i in converted.graph.input} | {i.name for i in converted.graph.initializer}
    for node in converted.graph.node:  # topological order: every input is produced before it is used
        assert all(name in produced or name == "" for name in node.input), node.name
        produced.update(node.output)
    x = np.random.default_rng(0).normal(size=(6, 3, 16, 16)).astype(np.float32)
    with OrtRunner(files[0]) as runner:
        out = runner.run(x)
    assert out.dtype == np.float32
    reference = model(torch.from_numpy(x)).detach().numpy()
    report = compare(reference, out, tolerance_for("fp16"))
    assert report.passed and report.max_abs > 0  # really reduced precision, and within the FP16 policy
    assert not compare(reference, out, tolerance_for("fp32", max_rel=1e-7)).passed


def test_recipe_fp16_variant_is_verified_and_reused(tmp_path):
    ctx = open_context(resolve_job("mobilenetv3_small", export=ExportOptions(img_size=64), out=tmp_path))
    artifact = ensure_artifact(ctx, "onnxruntime", "fp16")
    assert artifact.path == tmp_path / "mobilenetv3_small" / "onnxruntime-fp16-64px" / "model.onnx"
    report = artifact.report
    assert report["status"] == "passed" and report["parity"]["tolerance"] == {"min_cosine": 0.999, "min_top1": 0.99}
    assert report["source_onnx"]["file"] == "onnx-dynamic-64px/model.onnx" and report["parity"]["samples"] == 16
    assert ensure_artifact(ctx, "onnxruntime", "fp16").reused
    good = artifact.path.read_bytes()
    with pytest.raises(ParityError, match="differs from PyTorch"):
        ensure_artifact(ctx, "onnxruntime", "fp16", tolerance=tolerance_for("fp16", max_rel=1e-9), force=True)
    assert artifact.path.read_bytes() == good  # a stricter rebuild never destroys the verified artifact
    assert (artifact.folder / "rejected" / "model.onnx").is_file()
