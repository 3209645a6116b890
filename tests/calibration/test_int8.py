"""ensure_int8 (and Context.int8_build): one calibration, every form, the cache, the manifest, reuse, rejected
builds, and the keep-float report."""

import json
import shutil

import numpy as np
import pytest

from effexport.backends.tensorrt_qdq import check_tensorrt_qdq
from effexport.calibration import int8 as int8_forms
from effexport.calibration.int8 import ensure_int8
from effexport.calibration.options import Int8Options
from effexport.errors import ParityError
from effexport.exporter.artifacts import LOCK_FILE, REJECTED_DIR
from effexport.recipes import get_recipe
from effexport.workflow.deploy import open_context
from effexport.workflow.job import ExportOptions, parse_tolerances, resolve_job
from tests.calibration.conftest import RECIPE, write_corrupt, write_images

PP = get_recipe(RECIPE).preprocess.at(64)
IMPOSSIBLE = parse_tolerances(["int8:min_cosine=1.01"])["int8"]  # stands in for a bad quantization


@pytest.fixture
def fp32(exported, tmp_path):
    dest = tmp_path / "out" / RECIPE / exported.parent.name
    dest.mkdir(parents=True)
    return shutil.copy(exported, dest / "model.onnx")


def ensure(fp32, options: Int8Options, **kw):
    """ensure_int8 into the folders the workflow uses: `<model>/<options.tag>/` and `<model>/calibration-cache/`."""
    model_dir = fp32.parent.parent
    return ensure_int8(get_recipe(RECIPE), fp32, PP, options, model_dir / options.tag, model_dir / int8_forms.CACHE_DIR,
                       **kw)


def int8(fp32, calib, **options):
    return ensure(fp32, Int8Options(source=calib, openvino=False, **options), random_weights=True)


@pytest.fixture
def calib_dir(tmp_path):
    folder = tmp_path / "calib"
    write_images(folder, 8)
    write_corrupt(folder)
    return folder


def test_build_writes_every_form_the_cache_and_the_manifest(calib_dir, exported):
    out = exported.parent.parent.parent  # the FP32 export there is reused
    job = resolve_job(RECIPE, export=ExportOptions(img_size=64),
                      calibration=Int8Options(source=calib_dir, calib_size=6, openvino=False), out=out)
    ctx = open_context(job)
    assert ctx.onnx.reused and ctx.onnx.path == exported
    result = ctx.int8_build(enforce=None)  # what `effexport calibrate` does
    assert result.dest == ctx.int8_folder == out / RECIPE / "int8-minmax-n6-seed0-64px"
    assert set(result.files) == {"qdq", "ort_cpu"} and all(p.is_file() for p in result.files.values())
    assert all(p.parent == result.dest for p in result.files.values())
    assert result.files["qdq"].name == "model_int8_qdq.onnx" and not result.cache_reused and not result.reused
    assert check_tensorrt_qdq(result.files["qdq"]).passed
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest == json.loads(json.dumps(result.manifest))
    data = manifest["data"]
    assert data["count"] == 6 and data["sample_size"] == 6 and data["seed"] == 0 and data["kind"] == "folder"
    assert all(len(f["sha256"]) == 64 for f in data["files"]) and len(data["files"]) == 6
    assert data["preprocessing"]["crop_size"] == [64, 64]
    assert manifest["method"] == "minmax" and manifest["versions"]["onnxruntime"] != "absent"
    assert manifest["fp32_model"]["sha256"] == int8_forms.sha256_of(result.fp32)
    assert manifest["qdq_check"]["passed"] and manifest["status"] == "passed"
    assert {"/conv_stem/Conv"} <= {k["node"] for k in manifest["keep_float"]}
    assert all(k["reason"] for k in manifest["keep_float"])
    assert set(manifest["parity"]) == {"qdq", "ort_cpu"} and not manifest["parity_judged"]  # random weights
    assert result.cache_path.is_file() and result.cache_path.parent == out / RECIPE / "calibration-cache"
    assert not [p for p in out.rglob(".*") if p.name != LOCK_FILE]  # no staging or temporary files left


