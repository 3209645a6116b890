"""The shared recipe folder: one dynamic-batch ONNX for every backend, the PyTorch reference computed once and
recomputed when the images change."""

import numpy as np
import pytest
from PIL import Image

from effexport.errors import UsageError
from effexport.exporter import reference as reference_module
from effexport.exporter.deploy import SourceSpec, ensure_artifact, open_context

SOURCE = SourceSpec(img_size=64)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")


def test_backends_share_one_dynamic_batch_export_and_a_cached_reference(out, monkeypatch):
    ctx = open_context("mobilenetv3_small", SOURCE, out)
    assert ctx.onnx.report["batch"] == "dynamic" and ctx.onnx.path == out / "mobilenetv3_small" / "model.onnx"
    first = ctx.reference()
    assert first.inputs.shape == (16, 3, 64, 64) and first.outputs.shape == (16, 1000)
    assert (ctx.folder / "reference.npz").is_file()

    def no_model(*_args, **_kwargs):
        raise AssertionError("the reference should come from the cache")

    monkeypatch.setattr(reference_module, "build_model", no_model)
    again = open_context("mobilenetv3_small", SOURCE, out)
    assert again.onnx.reused
    np.testing.assert_array_equal(again.reference().outputs, first.outputs)


def test_new_images_give_a_new_reference(out, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(images / f"{i}.png")
    ctx = open_context("mobilenetv3_small", SOURCE, out, images=images)
    ref = ctx.reference()
    assert "3 images from" in ref.description
    Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(images / "3.png")
    ctx = open_context("mobilenetv3_small", SOURCE, out, images=images)
    assert "4 images from" in ctx.reference().description


def test_unsupported_precision_is_a_usage_error(out):
    ctx = open_context("mobilenetv3_small", SOURCE, out)
    with pytest.raises(UsageError, match="onnxruntime supports fp32, fp16, int8, not bf16"):
        ensure_artifact(ctx, "onnxruntime", "bf16")
