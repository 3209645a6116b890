"""`effexport merge`: the outputs of `effexport build --shard I/N` (and of a GPU job's `--only tensorrt`) combined
into one tree and one manifest.

Shard outputs come from other machines, so they are input like any other and are checked before anything is
copied: every manifest against its schema, every file against the sha256 and size its manifest records, every
path (also an ONNX file's external-data locations) inside its own tree, every shard from the same build file.
Two shards that hold the same (model, target) with different files conflict and are refused; the same files are
taken once. An artifact built or reused in one shard wins over the same target skipped or failed in another (a
TensorRT target a CPU shard skipped and the GPU job built). Nothing is written until every check has passed.

A merge says what it was given: the shards of an N-shard build that no input covers are named, and refused unless
`partial=True` (then the manifest records them under `partial`); a folder given twice is read once; an existing
merged tree at `out` is one of the inputs, so merging more shards into it keeps every entry it had (the union),
never a silent subset; every artifact's folder must be a model's own (`<model>/...`), never the tree's root.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from effexport.errors import UsageError
from effexport.exporter.artifacts import sha256_of, write_json

MANIFEST_FILE = "manifest.json"
SERVED = ("built", "reused")


@dataclass
class MergeResult:
    out: Path
    manifest_path: Path
    artifacts: list[dict[str, Any]]
    copied: int  # files written into the merged tree
    repositories: dict[str, list[Path]]
    missing_shards: list[str] = field(default_factory=list)  # with partial=True: the shards no input covered


def _read(folder: Path) -> dict[str, Any]:
    import jsonschema

    from effexport.workflow.build import manifest_schema

    path = Path(folder) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable manifest ({exc})") from None
    try:
        jsonschema.validate(data, manifest_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "the top level"
        raise UsageError(f"{path}: does not follow the manifest schema at {where}: {exc.message}") from None
    return data


def _inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused when it leads outside `root` (absolute, `..`, or a symlink resolving out)."""
    if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise UsageError(f"{what}: path {relative!r} leads outside {root}")
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise UsageError(f"{what}: {relative!r} resolves outside {root} (a symbolic link?)")
    return path


def _external_data(path: Path) -> list[str]:
    """The external-data locations an ONNX file names (they must stay beside it, inside the tree)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise UsageError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    locations = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.append(entry.value)
    return locations


def _artifact_folder(entry: dict[str, Any], what: str) -> None:
    """A served entry's folder is below its model's folder (`<model>/<recipe folder>/<artifact folder>`), never the
    root of the tree or another model's, so no shard can put files (its SUMMARY.md, say) where the merge writes."""
    from effexport.workflow.build import RESERVED_NAMES

    parts = Path(entry["folder"]).parts
    model = entry["model"]
    if len(parts) < 2 or parts[0] != model or any(p.startswith(".") for p in parts) \
            or model.lower() in (n.lower() for n in RESERVED_NAMES):
        raise UsageError(f"{what}: folder {entry['folder']!r} is not an artifact folder of model {model!r} "
                         f"(expected {model}/<recipe folder>/<artifact folder>)")


def _check(root: Path, entry: dict[str, Any]) -> dict[str, Path]:
    """Every file of a served entry: inside the tree and as its manifest says. Returns name -> source path."""
    what = f"{root / MANIFEST_FILE} {entry['model']} {entry['target']}"
    _artifact_folder(entry, what)
    folder = _inside(root, entry["folder"], what)
    files = {}
    for name, recorded in entry["files"].items():
        path = _inside(folder, name, what)
        if not path.is_file():
            raise UsageError(f"{what}: {path} is missing")
        if path.stat().st_size != recorded["bytes"] or sha256_of(path) != recorded["sha256"]:
            raise UsageError(f"{what}: {path} does not match the sha256 its manifest records")
        files[name] = path
        if name.endswith(".onnx"):
            for location in _external_data(path):
                _inside(folder, location, f"{what} {name} external data")
                if location not in entry["files"]:
                    raise UsageError(f"{what}: {name} refers to external data {location!r} its manifest does not list")
    return files


