"""The calibration photographs (calibration/photos/): listed with their licences, colour, small, and none of them a
copy of a held-out or built-in photograph or of another one."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effexport.calibration.heldout import HELDOUT_DIR
from effexport.exporter.inputs import BUILTIN_DIR, CALIBRATION_PHOTOS_DIR, image_files
from tests.calibration.photo_checks import colourful_share, distance, licence_rows, licensed, views

# Measured on the shipped files: a photograph re-encoded at 5/8 of its size (JPEG quality 70) or 10% brighter is at
# most 0.12 from itself, cropped to 90% or 80% of its sides (centred or at a corner) at most 0.13; the two closest
# different photographs of photos/, heldout/ and images/ are 0.35 apart (two mountain landscapes). Other crops are
# not caught here: when the photographs were chosen their originals were compared, and a keypoint match found no
# photograph inside another.
SAME_PHOTO = 0.25
LICENCES = {"public domain", "CC0 1.0", "CC BY 2.0", "CC BY 4.0"}


def photo_paths() -> list[Path]:
    return sorted(CALIBRATION_PHOTOS_DIR.glob("*.jpg"))


def test_every_photo_is_listed_in_the_licences_with_its_sha256_and_nothing_else_ships():
    shipped = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photo_paths()}
    assert len(shipped) == 64 and licensed(CALIBRATION_PHOTOS_DIR) == shipped
    assert {p.name for p in CALIBRATION_PHOTOS_DIR.iterdir()} == {*shipped, "LICENSES.md"}
    assert sum(p.stat().st_size for p in photo_paths()) < 3_000_000  # what the wheel carries for them


def test_every_licence_allows_redistribution_and_names_its_source():
    for file, _subject, package, in_package, statement, licence, author, _sha in licence_rows(CALIBRATION_PHOTOS_DIR):
        assert licence in LICENCES, file  # no share-alike, GPL, GFDL or non-commercial licence
        assert package.startswith("Debian `") and in_package and statement and author, file


def _sources(folder: Path) -> list[str]:
    """Each photograph's file in its package, and the address of its original where the table gives one (not a bare
    site: the wesaturate.com photographs only name the site)."""
    return [source for row in licence_rows(folder) for source in (row[3], *re.findall(r"https?://[^/\s]+/\S+", row[6]))]


def test_no_photo_comes_from_the_original_of_a_held_out_one_nor_two_from_one():
    ours = _sources(CALIBRATION_PHOTOS_DIR)
    assert len(ours) > len(photo_paths()) and len(set(ours)) == len(ours)
    assert not set(ours) & set(_sources(HELDOUT_DIR))


def test_photos_are_colour_jpegs_of_at_most_512_pixels_without_metadata():
    for path in photo_paths():
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= 512, path.name
            # only the JFIF header: no EXIF, ICC profile, XMP or comment
            assert {marker for marker, _ in im.applist} == {"APP0"}, path.name
            assert set(im.info) <= {"jfif", "jfif_version", "jfif_unit", "jfif_density"}, path.name
            pixels = np.asarray(im)
        # the least colourful, the spray bottle on white, has 20% of its pixels in colour
        assert colourful_share(pixels) >= 0.1, path.name


@pytest.fixture(scope="module")
def thumbnails() -> dict[Path, np.ndarray]:
    others = image_files(HELDOUT_DIR) + image_files(BUILTIN_DIR)
    return {p: views(p) for p in photo_paths() + others}


def test_no_photo_is_a_held_out_or_built_in_photograph_or_another_calibration_photo(thumbnails):
    paths = list(thumbnails)  # the calibration photographs first, then the held-out and built-in ones
    pairs = [(a, b) for i, a in enumerate(photo_paths()) for b in paths[i + 1:]]
    assert len(pairs) == 64 * 63 // 2 + 64 * (42 + 9)
    same = [(a.name, f"{b.parent.name}/{b.name}") for a, b in pairs
            if distance(thumbnails[a], thumbnails[b]) < SAME_PHOTO]
    assert not same


def test_the_duplicate_check_finds_a_cropped_reencoded_copy(thumbnails, tmp_path):
    held = image_files(HELDOUT_DIR)[0]
    with Image.open(held) as im:
        w, h = im.size
        copy = im.crop((w // 20, h // 20, w - w // 20, h - h // 20)).resize((w * 3 // 4, h * 3 // 4))
    copy.point(lambda v: min(255, int(v * 1.1))).save(tmp_path / "copy.jpg", quality=75)
    assert distance(views(tmp_path / "copy.jpg"), thumbnails[held]) < SAME_PHOTO / 2


def test_the_photos_ship_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "calibration/photos/*" in pyproject["tool"]["setuptools"]["package-data"]["effexport"]
