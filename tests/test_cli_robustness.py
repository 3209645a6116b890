"""Interrupted, concurrent and failing runs: signals unwind like Ctrl-C, a killed run's staging is cleared by the
next one, two runs on one folder take turns, and bad output roots or a full disk end in one line."""

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from effexport.exporter import artifacts
from effexport.exporter.artifacts import Staging, folder_lock, remove_stale_work
from tests.test_cli import run

RECIPE = "mobilenetv3_small"
SMALL = ["--img-size", "64"]
EFFEXPORT = [sys.executable, "-c", "from effexport.cli import main; main()"]


def _start(args, cwd):
    return subprocess.Popen([*EFFEXPORT, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def _wait_for_staging(folder: Path, process, timeout=120.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = [p for p in folder.rglob(".staging-*")] if folder.exists() else []
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no staging folder appeared (exit {process.poll()})")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name != artifacts.LOCK_FILE)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_build_exits_with_a_message_and_leaves_no_staging(tmp_path, sig, code, word):
    process = _start(["onnx", RECIPE, *SMALL, "--out", "out"], tmp_path)
    _wait_for_staging(tmp_path / "out", process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert word in err and "Traceback" not in err
    assert _hidden(tmp_path / "out") == []


def test_a_killed_runs_staging_is_removed_by_the_next_run(tmp_path, capsys):
    process = _start(["onnx", RECIPE, *SMALL, "--out", "out"], tmp_path)
    left = _wait_for_staging(tmp_path / "out", process)
    process.kill()  # SIGKILL: no handler runs
    process.communicate(timeout=60)
    assert all(p.exists() for p in left)
    code, _, err = run(["onnx", RECIPE, *SMALL, "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert _hidden(tmp_path / "out") == [] and not any(p.exists() for p in left)


def test_stale_work_is_only_that_of_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "onnx-b1" / f".staging-{dead.pid}-abc"
    legacy = tmp_path / "openvino-fp32" / ".staging-k2j4h1"  # older effexport: no pid in the name
    alive = tmp_path / "onnx-b1" / f".staging-{os.getppid()}-xyz"
    for folder in (stale, legacy, alive):
        folder.mkdir(parents=True)
    removed = remove_stale_work(tmp_path)
    assert sorted(removed) == sorted([stale, legacy]) and alive.is_dir()


def test_two_runs_on_one_folder_take_turns_and_say_what_they_wait_for(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom effexport.exporter.artifacts import folder_lock\n"
        f"with folder_lock({str(tmp_path)!r}, 'effexport onnx rexnet_1.0'):\n"
        "    print('held', flush=True)\n    time.sleep(3)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said = []
    started = time.monotonic()
    with folder_lock(tmp_path, "test", wait_message=said.append):
        waited = time.monotonic() - started
    assert waited > 2.0  # the holder keeps it for 3 s after saying so: we got it only once it was done
    assert said and "waiting for effexport (pid" in said[0] and "effexport onnx rexnet_1.0" in said[0]
    assert str(tmp_path) in said[0]
    holder.wait()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with folder_lock(tmp_path, "outer"):
        done = threading.Event()
        with folder_lock(tmp_path, "inner"):
            done.set()
        assert done.is_set()
    assert (tmp_path / artifacts.LOCK_FILE).read_text() == ""  # released: nobody named as holder


def test_an_output_root_under_a_file_exits_2_before_any_work(capsys, tmp_path, monkeypatch):
    from effexport.workflow import export as pipeline

    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("work started before the check"))
    code, _, err = run(["onnx", RECIPE, "--out", "/etc/passwd/x"], capsys)
    assert code == 2 and "/etc/passwd is a file" in err and "Traceback" not in err


def test_an_unwritable_output_root_exits_2_and_creates_nothing(capsys, tmp_path, monkeypatch):
    import tempfile

    def refuse(*_args, **_kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = run(["onnx", RECIPE, "--out", str(tmp_path / "new" / "out")], capsys)
    assert code == 2 and "cannot be written" in err and "Read-only file system" in err
    assert not (tmp_path / "new").exists()


def test_disk_full_while_saving_the_onnx_exits_5_in_one_line(capsys, tmp_path, monkeypatch):
    from effexport.exporter import onnx as onnx_stage

    def full(model, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx_stage, "save_onnx", full)
    code, _, err = run(["onnx", RECIPE, *SMALL, "--out", str(tmp_path)], capsys)
    assert code == 5 and err.startswith("error: no space left on the device writing") and "Traceback" not in err
    assert _hidden(tmp_path) == []


def test_a_failed_publish_keeps_the_previous_files(tmp_path, monkeypatch):
    (tmp_path / "model.onnx").write_bytes(b"verified")
    with Staging(tmp_path) as staging:
        (staging.path / "model.onnx").write_bytes(b"new")
        (staging.path / "report.json").write_text(json.dumps({"status": "failed"}))
        rejected = staging.reject(["model.onnx"], "report.json", {"status": "failed"})
    assert (tmp_path / "model.onnx").read_bytes() == b"verified"
    assert rejected == tmp_path / "rejected" / "report.json" and (tmp_path / "rejected" / "model.onnx").read_bytes() \
        == b"new"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_a_weights_path_that_is_no_file_exits_2_before_any_work(capsys, tmp_path, what):
    weights = tmp_path / ("nope.pth" if what == "missing" else "checkpoints")
    if what == "folder":
        weights.mkdir()
    code, _, err = run(["onnx", RECIPE, "--weights", str(weights), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("error: checkpoint") and "Traceback" not in err
    assert ("does not exist" if what == "missing" else "is a directory") in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_recipe_is_refused_without_importing_torch_closest_name_first(tmp_path):
    code = ("import sys\nfrom effexport.cli import main\ntry:\n    main()\nexcept SystemExit as exc:\n"
            "    assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'heavy import before refusing'\n"
            "    raise\n")
    result = subprocess.run([sys.executable, "-c", code, "onnx", "rexnet_1.O", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    closest = " ".join(result.stderr.split()).split("Closest: ")[1]
    assert closest.startswith("rexnet_1.0")
    assert not any(tmp_path.iterdir())


def test_a_really_full_disk_exits_5_and_leaves_nothing(capsys, tmp_path):
    """A 24 MB tmpfs: the torch export of rexnet_1.0 (19 MB) fits, the ONNX save after it does not."""
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()} (the in-process disk-full "
                    f"test above covers the error path)")
    try:
        code, _, err = run(["onnx", "rexnet_1.0", "--out", str(full / "out")], capsys)
        assert code == 5 and err.startswith("error: no space left on the device writing") and "Traceback" not in err
        assert [p.name for p in (full / "out" / "rexnet_1.0").iterdir()] == [artifacts.LOCK_FILE]
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_calib_without_images_exits_2_before_any_work(capsys, tmp_path, monkeypatch):
    from effexport.workflow import export as pipeline

    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "notes.txt").write_text("no photographs here")
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("work started before the check"))
    code, _, err = run(["openvino", RECIPE, *SMALL, "--precision", "int8", "--calib", str(tmp_path / "calib"),
                        "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "holds no image files" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_build_init_where_it_cannot_write_names_the_path_not_out(capsys, tmp_path, monkeypatch):
    import tempfile

    def refuse(*_args, **_kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = run(["build", str(tmp_path / "effexport.toml"), "--init"], capsys)
    assert code == 2 and "cannot be written" in err and "Read-only file system" in err
    assert "--out" not in err and "effexport build <folder>/effexport.toml --init" in err


def test_a_second_process_says_once_whom_it_waits_for_however_often_it_waits(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom effexport.exporter.artifacts import folder_lock\n"
        "for i in range(3):  # a build takes a model's lock once per target\n"
        f"    with folder_lock({str(tmp_path)!r}, 'effexport build a.toml'):\n"
        "        print('held', flush=True)\n        time.sleep(1.0)\n"
        "    time.sleep(0.5)\n")], stdout=subprocess.PIPE, text=True)
    said = []
    for _ in range(3):
        assert holder.stdout.readline().strip() == "held"
        with folder_lock(tmp_path, "test", wait_message=said.append):
            pass
    holder.wait()
    assert len(said) == 1 and "effexport build a.toml" in said[0]
