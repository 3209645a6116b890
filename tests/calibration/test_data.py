"""Calibration sources: folders (recursive, corrupt files skipped and named), arrays, built-in photos, sampling."""

import numpy as np
import pytest
from PIL import Image

from effexport.calibration.data import (
    BUILTIN_WARNING,
    SMALL_SET,
    VIEW_INPUTS,
    calibration_views,
    load_calibration,
    views_per_photo,
)
from effexport.errors import UsageError
from effexport.exporter.inputs import BUILTIN_DIR, CALIBRATION_PHOTOS_DIR, image_files, read_images
from effexport.recipes import Preprocess
from tests.calibration.conftest import PP, write_corrupt, write_images


def test_folder_is_recursive_and_preprocessed(tmp_path):
    write_images(tmp_path, 6)
    data = load_calibration(tmp_path, PP, views=False)
    assert data.count == 6 and data.kind == "folder" and data.inputs.shape == (6, 3, 32, 32)
    assert data.inputs.dtype == np.float32
    names = [i.name for i in data.items]
    assert {"img00.jpg", "sub/img01.png", "img02.webp"} <= set(names)
    assert all(len(i.sha256) == 64 for i in data.items)
    manifest = data.manifest()
    assert manifest["count"] == 6 and manifest["preprocessing"]["crop_size"] == (32, 32)
    assert manifest["skipped"] == [] and manifest["digest"] == data.digest()
    assert manifest["views_per_image"] == 1 and manifest["inputs"] == 6


def test_a_small_set_is_calibrated_on_views_of_each_photograph(tmp_path, monkeypatch):
    from effexport.calibration import data as data_module

    write_images(tmp_path, 3)
    viewed = load_calibration(tmp_path, PP)
    plain = load_calibration(tmp_path, PP, views=False)
    assert viewed.count == 3 and viewed.views == 12 and viewed.inputs.shape == (36, 3, 32, 32)
    assert viewed.manifest()["inputs"] == 36 and viewed.digest() != plain.digest()
    # the first view is the whole photograph, the second its mirror image
    np.testing.assert_array_equal(viewed.inputs[0], plain.inputs[0])
    np.testing.assert_allclose(viewed.inputs[1], plain.inputs[0][:, :, ::-1], atol=1e-6)
    np.testing.assert_array_equal(viewed.inputs, load_calibration(tmp_path, PP).inputs)  # deterministic
    monkeypatch.setattr(data_module, "SMALL_SET", 3)  # a set that is not small is used as it is
    assert load_calibration(tmp_path, PP).views == 1


def test_corrupt_files_are_skipped_counted_and_named(tmp_path):
    write_images(tmp_path, 4)
    bad = write_corrupt(tmp_path)
    data = load_calibration(tmp_path, PP)
    assert data.count == 4 and data.available == 6
    assert sorted(f for f, _ in data.skipped) == sorted(bad)
    assert all(reason for _, reason in data.skipped)
    assert {s["file"] for s in data.manifest()["skipped"]} == set(bad)


def test_no_usable_image_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no image files"):
        load_calibration(tmp_path / "empty", PP)
    (tmp_path / "bad").mkdir()
    write_corrupt(tmp_path / "bad")
    with pytest.raises(UsageError, match="could be read"):
        load_calibration(tmp_path / "bad", PP)
    with pytest.raises(UsageError, match="neither a folder"):
        load_calibration(tmp_path / "missing", PP)


def test_sampling_is_deterministic_and_skips_do_not_shrink_it(tmp_path):
    write_images(tmp_path, 12)
    write_corrupt(tmp_path)
    a = load_calibration(tmp_path, PP, size=5, seed=3)
    b = load_calibration(tmp_path, PP, size=5, seed=3)
    c = load_calibration(tmp_path, PP, size=5, seed=4)
    assert a.count == 5 and [i.name for i in a.items] == [i.name for i in b.items]
    assert np.array_equal(a.inputs, b.inputs) and a.digest() == b.digest()
    assert [i.name for i in a.items] != [i.name for i in c.items] and a.digest() != c.digest()
    # asking for more than there is gives every readable image
    assert load_calibration(tmp_path, PP, size=100).count == 12
    with pytest.raises(UsageError, match="calib-size"):
        load_calibration(tmp_path, PP, size=0)


def test_sample_skips_corrupt_files_and_still_fills(tmp_path):
    write_images(tmp_path, 3)
    write_corrupt(tmp_path)
    data = load_calibration(tmp_path, PP, size=3, seed=0)
    assert data.count == 3 and len(data.skipped) == 2  # every corrupt file was met on the way and recorded


