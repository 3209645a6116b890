"""The artifact folder keeps its promise: artifacts built with other options live side by side, every input
counts by its contents, the PyTorch reference is computed once, and nothing verified is replaced by a command
with other options or lost to a failed one."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from effexport.errors import ParityError, UsageError
from effexport.recipes import get_recipe
from effexport.workflow import reference as reference_module
from effexport.workflow.deploy import ensure_artifact, open_context
from effexport.workflow.export import build_model, export_recipe, onnx_folder
from effexport.workflow.job import ExportOptions, WeightsSpec, resolve_job

RECIPE = "mobilenetv3_small"
SMALL = ExportOptions(img_size=64)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")


def _photos(folder, n, seed=0):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_backends_share_one_dynamic_batch_export_and_a_cached_reference(out, monkeypatch):
    ctx = open_context(resolve_job(RECIPE, export=SMALL, out=out))
    assert ctx.onnx.report["batch"] == "dynamic"
    assert ctx.onnx.path == out / RECIPE / "onnx-dynamic-64px" / "model.onnx"
    first = ctx.reference()
    assert first.inputs.shape == (16, 3, 64, 64) and first.outputs.shape == (16, 1000)
    assert (ctx.onnx.path.parent / "reference.npz").is_file()

    def no_model(*_args, **_kwargs):
        raise AssertionError("the reference should come from the cache")

    monkeypatch.setattr(reference_module, "build_model", no_model)
    again = open_context(resolve_job(RECIPE, export=SMALL, out=out))
    assert again.onnx.reused
    np.testing.assert_array_equal(again.reference().outputs, first.outputs)


def test_exports_with_other_options_live_side_by_side(out):
    static = export_recipe(resolve_job(RECIPE, export=SMALL, out=out))
    before = static.path.read_bytes()
    ctx = open_context(resolve_job(RECIPE, export=SMALL, out=out))  # what `effexport openvino` starts from
    assert ctx.onnx.path != static.path and static.path.read_bytes() == before  # not replaced by a dynamic one
    assert static.path.parent.name == "onnx-b1-64px" and static.report["batch"] == 1
    opset13 = export_recipe(resolve_job(RECIPE, export=ExportOptions(img_size=64, opset=13), out=out))
    assert opset13.path.parent.name == "onnx-b1-64px-opset13" and static.path.read_bytes() == before
    assert export_recipe(resolve_job(RECIPE, export=SMALL, out=out)).reused


def test_new_or_changed_images_give_a_new_reference(out, tmp_path):
    images = _photos(tmp_path / "photos", 3)
    ctx = open_context(resolve_job(RECIPE, export=SMALL, images=images, out=out))
    assert "3 images from" in ctx.reference().description
    first = ctx.reference().outputs
    _photos(images, 4)
    ctx = open_context(resolve_job(RECIPE, export=SMALL, images=images, out=out))
    assert "4 images from" in ctx.reference().description
    # Same names, same sizes, same modification times, other pictures: the contents decide.
    stat = (images / "0.png").stat()
    _photos(images, 4, seed=1)
    for i in range(4):
        os.utime(images / f"{i}.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = open_context(resolve_job(RECIPE, export=SMALL, images=images, out=out))
    assert not changed.onnx.reused
    assert not np.array_equal(changed.reference().outputs[:4], first[:4])


def test_new_weights_in_the_same_file_are_a_new_export(tmp_path):
    recipe = get_recipe(RECIPE)
    path = tmp_path / "ckpt.pth"
    model, _ = build_model(recipe, WeightsSpec())
    torch.save(model.state_dict(), path)
    first = export_recipe(resolve_job(RECIPE, weights=path, export=SMALL, out=tmp_path / "out"))
    assert export_recipe(resolve_job(RECIPE, weights=path, export=SMALL, out=tmp_path / "out")).reused
    state = model.state_dict()
    state["classifier.bias"] += 1.0
    stat = path.stat()
    torch.save(state, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = export_recipe(resolve_job(RECIPE, weights=path, export=SMALL, out=tmp_path / "out"))
    assert not second.reused and second.report["weights"]["sha256"] != first.report["weights"]["sha256"]


def test_a_stricter_rebuild_keeps_the_verified_export(out):
    job = resolve_job(RECIPE, export=SMALL, out=out)
    good = export_recipe(job)
    folder = onnx_folder(job)
    before = good.path.read_bytes(), (folder / "report.json").read_bytes()
    strict = resolve_job(RECIPE, export=SMALL, out=out, tolerances=["fp32:max_rel=1e-12"])
    with pytest.raises(ParityError, match="outside the tolerance asked for") as reused:
        export_recipe(strict)  # same inputs: judged again, not rebuilt
    assert reused.value.report == folder / "report.json"
    forced = resolve_job(RECIPE, export=SMALL, out=out, tolerances=["fp32:max_rel=1e-12"], force=True)
    with pytest.raises(ParityError, match="rejected build") as rebuilt:
        export_recipe(forced)
    assert "is unchanged" in str(rebuilt.value)
    assert (good.path.read_bytes(), (folder / "report.json").read_bytes()) == before
    rejected = json.loads((folder / "rejected" / "report.json").read_text())
    assert rejected["status"] == "failed" and (folder / "rejected" / "model.onnx").is_file()
    assert export_recipe(job).reused


def test_verify_builds_and_judges_under_the_users_tolerance(tmp_path, monkeypatch):
    from effexport.exporter import parity
    from effexport.workflow.verify import verify_recipe

    monkeypatch.setitem(parity.POLICY, "fp16", parity.Tolerance(max_rel=1e-9))  # a default no FP16 graph meets
    accepted = resolve_job(RECIPE, export=SMALL, out=tmp_path, tolerances=["fp16:max_rel=0.01"])
    artifact = ensure_artifact(open_context(accepted), "onnxruntime", "fp16")  # accepted under the user's tolerance
    before = artifact.path.read_bytes()
    result = verify_recipe(accepted, ["onnxruntime"], ["fp16"])
    assert result.passed and result.policy["fp16"].max_rel == 0.01
    assert artifact.path.read_bytes() == before
    strict = verify_recipe(resolve_job(RECIPE, export=SMALL, out=tmp_path), ["onnxruntime"], ["fp16"])
    row = next(r for r in strict.rows if r.precision == "fp16")
    assert not strict.passed and "outside the tolerance asked for" in row.note and row.parity["max_rel"] > 1e-9
    assert artifact.path.read_bytes() == before  # judged, not rebuilt or deleted


def test_unsupported_precision_is_a_usage_error(out):
    ctx = open_context(resolve_job(RECIPE, export=SMALL, out=out))
    with pytest.raises(UsageError, match="onnxruntime supports fp32, fp16, int8, not bf16"):
        ensure_artifact(ctx, "onnxruntime", "bf16")


def test_verify_and_bench_pick_the_users_engine_whose_profile_covers_the_batch(out):
    """Engine folders are named by their batch profile; verify and bench look for the user's before building one.
    (No TensorRT here: the reports below stand for engines `effexport trt` built; nothing is run.)"""
    from effexport.backends import tensorrt
    from effexport.workflow.deploy import artifact_folder, existing_options

    ctx = open_context(resolve_job(RECIPE, export=SMALL, out=out))
    built = tensorrt.TrtOptions.from_batches(min_batch=1, opt_batch=8, max_batch=32)
    folder = artifact_folder(ctx.job, "tensorrt", "fp16", built)
    assert folder.name == "tensorrt-fp16-b1-8-32-64px"
    assert artifact_folder(ctx.job, "tensorrt", "fp16", tensorrt.options_for_batch(64)).name == "tensorrt-fp16-b64-64px"
    assert existing_options(ctx, "tensorrt", "fp16", 8) is None
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"status": "passed", "options": built.identity()}))
    failed = artifact_folder(ctx.job, "tensorrt", "fp16", tensorrt.options_for_batch(4))
    failed.mkdir()
    (failed / "report.json").write_text(json.dumps({"status": "failed",
                                                    "options": tensorrt.options_for_batch(4).identity()}))
    chosen = existing_options(ctx, "tensorrt", "fp16", 8)
    assert (chosen.min_batch, chosen.opt_batch, chosen.max_batch) == (1, 8, 32)
    assert existing_options(ctx, "tensorrt", "fp16", 4).opt_batch == 8  # covers 4; the failed b4 engine is not used
    assert existing_options(ctx, "tensorrt", "fp16", 64) is None  # bench --batch 64 builds tensorrt-fp16-b64
    assert existing_options(ctx, "tensorrt", "fp16") is not None  # verify: any verified engine of the user's
    assert existing_options(ctx, "openvino", "fp32", 8) is None  # no batch profiles there


def test_the_identity_covers_the_contents_of_query_table_and_calibration_images(tmp_path):
    from effexport.calibration.options import Int8Options
    from effexport.recipes import RecipeParams
    from effexport.workflow.export import export_identity

    table = tmp_path / "mine.csv"
    table.write_text("mflops,width,resolution,top1\n150,0.8,160,80.5\n250,1.0,160,81.0\n")
    calib = _photos(tmp_path / "calib", 2)

    def identity():
        return export_identity(resolve_job("mutualnet_mobilenet_v2", out=tmp_path / "out",
                                           params=RecipeParams(budget_mflops=200, query_table=table),
                                           calibration=Int8Options(source=calib)))

    first = identity()
    assert first == identity()
    table.write_text("mflops,width,resolution,top1\n150,0.8,160,80.5\n250,1.0,160,81.5\n")  # same point chosen
    second = identity()
    assert second != first and second["configuration"] == first["configuration"]
    _photos(calib, 2, seed=5)  # same names, other pictures: BatchNorm is re-estimated on other data
    assert identity() != second


def test_every_file_of_an_export_decides_its_reuse(tmp_path):
    from effexport.exporter.artifacts import sha256_of, write_json
    from effexport.workflow.export import find_reusable

    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "model.onnx.data").write_bytes(b"weights")
    files = {name: sha256_of(tmp_path / name) for name in ("model.onnx", "model.onnx.data")}
    write_json(tmp_path / "report.json", {"fingerprint": "f", "status": "passed", "artifact": {"files": files}})
    assert find_reusable(tmp_path, "f") is not None
    (tmp_path / "model.onnx.data").write_bytes(b"other weights")  # the graph file alone is unchanged
    assert find_reusable(tmp_path, "f") is None