def _sources(folder: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """What a manifest was built from: itself (a build or a shard), or the inputs of the merge that wrote it."""
    if "merged_from" in data:
        return [dict(m) for m in data["merged_from"]]
    return [{"path": str(folder), **({"shard": data["shard"]} if "shard" in data else {}),
             "machine": data["machine"]}]


def missing_shards(sources: list[dict[str, Any]]) -> tuple[int, list[str]] | None:
    """(N, the shards of N no source covers), or None when a full build is among the sources (or none is a shard).
    Refuses shards of different counts (2/3 with 1/2)."""
    if not sources or any("shard" not in s for s in sources):
        return None
    counts = {int(s["shard"].split("/")[1]) for s in sources}
    if len(counts) > 1:
        raise UsageError(f"the outputs are shards of different splits ({', '.join(s['shard'] for s in sources)}); "
                         f"merge the shards of one --shard I/N build")
    count = counts.pop()
    have = {int(s["shard"].split("/")[0]) for s in sources}
    return count, [f"{i}/{count}" for i in range(1, count + 1) if i not in have]


def merge(inputs: list[Path], out: Path, layouts: tuple[str, ...] = (), partial: bool = False) -> MergeResult:
    """Check every input tree, then write the merged tree and manifest (and the serving repositories asked for).
    An existing manifest at `out` is merged too; a merge that lacks shards is refused unless `partial`."""
    if not inputs:
        raise UsageError("effexport merge needs at least one build output folder")
    out = Path(out)
    folders = list(dict.fromkeys(Path(folder).resolve() for folder in inputs))  # a folder given twice counts once
    if (out / MANIFEST_FILE).is_file() and out.resolve() not in folders:
        folders.insert(0, out.resolve())  # merging into a merged tree keeps what it holds: the union, never less
    manifests = [(folder, _read(folder)) for folder in folders]
    sources = list({(s["path"], s.get("shard")): s for folder, data in manifests
                    for s in _sources(folder, data)}.values())
    lacking = missing_shards(sources)
    if lacking and lacking[1] and not partial:
        raise UsageError(f"shard{'s' if len(lacking[1]) > 1 else ''} {', '.join(lacking[1])} of {lacking[0]} "
                         f"missing: the merged tree would lack their models; give every shard's output, or pass "
                         f"--partial to merge these (the manifest then says which shards it lacks)")
    build_files = {data["build_file"]["sha256"] for _, data in manifests}
    if len(build_files) > 1:
        raise UsageError("the outputs come from different build files (their manifests' build_file sha256 differ): "
                         + ", ".join(f"{folder}: {data['build_file']['sha256'][:12]}" for folder, data in manifests))
    chosen: dict[tuple[str, str], tuple[Path, dict[str, Any], dict[str, Path]]] = {}
    others: dict[tuple[str, str], dict[str, Any]] = {}
    for folder, data in manifests:
        for entry in data["artifacts"]:
            key = (entry["model"], entry["target"])
            # an entry of a merged tree already says where it was built; a shard's entries learn it here
            entry = {"built_on": data["machine"], **({"shard": data["shard"]} if "shard" in data else {}), **entry}
            if entry["status"] not in SERVED:
                others.setdefault(key, entry)
                continue
            files = _check(folder, entry)
            if key in chosen:
                earlier = chosen[key][1]
                if {n: f["sha256"] for n, f in earlier["files"].items()} != \
                        {n: f["sha256"] for n, f in entry["files"].items()} or earlier["folder"] != entry["folder"]:
                    raise UsageError(f"{entry['model']} {entry['target']} conflicts: {chosen[key][0]} and {folder} "
                                     f"hold different files for it")
                continue
            chosen[key] = (folder, entry, files)
    for key, (folder, entry, _) in chosen.items():  # two targets must not claim one folder with different files
        for other_key, (other_folder, other, _) in chosen.items():
            if other_key < key and other["folder"] == entry["folder"] and other["files"] != entry["files"]:
                raise UsageError(f"{folder} and {other_folder} put different files into {entry['folder']}")
    for _, entry, _ in chosen.values():
        target = _inside(out, entry["folder"], f"{out}")
        for name, recorded in entry["files"].items():
            existing = target / name
            if existing.exists() and sha256_of(existing) != recorded["sha256"]:
                raise UsageError(f"{existing} already exists with other contents; merge into an empty --out")
    copied = 0
    for _, entry, files in chosen.values():
        target = out / entry["folder"]
        target.mkdir(parents=True, exist_ok=True)
        for name, source in files.items():
            if (target / name).exists():
                continue
            _link_or_copy(source, target / name)
            copied += 1
    artifacts = [entry for _, entry, _ in chosen.values()]
    artifacts += [entry for key, entry in others.items() if key not in chosen]
    order = {key: i for i, key in enumerate(dict.fromkeys((e["model"], e["target"]) for _, d in manifests
                                                             for e in d["artifacts"]))}
    artifacts.sort(key=lambda e: order[(e["model"], e["target"])])
    from effexport.workflow.build import machine, versions

    first = manifests[0][1]
    merged = {
        "schema": first["schema"],
        "build_file": first["build_file"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(sum(d["seconds"] for _, d in manifests), 2),
        "machine": machine(),
        "versions": versions(),
        "merged_from": sources,
        **({"partial": {"shards": lacking[0], "missing": lacking[1]}} if lacking and lacking[1] else {}),
        "artifacts": artifacts,
    }
    write_json(out / MANIFEST_FILE, merged)
    repositories = {}
    if layouts:
        from effexport.workflow import layouts as repos

        served = [a for a in artifacts if a["status"] in SERVED]
        for layout in layouts:
            writer = repos.write_triton_repository if layout == "triton" else repos.write_ovms_repository
            repositories[layout] = writer(served, out, out / layout)
    return MergeResult(out, out / MANIFEST_FILE, artifacts, copied, repositories,
                       lacking[1] if lacking else [])


def _link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the filesystem allows (no second copy of a 3 GB model), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
