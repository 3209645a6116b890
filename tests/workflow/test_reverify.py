"""`effexport reverify` and `merge --verify`: each artifact judged as its bytes are in the tree, against PyTorch from
the weights the manifest records. An edited ONNX whose manifest sha256 was rewritten to match merges cleanly, and is
caught here; weights whose sha256 differs from the recorded one are refused."""

import json
import shutil
import textwrap

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import effexport
from effexport.errors import ParityError
from effexport.exporter.artifacts import sha256_of
from effexport.workflow.build import manifest_schema
from tests.test_cli import run


def _checkpoint(path, seed):
    from effexport.exporter.checkpoint import randomize_batchnorm
    from effexport.recipes import get_recipe
    from effexport.workflow.export import build_model
    from effexport.workflow.job import WeightsSpec

    model, _ = build_model(get_recipe("mobilenetv3_small"), WeightsSpec())
    randomize_batchnorm(model, seed=seed)  # non-trivial BatchNorm statistics, so a wrong model shows
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """One built tree: mobilenetv3_small at 64 px from a checkpoint, as an ONNX export and an OpenVINO FP32 IR."""

    root = tmp_path_factory.mktemp("reverify")
    _checkpoint(root / "mnv3.pth", seed=3)
    build_file = root / "effexport.toml"
    build_file.write_text(textwrap.dedent('''\
        [models.mnv3]
        recipe = "mobilenetv3_small"
        img_size = 64
        weights = "mnv3.pth"
        targets = ["onnx", "openvino-fp32"]
    '''))
    from effexport.workflow.build import load_plan, run_build

    result = run_build(load_plan(build_file, out=root / "out"))
    assert not result.failed, [r.message for r in result.results]
    return root


def _manifest(tree):
    return json.loads((tree / "manifest.json").read_text())


def _tamper(tree):
    """+100 on the classifier bias of the tree's ONNX export, and its manifest sha256 and size rewritten to match."""
    data = _manifest(tree)
    entry = next(a for a in data["artifacts"] if a["target"] == "onnx")
    path = tree / entry["folder"] / entry["main"]
    model = onnx.load(str(path))
    biases = [t for t in model.graph.initializer if list(t.dims) == [entry["num_classes"]]]
    assert len(biases) == 1, [t.name for t in biases]
    bias = biases[0]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(100.0), bias.name))
    onnx.save(model, str(path))
    entry["files"][entry["main"]] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    (tree / "manifest.json").write_text(json.dumps(data, indent=2))
    return f"{entry['folder']}/{entry['main']}"


def test_the_built_tree_reverifies_and_its_manifest_records_the_job(capsys, shard):
    data = _manifest(shard / "out")
    jsonschema.validate(data, manifest_schema())
    for entry in data["artifacts"]:
        assert entry["job"]["weights"] == str((shard / "mnv3.pth").resolve())
        assert entry["job"]["img_size"] == 64
    code, out, err = run(["reverify", str(shard / "out")], capsys)
    assert code == 0, err
    assert out.count("passed") == 2 and "failed" not in out
    assert "sha256" in out  # the weights were checked against the manifest's record


def test_an_edited_artifact_with_a_rewritten_sha256_merges_but_fails_reverify(capsys, shard, tmp_path):
    tree = tmp_path / "shard"
    shutil.copytree(shard / "out", tree)
    edited = _tamper(tree)
    before = {p: sha256_of(p) for p in tree.rglob("*") if p.is_file()}

    code, _, err = run(["merge", str(tree), "--out", str(tmp_path / "plain")], capsys)
    assert code == 0, err  # the sha256 checks alone do not see it

    code, out, err = run(["reverify", str(tree)], capsys)
    assert code == 3
    assert edited in err and "1 of 2 artifacts" in err
    cells = [[c.strip() for c in line.split("\u2502")] for line in out.splitlines() if "\u2502" in line]
    rows = {c[2]: c[3] for c in cells if len(c) > 3 and c[1] == "mnv3"}
    assert rows == {"onnx": "failed", "openvino-fp32": "passed"}, out
    assert {p: sha256_of(p) for p in tree.rglob("*") if p.is_file()} == before  # nothing in the tree was written

    code, _, err = run(["merge", str(tree), "--out", str(tmp_path / "merged"), "--verify"], capsys)
    assert code == 3 and edited in err

    result = effexport.reverify(tree, check=False)  # the Python API: the same rows, no exception
    assert [(r.target, r.status) for r in result.rows] == [("onnx", "failed"), ("openvino-fp32", "passed")]
    assert result.rows[0].parity.max_rel > 1 and result.rows[1].parity.max_rel < 1e-4
    with pytest.raises(ParityError):
        effexport.reverify(tree)


