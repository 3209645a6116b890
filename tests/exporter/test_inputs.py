"""Images read as the 8-bit RGB the models were trained on, whatever their bit depth."""

import numpy as np
from PIL import Image

from effexport.exporter.inputs import read_images, to_rgb


def test_a_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    grey = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(grey).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode == "I;16"  # what Pillow makes of it
    (image,) = read_images([tmp_path / "deep.png"]).images
    pixels = np.asarray(image)
    assert image.mode == "RGB" and (pixels[..., 0] == pixels[..., 2]).all()
    assert np.abs(pixels[..., 0].astype(int) - np.rint(grey / 257.0)).max() <= 1  # 65535 -> 255, not clipped
    assert (pixels == 255).mean() < 0.01


def test_alpha_is_dropped_keeping_the_stored_colours_and_8_bit_rgb_is_unchanged():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red
    assert (np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))[..., 0] == 200).all()
    rgb = Image.fromarray(np.full((4, 4, 3), 7, np.uint8), "RGB")
    assert to_rgb(rgb) is rgb