def test_second_run_reuses_and_a_changed_method_recalibrates(calib_dir, fp32):
    first = int8(fp32, calib_dir, calib_size=4)
    again = int8(fp32, calib_dir, calib_size=4)
    assert again.reused and again.cache_reused and again.cache_path == first.cache_path
    # the artifacts go but the cache stays: only the quantization is redone
    first.manifest_path.unlink()
    rebuilt = int8(fp32, calib_dir, calib_size=4)
    assert rebuilt.cache_reused and not rebuilt.reused and rebuilt.manifest["cache"]["reused"]
    other = int8(fp32, calib_dir, calib_size=4, method="percentile")
    assert not other.cache_reused and other.cache_path != first.cache_path
    assert other.cache_path.name.startswith("percentile-")
    # a different sample is different data: a new cache
    resampled = int8(fp32, calib_dir, calib_size=4, seed=9)
    assert not resampled.cache_reused and resampled.cache_path != first.cache_path


def test_corrupt_files_are_named_in_the_manifest(calib_dir, fp32):
    result = int8(fp32, calib_dir)
    assert {s["file"] for s in result.manifest["data"]["skipped"]} == {"garbage.jpg", "truncated.png"}
    assert result.manifest["data"]["count"] == 8


def test_parity_failure_of_a_trained_model_is_an_error_and_goes_to_rejected(calib_dir, fp32):
    result = int8(fp32, calib_dir, calib_size=3)
    verified = {name: int8_forms.sha256_of(path) for name, path in result.files.items()}
    with pytest.raises(ParityError, match="beyond the tolerance"):
        # an impossible tolerance stands in for a bad quantization of a model with real weights
        ensure(fp32, Int8Options(source=calib_dir, calib_size=3, openvino=False), tolerance=IMPOSSIBLE,
               random_weights=False, force=True)
    # the failing build is published under rejected/, with a manifest that says why ...
    rejected = result.dest / REJECTED_DIR
    manifest = json.loads((rejected / int8_forms.MANIFEST_FILE).read_text())
    assert manifest["status"] == "failed" and manifest["parity_judged"]
    assert (rejected / result.files["qdq"].name).is_file() and (rejected / result.files["ort_cpu"].name).is_file()
    # ... and the verified forms beside it are untouched
    assert json.loads(result.manifest_path.read_text()) == json.loads(json.dumps(result.manifest))
    assert {name: int8_forms.sha256_of(path) for name, path in result.files.items()} == verified


@pytest.mark.openvino
def test_openvino_nncf_model(fp32):
    pytest.importorskip("nncf")
    result = ensure(fp32, Int8Options(openvino=True), random_weights=True)
    xml = result.files["openvino"]
    assert xml.name == "model_int8.xml" and xml.with_suffix(".bin").is_file()
    assert result.manifest["forms"]["openvino"]["nncf"]["ignored_ops"]  # the keep-float layers reach NNCF
    assert result.manifest["data"]["kind"] == "builtin" and result.warnings
    outputs = int8_forms.run_model(xml, np.zeros((2, 3, 64, 64), np.float32))
    assert outputs.shape == (2, 1000)


@pytest.mark.openvino
def test_the_nncf_ir_is_the_same_bytes_whatever_the_process_quantized_before(exported, tmp_path):
    # NNCF and the converter number the nodes they make from process-global counters; the second of two runs in
    # one process (a full build's second model) must still write the file the first run (a shard's) wrote.
    pytest.importorskip("nncf")
    from effexport.calibration.nncf_ov import quantize_openvino

    inputs = np.random.default_rng(0).normal(0, 1, (4, 3, 64, 64)).astype(np.float32)
    first, second = tmp_path / "first" / "model_int8.xml", tmp_path / "second" / "model_int8.xml"
    for xml in (first, second):
        xml.parent.mkdir()
        info = quantize_openvino(exported, inputs, [], xml)
    assert first.read_bytes() == second.read_bytes()
    assert first.with_suffix(".bin").read_bytes() == second.with_suffix(".bin").read_bytes()
    assert info["generated_names_renumbered"] > 0


def test_every_backend_has_an_int8_form():
    from effexport.calibration.qdq import FORMS
    from effexport.errors import UsageError

    for backend, form in int8_forms.BACKEND_FORMS.items():
        assert int8_forms.form_for_backend(backend) == form
        assert form in FORMS or form == int8_forms.OPENVINO_FORM
    with pytest.raises(UsageError, match="no INT8 form"):
        int8_forms.form_for_backend("coreml")


