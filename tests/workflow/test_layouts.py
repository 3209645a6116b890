"""Model repositories for Triton and OVMS, built from small artifact folders.

Neither server can run here (no Triton or OVMS binary, no GPU), so no test shows that a server loads these
repositories. Triton's side is checked by parsing every config.pbtxt into tritonclient's own ModelConfig message;
OVMS's by checking config.json against the structure OVMS documents for it (the model_config_list of its
parameters page, which its config schema enforces). The model files are small stand-ins, except one real ONNX
whose input and output names and dims the Triton config must match.
"""

import errno
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from effexport.errors import UsageError
from effexport.exporter.artifacts import sha256_of
from effexport.workflow import layouts

SIZE, CHANNELS = 8, 3
CLASSES = CHANNELS  # global average pooling: one logit per channel
# The keys OVMS accepts in a model's "config" (its parameters page); anything else makes it refuse the file.
OVMS_MODEL_KEYS = {"name", "base_path", "batch_size", "shape", "layout", "model_version_policy", "plugin_config",
                   "nireq", "target_device", "stateful", "idle_sequence_cleanup", "max_sequence_number",
                   "low_latency_transformation", "metrics_enable", "metrics_list", "custom_loader_options"}
OVMS_TOP_KEYS = {"model_config_list", "pipeline_config_list", "custom_loader_config_list",
                 "custom_node_library_config_list", "mediapipe_config_list", "monitoring"}


