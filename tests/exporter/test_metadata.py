"""Artifacts that explain themselves: every ONNX file says in its metadata_props which recipe it is, how to
preprocess its input, which weights it holds and which effexport wrote it; the OpenVINO IR says the same in its
rt_info; the forms derived from the export (FP16 graph, INT8) keep it. Dynamic-batch exports keep the symbolic
batch on the graph input and output only, so a runtime can fix it (tract's `set_input_fact`)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from effexport.calibration.options import Int8Options
from effexport.exporter.artifacts import sha256_of
from effexport.recipes import get_recipe
from effexport.version import __version__
from effexport.workflow.deploy import ensure_artifact, open_context
from effexport.workflow.export import build_model, export_recipe
from effexport.workflow.job import ExportOptions, WeightsSpec, resolve_job
from tests.calibration.conftest import calibration_folder

RECIPE = "mobilenetv3_small"
SMALL = ExportOptions(img_size=64)
KEYS = ("version", "recipe", "preprocessing", "weights", "weights_random", "input", "output",  # input, output: io_spec
        "num_classes", "labels", "exporter")


def _metadata(path) -> dict[str, str]:
    """Read back by ONNX Runtime, as a user of the file alone would."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map


def _ours(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.startswith("effexport.")}


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    return export_recipe(resolve_job(RECIPE, export=SMALL, out=tmp_path_factory.mktemp("b1")))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """The dynamic-batch export every backend builds from, with a small calibration for the INT8 forms."""
    calib = calibration_folder(tmp_path_factory.mktemp("calib"), 5)
    return open_context(resolve_job(RECIPE, export=SMALL, calibration=Int8Options(source=calib, calib_size=4),
                                    out=tmp_path_factory.mktemp("dynamic")))


def test_onnx_says_recipe_preprocessing_weights_and_version(static):
    report = json.loads(static.report_path.read_text())
    meta = _metadata(static.path)
    assert set(_ours(meta)) == {f"effexport.{k}" for k in KEYS}
    assert meta["effexport.recipe"] == RECIPE and meta["effexport.version"] == __version__
    preprocessing = json.loads(meta["effexport.preprocessing"])
    assert preprocessing == report["preprocessing"]
    assert preprocessing["crop_size"] == [64, 64] and preprocessing["resize"] == 73
    assert preprocessing["channel_order"] == "RGB" and preprocessing["input_range"] == [0, 1]
    assert preprocessing["layout"] == "NCHW" and preprocessing["resize_side"] == "short"
    assert meta["effexport.weights"] == "random:0" == report["identity"]["weights"]
    assert meta["effexport.weights_random"] == "true"
    assert meta["effexport.num_classes"] == "1000" == str(report["num_classes"])  # an ImageNet head: its labels
    assert json.loads(meta["effexport.labels"])[:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert report["onnx_metadata"] == _ours(meta)
    # the producer fields keep naming the exporter that wrote the graph
    assert ort.InferenceSession(str(static.path)).get_modelmeta().producer_name == "pytorch"


def test_weights_from_a_file_are_named_by_its_sha256(tmp_path):
    model, _ = build_model(get_recipe(RECIPE), WeightsSpec())
    checkpoint = tmp_path / "model.pth"
    torch.save(model.state_dict(), checkpoint)
    result = export_recipe(resolve_job(RECIPE, weights=checkpoint, export=SMALL, out=tmp_path / "out"))
    meta = _metadata(result.path)
    assert meta["effexport.weights"] == f"file:{sha256_of(checkpoint)}:"
    assert meta["effexport.weights_random"] == "false"


def test_dynamic_export_keeps_the_symbolic_batch_on_its_input_and_output_only(ctx):
    model = onnx.load(str(ctx.onnx.path))
    assert len(model.graph.value_info) == 0
    assert [v.type.tensor_type.shape.dim[0].dim_param for v in (*model.graph.input, *model.graph.output)] == \
        ["batch", "batch"]
    onnx.checker.check_model(str(ctx.onnx.path), full_check=True)
    x = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    session = ort.InferenceSession(str(ctx.onnx.path), providers=["CPUExecutionProvider"])
    five = session.run(None, {"input": x})[0]
    one = session.run(None, {"input": x[:1]})[0]
    assert five.shape == (5, 1000) and one.shape == (1, 1000)
    np.testing.assert_allclose(one[0], five[0], rtol=1e-4, atol=1e-5)
    assert _ours(_metadata(ctx.onnx.path)) == ctx.onnx.report["onnx_metadata"]


def test_tract_fixes_the_batch_of_a_dynamic_export(ctx):
    tract = pytest.importorskip("tract")
    model = tract.onnx().load(str(ctx.onnx.path))
    model.set_input_fact(0, "3,3,64,64,f32")
    runnable = model.into_model().into_runnable()
    x = np.random.default_rng(1).normal(size=(3, 3, 64, 64)).astype(np.float32)
    got = runnable.run([x])[0].to_numpy()
    expected = ort.InferenceSession(str(ctx.onnx.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_fp16_graph_and_int8_forms_keep_the_metadata(ctx):
    expected = ctx.onnx.report["onnx_metadata"]
    fp16 = ensure_artifact(ctx, "onnxruntime", "fp16")
    assert _ours(_metadata(fp16.path)) == expected
    int8 = ensure_artifact(ctx, "onnxruntime", "int8")
    assert _ours(_metadata(int8.path)) == expected
    assert _ours(_metadata(ctx.int8_folder / "model_int8_qdq.onnx")) == expected  # TensorRT's form


@pytest.mark.openvino
def test_openvino_ir_says_the_same_in_its_rt_info(ctx):
    ov = pytest.importorskip("openvino")
    artifact = ensure_artifact(ctx, "openvino", "fp32")
    model = ov.Core().read_model(str(artifact.path))
    rt_info = {k: model.get_rt_info(["effexport", k]).astype(str) for k in KEYS}
    assert rt_info == {k.removeprefix("effexport."): v for k, v in ctx.onnx.report["onnx_metadata"].items()}
    assert json.loads(rt_info["preprocessing"]) == json.loads(ctx.onnx.report_path.read_text())["preprocessing"]
    assert sorted(artifact.report["build"]["rt_info"]) == sorted(KEYS)