def test_weights_whose_sha256_differs_are_refused(capsys, shard, tmp_path):
    other = _checkpoint(tmp_path / "other.pth", seed=11)
    code, _, err = run(["reverify", str(shard / "out"), "--weights", f"mnv3={other}"], capsys)
    assert code == 2 and "sha256" in err and "not the weights this artifact was built from" in err
    code, _, err = run(["reverify", str(shard / "out"), "--weights", f"nosuch={other}"], capsys)
    assert code == 2 and "nosuch" in err


def test_an_int8_tree_reverifies_on_its_held_out_photographs_and_catches_an_edited_int8_model(capsys, shard, tmp_path):
    """INT8 entries are judged as the build judged them: on the photographs the calibration did not see, rebuilt from
    the calibration the manifest's job records. An INT8 model whose largest weight tensor was negated, with its manifest sha256
    rewritten, fails; so does a tree whose calibration folder changed since (other held-out photographs)."""
    from effexport.recipes import get_recipe
    from effexport.workflow.build import load_plan, run_build
    from effexport.workflow.export import build_model
    from effexport.workflow.job import WeightsSpec
    from tests.calibration.conftest import write_images

    calib = tmp_path / "calib"
    write_images(calib, 4)
    head, _ = build_model(get_recipe("mobilenetv3_small"), WeightsSpec(), num_classes=10)  # a fine-tuned 10-class head
    torch.save(head.state_dict(), tmp_path / "ten.pth")
    build_file = tmp_path / "effexport.toml"
    build_file.write_text(textwrap.dedent(f'''\
        [models.mnv3]
        recipe = "mobilenetv3_small"
        img_size = 64
        weights = "{tmp_path / 'ten.pth'}"
        targets = ["onnxruntime-int8"]
        calib = "{calib}"
        tolerance = ["int8:min_top1=0", "int8:min_cosine=0.9"]
    '''))
    result = run_build(load_plan(build_file, out=tmp_path / "out"))
    assert not result.failed, [r.message for r in result.results]
    tree = tmp_path / "out"
    entry = next(a for a in _manifest(tree)["artifacts"] if a["target"] == "onnxruntime-int8")
    assert entry["job"]["calibration"]["source"] == str(calib.resolve()) and entry["num_classes"] == 10
    assert "held-out photographs" in entry["parity"]["inputs"]

    reverified = effexport.reverify(tree)
    row = next(r for r in reverified.rows if r.target == "onnxruntime-int8")
    assert row.status == "passed", row.message
    assert row.parity.samples == entry["parity"]["samples"]
    assert row.parity.min_cosine == pytest.approx(entry["parity"]["min_cosine"], abs=1e-6)  # the same judgement

    edited = tree / entry["folder"] / entry["main"]
    model = onnx.load(str(edited))
    weights = max((t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8),
                  key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(weights)
    weights.CopyFrom(numpy_helper.from_array((-array.astype(np.int16)).clip(-127, 127).astype(np.int8),
                                             weights.name))  # the largest INT8 weight tensor, negated
    onnx.save(model, str(edited))
    data = _manifest(tree)
    manifest_entry = next(a for a in data["artifacts"] if a["target"] == "onnxruntime-int8")
    manifest_entry["files"][entry["main"]] = {"sha256": sha256_of(edited), "bytes": edited.stat().st_size}
    (tree / "manifest.json").write_text(json.dumps(data, indent=2))
    code, out, err = run(["reverify", str(tree)], capsys)
    assert code == 3 and f"{entry['folder']}/{entry['main']}" in err, (out, err)

    from effexport.calibration.heldout import photo_paths

    shutil.copy(photo_paths()[0], calib / "now-calibrated.jpg")  # a held-out photograph joins the calibration folder
    result = effexport.reverify(tree, check=False)
    row = next(r for r in result.rows if r.target == "onnxruntime-int8")
    assert row.status == "failed" and "changed since the build" in row.message, row.message
