"""Held-out photographs for judging INT8 accuracy: real photos that are NOT in the calibration set.

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

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from effexport.errors import MissingDependencyError
from effexport.exporter.inputs import preprocess_images, read_images
from effexport.recipes import Preprocess

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


def crop_views(image: Image.Image) -> list[Image.Image]:
    w, h = image.size
    return [image.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))) for x0, y0, x1, y1 in VIEWS]


def heldout_inputs(pp: Preprocess) -> HeldOut:
    """Every view of every held-out photograph through the recipe's preprocessing."""
    found = read_images(photo_paths())
    views, names = [], []
    for image, name in zip(found.images, found.names, strict=True):
        for i, view in enumerate(crop_views(image)):
            views.append(view)
            names.append(f"{name}#{i}")
    return HeldOut(preprocess_images(views, pp), names, len(found.images))
