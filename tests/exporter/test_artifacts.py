"""Atomic writes: the file appears whole with the user's usual permissions, or not at all."""

import json
import os
import stat
from pathlib import Path

import pytest

from effexport.exporter.artifacts import key_digest, reusable_record, sha256_of, write_bytes, write_json


def test_written_files_get_the_users_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_bytes(tmp_path / "bench.png", b"\x89PNG")
        write_json(tmp_path / "report.json", {"path": tmp_path})
    finally:
        os.umask(mask)
    for name in ("bench.png", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644  # mkstemp alone would leave 0600
    assert json.loads((tmp_path / "report.json").read_text()) == {"path": str(tmp_path)}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    write_json(target, {"run": 1})
    written = []
    real_replace = os.replace

    def replace_fails(src, dst):  # the new bytes are on disk in the temporary, then the move fails
        written.append(Path(src).read_bytes())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError):
        write_json(target, {"run": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert written and json.loads(written[0]) == {"run": 2}  # the failure came after the temporary was written
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # and the temporary was removed


def test_a_record_is_reused_only_while_it_passed_and_its_files_are_intact(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"model")
    record = tmp_path / "report.json"
    write_json(record, {"fingerprint": "abc", "status": "passed",
                        "artifact": {"files": {"model.onnx": sha256_of(tmp_path / "model.onnx")}}})
    files = lambda report: report["artifact"]["files"]  # noqa: E731
    assert reusable_record(record, "abc", files)["status"] == "passed"
    assert reusable_record(record, "other", files) is None
    (tmp_path / "model.onnx").write_bytes(b"changed")
    assert reusable_record(record, "abc", files) is None
    assert key_digest({"b": 1, "a": tmp_path}) == key_digest({"a": str(tmp_path), "b": 1})
