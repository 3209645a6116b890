"""`effexport build`: a build file refused before any work when malformed, every target built through the single
commands' code, reused while nothing changed, failures and missing backends reported per target, and a manifest
that validates against its shipped schema."""

import json
import textwrap

import jsonschema
import pytest
import torch

from effexport.exporter.artifacts import sha256_of
from effexport.workflow.build import load_plan, manifest_schema
from tests.test_cli import run

SMALL = 'recipe = "mobilenetv3_small"\nimg_size = 64\n'


def _write(folder, text):
    path = folder / "effexport.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _checkpoint(path, bias=0.0):
    from effexport.recipes import get_recipe
    from effexport.workflow.export import build_model
    from effexport.workflow.job import WeightsSpec

    model, _ = build_model(get_recipe("mobilenetv3_small"), WeightsSpec())
    state = model.state_dict()
    state["classifier.bias"] += bias
    torch.save(state, path)
    return path


def test_init_writes_an_example_that_plans_and_refuses_to_overwrite(capsys, tmp_path):
    path = tmp_path / "effexport.toml"
    code, out, _ = run(["build", str(path), "--init"], capsys)
    assert code == 0 and path.is_file()
    plan = load_plan(path)
    assert {t.model for t in plan.targets} == {"rexnet", "lite0", "mnv3_pfd"}
    assert [t.name for t in plan.targets if t.model == "mnv3_pfd"] == ["onnx", "openvino-fp32"]
    assert next(t for t in plan.targets if t.name == "tensorrt-fp16").trt == {"min_batch": 1, "opt_batch": 8,
                                                                               "max_batch": 32}
    code, _, err = run(["build", str(path), "--init"], capsys)
    assert code == 2 and "exists" in err


