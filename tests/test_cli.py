"""The command line, run in-process through main() so exit codes and messages are the real ones."""

import json
import subprocess
import sys

import onnx
import pytest
import torch

from effexport import cli, printers
from effexport.exporter.checkpoint import randomize_batchnorm
from tests.exporter.test_checkpoint import RunsCode


def run(args, capsys):
    sys_argv = sys.argv
    sys.argv = ["effexport", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = sys_argv
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())  # rich wraps long lines


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix in {".tmp"})


def test_help_does_not_import_torch():
    code = ("import sys\nfrom effexport import cli\n"
            "try:\n    cli.app(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'heavy import at --help'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "onnx" in result.stdout and "Exit codes" in result.stdout


def test_output_not_to_a_terminal_is_120_columns_unless_columns_says(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert printers._console(stderr=False).width == 120  # pytest's captured stdout is not a terminal
    monkeypatch.setenv("COLUMNS", "100")
    assert printers._console(stderr=True).width == 100


def test_unknown_recipe_exits_2_with_closest_names(capsys):
    code, _, err = run(["info", "rexnet_10"], capsys)
    assert code == 2
    assert "unknown recipe 'rexnet_10'" in err and "rexnet_1.0" in err


def test_unsupported_opset_exits_2(capsys, tmp_path):
    code, _, err = run(["onnx", "rexnet_1.0", "--opset", "5", "--out", str(tmp_path)], capsys)
    assert code == 2 and "opset 5 is not supported" in err
    assert not any(tmp_path.iterdir())


def test_list_and_info(capsys):
    code, out, _ = run(["list", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"rexnet_1.0", "tresnet_m", "efficientnet_b7", "ghostnet"} <= set(rows)
    assert abs(rows["rexnet_1.0"]["params"] - 4.8e6) < 0.1e6
    code, out, _ = run(["info", "rexnet_1.0", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and abs(info["macs"] - 0.40e9) < 0.01e9  # the paper: 0.40B FLOPs (multiply-adds)
    assert info["preprocessing"]["resize"] == 256 and info["rewrites"][0]["name"] == "pad_shortcut_add"
    code, out, _ = run(["info", "timm:resnet18"], capsys)
    assert code == 0 and "no family-specific recipe exists" in " ".join(out.split())


def test_onnx_rexnet_opset17_then_reuse(capsys, tmp_path):
    code, out, _ = run(["onnx", "rexnet_1.0", "--opset", "17", "--out", str(tmp_path)], capsys)
    assert code == 0, out
    model = onnx.load(str(tmp_path / "rexnet_1.0" / "onnx-b1" / "model.onnx"))
    assert model.opset_import[0].version == 17
    report = json.loads((tmp_path / "rexnet_1.0" / "onnx-b1" / "report.json").read_text())
    assert report["weights"]["source"] == "random" and "RANDOM weights" in report["weights"]["note"]
    code, out, _ = run(["onnx", "rexnet_1.0", "--opset", "17", "--out", str(tmp_path)], capsys)
    assert code == 0 and "reused" in out
    assert _leftovers(tmp_path) == [".lock"]  # the lock file of the model folder, empty once released


def test_onnx_with_a_checkpoint_the_test_writes(capsys, tmp_path):
    from effexport.recipes import get_recipe
    from effexport.workflow.export import build_model
    from effexport.workflow.job import WeightsSpec

    model, _ = build_model(get_recipe("mobilenetv3_large"), WeightsSpec())
    randomize_batchnorm(model, seed=7)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 9}, ckpt)
    code, out, err = run(["onnx", "mobilenetv3_large", "--weights", str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "mobilenetv3_large" / "onnx-b1" / "report.json").read_text())
    assert report["weights"]["source"] == "file" and len(report["weights"]["sha256"]) == 64
    assert report["parity"]["onnxruntime"]["passed"]
    assert not {"BatchNormalization", "Identity"} & set(report["node_counts"])


@pytest.mark.parametrize("kind", ["corrupt", "pickle-with-code", "mismatched"])
def test_bad_checkpoints_exit_2_and_write_nothing(capsys, tmp_path, kind):
    ckpt = tmp_path / "bad.pth"
    marker = tmp_path / "pwned"
    if kind == "corrupt":
        ckpt.write_bytes(b"\x00garbage" * 100)
    elif kind == "pickle-with-code":
        torch.save({"model": RunsCode(marker)}, ckpt)
    else:
        torch.save({"conv.weight": torch.zeros(3)}, ckpt)
    out_dir = tmp_path / "out"
    code, _, err = run(["onnx", "ghostnet", "--weights", str(ckpt), "--out", str(out_dir)], capsys)
    assert code == 2
    assert err.startswith("error:") and "Traceback" not in err
    assert not marker.exists()
    assert not out_dir.exists() or not any(out_dir.rglob("*.onnx"))


def test_parity_failure_exits_3_and_still_writes_the_report(capsys, tmp_path):
    code, _, err = run(["onnx", "mobilenetv3_small", "--img-size", "64", "--tolerance", "fp32:max_rel=0", "--out",
                        str(tmp_path)], capsys)
    assert code == 3 and "differs from PyTorch" in err and "rejected build" in err
    folder = tmp_path / "mobilenetv3_small" / "onnx-b1-64px"
    report = json.loads((folder / "rejected" / "report.json").read_text())
    assert report["status"] == "failed" and not report["parity"]["onnxruntime"]["passed"]
    assert not (folder / "model.onnx").exists() and (folder / "rejected" / "model.onnx").exists()
    assert [p.name for p in folder.iterdir() if p.name != ".lock"] == ["rejected"]
    assert _leftovers(tmp_path) == [".lock"]


def test_tresnet_m_export(capsys, tmp_path):
    code, out, err = run(["onnx", "tresnet_m", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "tresnet_m" / "onnx-b1" / "report.json").read_text())
    assert report["node_counts"]["SpaceToDepth"] == 1


def test_efficientnet_b3_dynamic_batch(capsys, tmp_path):
    code, out, err = run(["onnx", "efficientnet_b3", "--dynamic-batch", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "efficientnet_b3" / "onnx-dynamic" / "report.json").read_text())
    assert report["inputs"][0]["shape"] == ["batch", 3, 300, 300]
    assert report["parity"]["onnxruntime"]["samples"] == 17  # the batch, and batch 1 again


def test_pretrained_offline_fails_fast_naming_weights(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(["onnx", "rexnet_1.0", "--pretrained", "--out", str(tmp_path)], capsys)
    assert code == 4 and "--weights PATH" in err
    code, _, err = run(["onnx", "rexnet_0.9", "--pretrained", "--out", str(tmp_path)], capsys)
    assert code == 2 and "no pretrained weights" in err


def test_info_names_the_class_count_and_num_classes_changes_it(capsys):
    code, stdout, _ = run(["info", "rexnet_1.0", "--num-classes", "10", "--json"], capsys)
    data = json.loads(stdout)
    assert code == 0 and data["num_classes"] == 10 and data["output"]["shape"] == [1, 10]
    assert data["labels"].startswith("none")
    code, stdout, _ = run(["info", "ghostnet_cifar"], capsys)
    assert code == 0 and "classes" in stdout and "100; labels: none" in stdout


def test_a_checkpoint_with_another_class_count_than_num_classes_exits_2_naming_both(capsys, tmp_path):
    import timm

    path = tmp_path / "rexnet_10cls.pth"
    torch.save(timm.create_model("rexnet_100", num_classes=10).state_dict(), path)
    code, _, err = run(["onnx", "rexnet_1.0", "--weights", str(path), "--num-classes", "12", "--out",
                        str(tmp_path / "out")], capsys)
    assert code == 2 and "has 10 classes, but --num-classes says 12" in err
    (tmp_path / "labels.txt").write_text("a\nb\n")
    code, _, err = run(["onnx", "rexnet_1.0", "--num-classes", "3", "--labels", str(tmp_path / "labels.txt"),
                        "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "names 2 classes but --num-classes has 3" in err