def tiny_onnx() -> bytes:
    """A real classifier-shaped ONNX: input [batch, 3, 8, 8] -> global average pool -> logits [batch, 3]."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def artifact(root: Path, model: str, target: str, backend: str, files: dict[str, bytes], *, main: str,
             batch="batch", max_batch=None, status="built", folder=None, dtype="float32") -> dict:
    """Write an artifact folder under root and return its manifest entry, as effexport build records it."""
    folder = folder or f"{model.replace(':', '-')}/{target}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / folder / name).write_bytes(data)
    records = {name: {"sha256": sha256_of(root / folder / name), "bytes": len(data)} for name, data in files.items()}
    return {"model": model, "target": target, "backend": backend, "precision": "fp32", "status": status,
            "folder": folder, "main": main, "files": records,
            "inputs": [{"name": "input", "shape": [batch, CHANNELS, SIZE, SIZE], "dtype": dtype}],
            "outputs": [{"name": "logits", "shape": [batch, CLASSES], "dtype": dtype}],
            "max_batch": max_batch}


def ir(root, target="openvino-fp32", **kw):
    return artifact(root, "rexnet_1.0", target, "openvino", {"model.xml": b"<net/>", "model.bin": b"\1" * 64},
                    main="model.xml", **kw)


def ort(root, model="rexnet_1.0", target="onnxruntime-fp32", **kw):
    return artifact(root, model, target, "onnxruntime", {"model.onnx": tiny_onnx()}, main="model.onnx", **kw)


def trt(root, target="tensorrt-fp16", max_batch=16, **kw):
    return artifact(root, "rexnet_1.0", target, "tensorrt", {"model.plan": b"engine", "layers.json": b"[]"},
                    main="model.plan", max_batch=max_batch, **kw)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@pytest.fixture
def entries(root):
    return [ir(root), ort(root), trt(root),
            ort(root, model="timm:mobilenetv3_small_050", batch=1, max_batch=1),  # a static export
            trt(root, target="tensorrt-int8", status="failed"),
            ir(root, target="openvino-int8", status="skipped")]


@pytest.fixture
def pb2():
    module = layouts.load_model_config_pb2()
    if module is None:
        pytest.skip("tritonclient (in the test extra) is not installed")
    return module


@pytest.fixture(params=["protobuf", "by hand"])
def writer(request, monkeypatch, pb2):
    """Write config.pbtxt through protobuf (the hand writer must not run) or by hand (as without tritonclient)."""
    if request.param == "protobuf":
        monkeypatch.setattr(layouts, "_pbtxt", lambda *a: pytest.fail("the hand writer ran beside tritonclient"))
    else:
        monkeypatch.setattr(layouts, "load_model_config_pb2", lambda: None)
    return request.param


def model_config(path: Path, pb2):
    return text_format.Parse(path.read_text(encoding="utf-8"), pb2.ModelConfig())


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_triton_repository_holds_one_model_per_served_artifact(entries, root, tmp_path, writer):
    repo = tmp_path / "triton"
    written = layouts.write_triton_repository(entries, root, repo)
    names = ["rexnet_1.0-openvino-fp32", "rexnet_1.0-onnxruntime-fp32", "rexnet_1.0-tensorrt-fp16",
             "timm-mobilenetv3_small_050-onnxruntime-fp32"]
    assert written == [repo / n for n in names]  # the failed and the skipped entries are left out
    assert tree(repo) == {f"{names[0]}/config.pbtxt", f"{names[0]}/1/model.xml", f"{names[0]}/1/model.bin",
                          f"{names[1]}/config.pbtxt", f"{names[1]}/1/model.onnx",
                          f"{names[2]}/config.pbtxt", f"{names[2]}/1/model.plan",  # no layers.json: no server reads it
                          f"{names[3]}/config.pbtxt", f"{names[3]}/1/model.onnx"}
    for name, entry in zip(names, entries, strict=False):
        for file, record in entry["files"].items():
            if file.endswith(".json"):
                continue
            served, source = repo / name / "1" / file, root / entry["folder"] / file
            assert sha256_of(served) == record["sha256"]
            assert served.stat().st_ino == source.stat().st_ino  # a hard link: one filesystem here


def test_triton_configs_parse_into_model_config(entries, root, tmp_path, writer, pb2):
    repo = tmp_path / "triton"
    layouts.write_triton_repository(entries, root, repo)
    configs = {p.parent.name: model_config(p, pb2) for p in repo.glob("*/config.pbtxt")}

    onnx_dynamic = configs["rexnet_1.0-onnxruntime-fp32"]
    assert onnx_dynamic.name == "rexnet_1.0-onnxruntime-fp32"  # it must match the folder name
    assert (onnx_dynamic.platform, onnx_dynamic.backend) == ("onnxruntime_onnx", "")
    assert onnx_dynamic.max_batch_size == layouts.DEFAULT_MAX_BATCH  # the entry records no bound
    assert onnx_dynamic.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in onnx_dynamic.input] == [
        ("input", pb2.TYPE_FP32, [CHANNELS, SIZE, SIZE])]  # without the batch dimension
    assert [(t.name, t.data_type, list(t.dims)) for t in onnx_dynamic.output] == [("logits", pb2.TYPE_FP32, [CLASSES])]

    engine = configs["rexnet_1.0-tensorrt-fp16"]
    assert (engine.platform, engine.max_batch_size) == ("tensorrt_plan", 16)  # the engine profile's largest batch
    assert engine.HasField("dynamic_batching") and list(engine.input[0].dims) == [CHANNELS, SIZE, SIZE]

    static = configs["timm-mobilenetv3_small_050-onnxruntime-fp32"]
    assert static.max_batch_size == 0 and not static.HasField("dynamic_batching")
    assert list(static.input[0].dims) == [1, CHANNELS, SIZE, SIZE] and list(static.output[0].dims) == [1, CLASSES]

    # Triton's OpenVINO backend would fix the batch at max_batch_size and refuse smaller ones: served unbatched.
    openvino = configs["rexnet_1.0-openvino-fp32"]
    assert (openvino.backend, openvino.platform, openvino.max_batch_size) == ("openvino", "", 0)
    assert not openvino.HasField("dynamic_batching")
    assert list(openvino.input[0].dims) == [-1, CHANNELS, SIZE, SIZE] and list(openvino.output[0].dims) == [-1, CLASSES]


def test_the_triton_config_matches_the_onnx_it_serves(root, tmp_path, pb2):
    repo = tmp_path / "triton"
    entry = ort(root, max_batch=8)
    (folder,) = layouts.write_triton_repository([entry], root, repo)
    config = model_config(folder / "config.pbtxt", pb2)
    model = onnx.load(folder / "1" / "model.onnx")

    def graph_shapes(values):
        return {v.name: ([d.dim_value or -1 for d in v.type.tensor_type.shape.dim], v.type.tensor_type.elem_type)
                for v in values}

    def config_shapes(tensors):  # max_batch_size > 0: the full shape is [-1] + dims
        return {t.name: ([-1, *t.dims], TensorProto.FLOAT if t.data_type == pb2.TYPE_FP32 else None) for t in tensors}

    assert config.max_batch_size == 8
    assert config_shapes(config.input) == graph_shapes(model.graph.input)
    assert config_shapes(config.output) == graph_shapes(model.graph.output)
    import onnxruntime as ort_runtime

    x = np.random.default_rng(0).standard_normal((2, CHANNELS, SIZE, SIZE)).astype(np.float32)
    session = ort_runtime.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"input": x})[0], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


ODD_NAME = "in\"put's\\ é\t\x01"  # quotes, escapes, non-ASCII and a control character


def test_both_writers_give_the_same_text(root, monkeypatch, pb2):
    odd = ort(root, max_batch=4, dtype="float16")
    odd["inputs"][0]["name"] = ODD_NAME
    static = ir(root, batch=1, max_batch=1)
    for entry, name in [(odd, "odd"), (static, "static")]:
        by_protobuf = layouts.triton_config_text(entry, name)
        monkeypatch.setattr(layouts, "load_model_config_pb2", lambda: None)
        by_hand = layouts.triton_config_text(entry, name)
        monkeypatch.undo()
        assert by_hand == by_protobuf
        assert text_format.Parse(by_hand, pb2.ModelConfig()).name == name
    parsed = text_format.Parse(layouts.triton_config_text(odd, "odd"), pb2.ModelConfig())
    assert parsed.input[0].name == ODD_NAME and parsed.input[0].data_type == pb2.TYPE_FP16


def test_a_dynamic_tensorrt_engine_needs_its_profile_bound(root, tmp_path):
    with pytest.raises(UsageError, match="profile"):
        layouts.write_triton_repository([trt(root, max_batch=None)], root, tmp_path / "triton")
    assert not (tmp_path / "triton").exists()


def test_an_unknown_dtype_is_refused(root, tmp_path):
    with pytest.raises(UsageError, match="no Triton type"):
        layouts.write_triton_repository([ort(root, dtype="float8")], root, tmp_path / "triton")


def test_files_are_copied_when_no_hard_link_can_be_made(root, tmp_path, monkeypatch):
    def cross_device(src, dst, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    entry = ir(root)
    (folder,) = layouts.write_triton_repository([entry], root, tmp_path / "triton")
    for file in ("model.xml", "model.bin"):
        served, source = folder / "1" / file, root / entry["folder"] / file
        assert served.stat().st_ino != source.stat().st_ino
        assert sha256_of(served) == entry["files"][file]["sha256"]


def test_an_ir_under_another_name_is_served_as_model_xml_and_model_bin(root, tmp_path):
    entry = artifact(root, "rexnet_1.0", "openvino-fp16", "openvino", {"rexnet.xml": b"<net/>", "rexnet.bin": b"w"},
                     main="rexnet.xml")
    (folder,) = layouts.write_triton_repository([entry], root, tmp_path / "triton")
    assert tree(folder / "1") == {"model.xml", "model.bin"}  # OpenVINO finds the weights by the .xml's name


def test_a_real_ir_renamed_in_both_repositories_still_reads_and_runs(root, tmp_path, pb2):
    ov = pytest.importorskip("openvino")
    onnx_entry = ort(root)
    model = ov.convert_model(str(root / onnx_entry["folder"] / "model.onnx"))
    (root / "ir").mkdir()
    ov.save_model(model, str(root / "ir" / "rexnet.xml"), compress_to_fp16=False)
    files = {name: (root / "ir" / name).read_bytes() for name in ("rexnet.xml", "rexnet.bin")}
    entry = artifact(root, "rexnet_1.0", "openvino-fp32", "openvino", files, main="rexnet.xml", folder="ir")
    (triton,) = layouts.write_triton_repository([entry], root, tmp_path / "triton")
    ovms, _ = layouts.write_ovms_repository([entry], root, tmp_path / "ovms")
    config = model_config(triton / "config.pbtxt", pb2)
    x = np.random.default_rng(0).standard_normal((5, CHANNELS, SIZE, SIZE)).astype(np.float32)
    for folder in (triton, ovms):
        served = ov.Core().read_model(str(folder / "1" / "model.xml"))  # finds model.bin by the .xml's name
        shapes = {t.get_any_name(): [d.get_length() if d.is_static else -1 for d in t.get_partial_shape()]
                  for t in (*served.inputs, *served.outputs)}
        assert shapes == {t.name: list(t.dims) for t in (*config.input, *config.output)}  # unbatched: full dims
        compiled = ov.Core().compile_model(served, "CPU")
        for batch in (1, 5):  # the dynamic batch survives: each request runs at its own size
            out = compiled(x[:batch])[compiled.output(0)]
            np.testing.assert_allclose(out, x[:batch].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def check_ovms_config(config: dict, repo: Path) -> None:
    """config.json as OVMS documents it: model_config_list, each item {"config": {...}} with a string name and
    base_path and no key OVMS does not know; base_path (relative to config.json) holding numbered versions, each with
    an IR (.xml and .bin) or an .onnx."""
    assert isinstance(config, dict) and set(config) <= OVMS_TOP_KEYS
    assert isinstance(config["model_config_list"], list)
    for item in config["model_config_list"]:
        assert set(item) == {"config"} and set(item["config"]) <= OVMS_MODEL_KEYS
        name, base = item["config"]["name"], item["config"]["base_path"]
        assert isinstance(name, str) and name and isinstance(base, str) and base
        base = Path(base) if Path(base).is_absolute() else repo / base
        versions = [p for p in base.iterdir()]
        assert versions and all(p.is_dir() and p.name.isdigit() and int(p.name) > 0 for p in versions)
        for version in versions:
            suffixes = sorted(p.suffix for p in version.iterdir())
            assert suffixes in ([".bin", ".xml"], [".onnx"]), f"{version}: {suffixes}"


def test_ovms_repository_serves_ir_and_onnx_and_leaves_out_engines(entries, root, tmp_path, caplog):
    repo = tmp_path / "ovms"
    with caplog.at_level(logging.WARNING, logger="effexport.workflow.layouts"):
        written = layouts.write_ovms_repository(entries, root, repo)
    names = ["rexnet_1.0-openvino-fp32", "rexnet_1.0-onnxruntime-fp32", "timm-mobilenetv3_small_050-onnxruntime-fp32"]
    assert written == [repo / n for n in names] + [repo / "config.json"]
    assert "rexnet_1.0-tensorrt-fp16 left out" in caplog.text and "not TensorRT plans" in caplog.text
    assert tree(repo) == {"config.json", f"{names[0]}/1/model.xml", f"{names[0]}/1/model.bin",
                          f"{names[1]}/1/model.onnx", f"{names[2]}/1/model.onnx"}
    config = json.loads((repo / "config.json").read_text())
    check_ovms_config(config, repo)
    # Relative base paths, and no batch_size or shape: a dynamic batch is inherited from the model itself.
    assert config["model_config_list"] == [{"config": {"name": n, "base_path": n}} for n in names]


def test_ovms_config_keeps_the_models_it_already_lists(root, tmp_path):
    repo = tmp_path / "ovms"
    (repo / "resnet" / "1").mkdir(parents=True)
    (repo / "resnet" / "1" / "model.onnx").write_bytes(b"theirs")
    theirs = {"config": {"name": "resnet", "base_path": "resnet", "target_device": "CPU"}}
    (repo / "config.json").write_text(json.dumps({"model_config_list": [theirs], "pipeline_config_list": []}))
    layouts.write_ovms_repository([ir(root)], root, repo)
    layouts.write_ovms_repository([ir(root)], root, repo)  # again: replaced, not listed twice
    config = json.loads((repo / "config.json").read_text())
    check_ovms_config(config, repo)
    assert config["model_config_list"] == [theirs, {"config": {"name": "rexnet_1.0-openvino-fp32",
                                                               "base_path": "rexnet_1.0-openvino-fp32"}}]
    assert config["pipeline_config_list"] == []


def test_an_unreadable_ovms_config_is_not_overwritten(root, tmp_path):
    repo = tmp_path / "ovms"
    repo.mkdir()
    (repo / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot be read as JSON"):
        layouts.write_ovms_repository([ir(root)], root, repo)
    assert (repo / "config.json").read_text() == "{not json" and sorted(repo.iterdir()) == [repo / "config.json"]


def escape_by_dotdot_folder(root, entry, outside):
    entry["folder"] = "../elsewhere"


def escape_by_absolute_folder(root, entry, outside):
    entry["folder"] = str(root / entry["folder"])  # absolute, even though it names a folder inside root


def escape_by_symlinked_folder(root, entry, outside):
    (root / "linked").symlink_to(outside, target_is_directory=True)
    entry["folder"] = "linked"


def escape_by_dotdot_file(root, entry, outside):
    entry["files"]["../../../elsewhere/model.onnx"] = entry["files"].pop("model.onnx")
    entry["main"] = "../../../elsewhere/model.onnx"


def escape_by_absolute_file(root, entry, outside):
    entry["files"][str(outside / "model.onnx")] = entry["files"].pop("model.onnx")
    entry["main"] = str(outside / "model.onnx")


def escape_by_symlinked_file(root, entry, outside):
    served = root / entry["folder"] / "model.onnx"
    served.unlink()
    served.symlink_to(outside / "model.onnx")


@pytest.mark.parametrize("escape", [escape_by_dotdot_folder, escape_by_absolute_folder, escape_by_symlinked_folder,
                                    escape_by_dotdot_file, escape_by_absolute_file, escape_by_symlinked_file])
@pytest.mark.parametrize("write", [layouts.write_triton_repository, layouts.write_ovms_repository])
def test_paths_leading_outside_root_are_refused(root, tmp_path, escape, write):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    entry = ort(root)
    (outside / "model.onnx").write_bytes((root / entry["folder"] / "model.onnx").read_bytes())  # same bytes, too
    escape(root, entry, outside)
    with pytest.raises(UsageError, match="outside|without '..'"):
        write([ir(root), entry], root, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()  # refused before anything was written


def test_names_are_made_safe_for_both_servers():
    assert layouts.model_name("timm:resnet 18/a", "openvino-fp32") == "timm-resnet-18-a-openvino-fp32"
    assert layouts.model_name("rexnet_1.0", "onnxruntime-int8") == "rexnet_1.0-onnxruntime-int8"
    assert layouts.model_name("..", "x") == "x"  # never a hidden folder, "." or ".."
    with pytest.raises(UsageError):
        layouts.model_name("..", "..")


def test_two_entries_served_under_one_name_are_refused(root, tmp_path):
    first = ort(root, model="timm:resnet18")
    second = ort(root, model="timm/resnet18")  # another model, but the same safe name
    second["folder"] = first["folder"]
    with pytest.raises(UsageError, match="both be served as 'timm-resnet18-onnxruntime-fp32'"):
        layouts.write_triton_repository([first, second], root, tmp_path / "triton")
    with pytest.raises(UsageError, match="both be served"):
        layouts.write_ovms_repository([ir(root), ir(root)], root, tmp_path / "ovms")


def test_a_file_that_no_longer_matches_its_manifest_is_refused(root, tmp_path):
    entry = ir(root)
    (root / entry["folder"] / "model.bin").write_bytes(b"\2" * 64)  # same size, other weights
    repo = tmp_path / "triton"
    with pytest.raises(UsageError, match="not the file its manifest records"):
        layouts.write_triton_repository([ort(root), entry], root, repo)
    assert list(repo.iterdir()) == []  # not even the good model was published, and no staging is left


def test_writing_again_replaces_each_model_whole(root, tmp_path, pb2):
    repo = tmp_path / "triton"
    (repo / "rexnet_1.0-openvino-fp32" / "1").mkdir(parents=True)
    (repo / "rexnet_1.0-openvino-fp32" / "1" / "stale.onnx").write_bytes(b"old")
    (repo / "someone-elses-model").mkdir()
    layouts.write_triton_repository([ir(root)], root, repo)
    rebuilt = artifact(root, "rexnet_1.0", "openvino-fp32", "openvino", {"model.xml": b"<net v2/>",
                                                                         "model.bin": b"\3" * 8}, main="model.xml")
    layouts.write_triton_repository([rebuilt], root, repo)
    assert sorted(p.name for p in repo.iterdir()) == ["rexnet_1.0-openvino-fp32", "someone-elses-model"]
    assert tree(repo / "rexnet_1.0-openvino-fp32") == {"config.pbtxt", "1/model.xml", "1/model.bin"}
    assert (repo / "rexnet_1.0-openvino-fp32" / "1" / "model.xml").read_bytes() == b"<net v2/>"


def test_a_repository_that_would_replace_an_artifact_is_refused(root):
    entry = ort(root, model="rexnet", target="ort", folder="rexnet-ort")  # a flat folder named like the model
    with pytest.raises(UsageError, match="would replace the artifact"):
        layouts.write_triton_repository([entry], root, root)
    assert (root / "rexnet-ort" / "model.onnx").is_file()


def test_an_unknown_status_is_refused(root, tmp_path):
    with pytest.raises(UsageError, match="status 'passed'"):
        layouts.write_triton_repository([ort(root, status="passed")], root, tmp_path / "triton")



def test_without_tritonclient_the_config_is_written_by_hand(monkeypatch, root):
    for module in ("tritonclient", "tritonclient.grpc", "tritonclient.grpc.model_config_pb2"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    uncached = layouts.load_model_config_pb2.__wrapped__
    assert uncached() is None
    monkeypatch.setattr(layouts, "load_model_config_pb2", uncached)
    text = layouts.triton_config_text(ort(root), "m")
    assert text.startswith('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 32\n')
    assert text.endswith("}\ndynamic_batching {\n}\n")


def test_named_null_and_unknown_dimensions_are_dynamic(root, pb2):
    entry = ort(root)
    entry["inputs"][0]["shape"] = ["batch", CHANNELS, "height", None]
    entry["outputs"][0]["shape"] = [0, CLASSES]  # an ONNX dimension with neither a size nor a name
    config = text_format.Parse(layouts.triton_config_text(entry, "m"), pb2.ModelConfig())
    assert config.max_batch_size == layouts.DEFAULT_MAX_BATCH
    assert list(config.input[0].dims) == [CHANNELS, -1, -1] and list(config.output[0].dims) == [CLASSES]
    entry["inputs"][0]["shape"] = ["batch", CHANNELS, -2, SIZE]
    with pytest.raises(UsageError, match="neither a size nor dynamic"):
        layouts.triton_config_text(entry, "m")


def test_labels_become_labels_txt_named_by_the_output_and_beside_the_ovms_model(root, tmp_path, writer, pb2):
    names = ["cat", "dog", "bird"]
    onnx_entry = dict(ort(root), num_classes=CLASSES, labels=names)
    ir_entry = dict(ir(root), num_classes=CLASSES, labels=names)
    plain = ort(root, model="plain")
    layouts.write_triton_repository([onnx_entry, ir_entry, plain], root, tmp_path / "triton")
    for name in ("rexnet_1.0-onnxruntime-fp32", "rexnet_1.0-openvino-fp32"):
        folder = tmp_path / "triton" / name
        config = model_config(folder / "config.pbtxt", pb2)
        assert config.output[0].label_filename == "labels.txt"
        assert (folder / "labels.txt").read_text().splitlines() == names
    plain_config = model_config(tmp_path / "triton" / "plain-onnxruntime-fp32" / "config.pbtxt", pb2)
    assert plain_config.output[0].label_filename == ""
    assert not (tmp_path / "triton" / "plain-onnxruntime-fp32" / "labels.txt").exists()
    monkeypatch_free = layouts.triton_config_text(onnx_entry, "x")
    assert 'label_filename: "labels.txt"' in monkeypatch_free
    layouts.write_ovms_repository([ir_entry], root, tmp_path / "ovms")
    assert (tmp_path / "ovms" / "rexnet_1.0-openvino-fp32" / "1" / "labels.txt").read_text() == "cat\ndog\nbird\n"


@pytest.mark.parametrize("labels, match", [(["cat", "dog"], "2 labels for 3 classes"), (["a\nb", "c", "d"], "one-line"),
                                           ("cat", "non-empty list")])
def test_labels_that_do_not_fit_the_entry_are_refused(root, tmp_path, labels, match):
    with pytest.raises(UsageError, match=match):
        layouts.write_triton_repository([dict(ort(root), num_classes=CLASSES, labels=labels)], root, tmp_path / "t")
