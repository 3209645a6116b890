"""Artifact folders and atomic writes: a failed or interrupted run leaves no half-written file.

Files are produced in a hidden staging folder beside their destination and moved into place with
os.replace (atomic on one filesystem) only once every check has passed. A build that fails its checks publishes
its files under `rejected/` inside the artifact folder and never touches the verified files beside it.

One process at a time writes below a model folder (`folder_lock`, an flock the kernel releases when the process
dies, even by SIGKILL); whoever holds it removes staging folders that a killed run left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("effexport-out")
LOCK_FILE = ".lock"
REJECTED_DIR = "rejected"
STAGING_PREFIX = ".staging-"
TEMP_PREFIXES = (STAGING_PREFIX, ".calibrate-")  # work folders only a running effexport process uses


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: Path) -> None:
    """Temp files are created 0600; published artifacts get the permissions of any file the user creates."""
    os.chmod(path, 0o666 & ~_umask())


def recipe_dir(out: Path, recipe_name: str) -> Path:
    """`<out>/<model>`: the recipe name (a slimmable point's name carries its width and resolution); `timm:` names
    become a safe folder name."""
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


def content_digest(path: Path | None, suffixes: Iterable[str] | None = None) -> str | None:
    """The sha256 of a file, or of a folder's files (relative names and contents, in order); None for None.

    This is how every input enters an identity: replacing a photo in a folder, or the weights in a file of the
    same name, changes it; touching a file without changing it does not.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return sha256_of(path)
    wanted = {s.lower() for s in suffixes} if suffixes is not None else None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if wanted is not None and file.suffix.lower() not in wanted:
            continue
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_of(file)}\n".encode())
    return digest.hexdigest()


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
    """A staging folder inside `dest`; `publish` moves finished files into `dest` atomically one by one, `reject`
    moves them into `dest/rejected/` instead (the verified files in `dest` stay as they are)."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)

    def __enter__(self) -> Staging:
        self.dest.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.dest))
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            self.dest.rmdir()  # only if the failed run left it empty: a folder with nothing in it explains nothing
        except OSError:
            pass

    def publish(self, names: Iterable[str], into: Path | None = None) -> list[Path]:
        # Data files first, so a model file never points at data that is not yet in place.
        target = Path(into) if into is not None else self.dest
        target.mkdir(parents=True, exist_ok=True)
        ordered = sorted(names, key=lambda n: not n.endswith((".data", ".bin")))
        published = []
        for name in ordered:
            _make_readable(self.path / name)
            os.replace(self.path / name, target / name)
            published.append(target / name)
        return published

    def reject(self, names: Iterable[str], report_file: str, report: dict) -> Path:
        """Keep a failed build's files and report in `dest/rejected/` (replacing an older rejection); the
        verified artifact in `dest`, if any, is left untouched. Returns the rejected report's path."""
        rejected = self.dest / REJECTED_DIR
        shutil.rmtree(rejected, ignore_errors=True)
        self.publish([n for n in names if (self.path / n).is_file()], into=rejected)
        write_json(rejected / report_file, report)
        return rejected / report_file


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_work(folder: Path) -> list[Path]:
    """Staging and calibration work folders below `folder` whose process is gone (a SIGKILL, a power cut, an
    older effexport that did not name its pid). Call with the folder's lock held."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).rglob(".*"):
        if not path.is_dir() or not path.name.startswith(TEMP_PREFIXES):
            continue
        pid = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        if pid.isdigit() and int(pid) == os.getpid():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d work folder(s) left by interrupted runs under %s", len(removed), folder)
    return removed


_held: dict[Path, int] = {}  # lock path -> depth, so that nested workflow calls in one process share the lock
# (lock path, holder) pairs this process has already said it waits for: a build takes a model's lock once per
# target, so a second build behind a first one would otherwise say the same thing once per target.
_announced: set[tuple[Path, str]] = set()
_held_guard = threading.Lock()


@contextmanager
def folder_lock(folder: Path, what: str, wait_message: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the write lock of a model folder. A second process blocks until the first is done and says once
    whom it waits for; the kernel drops the lock of a process that dies. Re-entrant within a process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_FILE).resolve()
    with _held_guard:
        if path in _held:
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[path] -= 1
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one process at a time is then the user's business
        fcntl = None
    handle = open(path, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another effexport process"
                message = f"waiting for {holder} to finish with {folder}"
                who = re.match(r"effexport \(pid [0-9]+", holder)
                key = (path, who.group(0) if who else holder)
                if key in _announced:
                    log.info(message)
                else:
                    _announced.add(key)
                    log.warning(message)
                    if wait_message is not None:
                        wait_message(message)
                started = time.monotonic()
                fcntl.flock(handle, fcntl.LOCK_EX)
                log.info("got the lock of %s after %.1f s", folder, time.monotonic() - started)
        handle.seek(0)
        handle.truncate()
        handle.write(f"effexport (pid {os.getpid()}: {what}, since {time.strftime('%H:%M:%S')})\n")
        handle.flush()
        with _held_guard:
            _held[path] = 1
        remove_stale_work(folder)
        yield
    finally:
        with _held_guard:
            released = _held.pop(path, None) is not None
        if released:  # nobody holds it now: say so to whoever reads it
            handle.seek(0)
            handle.truncate()
        handle.close()  # closing the descriptor releases the flock


def command_line() -> str:
    """What a waiting process is told it waits for."""
    return " ".join(["effexport", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("effexport") else \
        " ".join(sys.argv) or "python"
