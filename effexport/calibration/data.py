"""Calibration data: an image folder, a .npy/.npz array of preprocessed inputs, or the built-in photographs.

Images go through the recipe's own preprocessing (timm's eval transform, the same function the parity check
uses). A sample of N is drawn deterministically: the files are shuffled with a fixed seed and read in that
order until N readable images are found, so a corrupt file does not shrink the sample, and the same folder
and seed always give the same set. Every file read is hashed into the data manifest.

The built-in calibration photographs are 73: the 9 of calibration/images/ (also FP32's parity inputs) and 64
calibration-only ones in calibration/photos/ (Debian's GCompris, Lomiri wallpapers and JPEG XL test data; public
domain, CC0 or CC BY, listed with their sources in LICENSES.md). None is a held-out photograph (heldout.py).

Fewer than SMALL_SET photographs are each calibrated on as several deterministic views, up to about VIEW_INPUTS
inputs in all: 12 views (the whole photo and five crops, heldout.VIEWS, and their mirror images) for up to 25
photographs, fewer for more (the 73 built-in ones: 4 each). Views were measured on the ImageNet-trained
EfficientNet-Lite0 with the 9 photographs of calibration/images/, on the 72 held-out views of the time (12
photos, bench/int8.py): NNCF's model agreed with FP32 top-1 on 80.6% (mean cosine 0.953) calibrated on the 9
photos, 87.5% (0.981) on their 108 views; the ONNX Runtime forms moved within noise (86.1% -> 87.5%, portable
95.8% -> 94.4%). More photographs did not make the ONNX Runtime forms more faithful by themselves (the same Lite0,
126 held-out views, AMD EPYC with AVX-512 VNNI: mean cosine 0.997 whether calibrated on 9 photos x 12 views, 73 x
1, 73 x 4 or 73 x 12; min cosine between 0.989 and 0.993): which layers stay in float decides that
(sensitivity.py). The 64 are there because 9 photographs, two of them a retina and a deep field, are a narrow
sample of what a deployed classifier sees, not because they measured better on Lite0.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from effexport.errors import UsageError
from effexport.exporter.inputs import (
    BUILTIN_DIR,
    CALIBRATION_PHOTOS_DIR,
    image_files,
    preprocess_images,
    read_images,
)
from effexport.recipes import Preprocess

log = logging.getLogger(__name__)

DEFAULT_SEED = 0
SMALL_SET = 100  # photographs; fewer are expanded into views
MAX_VIEWS = 12  # per photograph: heldout.VIEWS (the whole photo and five crops) and their mirror images
VIEW_INPUTS = 300  # a small set is expanded into at most 12 views per photograph, up to about this many inputs
ARRAY_SUFFIXES = {".npy", ".npz"}
ARRAY_KEYS = ("input", "inputs", "x", "images")  # accepted names of the array inside a .npz
# Degenerate photographs: kept (they are the user's data), but named in a warning. A short side under TINY_SIDE px
# holds little detail, and under a quarter of the crop it is upscaled 4x or more (interpolation blur); past
# MAX_ASPECT:1 the center crop keeps a sliver of the picture.
TINY_SIDE = 32
MAX_ASPECT = 8.0
NAMED_FILES = 5  # files named in one warning; the manifest lists every file used
BUILTIN_WARNING = ("calibrating on the built-in photographs: INT8 ranges fitted to data unlike your deployment "
                   "images cost accuracy; pass --calib DIR with a few hundred of your own images")


def builtin_files() -> list[Path]:
    """The built-in calibration photographs: the 9 of calibration/images/ and the calibration-only ones of
    calibration/photos/ (licences in each folder's LICENSES.md); named relative to calibration/."""
    return image_files(BUILTIN_DIR) + image_files(CALIBRATION_PHOTOS_DIR)


@dataclass(frozen=True)
class DataItem:
    name: str  # file name relative to the source (for arrays: "<file>[index]")
    sha256: str


@dataclass
class CalibrationData:
    """Preprocessed calibration inputs (NCHW float32) and the manifest of where each came from."""

    inputs: np.ndarray
    source: str  # "builtin", the folder, or the array file
    kind: str  # "builtin" | "folder" | "array"
    items: list[DataItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    available: int = 0  # candidate files (or array rows) before sampling
    size: int | None = None  # the requested sample size, None for all
    seed: int = DEFAULT_SEED
    preprocessing: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    views: int = 1  # calibration inputs per photograph

    @property
    def count(self) -> int:
        """Photographs (or array rows) used; each gives `views` calibration inputs."""
        return len(self.items)

    def digest(self) -> str:
        """Hash of exactly what calibrates: the items in order, the sample, the views and the preprocessing."""
        key = {"items": [asdict(i) for i in self.items], "preprocessing": self.preprocessing, "kind": self.kind,
               "views": self.views}
        return hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()

    def manifest(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "count": self.count,
            "views_per_image": self.views,
            "inputs": len(self.inputs),
            "available": self.available,
            "sample_size": self.size,
            "seed": self.seed,
            "files": [asdict(i) for i in self.items],
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "preprocessing": self.preprocessing,
            "digest": self.digest(),
            "warnings": list(self.warnings),
        }


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shuffled(n: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def load_calibration(source: Path | None, pp: Preprocess, size: int | None = None, seed: int = DEFAULT_SEED,
                     views: bool = True, at_most: int | None = None) -> CalibrationData:
    """Calibration inputs from `source` (folder, .npy/.npz file, or None for the built-in photographs); with
    `views`, fewer than SMALL_SET photographs are expanded into 12 views each (arrays are used as given).
    `at_most` caps the sample like `size` (the user's --calib-size) but is no request: having fewer is not warned.

    Raises UsageError when the source does not exist, holds no usable image, or the arrays do not match
    the model input.
    """
    if size is not None and size < 1:
        raise UsageError(f"--calib-size must be at least 1, got {size}")
    requested = size
    if at_most is not None:
        size = at_most if size is None else min(size, at_most)
    if source is None:
        data = _from_files(builtin_files(), BUILTIN_DIR.parent, pp, size, seed, "builtin", views, requested)
        data.warnings.append(BUILTIN_WARNING)  # the manifest keeps it; the CLI prints it
        return data
    source = Path(source)
    if source.is_file() and source.suffix.lower() in ARRAY_SUFFIXES:
        return _from_array(source, pp, size, seed)
    if source.is_dir():
        files = image_files(source)
        if not files:
            raise UsageError(f"no image files (jpg, png, webp) in {source}: point --calib at a folder of photographs")
        return _from_files(files, source, pp, size, seed, "folder", views, requested)
    raise UsageError(f"calibration source {source} is neither a folder of images nor a .npy/.npz file")


def views_per_photo(photos: int) -> int:
    """12 views of each of a few photographs, fewer as there are more (about VIEW_INPUTS inputs in all), one from
    SMALL_SET photographs on."""
    if photos >= SMALL_SET:
        return 1
    return max(1, min(MAX_VIEWS, round(VIEW_INPUTS / photos)))


def calibration_views(images: list[Image.Image], per_photo: int = MAX_VIEWS) -> list[Image.Image]:
    """Each photograph as `per_photo` of its 12 views: the whole photo and five crops (heldout.VIEWS), and each of
    those mirrored; fewer than 12 are taken evenly spaced over that order (whole, mirrored whole, crop 1, ...)."""
    from effexport.calibration.heldout import crop_views

    chosen = np.linspace(0, MAX_VIEWS - 1, per_photo).round().astype(int)
    out = []
    for image in images:
        views = [v for view in crop_views(image) for v in (view, view.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
        out += [views[i] for i in chosen]
    return out


def _from_files(files: list[Path], folder: Path, pp: Preprocess, size: int | None, seed: int, kind: str,
                views: bool = True, requested: int | None = None) -> CalibrationData:
    want = len(files) if size is None else min(size, len(files))
    order = sorted(files) if size is None else [files[i] for i in _shuffled(len(files), seed)]
    images, items, skipped = [], [], []
    for path in order:
        if len(images) == want:
            break
        found = read_images([path], folder)
        if found.skipped:
            skipped.extend(found.skipped)
            continue
        images.append(found.images[0])
        items.append(DataItem(found.names[0], _sha256_bytes(path.read_bytes())))
    if not images:
        raise UsageError(f"none of the {len(files)} image files in {folder} could be read "
                         f"({len(skipped)} corrupt or unreadable); --calib needs readable photographs")
    if requested is not None and len(images) < requested:
        log.warning("asked for %d calibration images, %s has only %d readable", requested, folder, len(images))
    per_photo = views_per_photo(len(images)) if views else 1
    expanded = calibration_views(images, per_photo) if per_photo > 1 else images
    return CalibrationData(preprocess_images(expanded, pp), "builtin" if kind == "builtin" else str(folder), kind,
                           items, skipped, len(files), size, seed, pp.to_dict(), views=len(expanded) // len(images),
                           warnings=degenerate_warnings(images, [i.name for i in items], pp))


def degenerate_warnings(images: list[Image.Image], names: list[str], pp: Preprocess) -> list[str]:
    """One warning per kind of degenerate photograph (tiny, extreme aspect ratio), naming the files."""
    crop = min(pp.crop_size)
    tiny_side = max(TINY_SIDE, crop / 4)
    tiny, extreme = [], []
    for image, name in zip(images, names, strict=True):
        w, h = image.size
        if min(w, h) < tiny_side:
            tiny.append(f"{name} ({w}x{h})")
        if max(w, h) > MAX_ASPECT * min(w, h):
            extreme.append(f"{name} ({w}x{h})")
    warnings = []
    if tiny:
        warnings.append(f"{_count(tiny, 'is', 'are')} tiny (shorter side under {tiny_side:g} px, upscaled to the "
                        f"{crop} px crop): {_named(tiny)}; kept, but they calibrate on interpolation blur: remove them "
                        f"or use larger photographs")
    if extreme:
        warnings.append(f"{_count(extreme, 'has', 'have')} an extreme aspect ratio (over {MAX_ASPECT:g}:1): "
                        f"{_named(extreme)}; kept, but the center crop sees a sliver of each: remove them or crop "
                        f"them yourself")
    return warnings


def _count(files: list[str], singular: str, plural: str) -> str:
    return f"1 calibration image {singular}" if len(files) == 1 else f"{len(files)} calibration images {plural}"


def _named(files: list[str]) -> str:
    more = len(files) - NAMED_FILES
    return ", ".join(files[:NAMED_FILES]) + (f" and {more} more (the manifest lists every file)" if more > 0 else "")


def _load_array(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)  # never unpickle: arrays only
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read calibration array {path}: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        keys = list(loaded.keys())
        key = next((k for k in ARRAY_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise UsageError(f"{path} holds arrays {keys}: name the calibration array one of {', '.join(ARRAY_KEYS)}")
        return loaded[key]


def _from_array(path: Path, pp: Preprocess, size: int | None, seed: int) -> CalibrationData:
    array = _load_array(path)
    expected = (pp.channels, *pp.crop_size)
    if array.ndim == 3:
        array = array[None]
    if array.ndim == 4 and array.shape[1] == pp.channels and tuple(array.shape[2:]) != pp.crop_size:
        # Never resized: scaling an already cropped and normalized array is not the recipe's preprocessing at this size.
        (h, w), (want_h, want_w) = array.shape[2:], pp.crop_size
        raise UsageError(f"{path} holds inputs preprocessed at {h}x{w}, but the model takes {want_h}x{want_w} (its "
                         f"--img-size, or --resolution for slimmable recipes); arrays are used as given, never "
                         f"resized: save them at {want_h}x{want_w} or pass the folder of images instead")
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise UsageError(f"{path} holds an array of shape {tuple(array.shape)}; calibration arrays must be "
                         f"preprocessed inputs of shape (N, {', '.join(map(str, expected))})")
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"{path} holds {array.dtype} values; calibration arrays must be preprocessed float inputs")
    if len(array) == 0:
        raise UsageError(f"{path} holds no samples")
    n = len(array)
    rows = list(range(n)) if size is None or size >= n else sorted(_shuffled(n, seed)[:size])
    inputs = np.ascontiguousarray(array[rows], dtype=np.float32)
    if not np.isfinite(inputs).all():
        raise UsageError(f"{path} holds NaN or Inf values")
    items = [DataItem(f"{path.name}[{i}]", _sha256_bytes(inputs[k].tobytes())) for k, i in enumerate(rows)]
    pre = {**pp.to_dict(), "note": "arrays are used as given: they must already be preprocessed this way"}
    return CalibrationData(inputs, str(path), "array", items, [], n, size, seed, pre)
