"""Model repositories for serving: Triton Inference Server and OpenVINO Model Server (OVMS).

Each artifact entry of a build manifest becomes one served model named ``<model>-<target>``::

    Triton  <repo>/<name>/config.pbtxt, <repo>/<name>/1/model.onnx | model.plan | model.xml + model.bin
    OVMS    <repo>/<name>/1/model.xml + model.bin | model.onnx, and <repo>/config.json naming every model

An entry with class labels also gets `labels.txt` (line i names class i): beside config.pbtxt for Triton, named by
the output's `label_filename` so that Triton's classification extension answers with names; beside the model in
the version folder for OVMS.

Entries may come from another machine, so every folder and file they name must stay inside `root` once symlinks
are followed, and every file must still have the sha256 its manifest records. Everything is checked and staged
before the repository changes; each model folder is then swapped in whole, replacing an earlier one of its name.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import ModuleType
from typing import Any

from effexport.errors import UsageError
from effexport.exporter.artifacts import sha256_of

log = logging.getLogger(__name__)

VERSION = "1"  # both servers serve the highest numbered version folder by default
SERVED = ("built", "reused")
LEFT_OUT = ("failed", "skipped")
REQUIRED = ("model", "target", "backend", "folder", "main", "files", "inputs", "outputs")
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "openvino": "model.xml"}
TRITON_RUNTIME = {"onnxruntime": ("platform", "onnxruntime_onnx"), "tensorrt": ("platform", "tensorrt_plan"),
                  "openvino": ("backend", "openvino")}
TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
                "bfloat16": "TYPE_BF16"}
# The largest batch Triton may form (or accept) for an ONNX export whose batch has no bound. Triton's own
# auto-complete default is 4, too small to keep a GPU busy; 32 images of 3x224x224 are 19 MB of float32 input, which
# any server holds with the activations of these CNNs. Raise it in config.pbtxt for a bigger GPU.
DEFAULT_MAX_BATCH = 32
LABELS_FILE = "labels.txt"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# Text-format string escapes, as protobuf's text_format writes them with as_utf8=True.
_ESCAPES = {i: f"\\{i:03o}" for i in (*range(32), 127)} | {
    ord("\t"): r"\t", ord("\n"): r"\n", ord("\r"): r"\r", ord('"'): r"\"", ord("'"): r"\'", ord("\\"): r"\\"}


@dataclass(frozen=True)
class _Model:
    """One entry checked and ready to place: `files` maps a name in the version folder to (source, manifest record)."""

    name: str
    entry: dict
    files: dict[str, tuple[Path, dict]]


def write_triton_repository(entries: list[dict], root: Path, repo: Path) -> list[Path]:
    """One Triton model per built or reused entry: `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/<model file>`.
    Returns the model folders, in entry order."""
    models = _plan(entries, Path(root))
    configs = {m.name: {"config.pbtxt": triton_config_text(m.entry, m.name), **_labels_file(m.entry, LABELS_FILE)}
               for m in models}
    return _publish(Path(repo), models, configs, {})


def write_ovms_repository(entries: list[dict], root: Path, repo: Path) -> list[Path]:
    """`<repo>/<name>/1/` with the OpenVINO IR or ONNX of every built or reused entry, and `<repo>/config.json`
    listing them beside any models it already lists. TensorRT plans are left out (logged): OVMS runs on OpenVINO.
    Returns the model folders, in entry order, then config.json."""
    repo = Path(repo)
    models = []
    for model in _plan(entries, Path(root)):
        if model.entry["backend"] == "tensorrt":
            log.warning("%s left out of the OVMS repository: OVMS serves OpenVINO IR and ONNX, not TensorRT plans",
                        model.name)
        else:
            models.append(model)
    config = _ovms_config(repo / "config.json", [m.name for m in models])
    labels = {m.name: _labels_file(m.entry, f"{VERSION}/{LABELS_FILE}") for m in models}
    return _publish(repo, models, labels, {"config.json": json.dumps(config, indent=2) + "\n"})


def entry_labels(entry: dict) -> list[str] | None:
    """The entry's class labels (None when it has none), refused unless they are one name per class."""
    labels = entry.get("labels")
    if labels is None:
        return None
    label = _label(entry)
    if not isinstance(labels, list) or not labels or not all(
            isinstance(n, str) and n.strip() and "\n" not in n and "\r" not in n for n in labels):
        raise UsageError(f"{label}: labels must be a non-empty list of one-line names")
    classes = entry.get("num_classes")
    if classes is not None and classes != len(labels):
        raise UsageError(f"{label}: {len(labels)} labels for {classes} classes")
    return labels


