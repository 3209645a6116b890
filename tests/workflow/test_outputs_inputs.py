"""--output, --input, --bgr and --heldout end to end: export, parity, backends, INT8 and the Triton config."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm

from effexport.errors import UsageError
from effexport.exporter.inputs import _make_uint8_transform, builtin_images, preprocess_images
from effexport.exporter.io_spec import LABEL_SET_RULE
from effexport.exporter.onnx import read_metadata
from effexport.workflow.export import export_recipe
from effexport.workflow.job import ExportOptions, resolve_job

SMALL = "timm:mobilenetv3_small_100"


def _job(tmp_path: Path, name: str = SMALL, classes: int | None = None, size: int = 64, **options):
    """A job at `size` px; with `classes`, the recipe's timm model built with that many classes (a head of one's
    own, until the class count comes from the checkpoint)."""
    job = resolve_job(name, export=ExportOptions(img_size=size, **options), out=tmp_path)
    if classes is not None:
        arch = job.recipe.source.split()[-1] if job.recipe.generic else name

        def build(pretrained: bool, arch=arch):
            return timm.create_model(arch, num_classes=classes)

        job = dataclasses.replace(job, recipe=dataclasses.replace(job.recipe, build=build))
    return job


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    from effexport.backends.onnxruntime import OrtRunner

    with OrtRunner(path) as runner:
        return runner.run(x)


@pytest.mark.slow
def test_multilabel_tresnet_head_exports_with_sigmoid_and_is_judged_by_label_sets(tmp_path):
    result = export_recipe(_job(tmp_path, "tresnet_m", classes=80, size=96, output="sigmoid"))
    parity = result.report["parity"]["onnxruntime"]
    assert result.path.parent.name == "onnx-b1-96px-sigmoid"
    assert parity["rule"] == LABEL_SET_RULE and parity["passed"]
    assert parity["label_set_agreement"] >= 0.9 and parity["max_abs"] <= 1e-4
    assert result.report["outputs"] == [{"name": "probabilities", "shape": [1, 80], "dtype": "float32"}]
    output = read_metadata(result.path)["effexport.output"]
    assert '"kind":"sigmoid"' in output and LABEL_SET_RULE in output


def test_uint8_nhwc_export_gives_the_float_export_probabilities_on_the_shipped_photographs(tmp_path):
    float_export = export_recipe(_job(tmp_path, output="softmax", dynamic_batch=True))
    raw_export = export_recipe(_job(tmp_path, output="softmax", dynamic_batch=True, input="uint8-nhwc"))
    assert raw_export.path.parent.name == "onnx-dynamic-64px-softmax-u8nhwc"
    assert raw_export.report["inputs"][0] == {"name": "input", "shape": ["batch", 64, 64, 3], "dtype": "uint8",
                                              "format": "NHWC"}
    assert raw_export.report["parity"]["onnxruntime"]["passed"]
    pp = _job(tmp_path).preprocess
    photos = builtin_images().images
    transform = _make_uint8_transform(pp)
    crops = np.stack([transform(im).numpy() for im in photos]).transpose(0, 2, 3, 1)  # what a client sends
    from_float = _ort(float_export.path, preprocess_images(photos, pp))
    from_raw = _ort(raw_export.path, np.ascontiguousarray(crops))
    # Both paths start from the same uint8 crop; they differ only by (x/255 - mean)/std against x*scale + shift in
    # float32 (measured 2.3e-10 of probability on these 9 photographs), far below the FP32 parity bar
    assert np.abs(from_float - from_raw).max() < 1e-6
    assert (from_float.argmax(1) == from_raw.argmax(1)).all()
    contract = read_metadata(raw_export.path)["effexport.input"]
    assert '"dtype":"uint8"' in contract and '"layout":"NHWC"' in contract and "no scaling" in contract


def test_bgr_input_takes_opencv_order(tmp_path):
    rgb = export_recipe(_job(tmp_path, input="uint8-nchw"))
    bgr = export_recipe(_job(tmp_path, input="uint8-nchw", bgr=True))
    assert bgr.path.parent.name == "onnx-b1-64px-u8nchw-bgr"
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    assert np.abs(_ort(rgb.path, pixels) - _ort(bgr.path, np.ascontiguousarray(pixels[:, ::-1]))).max() < 1e-5
    assert '"channel_order":"BGR"' in read_metadata(bgr.path)["effexport.input"]


@pytest.mark.openvino
def test_openvino_and_int8_build_from_the_uint8_graph_and_say_the_head_is_not_imagenet(tmp_path):
    from effexport.workflow.deploy import calibrate, deploy

    job = _job(tmp_path, classes=80, output="sigmoid", input="uint8-nhwc")
    for precision in ("fp32", "fp16"):
        artifact = deploy(job, "openvino", precision)
        assert artifact.folder.name == f"openvino-{precision}-64px-sigmoid-u8nhwc"
        assert artifact.report["parity"]["passed"] and artifact.report["parity"]["rule"] == LABEL_SET_RULE
    result = calibrate(job, enforce=())
    assert result.dest.name == "int8-minmax-64px-sigmoid-u8nhwc"
    assert set(result.files) >= {"qdq", "ort_cpu", "openvino"}
    assert result.manifest["parity_rule"] == LABEL_SET_RULE
    assert all(p["rule"] == LABEL_SET_RULE for p in result.parity.values())
    assert any("not ImageNet's 1000" in w and "--heldout" in w for w in result.warnings)
    assert result.manifest["heldout_note"].startswith("the head has 80 classes")


def test_triton_config_of_a_uint8_export_has_type_uint8_and_its_format(tmp_path):
    from google.protobuf import text_format

    from effexport.workflow.layouts import load_model_config_pb2, triton_config_text

    model_config_pb2 = load_model_config_pb2()  # tritonclient's generated ModelConfig (no grpc extra needed)
    assert model_config_pb2 is not None

    report = export_recipe(_job(tmp_path, input="uint8-nhwc", dynamic_batch=True)).report
    entry = {"model": "m", "target": "onnx-dynamic", "backend": "onnxruntime", "folder": "x", "main": "model.onnx",
             "files": {}, "inputs": report["inputs"], "outputs": report["outputs"], "max_batch": None}
    config = text_format.Parse(triton_config_text(entry, "m-onnx"), model_config_pb2.ModelConfig())
    (inp,) = config.input
    assert inp.data_type == model_config_pb2.TYPE_UINT8
    assert inp.format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert list(inp.dims) == [64, 64, 3] and config.max_batch_size == 32
    assert config.output[0].data_type == model_config_pb2.TYPE_FP32


def test_heldout_sharing_a_calibration_photograph_is_refused_naming_it(tmp_path):
    from effexport.calibration.data import builtin_files
    from effexport.calibration.options import Int8Options

    heldout = tmp_path / "heldout"
    heldout.mkdir()
    calibration_photo = builtin_files()[0]
    shutil.copy(calibration_photo, heldout / "renamed.jpg")  # another name, the same content
    shutil.copy(sorted((Path(__file__).parents[2] / "effexport/calibration/heldout").glob("*.jpg"))[0],
                heldout / "fine.jpg")
    with pytest.raises(UsageError, match=rf"renamed\.jpg = {calibration_photo.name}"):
        resolve_job(SMALL, calibration=Int8Options(heldout=heldout), out=tmp_path)
    (heldout / "renamed.jpg").unlink()
    job = resolve_job(SMALL, calibration=Int8Options(heldout=heldout), out=tmp_path)
    assert job.calibration.heldout == heldout


def test_build_file_checks_output_input_and_heldout_before_any_work(tmp_path):
    from effexport.workflow.build import load_plan

    path = tmp_path / "effexport.toml"
    path.write_text('[defaults]\ninput = "uint8-nhwc"\n\n[models.a]\nrecipe = "timm:mobilenetv3_small_100"\n'
                    'output = "probs"\n')
    with pytest.raises(UsageError, match=r"effexport\.toml:6: \[models\.a\] output = 'probs'"):
        load_plan(path)
    head = '[defaults]\ninput = "uint8-nhwc"\nbgr = true\n\n[models.a]\nrecipe = "timm:mobilenetv3_small_100"\n'
    path.write_text(head + 'output = "sigmoid"\nheldout = "missing"\n')
    with pytest.raises(UsageError, match="--heldout .*missing"):
        load_plan(path)
    path.write_text(head + 'output = "sigmoid"\n')
    (target,) = load_plan(path).targets
    assert target.job.export.graph_io.tags == ["sigmoid", "u8nhwc", "bgr"]
