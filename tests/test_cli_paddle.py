"""PaddleClas `.pdparams` weights through the commands: exported to ONNX and OpenVINO with PaddleClas's own
preprocessing recorded and used for parity, refused at a size their padding does not describe, malicious files
refused with exit 2. The files are written as paddle.save writes them (tests/exporter/paddle_format.py)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from effexport.exporter.inputs import preprocess_images, resize_crop
from effexport.exporter.pdparams import PADDLECLAS_EVAL
from tests.exporter.paddle_format import efficientnet_to_paddle, resnext_to_paddle, write_pdparams
from tests.exporter.test_pdparams import _source
from tests.test_cli import _leftovers, run


def _paddle_file(tmp_path, recipe: str, num_classes: int | None = None, protocol: int = 2):
    model = _source(recipe, seed=5)
    if num_classes is not None:  # a fine-tuned head
        model.reset_classifier(num_classes)
        torch.nn.init.normal_(model.get_classifier().weight, std=0.05)
    convert = resnext_to_paddle if recipe.startswith("resnext") else efficientnet_to_paddle
    params, names = convert(model)
    return write_pdparams(tmp_path / f"{recipe}.pdparams", params, names, protocol=protocol)


def _report(out, recipe, folder):
    return json.loads((out / recipe / folder / "report.json").read_text())


@pytest.mark.parametrize(("recipe", "paddle", "num_classes"), [
    ("tf_efficientnet_b0", "EfficientNetB0", None),
    ("efficientnet_b0_small", "EfficientNetB0_small", 10),  # a PaddleClas model fine-tuned on another dataset
])
def test_paddleclas_weights_export_with_paddleclas_preprocessing(tmp_path, capsys, recipe, paddle, num_classes):
    weights = _paddle_file(tmp_path, recipe, num_classes)
    out = tmp_path / "out"
    size = [] if recipe.startswith("tf_") else ["--img-size", "96"]  # B0_small pads symmetrically: any size
    code, stdout, err = run(["onnx", recipe, "--weights", str(weights), *size, "--out", str(out)], capsys)
    assert code == 0, err
    folder = "onnx-b1" if recipe.startswith("tf_") else "onnx-b1-96px"
    report = _report(out, recipe, folder)
    assert report["weights"]["layout"] == "PaddleClas .pdparams"
    expected = PADDLECLAS_EVAL[paddle]
    pp = report["preprocessing"]
    assert pp["origin"].startswith(f"PaddleClas {paddle}") and pp["antialias"] is False
    assert pp["resize"] == pp["crop_size"][0] + expected.resize_short - expected.crop  # crop + 32 at any size
    assert pp["interpolation"] == "bilinear"
    assert report["parity"]["onnxruntime"]["passed"]
    assert report["num_classes"] == (num_classes or 1000)
    metadata = {p.key: p.value for p in onnx.load(str(out / recipe / folder / "model.onnx")).metadata_props}
    assert json.loads(metadata["effexport.preprocessing"])["origin"] == pp["origin"]


@pytest.mark.slow  # 88M parameters: about 20 s; test_pdparams loads the same layout exactly in the default run
def test_paddleclas_resnext_exports_to_onnx_and_openvino(tmp_path, capsys):
    weights = _paddle_file(tmp_path, "resnext101_32x8d_wsl", protocol=4)
    out = tmp_path / "out"
    code, _, err = run(["openvino", "resnext101_32x8d_wsl", "--weights", str(weights), "--img-size", "96",
                        "--out", str(out)], capsys)
    assert code == 0, err
    report = _report(out, "resnext101_32x8d_wsl", "openvino-fp32-96px")
    assert report["parity"]["passed"]
    shared = _report(out, "resnext101_32x8d_wsl", "onnx-dynamic-96px")
    assert shared["weights"]["layout"] == "PaddleClas .pdparams"
    assert shared["preprocessing"]["origin"].startswith("PaddleClas ResNeXt101_32x8d_wsl")


def test_paddleclas_efficientnet_is_refused_at_another_size(tmp_path, capsys):
    weights = _paddle_file(tmp_path, "tf_efficientnet_b0")
    out = tmp_path / "out"
    code, _, err = run(["onnx", "tf_efficientnet_b0", "--weights", str(weights), "--img-size", "192",
                        "--out", str(out)], capsys)
    assert code == 2
    assert "--img-size 192" in err and "SAME padding" in err and "224" in err
    assert not out.exists()


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_malicious_pdparams_is_refused_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pdparams"
    bad.write_bytes(pickle.dumps({"_fc.weight": _Payload()}, protocol=2))
    out = tmp_path / "out"
    code, stdout, err = run(["onnx", "tf_efficientnet_b0", "--weights", str(bad), "--out", str(out)], capsys)
    assert code == 2 and "refused as unsafe" in err and "system" in err
    assert "pwned" not in stdout
    assert not (out / "tf_efficientnet_b0" / "onnx-b1").exists()
    assert _leftovers(tmp_path) == []  # refused as the job is resolved (its input channels are read): nothing written


def test_paddleclas_resize_is_bilinear_without_antialias():
    """Against a direct computation: short side to crop + 32 with pixel-centre bilinear (no filter), then the centre
    crop at (size - crop) // 2; PaddleClas resizes with cv2.INTER_LINEAR, which computes this."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    pp = PADDLECLAS_EVAL["EfficientNetB0"].preprocess("EfficientNetB0").at(64)
    assert pp.resize == 96
    got = resize_crop(Image.fromarray(pixels), pp)
    new_h, new_w = 96, 128
    ys = (np.arange(new_h) + 0.5) * 120 / new_h - 0.5
    xs = (np.arange(new_w) + 0.5) * 160 / new_w - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, 119)
    x0 = np.clip(np.floor(xs).astype(int), 0, 159)
    y1, x1 = np.clip(y0 + 1, 0, 119), np.clip(x0 + 1, 0, 159)
    wy = np.clip(ys - np.floor(ys), 0, 1)[:, None, None]
    wx = np.clip(xs - np.floor(xs), 0, 1)[None, :, None]
    ys_neg, xs_neg = ys < 0, xs < 0
    wy[ys_neg] = 0
    wx[:, xs_neg] = 0
    p = pixels.astype(np.float64)
    resized = ((1 - wy) * ((1 - wx) * p[y0][:, x0] + wx * p[y0][:, x1]) +
               wy * ((1 - wx) * p[y1][:, x0] + wx * p[y1][:, x1]))
    top, left = (new_h - 64) // 2, (new_w - 64) // 2
    want = np.round(resized[top:top + 64, left:left + 64]).transpose(2, 0, 1)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # and the float inputs are that crop scaled and normalised
    x = preprocess_images([Image.fromarray(pixels)], pp)[0]
    mean = np.asarray(pp.mean).reshape(3, 1, 1)
    std = np.asarray(pp.std).reshape(3, 1, 1)
    np.testing.assert_allclose(x, (got / 255 - mean) / std, atol=1e-5)
