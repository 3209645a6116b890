"""Model inputs: the recipe's preprocessing of real photographs, and image-like synthetic inputs.

Parity is checked on inputs shaped like preprocessed photographs, not only N(0, 1) noise: photographs have
smooth regions, edges and a skewed value range that noise does not, and quantization and reduced precision
fail on exactly those.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError

from effexport.errors import UsageError
from effexport.exporter.artifacts import content_digest
from effexport.exporter.model_spec import Preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "calibration" / "images"
# photographs for calibration only, never for judging INT8 (sources and licences in photos/LICENSES.md)
CALIBRATION_PHOTOS_DIR = BUILTIN_DIR.parent / "photos"
PARITY_SAMPLES = 16


def make_transform(pp: Preprocess):
    """timm's eval transform for `pp` (resize short side, center crop, to tensor, normalize)."""
    from timm.data import create_transform

    return create_transform(input_size=(pp.channels, *pp.crop_size), interpolation=pp.interpolation, mean=pp.mean,
                            std=pp.std, crop_pct=pp.crop_pct, crop_mode="center", is_training=False)


def _make_uint8_transform(pp: Preprocess):
    """The same transform up to the uint8 CHW crop (timm's prefetcher form, which leaves out to-float/normalize)."""
    from timm.data import create_transform

    return create_transform(input_size=(pp.channels, *pp.crop_size), interpolation=pp.interpolation, mean=pp.mean,
                            std=pp.std, crop_pct=pp.crop_pct, crop_mode="center", is_training=False,
                            use_prefetcher=True)


def preprocess_images(images: list[Image.Image], pp: Preprocess) -> np.ndarray:
    """Apply the recipe's preprocessing; returns float32 NCHW. Resize and crop are timm's; scaling and
    normalization (timm's ToTensor and Normalize, the same float32 arithmetic) run in NumPy over the whole batch:
    on a 224x224 image torch's multi-threaded versions took 25 ms each here, 50 times the single-threaded cost."""
    if not images:
        return np.zeros((0, pp.channels, *pp.crop_size), dtype=np.float32)
    convert = to_rgb if pp.channels == 3 else to_grey
    if pp.timm_transform:
        transform = _make_uint8_transform(pp)
        pixels = np.stack([np.asarray(transform(convert(im))).reshape(pp.channels, *pp.crop_size) for im in images])
    else:
        pixels = np.stack([resize_crop(convert(im), pp) for im in images])
    mean = np.asarray(pp.mean, dtype=np.float32).reshape(1, pp.channels, 1, 1)
    std = np.asarray(pp.std, dtype=np.float32).reshape(1, pp.channels, 1, 1)
    return np.ascontiguousarray((pixels.astype(np.float32) / np.float32(255) - mean) / std)


def resize_crop(image: Image.Image, pp: Preprocess) -> np.ndarray:
    """The short side to `pp.resize` (the long side to int(round(long * resize / short))), then the centre crop
    starting at (size - crop) // 2, as uint8 CHW: the evaluation transform of frameworks that resize with cv2
    (PaddleClas). cv2's INTER_LINEAR is bilinear on pixel centres without an antialias filter, which is torch's
    `interpolate(mode="bilinear", align_corners=False, antialias=False)`; the result is rounded to uint8 as cv2's is.
    torch instead of cv2 because cv2 is no dependency of effexport; on the built-in photographs the two differ by at
    most one grey level (cv2's fixed-point arithmetic)."""
    import torch

    width, height = image.size
    short = min(width, height)
    size = pp.resize
    new_w = size if width == short else int(round(width * size / short))
    new_h = size if height == short else int(round(height * size / short))
    array = np.asarray(image, dtype=np.float32)
    x = torch.from_numpy((array[:, :, None] if array.ndim == 2 else array).transpose(2, 0, 1).copy())[None]
    mode = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}.get(pp.interpolation, "bilinear")
    extra = {} if mode == "nearest" else {"align_corners": False, "antialias": pp.antialias}
    resized = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode=mode, **extra)[0]
    pixels = resized.round().clamp(0, 255).to(torch.uint8).numpy()
    crop_h, crop_w = pp.crop_size
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return np.ascontiguousarray(pixels[:, top:top + crop_h, left:left + crop_w])


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class ImageSet:
    images: list[Image.Image]
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