@pytest.mark.parametrize("text, line, words", [
    ('[defaults]\ntarget = ["onnx"]\n[models.a]\nrecipe = "rexnet_1.0"\n', 2, ["unknown key 'target'", "'targets'"]),
    ('[models.a]\nrecipe = "rexnet_1.O"\n', 2, ["unknown recipe 'rexnet_1.O'", "Closest: rexnet_1.0"]),
    ('[models.a]\nrecipe = "rexnet_1.0"\ntargets = ["onnx", "openvino-f32"]\n', 3,
     ["unknown target 'openvino-f32'", "'openvino-fp32'"]),
    ('[models.a]\nrecipe = "rexnet_1.0"\n[models.a.tensorrt]\nmax_bach = 8\n', 4, ["'max_bach'", "'max_batch'"]),
    ('[model.a]\nrecipe = "rexnet_1.0"\n', 1, ["unknown table or key 'model'", "'models'"]),
    ('[models.a]\nrecipe = "rexnet_1.0"\nweights = "missing.pth"\n', 1, ["[models.a]", "missing.pth does not exist"]),
    ('[models.a]\nrecipe = "rexnet_1.0"\nimg_size = 16\n', 3, ["--img-size must be at least 32"]),
    ('[models.a\nrecipe = 1\n', None, ["not valid TOML"]),
    # values by type and range, each with its own line
    ('[models.a]\nrecipe = "mobilenetv3_small"\nimg_size = "abc"\n', 3, ['img_size = "abc": expected a whole number']),
    ('[models.a]\nrecipe = "mobilenetv3_small"\nimg_size = 224.5\n', 3, ["img_size = 224.5: expected a whole number"]),
    ('[models.a]\nrecipe = "mobilenetv3_small"\nimg_size = [224]\n', 3, ["img_size = [224]: expected a whole number"]),
    ('[models.a]\nrecipe = "mobilenetv3_small"\nimg_size = 100000\n', 3, ["must be at most 2048", "120 GB"]),
    ('[defaults]\nimg_size = true\n[models.a]\nrecipe = "mobilenetv3_small"\n', 2, ["[defaults] img_size = true"]),
    ('[models.a]\nrecipe = "mobilenetv3_small"\nweights = 5\n', 3, ["weights = 5: expected a path"]),
    ('[models.a]\nrecipe = "mobilenetv3_small"\ntargets = "onnx"\n', 3, ['targets = "onnx": expected a non-']),
    ('[models.a]\nrecipe = "mobilenetv3_small"\ntargets = []\n', 3, ["targets = []: expected a non-empty list"]),
    ('[models.a]\nrecipe = "mobilenetv3_small"\ncalib_size = 0\n', 3, ["calib_size = 0: expected a whole"]),
    ('[models.a]\nrecipe = "rexnet_1.0"\n[models.a.tensorrt]\nmax_batch = "8"\n', 4, ['max_batch = "8"']),
    ('[models.a]\nrecipe = "mobilenetv3_small"\ncalib = "empty"\n', 1, ["--calib", "holds no image files"]),
    # a model's folder must be inside --out and no file effexport writes there
    ('[models."."]\nrecipe = "mobilenetv3_small"\n', 1, ["model name '.' is not usable"]),
    ('[models.".."]\nrecipe = "mobilenetv3_small"\n', 1, ["model name '..' is not usable"]),
    ('[models.a]\nrecipe = "rexnet_1.0"\n[models."manifest.json"]\nrecipe = "mobilenetv3_small"\n', 3,
     ["model name 'manifest.json' is not usable"]),
    ('[models."summary.md"]\nrecipe = "mobilenetv3_small"\n', 1, ["'summary.md' is not usable"]),
    ('[models.triton]\nrecipe = "mobilenetv3_small"\n', 1, ["'triton' is not usable"]),
    ('[models.".lock"]\nrecipe = "mobilenetv3_small"\n', 1, ["'.lock' is not usable"]),
])
def test_a_malformed_build_file_is_refused_with_file_line_and_closest_name(capsys, tmp_path, text, line, words):
    path = _write(tmp_path, text)
    (tmp_path / "empty").mkdir()  # a calibration folder without images
    code, _, err = run(["build", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{path}:{line}:" in err if line else f"{path}:" in err
    for word in words:
        assert word in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["effexport.toml", "empty"]  # nothing built or written


def test_build_then_reuse_then_rebuild_only_the_model_whose_weights_changed(capsys, tmp_path):
    weights = _checkpoint(tmp_path / "small.pth")
    path = _write(tmp_path, f'''
        [defaults]
        targets = ["onnx", "onnx-dynamic", "onnxruntime-fp16", "openvino-fp32", "tensorrt-fp16"]

        [models.plain]
        {SMALL}
        [models.trained]
        {SMALL}weights = "small.pth"
        targets = ["onnx"]
    ''')
    out = tmp_path / "out"
    from effexport.workflow.build import dry_run

    before = {(t.model, t.name): action for t, action, _ in dry_run(load_plan(path, out))}
    assert set(before.values()) <= {"build", "skip"} and before[("plain", "onnx")] == "build"
    code, stdout, err = run(["build", str(path), "--out", str(out)], capsys)
    from effexport.backends import tensorrt

    trt_here = tensorrt.probe().available
    assert code == 0, err
    data = json.loads((out / "manifest.json").read_text())
    jsonschema.Draft202012Validator(manifest_schema()).validate(data)
    status = {(a["model"], a["target"]): a["status"] for a in data["artifacts"]}
    assert status == {("plain", "onnx"): "built", ("plain", "onnx-dynamic"): "built",
                      ("plain", "onnxruntime-fp16"): "built", ("plain", "openvino-fp32"): "built",
                      ("plain", "tensorrt-fp16"): "built" if trt_here else "skipped", ("trained", "onnx"): "built"}
    for a in data["artifacts"]:
        if a["status"] == "built":
            for name, f in a["files"].items():
                assert sha256_of(out / a["folder"] / name) == f["sha256"]
            assert a["parity"]["passed"] and a["fingerprint"]
    skipped = next(a for a in data["artifacts"] if a["target"] == "tensorrt-fp16")
    assert trt_here or "not available here" in skipped["message"]
    trained = next(a for a in data["artifacts"] if a["model"] == "trained")
    assert trained["weights"]["sha256"] == sha256_of(weights) and trained["folder"].startswith("trained/")
    assert "| onnx | built |" in (out / "SUMMARY.md").read_text()

    code, stdout, _ = run(["build", str(path), "--out", str(out), "--dry-run"], capsys)
    assert code == 0 and "plan of" in stdout and not (out / "plain" / "mobilenetv3_small" / "onnx-b8-64px").exists()
    planned = {(t.model, t.name): action for t, action, _ in dry_run(load_plan(path, out))}
    assert planned == {key: "skip" if key == ("plain", "tensorrt-fp16") and not trt_here
                       else "build or reuse" if key == ("plain", "tensorrt-fp16") else "reuse" for key in status}

    code, _, err = run(["build", str(path), "--out", str(out)], capsys)
    assert code == 0, err
    again = {(a["model"], a["target"]): a["status"] for a in json.loads((out / "manifest.json").read_text())[
        "artifacts"]}
    assert {s for k, s in again.items() if k != ("plain", "tensorrt-fp16")} == {"reused"}

    _checkpoint(weights, bias=1.0)  # new weights under the same name
    code, _, err = run(["build", str(path), "--out", str(out)], capsys)
    assert code == 0, err
    third = {(a["model"], a["target"]): a["status"] for a in json.loads((out / "manifest.json").read_text())[
        "artifacts"]}
    assert third[("trained", "onnx")] == "built"
    assert {s for k, s in third.items() if k[0] == "plain" and k[1] != "tensorrt-fp16"} == {"reused"}


def test_a_failed_target_does_not_stop_the_others_unless_fail_fast(capsys, tmp_path):
    path = _write(tmp_path, f'''
        [models.strict]
        {SMALL}tolerance = ["fp32:max_rel=1e-12"]
        targets = ["onnx", "onnx-dynamic"]

        [models.fine]
        {SMALL}targets = ["onnx"]
    ''')
    out = tmp_path / "out"
    code, _, err = run(["build", str(path), "--out", str(out)], capsys)
    assert code == 3 and "2 of 3 targets failed" in err
    data = json.loads((out / "manifest.json").read_text())
    jsonschema.Draft202012Validator(manifest_schema()).validate(data)
    assert [a["status"] for a in data["artifacts"]] == ["failed", "failed", "built"]
    assert "rejected build" in data["artifacts"][0]["message"]
    code, _, err = run(["build", str(path), "--out", str(tmp_path / "out2"), "--fail-fast"], capsys)
    statuses = [a["status"] for a in json.loads((tmp_path / "out2" / "manifest.json").read_text())["artifacts"]]
    assert code == 3 and statuses == ["failed", "skipped", "skipped"]


def test_the_serving_repositories_come_from_the_built_artifacts(capsys, tmp_path):
    from google.protobuf import text_format

    from effexport.workflow.layouts import load_model_config_pb2

    pb2 = load_model_config_pb2()
    assert pb2 is not None, "tritonclient is part of the test extra"
    path = _write(tmp_path, f'''
        [models.small]
        {SMALL}targets = ["onnx", "onnx-dynamic", "openvino-fp32", "tensorrt-fp16"]
    ''')
    out = tmp_path / "out"
    code, stdout, err = run(["build", str(path), "--out", str(out), "--layout", "triton", "--layout", "ovms"], capsys)
    assert code == 0, err
    served = {a["target"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]
              if a["status"] in ("built", "reused")}
    configs = {}
    for folder in sorted((out / "triton").iterdir()):
        configs[folder.name] = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert [p.name for p in (folder / "1").iterdir()]  # the model files, under version 1
    assert set(configs) == {f"small-{target}" for target in served}
    assert configs["small-onnx"].platform == "onnxruntime_onnx" and configs["small-onnx"].max_batch_size == 0
    assert configs["small-onnx-dynamic"].max_batch_size > 0 and configs["small-onnx-dynamic"].HasField(
        "dynamic_batching")
    assert configs["small-openvino-fp32"].backend == "openvino"
    assert sha256_of(out / "triton" / "small-onnx" / "1" / "model.onnx") == served["onnx"]["files"]["model.onnx"][
        "sha256"]
    ovms = json.loads((out / "ovms" / "config.json").read_text())
    assert {m["config"]["name"] for m in ovms["model_config_list"]} == {f"small-{t}" for t in served}
    assert "triton repository" in stdout and "ovms repository" in stdout


def _shas(out):
    data = json.loads((out / "manifest.json").read_text())
    return {(a["model"], a["target"]): {n: f["sha256"] for n, f in a["files"].items()} for a in data["artifacts"]
            if a["status"] in ("built", "reused")}


def test_shards_merged_give_the_artifacts_of_one_full_build(capsys, tmp_path):
    from effexport.workflow.build import select, shard_of

    path = _write(tmp_path, f'''
        [defaults]
        targets = ["onnx", "openvino-fp32"]
        [models.a]
        {SMALL}
        [models.b]
        recipe = "ghostnet_pfd_cifar"
        [models.c]
        recipe = "shufflenetv2_pfd_cifar"
    ''')
    plan = load_plan(path, tmp_path / "full")
    owners = shard_of(plan, 2)
    assert set(owners.values()) == {1, 2}  # both shards get work
    assert sorted(t.name for p in (select(plan, (1, 2)), select(plan, (2, 2))) for t in p.targets) == \
        sorted(t.name for t in plan.targets)
    (tmp_path / "more").mkdir()
    bigger = _write(tmp_path / "more", path.read_text() + '\n[models.d]\nrecipe = "mobilenetv3_small"\nimg_size = 64\n')
    moved = {m for m, s in shard_of(load_plan(bigger, tmp_path / "x"), 2).items() if m in owners and owners[m] != s}
    assert len(moved) <= 1  # adding a model elsewhere keeps (almost) every other model where it was

    assert run(["build", str(path), "--out", str(tmp_path / "full")], capsys)[0] == 0
    for i in (1, 2):
        code, _, err = run(["build", str(path), "--shard", f"{i}/2", "--out", str(tmp_path / f"shard{i}")], capsys)
        assert code == 0, err
    code, stdout, err = run(["merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out",
                             str(tmp_path / "merged")], capsys)
    assert code == 0, err
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    jsonschema.Draft202012Validator(manifest_schema()).validate(merged)
    assert _shas(tmp_path / "merged") == _shas(tmp_path / "full")  # the same bytes as one full build
    for a in merged["artifacts"]:
        for name, f in a["files"].items():
            assert sha256_of(tmp_path / "merged" / a["folder"] / name) == f["sha256"]
    assert {m["shard"] for m in merged["merged_from"]} == {"1/2", "2/2"}


def test_merge_refuses_tampered_conflicting_or_escaping_inputs(capsys, tmp_path):
    path = _write(tmp_path, f'[models.a]\n{SMALL}targets = ["onnx"]\n')
    for name in ("one", "two"):
        assert run(["build", str(path), "--out", str(tmp_path / name)], capsys)[0] == 0
    manifest = tmp_path / "two" / "manifest.json"
    data = json.loads(manifest.read_text())
    model = tmp_path / "two" / data["artifacts"][0]["folder"] / "model.onnx"

    model.write_bytes(model.read_bytes() + b"\0")  # changed after the manifest was written
    code, _, err = run(["merge", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(tmp_path / "m1")], capsys)
    assert code == 2 and "does not match the sha256" in err and not (tmp_path / "m1").exists()

    import onnx

    other = onnx.load(str(tmp_path / "one" / data["artifacts"][0]["folder"] / "model.onnx"))
    other.doc_string = "another build"
    onnx.save(other, str(model))
    data["artifacts"][0]["files"]["model.onnx"] = {"sha256": sha256_of(model), "bytes": model.stat().st_size}
    manifest.write_text(json.dumps(data))  # consistent in itself, but other bytes than shard one
    code, _, err = run(["merge", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(tmp_path / "m2")], capsys)
    assert code == 2 and "conflicts" in err and not (tmp_path / "m2").exists()

    import shutil

    folder = tmp_path / "two" / data["artifacts"][0]["folder"]
    shutil.move(folder, tmp_path / "elsewhere")
    folder.symlink_to(tmp_path / "elsewhere")  # the manifest's folder is a link out of the tree
    code, _, err = run(["merge", str(tmp_path / "two"), "--out", str(tmp_path / "m3")], capsys)
    assert code == 2 and "resolves outside" in err and not (tmp_path / "m3").exists()

    data["artifacts"][0]["folder"] = "../one/" + data["artifacts"][0]["folder"]
    manifest.write_text(json.dumps(data))
    code, _, err = run(["merge", str(tmp_path / "two"), "--out", str(tmp_path / "m4")], capsys)
    assert code == 2 and "artifacts/0/folder" in err and not (tmp_path / "m4").exists()


def test_bench_true_times_the_built_backends_against_torch_in_the_manifest_and_summary(capsys, tmp_path):
    path = _write(tmp_path, f'''
        [models.small]
        {SMALL}targets = ["onnx-dynamic", "openvino-fp32"]
        bench = true
        bench_batches = [1, 2]
        bench_iters = 3
    ''')
    out = tmp_path / "out"
    code, _, err = run(["build", str(path), "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "manifest.json").read_text())
    jsonschema.Draft202012Validator(manifest_schema()).validate(data)
    bench = data["benchmarks"]["small"]
    assert {(r["backend"], r["batch"]) for r in bench["results"]} == {("torch", 1), ("torch", 2), ("openvino", 1),
                                                                      ("openvino", 2)}
    assert all(r["p50_ms"] > 0 for r in bench["results"])
    assert {r["speedup_vs_torch"] for r in bench["results"] if r["backend"] == "torch"} == {1.0}
    summary = (out / "SUMMARY.md").read_text()
    assert "Latency on" in summary and "| openvino | fp32 | 2 |" in summary
    if bench["chart"]:
        assert f"]({bench['chart']})" in summary and (out / bench["chart"]).is_file()


def test_merge_refuses_onnx_external_data_outside_the_tree(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from effexport.errors import UsageError
    from effexport.workflow.merge import _check

    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="../../outside.bin")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [weight])
    folder = tmp_path / "tree" / "m" / "onnx-b1"
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    entry = {"model": "m", "target": "onnx", "folder": "m/onnx-b1",
             "files": {"model.onnx": {"sha256": sha256_of(folder / "model.onnx"),
                                      "bytes": (folder / "model.onnx").stat().st_size}}}
    with pytest.raises(UsageError, match="external data.*leads outside"):
        _check(tmp_path / "tree", entry)


def test_two_fine_tuned_models_with_labels_build_and_their_manifest_validates(capsys, tmp_path):
    import timm
    from google.protobuf import text_format

    from effexport.exporter.checkpoint import randomize_batchnorm
    from effexport.workflow.layouts import load_model_config_pb2

    for name, timm_name, classes in (("pets.pth", "mobilenetv3_small_100", 37), ("birds.pth", "rexnet_100", 5)):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, num_classes=classes).eval()
        randomize_batchnorm(model)
        torch.save(model.state_dict(), tmp_path / name)
    (tmp_path / "pets.txt").write_text("".join(f"pet {i}\n" for i in range(37)))
    (tmp_path / "birds.json").write_text(json.dumps({str(i): ["id", f"bird {i}"] for i in range(5)}))
    path = _write(tmp_path, '''
        [defaults]
        targets = ["onnx", "openvino-fp32"]
        img_size = 64

        [models.pets]
        recipe = "mobilenetv3_small"
        weights = "pets.pth"
        labels = "pets.txt"

        [models.birds]
        recipe = "rexnet_1.0"
        weights = "birds.pth"
        num_classes = 5
        labels = "birds.json"
        targets = ["onnx"]
    ''')
    out = tmp_path / "out"
    code, _, err = run(["build", str(path), "--out", str(out), "--layout", "triton"], capsys)
    assert code == 0, err
    data = json.loads((out / "manifest.json").read_text())
    jsonschema.Draft202012Validator(manifest_schema()).validate(data)
    got = {(a["model"], a["target"]): (a["status"], a["num_classes"], len(a["labels"]), a["outputs"][0]["shape"])
           for a in data["artifacts"]}
    assert got == {("pets", "onnx"): ("built", 37, 37, [1, 37]), ("pets", "openvino-fp32"): ("built", 37, 37,
                                                                                           ["batch", 37]),
                   ("birds", "onnx"): ("built", 5, 5, [1, 5])}
    birds = next(a for a in data["artifacts"] if a["model"] == "birds")
    assert birds["labels"] == [f"bird {i}" for i in range(5)]
    pb2 = load_model_config_pb2()
    config = text_format.Parse((out / "triton" / "birds-onnx" / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert list(config.output[0].dims) == [1, 5] and config.output[0].label_filename == "labels.txt"
    assert (out / "triton" / "birds-onnx" / "labels.txt").read_text().splitlines()[4] == "bird 4"


@pytest.mark.parametrize("setting, line, words", [
    ('num_classes = "ten"', 5, "num_classes must be a positive whole number"),
    ("num_classes = 0", 5, "num_classes must be a positive whole number"),
    ('labels = "missing.txt"', 5, "labels"),
])
def test_class_count_and_labels_keys_are_checked_at_their_line(capsys, tmp_path, setting, line, words):
    path = _write(tmp_path, f'''
        [models.small]
        recipe = "mobilenetv3_small"
        img_size = 64
        {setting}
    ''')
    code, _, err = run(["build", str(path), "--dry-run"], capsys)
    assert code == 2 and f"effexport.toml:{line}:" in err and words in err, err


def test_labels_in_the_defaults_must_match_each_models_class_count(capsys, tmp_path):
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    path = _write(tmp_path, '''
        [defaults]
        labels = "three.txt"

        [models.small]
        recipe = "mobilenetv3_small"
        num_classes = 4
    ''')
    code, _, err = run(["build", str(path), "--dry-run"], capsys)
    assert code == 2 and "names 3 classes but --num-classes has 4" in err, err


@pytest.mark.slow  # four INT8 calibrations: over 2 minutes on 2 loaded cores (the fast check: tests/calibration)
@pytest.mark.openvino
def test_int8_openvino_shards_are_byte_identical_to_one_full_build(capsys, tmp_path):
    # NNCF names the nodes it makes from a counter global to the process: the model a shard builds first would get
    # other names in model_int8.xml than the same model built second in a full build, unless they are renumbered.
    path = _write(tmp_path, f'''
        [defaults]
        targets = ["openvino-int8"]
        calib_size = 8
        [models.a]
        {SMALL}
        [models.b]
        {SMALL}
    ''')
    code, _, err = run(["build", str(path), "--out", str(tmp_path / "full")], capsys)
    assert code == 0, err
    full = _shas(tmp_path / "full")
    assert set(full) == {("a", "openvino-int8"), ("b", "openvino-int8")}
    shards = {}
    for i in (1, 2):
        code, _, err = run(["build", str(path), "--shard", f"{i}/2", "--out", str(tmp_path / f"shard{i}")], capsys)
        assert code == 0, err
        shards.update(_shas(tmp_path / f"shard{i}"))
    assert shards == full  # every file of every artifact, sha256 for sha256
    code, _, err = run(["merge", str(tmp_path / "full"), str(tmp_path / "shard1"), "--out", str(tmp_path / "m")],
                       capsys)
    assert code == 0, err  # a shard and a full build of one file agree


def test_merge_says_which_shards_are_missing_keeps_the_union_and_refuses_the_root_as_a_folder(capsys, tmp_path):
    import shutil

    path = _write(tmp_path, f'''
        [defaults]
        targets = ["onnx"]
        [models.a]
        {SMALL}
        [models.b]
        {SMALL}
    ''')
    for i in (1, 2):
        code, _, err = run(["build", str(path), "--shard", f"{i}/2", "--out", str(tmp_path / f"shard{i}")], capsys)
        assert code == 0, err
    one, two, out = tmp_path / "shard1", tmp_path / "shard2", tmp_path / "merged"

    def manifest():
        data = json.loads((out / "manifest.json").read_text())
        jsonschema.Draft202012Validator(manifest_schema()).validate(data)
        return data

    for given in ([one], [one, one]):  # a tree that would look complete
        code, _, err = run(["merge", *map(str, given), "--out", str(out)], capsys)
        assert code == 2 and "shard 2/2 of 2 missing" in err and "--partial" in err and not out.exists()
    code, _, err = run(["merge", str(one), str(one), "--out", str(out), "--partial"], capsys)
    assert code == 0 and "2/2 missing" in err
    data = manifest()
    assert data["partial"] == {"shards": 2, "missing": ["2/2"]} and len(data["merged_from"]) == 1
    assert len(data["artifacts"]) == 1

    code, _, err = run(["merge", str(two), "--out", str(out)], capsys)  # the rest, into the partial tree
    assert code == 0, err
    data = manifest()
    assert "partial" not in data and {a["model"] for a in data["artifacts"]} == {"a", "b"}
    assert {m["shard"] for m in data["merged_from"]} == {"1/2", "2/2"}
    code, _, err = run(["merge", str(one), "--out", str(out)], capsys)  # a subset into a complete tree: no shrinking
    assert code == 0, err
    assert {a["model"] for a in manifest()["artifacts"]} == {"a", "b"} and "partial" not in manifest()

    rogue = tmp_path / "rogue"
    shutil.copytree(one, rogue)
    data = json.loads((rogue / "manifest.json").read_text())
    data["shard"] = "1/1"
    summary = rogue / "SUMMARY.md"
    data["artifacts"][0].update(folder=".", main="SUMMARY.md", files={"SUMMARY.md": {
        "sha256": sha256_of(summary), "bytes": summary.stat().st_size}})
    (rogue / "manifest.json").write_text(json.dumps(data))
    code, _, err = run(["merge", str(rogue), "--out", str(tmp_path / "m2")], capsys)
    assert code == 2 and "is not an artifact folder of model" in err and not (tmp_path / "m2").exists()