def _labels_file(entry: dict, where: str) -> dict[str, str]:
    labels = entry_labels(entry)
    return {} if labels is None else {where: "".join(f"{name}\n" for name in labels)}


def model_name(model: str, target: str) -> str:
    """`<model>-<target>`, every run of characters other than letters, digits, `_`, `-` and `.` made one `-`:
    both servers use the name as a folder name and in URLs."""
    name = _UNSAFE.sub("-", f"{model}-{target}").strip(".-")  # no hidden folder, no "." or ".."
    if not name:
        raise UsageError(f"model {model!r} with target {target!r} gives no usable model name")
    return name


def triton_config_text(entry: dict, name: str) -> str:
    """config.pbtxt for one entry: protobuf's own text format when tritonclient is installed, else the same text
    written by hand (tritonclient is optional for users)."""
    fields = _triton_fields(entry, name)
    pb2 = load_model_config_pb2()
    if pb2 is None:
        return _pbtxt(fields)
    from google.protobuf import json_format, text_format

    message = json_format.ParseDict(fields, pb2.ModelConfig())
    return text_format.MessageToString(message, as_utf8=True)


@functools.cache
def load_model_config_pb2() -> ModuleType | None:
    """Triton's generated ModelConfig module from tritonclient, or None without tritonclient or protobuf."""
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except ImportError:
        return None
    except RuntimeError:
        pass
    # tritonclient installed without its grpc extra refuses to import tritonclient.grpc, which wants grpcio; the
    # generated module inside it needs protobuf alone.
    path = Path(importlib.util.find_spec("tritonclient").origin).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("effexport_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def _triton_fields(entry: dict, name: str) -> dict[str, Any]:
    """ModelConfig's fields for one entry, keyed in field-number order, the order text_format prints them in."""
    label = _label(entry)
    backend = entry["backend"]
    tensors = {kind: [(t.get("name"), _triton_type(t.get("dtype"), label), _dims(t.get("shape"), label),
                       t.get("format")) for t in entry[kind + "s"]] for kind in ("input", "output")}
    shapes = [dims for kind in tensors.values() for _, _, dims, _ in kind]
    # Triton batches along a first dimension that every input and output shares. Its OpenVINO backend fixes the
    # model's batch at max_batch_size (ov::set_batch) and refuses any execution with fewer samples unless
    # ENABLE_BATCH_PADDING, which computes the padding; so an OpenVINO model is served unbatched, its dynamic batch
    # left to the model (dims -1), and each request runs at its own size.
    batched = backend != "openvino" and bool(shapes) and all(len(s) >= 2 and s[0] == -1 for s in shapes)
    max_batch = 0
    if batched:
        max_batch = entry.get("max_batch")
        if max_batch is None and backend == "tensorrt":
            raise UsageError(f"{label}: a TensorRT engine serves at most its profile's largest batch, and the entry "
                             "records none (max_batch); rebuild it with effexport build")
        max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise UsageError(f"{label}: max_batch must be a positive integer or null, not {max_batch!r}")
    fields: dict[str, Any] = {"name": name}
    kind, runtime = TRITON_RUNTIME[backend]
    if kind == "platform":
        fields["platform"] = runtime
    if max_batch:  # proto3 prints no zero; Triton reads a missing max_batch_size as 0 (no batching)
        fields["max_batch_size"] = max_batch
    labels = entry_labels(entry)
    for key, items in tensors.items():
        # an image input of a raw-pixel graph names its layout (ModelInput.format, field 3, before dims)
        fields[key] = [{"name": tensor_name, "data_type": dtype,
                        **({"format": f"FORMAT_{layout}"} if layout in ("NCHW", "NHWC") else {}),
                        "dims": dims[1:] if batched else dims}
                       for tensor_name, dtype, dims, layout in items]
    if labels is not None:  # the class scores: the output whose last dimension has one entry per label
        for output in fields["output"]:
            if len(fields["output"]) == 1 or output["dims"][-1] == len(labels):
                output["label_filename"] = LABELS_FILE
    if batched:
        fields["dynamic_batching"] = {}  # default settings: batches form from whatever requests are queued
    if kind == "backend":
        fields["backend"] = runtime
    return fields


def _triton_type(dtype: Any, label: str) -> str:
    if dtype not in TRITON_TYPES:
        raise UsageError(f"{label}: dtype {dtype!r} has no Triton type; expected one of {', '.join(TRITON_TYPES)}")
    return TRITON_TYPES[dtype]


def _dims(shape: Any, label: str) -> list[int]:
    """A recorded shape as Triton dims: a named, null, -1 or 0 dimension is dynamic (-1); 0 is how an ONNX dimension
    with neither a size nor a name is recorded."""
    if not isinstance(shape, list) or not shape:
        raise UsageError(f"{label}: tensor shape {shape!r} must be a non-empty list")
    dims = []
    for dim in shape:
        if dim is None or isinstance(dim, str) or dim in (-1, 0):
            dims.append(-1)
        elif isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
            dims.append(dim)
        else:
            raise UsageError(f"{label}: dimension {dim!r} in shape {shape!r} is neither a size nor dynamic")
    return dims


def _pbtxt(fields: dict[str, Any], indent: str = "") -> str:
    """Protobuf text format for the plain fields _triton_fields makes, exactly as text_format prints them."""
    out = []
    for key, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                out.append(f"{indent}{key} {{\n{_pbtxt(item, indent + '  ')}{indent}}}\n")
            elif key in ("data_type", "format") or isinstance(item, int):  # enum names and numbers go unquoted
                out.append(f"{indent}{key}: {item}\n")
            else:
                out.append(f'{indent}{key}: "{item.translate(_ESCAPES)}"\n')
    return "".join(out)


def _ovms_config(path: Path, names: list[str]) -> dict:
    """config.json with `names` listed, keeping the other models (and anything else) an existing file holds.

    base_path is relative: OVMS's model options (docs/parameters.md) allow a path relative to config.json, so the
    repository still works when mounted elsewhere, for example at /models in a container. No batch_size or shape is
    written: OVMS inherits a dynamic batch from the IR or ONNX itself, and a static export keeps its own batch;
    batch_size "auto" and shape "auto" reload the model at each change of shape and are deprecated.
    """
    config: Any = {"model_config_list": []}
    if path.exists():
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path} cannot be read as JSON ({exc}); fix it or move it away") from exc
        if not isinstance(config, dict) or not isinstance(config.get("model_config_list"), list):
            raise UsageError(f"{path} is not an OVMS config (no model_config_list list); fix it or move it away")
    ours = set(names)
    kept = [item for item in config["model_config_list"]
            if not (isinstance(item, dict) and isinstance(item.get("config"), dict)
                    and item["config"].get("name") in ours)]
    config["model_config_list"] = kept + [{"config": {"name": name, "base_path": name}} for name in names]
    return config