def test_parity_is_measured_on_held_out_photographs_and_reported_loudly_for_random_weights(calib_dir, fp32):
    result = int8(fp32, calib_dir, calib_size=3)
    assert result.manifest["parity_inputs"]["kind"] == "heldout" and result.manifest["parity_inputs"]["held_out"]
    assert all(p["samples"] == 126 for p in result.manifest["parity"].values())
    assert result.manifest["parity_enforced"] == [] and result.manifest["parity_note"] == int8_forms.RANDOM_NOTE
    assert "NOT ENFORCED" in int8_forms.RANDOM_NOTE


def test_backend_builds_enforce_nothing_but_calibrate_still_fails_on_the_same_manifest(calib_dir, fp32):
    options = Int8Options(source=calib_dir, calib_size=3, openvino=False)
    built = ensure(fp32, options, tolerance=IMPOSSIBLE, random_weights=False, enforce=())
    assert built.manifest["status"] == "passed" and not any(p["passed"] for p in built.manifest["parity"].values())
    assert built.files["ort_cpu"].is_file()  # the backend's own check against PyTorch decides
    ort_cpu = int8_forms.sha256_of(built.files["ort_cpu"])
    with pytest.raises(ParityError, match="outside the tolerance asked for"):
        ensure(fp32, options, tolerance=IMPOSSIBLE, random_weights=False)  # reused, judged again: nothing moves
    assert built.files["ort_cpu"].is_file() and int8_forms.sha256_of(built.files["ort_cpu"]) == ort_cpu
    assert json.loads(built.manifest_path.read_text())["status"] == "passed"
    assert not (built.dest / REJECTED_DIR).exists()
    with pytest.raises(ParityError, match="beyond the tolerance"):
        ensure(fp32, options, tolerance=IMPOSSIBLE, random_weights=False, force=True)  # rebuilt: rejected/
    assert json.loads((built.dest / REJECTED_DIR / int8_forms.MANIFEST_FILE).read_text())["status"] == "failed"
    assert int8_forms.sha256_of(built.files["ort_cpu"]) == ort_cpu


def test_cpu_choice_sets_the_weight_type_of_the_cpu_form(exported, tmp_path):
    import onnx

    from effexport.calibration import qdq
    from effexport.exporter.cpu_env import int8_weights_overflow

    assert int8_weights_overflow({"avx2", "fma"}, "x86_64") and not int8_weights_overflow({"avx512_vnni"}, "x86_64")
    assert not int8_weights_overflow(set(), "aarch64")
    no_vnni, vnni = qdq.forms_for({"reduced_weights": True}), qdq.forms_for({"reduced_weights": False})
    assert no_vnni["ort_cpu"].unsigned_weights and "U8U8" in no_vnni["ort_cpu"].description
    assert not vnni["ort_cpu"].unsigned_weights and "U8S8" in vnni["ort_cpu"].description
    assert no_vnni["qdq"] == vnni["qdq"] == qdq.PORTABLE  # TensorRT's form is the same everywhere
    # built: the weights' zero points are UINT8 128 without VNNI, INT8 0 with it (both 8-bit, symmetric)
    cache = tmp_path / "ranges.json"
    qdq.calibrate_ranges(exported, np.random.default_rng(0).normal(0, 1, (4, 3, 64, 64)).astype(np.float32), "minmax",
                         cache, tmp_path)
    for forms, dtype, zero in ((no_vnni, onnx.TensorProto.UINT8, 128), (vnni, onnx.TensorProto.INT8, 0)):
        out = tmp_path / f"{dtype}.onnx"
        qdq.build_form(exported, out, forms["ort_cpu"], cache, "minmax", [])
        model = onnx.load(str(out))
        init = {t.name: t for t in model.graph.initializer}
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init]
        assert weight_dq and all(init[n.input[2]].data_type == dtype for n in weight_dq)
        assert all(set(onnx.numpy_helper.to_array(init[n.input[2]]).ravel()) == {zero} for n in weight_dq)
