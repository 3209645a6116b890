"""Checks shared by the tests of the photograph folders that ship with effexport (heldout/, photos/)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

# a picture 32x32 in grey, normalised to zero mean and unit variance, so that re-encoding, resizing and a change of
# brightness or contrast barely move it; distances are mean absolute differences of those
THUMB = 32
CROPS = (0.9, 0.8)  # crops of each photograph compared with the others whole: centred and at the four corners


def licence_rows(folder: Path) -> list[list[str]]:
    """The cells of each photograph's row in folder/LICENSES.md."""
    lines = (folder / "LICENSES.md").read_text().splitlines()
    return [line.strip("|").strip().split(" | ") for line in lines if re.match(r"^\| \S+\.jpg \|", line)]


def licensed(folder: Path) -> dict[str, str]:
    """file name -> sha256, from the table in folder/LICENSES.md."""
    return {row[0]: row[-1] for row in licence_rows(folder)}


def colourful_share(pixels: np.ndarray) -> float:
    """The share of pixels whose channels are more than 16 levels apart (grey stored as RGB has nearly equal ones)."""
    pixels = pixels.astype(np.int16)
    return float(((pixels.max(-1) - pixels.min(-1)) > 16).mean())


def _thumb(im: Image.Image) -> np.ndarray:
    small = np.asarray(im.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32)
    return (small - small.mean()) / (small.std() + 1e-6)


def views(path: Path) -> np.ndarray:
    """Thumbnails of the whole photograph and of its crops (CROPS), shape (1 + 5 * len(CROPS), THUMB, THUMB)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    out = [im]
    for share in CROPS:
        cw, ch = round(w * share), round(h * share)
        for x, y in ((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch):
            out.append(im.crop((x, y, x + cw, y + ch)))
    return np.stack([_thumb(v) for v in out])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two photographs' views are: the closest of a crop of either to the other whole."""
    return float(min(np.abs(a - b[0]).mean((1, 2)).min(), np.abs(b - a[0]).mean((1, 2)).min()))
