"""Held-out photographs for judging INT8 accuracy: real photos that are NOT in the calibration set, and the choice
of the photographs every INT8 parity check uses (`int8_parity_inputs`).

The photographs ship with effexport in heldout/ (sources, licences and sha256 of every file in heldout/LICENSES.md):
42 colour photographs taken from Debian packages (GCompris' activity photographs, Palapeli's puzzles, Lomiri's
wallpapers), each in the public domain or under CC0 or CC BY. Most show what an ImageNet classifier knows (animals,
everyday objects, buildings, landscapes), so FP32 is sure of its answer (the trained EfficientNet-Lite0: top-1
probability 0.3 or more on 119 of the 126 views) and a changed top-1 means INT8 changed the function, not that noise
flipped a near-tie; a few are harder scenes. None is in the built-in calibration set.

Views: each photograph is seen whole, as a central zoom and as one corner crop (which corner follows from the file
name, so a photograph always gets the same three), 126 inputs in all. Every INT8 parity check runs each INT8 form on
all of them (EfficientNet-Lite0 took 4 to 11 ms an image in ONNX Runtime on a 2-core AMD EPYC with AVX-512 VNNI
shared with other work: about a second a form); with 126 inputs one changed top-1 moves the agreement by 0.8%, so
the default 95% tolerates six. The six views that calibration uses (VIEWS) would double that cost for little: views
of one photograph are correlated, and independent photographs are better evidence than more crops of the same ones.
42 scenes are enough to catch an INT8 model that disagrees with FP32 on one input in twenty, not to measure
accuracy. """

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from effexport.errors import MissingDependencyError, UsageError
from effexport.exporter.inputs import BUILTIN_DIR, IMAGE_SUFFIXES, image_files, preprocess_images, read_images
from effexport.recipes import Preprocess

log = logging.getLogger(__name__)

HELDOUT_DIR = Path(__file__).resolve().parent / "heldout"
Box = tuple[float, float, float, float]
# (left, top, right, bottom) as fractions of the photo: the whole photo, four corner crops, a central zoom.
# Calibration sees all six (and their mirror images, calibration.data); a held-out photograph three (heldout_views).
VIEWS: tuple[Box, ...] = (
    (0.0, 0.0, 1.0, 1.0),
    (0.0, 0.0, 0.65, 0.65),
    (0.35, 0.0, 1.0, 0.65),
    (0.0, 0.35, 0.65, 1.0),
    (0.35, 0.35, 1.0, 1.0),
    (0.2, 0.2, 0.8, 0.8),
)
HELDOUT_VIEWS = 3  # views of each held-out photograph (the module docstring says why)


@dataclass
class HeldOut:
    inputs: np.ndarray  # NCHW float32, the recipe's preprocessing
    names: list[str]  # one per input: "<photo>#<i>", i the view's index in VIEWS
    photos: int

    def describe(self) -> str:
        return f"{len(self.names)} views of {self.photos} held-out photographs (none used for calibration)"


def photo_paths() -> list[Path]:
    """The shipped held-out photographs, in name order."""
    paths = sorted(HELDOUT_DIR.glob("*.jpg"))
    if not paths:
        raise MissingDependencyError(f"effexport's held-out photographs are missing from {HELDOUT_DIR}: the "
                                     f"installation is incomplete; reinstall effexport")
    return paths


def heldout_digest() -> str:
    """What identifies the held-out inputs: the photographs' sha256 and the views; changes when either does."""
    files = {p.name: _sha256(p) for p in photo_paths()}
    return hashlib.sha256(json.dumps({"files": files, "views": VIEWS, "per_photo": HELDOUT_VIEWS},
                                     sort_keys=True).encode()).hexdigest()


def heldout_views(name: str) -> tuple[Box, ...]:
    """The whole photo, the central zoom and one corner crop, the corner chosen by the file name."""
    return VIEWS[0], VIEWS[5], VIEWS[1 + zlib.crc32(name.encode()) % 4]


def crop_views(image: Image.Image, views: tuple[Box, ...] = VIEWS) -> list[Image.Image]:
    w, h = image.size
    return [image.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))) for x0, y0, x1, y1 in views]


def heldout_inputs(pp: Preprocess) -> HeldOut:
    """The views of every held-out photograph through the recipe's preprocessing."""
    inputs, names, photos = _views(photo_paths(), pp, heldout=True)
    return HeldOut(inputs, names, photos)


# ---------------------------------------------------------------------------------------------- INT8 parity inputs

MAX_USER_IMAGES = 128  # --images beyond this many are not read for INT8 parity (the first ones in sorted order)


@dataclass
class ParitySet:
    """The inputs an INT8 model is compared with FP32 on, and what they are."""

    inputs: np.ndarray
    description: str
    kind: str  # "images" (the user's), "heldout" (the shipped held-out set), "builtin", "calibration" (none held out)
    held_out: bool  # False: the photographs were also used for calibration, which flatters INT8
    names: list[str]  # one per input: the file name, or "<photo>#<i>" for view i (heldout.VIEWS) of a photograph
    photos: int  # distinct photographs among the inputs

    def to_dict(self) -> dict:
        return {"kind": self.kind, "held_out": self.held_out, "count": len(self.inputs), "photos": self.photos,
                "description": self.description}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _not_calibrated(paths: list[Path], calibration_shas: set[str]) -> tuple[list[Path], int]:
    kept = [p for p in paths if _sha256(p) not in calibration_shas]
    return kept, len(paths) - len(kept)


