"""Grey-scale checkpoints (`in_chans=1`): the families timm builds take them, with photographs as 8-bit luminance;
the others refuse them naming both channel counts."""

import json

import numpy as np
import onnx
import pytest
import torch

from effexport.errors import CheckpointError, UsageError
from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.inputs import builtin_images, preprocess_images
from effexport.workflow.export import export_recipe
from effexport.workflow.job import ExportOptions, resolve_job


def _grey_checkpoint(path, timm_name, classes):
    import timm

    torch.manual_seed(3)
    model = timm.create_model(timm_name, in_chans=1, num_classes=classes).eval()
    randomize_batchnorm(model, seed=4)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize(("recipe", "timm_name", "first_conv_in"), [
    ("rexnet_1.0", "rexnet_100", 1), pytest.param("tresnet_m", "tresnet_m", 16, marks=pytest.mark.slow)])
def test_a_grey_scale_checkpoint_exports_a_one_channel_model(tmp_path, recipe, timm_name, first_conv_in):
    path = _grey_checkpoint(tmp_path / "grey.pth", timm_name, 10)
    job = resolve_job(recipe, weights=path, export=ExportOptions(img_size=64), out=tmp_path)
    assert job.preprocess.channels == 1 and job.recipe.input_size[0] == 1
    from effexport.recipes import get_recipe

    rgb = get_recipe(recipe).preprocess  # the RGB statistics averaged (TResNet's: no normalization, 0 and 1)
    assert job.preprocess.mean == (round(sum(rgb.mean) / 3, 4),) and job.preprocess.std == (round(sum(rgb.std) / 3, 4),)
    result = export_recipe(job)
    report = result.report
    assert report["status"] == "passed" and report["parity"]["onnxruntime"]["max_rel"] <= 1e-4
    assert report["in_chans"] == 1 and report["num_classes"] == 10
    assert report["inputs"][0]["shape"] == [1, 1, 64, 64]
    model = onnx.load(str(result.path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 64, 64]
    meta = {p.key: p.value for p in model.metadata_props}
    contract = json.loads(meta["effexport.input"])
    assert contract["channel_order"] == "grey" and contract["shape"] == ["batch", 1, 64, 64]
    # the first convolution of the checkpoint is the one exported (TResNet's sees 16 channels after space-to-depth)
    first = next(t for t in model.graph.initializer if len(t.dims) == 4)
    assert first.dims[1] == first_conv_in


def test_grey_scale_photographs_are_luminance_and_raw_pixels_give_the_same_probabilities(tmp_path):
    from effexport.backends.onnxruntime import OrtRunner

    path = _grey_checkpoint(tmp_path / "grey.pth", "rexnet_100", 7)
    float_job = resolve_job("rexnet_1.0", weights=path, export=ExportOptions(img_size=64, output="softmax"),
                            out=tmp_path)
    raw_job = resolve_job("rexnet_1.0", weights=path, out=tmp_path,
                          export=ExportOptions(img_size=64, output="softmax", input="uint8-nhwc"))
    pp = float_job.preprocess
    images = builtin_images().images
    x = preprocess_images(images, pp)
    assert x.shape == (len(images), 1, 64, 64)
    # luminance: the same as a photograph converted to "L" by hand, then normalized
    by_hand = preprocess_images([im.convert("L") for im in images], pp)
    np.testing.assert_array_equal(x, by_hand)
    float_export, raw_export = export_recipe(float_job), export_recipe(raw_job)
    assert raw_export.report["inputs"][0]["shape"] == [1, 64, 64, 1]
    with OrtRunner(float_export.path) as runner:
        probs = np.concatenate([runner.run(x[i:i + 1]) for i in range(len(x))])
    pixels = raw_job.export.graph_io.encode(x, pp)
    assert pixels.dtype == np.uint8 and pixels.shape == (len(images), 64, 64, 1)
    with OrtRunner(raw_export.path) as runner:
        raw = np.concatenate([runner.run(pixels[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(raw, probs, atol=1e-5)
    with pytest.raises(UsageError, match="grey-scale model"):
        resolve_job("rexnet_1.0", weights=path, export=ExportOptions(img_size=64, input="uint8-nhwc", bgr=True),
                    out=tmp_path)


@pytest.mark.openvino
def test_a_grey_scale_model_builds_openvino_and_int8_judged_on_luminance_photographs(tmp_path):
    from effexport.calibration.options import Int8Options
    from effexport.workflow.deploy import ensure_artifact, open_context
    from tests.calibration.conftest import write_images

    path = _grey_checkpoint(tmp_path / "grey.pth", "mobilenetv3_small_100", 12)
    write_images(tmp_path / "calib", 4)
    job = resolve_job("mobilenetv3_small", weights=path, export=ExportOptions(img_size=64), out=tmp_path,
                      calibration=Int8Options(source=tmp_path / "calib", openvino=False),
                      tolerances=["int8:min_top1=0", "int8:min_cosine=0.9"])
    ctx = open_context(job)
    fp32 = ensure_artifact(ctx, "openvino", "fp32")
    assert fp32.report["status"] == "passed" and fp32.report["parity"]["max_rel"] <= 1e-4
    int8 = ensure_artifact(ctx, "onnxruntime", "int8")
    assert int8.report["status"] == "passed", int8.report["parity"]
    manifest = ctx.int8_build().manifest
    assert list(manifest["data"]["preprocessing"]["mean"]) == [0.449]
    assert manifest["parity_inputs"]["kind"] == "heldout"  # the held-out photographs, as luminance


def test_a_family_whose_builder_takes_rgb_only_refuses_a_grey_scale_checkpoint_naming_both(tmp_path):
    from effexport.recipes import get_recipe
    from effexport.workflow.export import build_model
    from effexport.workflow.job import WeightsSpec

    model, _ = build_model(get_recipe("ghostnet_pfd"), WeightsSpec())
    sd = model.state_dict()
    first = next(k for k, v in sd.items() if v.ndim == 4)
    sd[first] = sd[first][:, :1].clone()  # one input channel
    torch.save(sd, tmp_path / "grey.pth")
    job = resolve_job("ghostnet_pfd", weights=tmp_path / "grey.pth", export=ExportOptions(img_size=64), out=tmp_path)
    assert job.preprocess.channels == 3
    with pytest.raises(CheckpointError, match="takes 1 input channels.*takes 3.*families timm builds"):
        export_recipe(job)
