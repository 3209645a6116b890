"""`effexport build`: a build file refused before any work when malformed, every target built through the single
commands' code, reused while nothing changed, failures and missing backends reported per target, and a manifest
that validates against its shipped schema."""

import json
import textwrap

import jsonschema
import pytest
import torch

from effexport.build import load_plan, manifest_schema
from effexport.exporter.artifacts import sha256_of
from tests.test_cli import run

SMALL = 'recipe = "mobilenetv3_small"\nimg_size = 64\n'


def _write(folder, text):
    path = folder / "effexport.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _checkpoint(path, bias=0.0):
    from effexport.exporter.pipeline import build_model
    from effexport.job import WeightsSpec
    from effexport.recipes import get_recipe

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
    ('[models.a]\nrecipe = "rexnet_1.0"\nimg_size = 16\n', 1, ["--img-size must be at least 32"]),
    ('[models.a\nrecipe = 1\n', None, ["not valid TOML"]),
])
def test_a_malformed_build_file_is_refused_with_file_line_and_closest_name(capsys, tmp_path, text, line, words):
    path = _write(tmp_path, text)
    code, _, err = run(["build", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{path}:{line}:" in err if line else f"{path}:" in err
    for word in words:
        assert word in err
    assert not (tmp_path / "out").exists()  # nothing built, nothing written


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
    from effexport.build import dry_run

    before = {(t.model, t.name): action for t, action, _ in dry_run(load_plan(path, out))}
    assert set(before.values()) <= {"build", "skip"} and before[("plain", "onnx")] == "build"
    code, stdout, err = run(["build", str(path), "--out", str(out)], capsys)
    from effexport.exporter.backends import tensorrt

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

    from effexport.layouts import load_model_config_pb2

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