def _views(paths: list[Path], pp: Preprocess, heldout: bool) -> tuple[np.ndarray, list[str], int]:
    """The views of every photograph (heldout_views, else all of VIEWS), preprocessed; their names and the number of
    photographs."""
    found = read_images(paths)
    views, names = [], []
    for image, name in zip(found.images, found.names, strict=True):
        for box in heldout_views(name) if heldout else VIEWS:
            views.extend(crop_views(image, (box,)))
            names.append(f"{name}#{VIEWS.index(box)}")
    return preprocess_images(views, pp), names, len(found.images)


NOT_IMAGENET_NOTE = ("the head has {classes} classes, not ImageNet's 1000, and no --heldout photographs were given: "
                     "INT8 was judged only as FP32-vs-INT8 agreement on generic photographs, which says little about "
                     "your classes; pass --calib DIR and --heldout DIR with photographs of what the model classifies")


def check_heldout(heldout: Path, calibration_source: Path | None) -> None:
    """Refuse a --heldout folder that is not a folder of images, or that shares a photograph (by content) with the
    calibration set (the built-in photographs when `calibration_source` is None), naming the files."""
    from effexport.calibration.data import builtin_files

    heldout = Path(heldout)
    if not heldout.is_dir():
        raise UsageError(f"--heldout {heldout} is not a folder; it takes a folder of photographs")
    files = image_files(heldout)
    if not files:
        raise UsageError(f"--heldout {heldout} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if calibration_source is None:
        calibration, where = builtin_files(), "the built-in calibration photographs"
    elif Path(calibration_source).is_dir():
        calibration, where = image_files(Path(calibration_source)), f"--calib {calibration_source}"
    else:
        return  # preprocessed arrays: no photograph to compare by content
    by_sha = {_sha256(p): p for p in calibration}
    shared = [(p, by_sha[sha]) for p in files if (sha := _sha256(p)) in by_sha]
    if shared:
        named = "; ".join(f"{p.relative_to(heldout)} = {c.name}" for p, c in shared[:10])
        more = f" and {len(shared) - 10} more" if len(shared) > 10 else ""
        raise UsageError(f"--heldout {heldout} shares {len(shared)} photograph(s) with {where} (same content): "
                         f"{named}{more}; INT8 must be judged on photographs calibration never saw")


def int8_parity_inputs(pp: Preprocess, images: Path | None, calibration: dict,
                       heldout: Path | None = None) -> ParitySet:
    """Real photographs that calibration did not see, for judging INT8 against FP32. In order of preference: the
    user's `heldout` photographs (refused before any work if they overlap calibration, check_heldout); the
    user's `images` (files also used for calibration are left out); the shipped held-out photographs (3 views each);
    the built-in photographs (6 views each), when calibration used the held-out ones. If calibration saw all of
    these, the views of the calibration photographs themselves are used, and the description says so.

    `calibration` is the data manifest (CalibrationData.manifest()): its file hashes say what calibration saw.
    Synthetic pictures are never used here: a trained model is unsure on them, and INT8 noise flips near-ties.
    """
    shas = {f["sha256"] for f in calibration.get("files", [])}
    if heldout is not None:
        files = image_files(heldout)
        shared = [p.name for p in files if _sha256(p) in shas]
        if shared:  # check_heldout refused this before any work, unless the files changed since
            raise UsageError(f"--heldout {heldout} shares photographs with the calibration set: {', '.join(shared)}")
        found = read_images(files[:MAX_USER_IMAGES], Path(heldout))
        if not found.images:
            raise UsageError(f"no readable image in --heldout {heldout}")
        what = f"{len(found.images)} held-out photographs from {heldout} (none used for calibration)"
        return ParitySet(preprocess_images(found.images, pp), what, "user-heldout", True, found.names,
                         len(found.images))
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
        return ParitySet(preprocess_images(found.images, pp), what, "images", True, found.names, len(found.images))
    kept, dropped = _not_calibrated(photo_paths(), shas)
    if kept:
        inputs, names, n = _views(kept, pp, heldout=True)
        what = f"{len(inputs)} views of {n} held-out photographs (none used for calibration)"
        if dropped:
            what += f" ({dropped} left out: also used for calibration)"
        return ParitySet(inputs, what, "heldout", True, names, n)
    builtin = image_files(BUILTIN_DIR)
    kept, _ = _not_calibrated(builtin, shas)
    if kept:
        inputs, names, n = _views(kept, pp, heldout=False)
        return ParitySet(inputs, f"{len(inputs)} views of {n} built-in photographs (not used for calibration)",
                         "builtin", True, names, n)
    inputs, names, n = _views(builtin, pp, heldout=False)
    return ParitySet(inputs, f"{len(inputs)} views of the {n} built-in photographs, which were also the calibration "
                             f"data, so INT8 looks better than it is; for photographs calibration never saw pass "
                             f"--images DIR", "calibration", False, names, n)
