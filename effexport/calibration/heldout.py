"""Held-out photographs for judging INT8 accuracy: real photos that are NOT in the calibration set, and the choice
of the photographs every INT8 parity check uses (`int8_parity_inputs`).

The calibration set (calibration/images/) already holds the colour photographs of scikit-image, scikit-learn
and matplotlib. The photographs here come from other files of packages that the `eval` extra installs
(nothing is copied into effexport): scikit-image's remaining photographs, two demo photos of mahotas and
imgaug's quokka. No photograph is shared with the built-in calibration set; scikit-image's licence notes
say each of its images is CC0, public domain or without known copyright restrictions.

How independent this is: 12 photographs, each seen as 6 deterministic views (the whole photo and five
crops), so 72 inputs but only 12 independent scenes; several are grayscale or textures unlike ImageNet.
Enough to catch an INT8 model that disagrees with FP32 on one input in ten, not to measure accuracy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from effexport.errors import MissingDependencyError, UsageError
from effexport.exporter.inputs import BUILTIN_DIR, image_files, preprocess_images, read_images
from effexport.recipes import Preprocess

log = logging.getLogger(__name__)

# (package, file inside the package): none of these is in calibration/images.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/clock_motion.png"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/ihc.png"),
    ("mahotas", "demos/data/DepartmentStore.jpg"),
    ("mahotas", "demos/data/luispedro.jpg"),
    ("imgaug", "quokka.jpg"),
)
EVAL_EXTRA = "pip install 'effexport[eval]' (scikit-image, mahotas, imgaug)"
# (left, top, right, bottom) as fractions of the photo: the whole photo, four corner crops, a central zoom.
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 1.0, 1.0),
    (0.0, 0.0, 0.65, 0.65),
    (0.35, 0.0, 1.0, 0.65),
    (0.0, 0.35, 0.65, 1.0),
    (0.35, 0.35, 1.0, 1.0),
    (0.2, 0.2, 0.8, 0.8),
)


@dataclass
class HeldOut:
    inputs: np.ndarray  # NCHW float32, the recipe's preprocessing
    names: list[str]  # "<photo>#<view>"
    photos: int

    def describe(self) -> str:
        return (f"{len(self.names)} views of {self.photos} held-out photographs (scikit-image, mahotas, imgaug; "
                f"none used for calibration)")


def photo_paths() -> list[Path]:
    """The held-out photo files; MissingDependencyError when a package that ships them is absent."""
    paths = []
    for package, rel in PHOTOS:
        # find_spec locates a top-level package without importing it (imgaug does not import on numpy 2).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(f"the held-out photographs need the package {package}: {EVAL_EXTRA}")
        path = Path(spec.submodule_search_locations[0]) / rel
        if not path.is_file():
            raise MissingDependencyError(f"{package} does not ship {rel} any more; held-out set incomplete")
        paths.append(path)
    return paths


def heldout_available() -> bool:
    """Whether the packages that ship the held-out photographs are installed (without importing them)."""
    return all(importlib.util.find_spec(package) is not None for package in {pkg for pkg, _ in PHOTOS})


def crop_views(image: Image.Image) -> list[Image.Image]:
    w, h = image.size
    return [image.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))) for x0, y0, x1, y1 in VIEWS]


def heldout_inputs(pp: Preprocess) -> HeldOut:
    """Every view of every held-out photograph through the recipe's preprocessing."""
    inputs, names, photos = _views(photo_paths(), pp)
    return HeldOut(inputs, names, photos)


# ---------------------------------------------------------------------------------------------- INT8 parity inputs

MAX_USER_IMAGES = 128  # --images beyond this many are not read for INT8 parity (the first ones in sorted order)


@dataclass
class ParitySet:
    """The inputs an INT8 model is compared with FP32 on, and what they are."""

    inputs: np.ndarray
    description: str
    kind: str  # "images" (the user's), "heldout" (eval extra), "builtin", "calibration" (no held-out photo found)
    held_out: bool  # False: the photographs were also used for calibration, which flatters INT8

    def to_dict(self) -> dict:
        return {"kind": self.kind, "held_out": self.held_out, "count": len(self.inputs),
                "description": self.description}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _not_calibrated(paths: list[Path], calibration_shas: set[str]) -> tuple[list[Path], int]:
    kept = [p for p in paths if _sha256(p) not in calibration_shas]
    return kept, len(paths) - len(kept)


def _views(paths: list[Path], pp: Preprocess) -> tuple[np.ndarray, list[str], int]:
    """Every view of every photograph, preprocessed; their names ("<photo>#<view>") and the photo count."""
    found = read_images(paths)
    views, names = [], []
    for image, name in zip(found.images, found.names, strict=True):
        for i, view in enumerate(crop_views(image)):
            views.append(view)
            names.append(f"{name}#{i}")
    return preprocess_images(views, pp), names, len(found.images)


def int8_parity_inputs(pp: Preprocess, images: Path | None, calibration: dict) -> ParitySet:
    """Real photographs that calibration did not see, for judging INT8 against FP32. In order of preference: the
    user's `images` (files also used for calibration are left out); the held-out photographs of the `eval` extra
    (6 views each); the built-in photographs when calibration used other data (6 views each). Without any of
    these the views of the calibration photographs themselves are used, and the description says so.

    `calibration` is the data manifest (CalibrationData.manifest()): its file hashes say what calibration saw.
    Synthetic pictures are never used here: a trained model is unsure on them, and INT8 noise flips near-ties.
    """
    shas = {f["sha256"] for f in calibration.get("files", [])}
    if images is not None:
        files = image_files(images)
        kept, dropped = _not_calibrated(files[:MAX_USER_IMAGES], shas)
        found = read_images(kept, Path(images))
        if not found.images:
            raise UsageError(f"no readable image in {images} that calibration did not use: INT8 parity needs "
                             f"photographs the calibration never saw")
        what = f"{len(found.images)} images from {images}"
        if dropped:
            what += f" ({dropped} left out: also used for calibration)"
        if len(files) > MAX_USER_IMAGES:
            what += f" (the first {MAX_USER_IMAGES} of {len(files)})"
        return ParitySet(preprocess_images(found.images, pp), what, "images", True)
    try:
        held = photo_paths()
    except MissingDependencyError as exc:
        log.info("held-out photographs unavailable: %s", exc)
        held = []
    kept, _ = _not_calibrated(held, shas)
    if kept:
        inputs, _, n = _views(kept, pp)
        return ParitySet(inputs, f"{len(inputs)} views of {n} held-out photographs (scikit-image, mahotas, "
                                 f"imgaug; none used for calibration)", "heldout", True)
    builtin = image_files(BUILTIN_DIR)
    kept, _ = _not_calibrated(builtin, shas)
    if kept:
        inputs, _, n = _views(kept, pp)
        return ParitySet(inputs, f"{len(inputs)} views of {n} built-in photographs (not used for calibration)",
                         "builtin", True)
    inputs, _, n = _views(builtin, pp)
    return ParitySet(inputs, f"{len(inputs)} views of the {n} built-in photographs, which were also the calibration "
                             f"data, so INT8 looks better than it is; for photographs calibration never saw pass "
                             f"--images DIR or {EVAL_EXTRA}", "calibration", False)
