"""Artifact folders and atomic writes: a failed or interrupted run leaves no half-written file.

Files are produced in a hidden staging folder beside their destination and moved into place with
os.replace (atomic on one filesystem) only once every check has passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("effexport-out")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: Path) -> None:
    """Temp files are created 0600; published artifacts get the permissions of any file the user creates."""
    os.chmod(path, 0o666 & ~_umask())


def recipe_dir(out: Path, recipe_name: str) -> Path:
    """`<out>/<recipe>`; `timm:` names become a safe folder name."""
    return Path(out) / recipe_name.replace(":", "-").replace("/", "-")


def write_json(path: Path, data: Any) -> None:
    write_bytes(path, (json.dumps(data, indent=2, default=_jsonable) + "\n").encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temporary file beside it, then os.replace), readable like any file the
    user creates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _make_readable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_digest(key: Any) -> str:
    """A short stable digest of a JSON-able key (fingerprints and cache keys)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reusable_record(record: Path, fingerprint: str,
                    files: Callable[[dict], Mapping[str, str | None]]) -> dict | None:
    """The JSON record (report or manifest) of an earlier passing run with this fingerprint, if every file it
    names is intact (`files(record)`: file name beside the record -> its recorded sha256)."""
    data = read_json(record)
    if not data or data.get("fingerprint") != fingerprint or data.get("status") != "passed":
        return None
    named = files(data)
    if not named:
        return None
    for name, digest in named.items():
        path = Path(record).parent / name
        if not path.is_file() or sha256_of(path) != digest:
            return None
    return data


class Staging:
    """A staging folder inside `dest`; `publish` moves finished files into `dest` atomically one by one."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)

    def __enter__(self) -> Staging:
        self.dest.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.dest))
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def publish(self, names: Iterable[str]) -> list[Path]:
        # Data files first, so a model file never points at data that is not yet in place.
        ordered = sorted(names, key=lambda n: not n.endswith(".data"))
        published = []
        for name in ordered:
            _make_readable(self.path / name)
            os.replace(self.path / name, self.dest / name)
            published.append(self.dest / name)
        return published