def test_arrays_npy_and_npz(tmp_path):
    x = np.random.default_rng(1).normal(size=(10, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", input=x, other=np.zeros(3))
    whole = load_calibration(tmp_path / "x.npy", PP)
    assert whole.kind == "array" and np.array_equal(whole.inputs, x) and whole.items[3].name == "x.npy[3]"
    sample = load_calibration(tmp_path / "x.npz", PP, size=4, seed=1)
    rows = [int(i.name.split("[")[1][:-1]) for i in sample.items]
    assert sample.count == 4 and np.array_equal(sample.inputs, x[rows])
    assert rows == [int(i.name.split("[")[1][:-1]) for i in load_calibration(tmp_path / "x.npz", PP, 4, 1).items]


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 3, 16, 16), np.float32), "preprocessed at 16x16"),
    (np.zeros((4, 1, 32, 32), np.float32), "shape"),
    (np.zeros((4, 3, 32, 32), np.uint8), "float"),
    (np.full((2, 3, 32, 32), np.nan, np.float32), "NaN"),
    (np.array([{"a": 1}], dtype=object), "cannot read|shape"),
])
def test_bad_arrays_are_usage_errors(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)
    with pytest.raises(UsageError, match=match):
        load_calibration(tmp_path / "bad.npy", PP)


def test_builtin_photographs_come_with_a_warning():
    data = load_calibration(None, PP)
    images, photos = image_files(BUILTIN_DIR), image_files(CALIBRATION_PHOTOS_DIR)
    assert len(images) == 9 and len(photos) >= 48
    assert data.kind == "builtin" and data.count == len(images) + len(photos) and data.skipped == []
    names = [i.name for i in data.items]
    assert {f"images/{p.name}" for p in images} | {f"photos/{p.name}" for p in photos} == set(names)
    assert data.views == views_per_photo(data.count) and len(data.inputs) == data.count * data.views
    assert data.warnings == [BUILTIN_WARNING] and "built-in" in data.manifest()["warnings"][0]


def test_views_grow_fewer_as_photographs_grow_more(tmp_path):
    assert [views_per_photo(n) for n in (1, 9, 25, 30, 73, 99, 100, 500)] == [12, 12, 12, 10, 4, 3, 1, 1]
    assert all(n * views_per_photo(n) <= VIEW_INPUTS + n for n in range(26, SMALL_SET))
    write_images(tmp_path, 2)
    plain = load_calibration(tmp_path, PP, views=False)
    every = calibration_views(read_images(image_files(tmp_path)).images)
    some = calibration_views(read_images(image_files(tmp_path)).images, 4)
    assert len(every) == 24 and len(some) == 8
    # 4 of 12, evenly spaced: the whole photo first, the last crop's mirror image last
    np.testing.assert_array_equal(np.asarray(some[0]), np.asarray(every[0]))
    np.testing.assert_array_equal(np.asarray(some[3]), np.asarray(every[11]))
    np.testing.assert_array_equal(np.asarray(some[4]), np.asarray(every[12]))
    assert plain.count == 2


def test_degenerate_images_are_kept_and_named_in_warnings(tmp_path):
    write_images(tmp_path, 3)
    for name, size in (("dot.png", (1, 1)), ("strip.png", (900, 10)), ("tall.png", (40, 400))):
        Image.new("RGB", size, (200, 30, 60)).save(tmp_path / name)
    data = load_calibration(tmp_path, PP, views=False)
    assert data.count == 6 and data.inputs.shape == (6, 3, 32, 32)  # kept, not dropped
    tiny, extreme = data.warnings
    assert tiny.startswith("2 calibration images are tiny (shorter side under 32 px")
    assert "dot.png (1x1)" in tiny and "strip.png (900x10)" in tiny and "tall.png" not in tiny
    assert extreme.startswith("2 calibration images have an extreme aspect ratio (over 8:1)")
    assert "strip.png (900x10)" in extreme and "tall.png (40x400)" in extreme and "dot.png" not in extreme
    assert "img00" not in tiny + extreme
    assert data.manifest()["warnings"] == data.warnings


def test_tiny_is_judged_against_the_crop_too(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "small.png")
    assert load_calibration(tmp_path, PP, views=False).warnings == []  # 48 px for a 32 px crop is fine
    big_crop = Preprocess((224, 224), crop_pct=0.875)
    [warning] = load_calibration(tmp_path, big_crop, views=False).warnings
    assert "1 calibration image is tiny (shorter side under 56 px, upscaled to the 224 px crop): small.png" in warning


def test_at_most_caps_the_sample_without_asking_for_it(tmp_path, caplog):
    write_images(tmp_path, 6)
    capped = load_calibration(tmp_path, PP, views=False, at_most=4)
    assert capped.count == 4 and [i.name for i in capped.items] == [i.name for i in load_calibration(
        tmp_path, PP, size=4, views=False).items]  # the same seeded sample as --calib-size 4
    caplog.clear()
    assert load_calibration(tmp_path, PP, views=False, at_most=50).count == 6 and "asked for" not in caplog.text
    assert load_calibration(tmp_path, PP, size=3, views=False, at_most=50).count == 3
    load_calibration(tmp_path, PP, size=50, views=False)
    assert "asked for 50 calibration images" in caplog.text  # a --calib-size the folder cannot fill is still told


def test_an_array_at_another_size_is_refused_not_resized(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 48, 48), np.float32))
    with pytest.raises(UsageError, match=r"preprocessed at 48x48, but the model takes 32x32 .* never resized"):
        load_calibration(tmp_path / "x.npy", PP)