def _plan(entries: list[dict], root: Path) -> list[_Model]:
    """The built and reused entries, checked: known backend, paths inside root, files present, names unique."""
    if not root.is_dir():
        raise UsageError(f"artifact root {root} is not a folder")
    root = root.resolve()
    models: list[_Model] = []
    labels: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise UsageError(f"an artifact entry must be a mapping, not {type(entry).__name__}")
        label = _label(entry)
        if entry.get("status") in LEFT_OUT:
            log.info("%s left out: its status is %s", label, entry["status"])
            continue
        if entry.get("status") not in SERVED:
            raise UsageError(f"{label}: status {entry.get('status')!r} is none of {', '.join(SERVED + LEFT_OUT)}")
        missing = [key for key in REQUIRED if key not in entry]
        if missing:
            raise UsageError(f"{label}: the entry lacks {', '.join(missing)}")
        if entry["backend"] not in MODEL_FILES:
            raise UsageError(f"{label}: unknown backend {entry['backend']!r}; expected one of {', '.join(MODEL_FILES)}")
        for kind in ("inputs", "outputs"):
            tensors = entry[kind]
            if not isinstance(tensors, list) or not tensors or not all(
                    isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"] for t in tensors):
                raise UsageError(f"{label}: {kind} must be a non-empty list of tensors, each with a name")
        name = model_name(str(entry["model"]), str(entry["target"]))
        if name in labels:
            raise UsageError(f"{label} and {labels[name]} would both be served as {name!r}")
        labels[name] = label
        folder = _inside(root, root, entry["folder"], f"{label}: folder")
        if not folder.is_dir():
            raise UsageError(f"{label}: folder {entry['folder']!r} is not a folder under {root}")
        models.append(_Model(name, entry, _model_files(entry, root, folder, label)))
    return models


def _model_files(entry: dict, root: Path, folder: Path, label: str) -> dict[str, tuple[Path, dict]]:
    """The files a server loads, named as it looks for them: the main file under the backend's default name, an IR's
    weights as model.bin (OpenVINO finds them by the .xml's name), others such as ONNX external data unchanged."""
    files, main = entry["files"], entry["main"]
    _inside(root, folder, main, f"{label}: main file")
    if not isinstance(files, dict) or main not in files:
        raise UsageError(f"{label}: its main file {main!r} is not among its files")
    renames = {main: MODEL_FILES[entry["backend"]]}
    if entry["backend"] == "openvino":
        weights = str(PurePath(main).with_suffix(".bin"))
        if weights not in files:
            raise UsageError(f"{label}: the IR {main} comes without its weights {weights}")
        renames[weights] = "model.bin"
    placed: dict[str, tuple[Path, dict]] = {}
    for relative, record in files.items():
        source = _inside(root, folder, relative, f"{label}: file")
        if PurePath(relative).suffix == ".json":
            continue  # reports and TensorRT's layer list: no server reads them
        if len(PurePath(relative).parts) != 1:
            raise UsageError(f"{label}: file {relative!r} must sit directly in its artifact folder")
        if not source.is_file():
            raise UsageError(f"{label}: {relative} is missing from {folder}")
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise UsageError(f"{label}: the manifest records no sha256 for {relative}")
        dest = renames.get(relative, relative)
        if dest in placed:
            raise UsageError(f"{label}: two of its files would both be served as {dest}")
        placed[dest] = (source, record)
    return placed


def _inside(root: Path, base: Path, relative: Any, what: str) -> Path:
    """`base / relative`, refused unless it stays inside `root` once every symlink is followed."""
    if not isinstance(relative, str) or not relative or PurePath(relative).is_absolute() \
            or ".." in PurePath(relative).parts:
        raise UsageError(f"{what} {relative!r} must be a relative path without '..' inside {root}: entries may come "
                         "from other machines, so no other path is followed")
    path = (base / relative).resolve()
    if not path.is_relative_to(root):
        raise UsageError(f"{what} {relative!r} leads outside {root} (through a symlink)")
    return path


def _label(entry: dict) -> str:
    return f"{entry.get('model')} {entry.get('target')}"


def _publish(repo: Path, models: list[_Model], sidecars: dict[str, dict[str, str]],
             top: dict[str, str]) -> list[Path]:
    """Stage every model folder (files, then `sidecars[name]` texts) and the `top` texts inside `repo`, then move
    each into place; nothing changes in `repo` until everything is staged and verified."""
    for model in models:
        target = (repo / model.name).resolve()
        for source, _ in model.files.values():
            if source.is_relative_to(target):
                raise UsageError(f"the repository folder {target} would replace the artifact {source}; "
                                 "write the repository elsewhere")
    repo.mkdir(parents=True, exist_ok=True)
    # Staged inside repo so that every move is a rename on one filesystem. (A Triton polling the repository may
    # notice the hidden staging folder for that moment and log that it is no model.)
    staging = Path(tempfile.mkdtemp(prefix=".effexport-staging-", dir=repo))
    new, replaced = staging / "new", staging / "replaced"
    new.mkdir()
    replaced.mkdir()
    try:
        for model in models:
            _stage(model, new / model.name, sidecars.get(model.name, {}))
        for name, text in top.items():
            (new / name).write_text(text, encoding="utf-8")
        published = []
        for name in [m.name for m in models] + list(top):
            target = repo / name
            if (new / name).is_dir() and (target.exists() or target.is_symlink()):
                os.replace(target, replaced / name)  # a folder cannot be renamed over another
            os.replace(new / name, target)
            published.append(target)
        return published
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage(model: _Model, folder: Path, texts: dict[str, str]) -> None:
    version = folder / VERSION
    version.mkdir(parents=True)
    for dest_name, (source, record) in model.files.items():
        dest = version / dest_name
        _link_or_copy(source, dest)
        if ("bytes" in record and dest.stat().st_size != record["bytes"]) or sha256_of(dest) != record["sha256"]:
            raise UsageError(f"{model.name}: {source} is not the file its manifest records (size or sha256 differs); "
                             "rebuild it with effexport build")
    for name, text in texts.items():  # beside config.pbtxt, or in the version folder ("1/labels.txt")
        (folder / name).write_text(text, encoding="utf-8")


def _link_or_copy(source: Path, dest: Path) -> None:
    # A hard link costs no space and, unlike a symlink, still resolves when only the repository is mounted into a
    # server's container. effexport replaces artifact files (os.replace) rather than rewriting them, so a rebuild
    # never changes what an existing repository serves. Across filesystems, or where the filesystem or its
    # protections refuse hard links, the file is copied instead.
    try:
        os.link(source, dest)
    except OSError as exc:
        log.debug("copying %s: no hard link (%s)", source, exc)
        shutil.copy2(source, dest)