# Pillow's modes of one 16- or 32-bit integer channel (a 16-bit greyscale PNG opens as I;16), and their full scale.
WIDE_GREY = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB as the models were trained on. `convert("RGB")` clips a 16-bit greyscale image to 255 (99.6% of one
    photograph's pixels), so those are scaled from their full range (65535 -> 255; a 32-bit `I` image is taken as
    16-bit, as PNG and TIFF write it). 16-bit RGB PNGs Pillow already opens as 8-bit RGB, correctly scaled. Alpha is
    dropped, keeping the colours as stored (what torchvision's loader does; no compositing onto a background), and
    CMYK goes through Pillow's formula without the file's ICC profile, so colours may be off for print-managed
    files."""
    if im.mode in WIDE_GREY:
        pixels = np.asarray(im, dtype=np.float64) * (255.0 / WIDE_GREY[im.mode])
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":  # float greyscale (TIFF): values beyond 0..255 are clipped, as Pillow does
        return Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def to_grey(im: Image.Image) -> Image.Image:
    """8-bit luminance for a grey-scale model: the RGB image (to_rgb: 16-bit scaled, alpha dropped) through
    Pillow's ITU-R 601-2 transform (L = 0.299 R + 0.587 G + 0.114 B); a grey image keeps its values."""
    return im if im.mode == "L" else to_rgb(im).convert("L")


def read_images(paths: list[Path], root: Path | None = None) -> ImageSet:
    """Open images as 8-bit RGB (to_rgb), skipping (and recording) unreadable or corrupt files."""
    out = ImageSet([], [])
    for path in paths:
        name = str(path.relative_to(root)) if root else path.name
        try:
            with Image.open(path) as im:
                im.load()
                out.images.append(to_rgb(im))
                out.names.append(name)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            out.skipped.append((name, f"{type(exc).__name__}: {str(exc)[:120]}"))
            log.warning("skipped unreadable image %s: %s", name, exc)
    return out


def builtin_images() -> ImageSet:
    """The real photographs shipped with the package (licences in calibration/images/LICENSES.md)."""
    return read_images(image_files(BUILTIN_DIR), BUILTIN_DIR)


def synthetic_images(n: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    """Deterministic image-like pictures: smooth colour fields, shapes with edges, texture and noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, size=(4 + rng.integers(0, 5), 4 + rng.integers(0, 5), 3)).astype(np.uint8)
        im = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 7))):
            x0, y0 = (int(v) for v in rng.integers(0, size, 2))
            w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h],
                                                                       fill=colour)
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))
        arr = np.asarray(im, dtype=np.float32) + rng.normal(0, rng.uniform(2, 12), (size, size, 3))
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def parity_inputs(pp: Preprocess, n: int = PARITY_SAMPLES, images_dir: Path | None = None,
                  seed: int = 0) -> tuple[np.ndarray, str]:
    """The fixed parity batch: photographs (the user's, else the built-in ones) topped up with synthetic
    image-like inputs to `n`. Returns the NCHW batch and a description of where it came from."""
    if images_dir is not None:
        found = read_images(image_files(images_dir), Path(images_dir))
        if not found.images:
            raise UsageError(f"no readable images in {images_dir}")
        photos, what = found.images[:n], f"{min(n, len(found.images))} images from {images_dir}"
    else:
        photos = builtin_images().images[:n]
        what = f"{len(photos)} built-in photographs"
    extra = max(0, n - len(photos))
    if extra:
        what += f" + {extra} synthetic image-like inputs (seed {seed})"
    return preprocess_images(photos + synthetic_images(extra, seed=seed), pp), what


def images_key(images: Path | None) -> str:
    """Changes when the folder's images change: their names and contents, not their modification times."""
    return "builtin" if images is None else f"images:{content_digest(images, IMAGE_SUFFIXES)}"
