"""Checks shared by the tests of the photograph folders that ship with effexport (heldout/, photos/)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


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
