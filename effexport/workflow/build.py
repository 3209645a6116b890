"""`effexport build`: a matrix of verified artifacts from one TOML build file, with a manifest a deployment team
can trust.

The build file declares models (a recipe, its weights and options, parity images) and targets per model, with
defaults at the top and overrides per model. Every target is built through the same functions as the single
commands (pipeline.export_recipe, deploy.ensure_artifact), so it is reused while its identity is unchanged and
rebuilt otherwise. A failed target does not stop the others (unless `fail_fast`); a target whose backend is missing
on this machine (TensorRT without a GPU) is skipped and says why. Everything is refused before any work when the
file is malformed: an unknown key, recipe or target names the file, the line and the closest valid name.

    <out>/<model>/<recipe folder>/<artifact folder>/   the artifacts (the single commands' layout, per model)
    <out>/manifest.json                                every artifact: files with sha256 and bytes, identity,
                                                       parity, tool versions, machine, status (schema:
                                                       effexport/schemas/manifest.schema.json)
    <out>/SUMMARY.md                                   the same for people
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from effexport.calibration.options import METHODS, Int8Options
from effexport.errors import EffexportError, ExportError, MissingDependencyError, ParityError, UsageError
from effexport.exporter.artifacts import sha256_of, write_bytes, write_json
from effexport.exporter.cpu_env import cpu_flags, cpu_model
from effexport.exporter.io_spec import INPUTS, OUTPUTS
from effexport.exporter.labels import read_labels
from effexport.recipes import RecipeParams, check_recipe_name
from effexport.version import __version__
from effexport.workflow.job import ExportOptions, Job, resolve_job

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, published as tomli (a dependency there)
    import tomli as tomllib

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "SUMMARY.md"
MANIFEST_SCHEMA = "effexport-manifest/1"
Progress = Callable[[str], None]

# What a build file may say, and where. Anything else is refused with the closest of these names.
MODEL_KEYS = ("recipe", "weights", "pretrained", "ema", "img_size", "opset", "simplify", "images", "calib",
              "calib_size", "method", "seed", "tolerance", "targets", "tensorrt", "width", "resolution",
              "budget_mflops", "query_table", "bench", "bench_batches", "bench_iters", "output", "input", "bgr",
              "heldout", "num_classes", "labels", "exporter")
DEFAULT_KEYS = tuple(k for k in MODEL_KEYS if k not in ("recipe", "weights", "pretrained", "ema", "width",
                                                       "resolution", "budget_mflops", "query_table"))
TOP_KEYS = ("defaults", "models")
TENSORRT_KEYS = ("min_batch", "opt_batch", "max_batch", "workspace_gb", "hardware_compat", "version_compatible")
BACKEND_TARGETS = ("onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "openvino-fp32", "openvino-fp16",
                   "openvino-int8", "tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8")
ONNX_TARGET = re.compile(r"^onnx(-dynamic|-b[1-9][0-9]*)?$")
TARGET_HELP = "onnx, onnx-dynamic, onnx-b<N>, " + ", ".join(BACKEND_TARGETS)
LAYOUTS = ("triton", "ovms")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML's true is no count


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The type (and range) of every value, checked before any work: what the value must be, and the test. A key that
# is absent here is checked where it is used.
_TEXT = ("a string", lambda v: isinstance(v, str))
_PATH = ("a path (a non-empty string)", lambda v: isinstance(v, str) and v.strip() != "")
_BOOL = ("true or false", lambda v: isinstance(v, bool))
_COUNT = ("a whole number of at least 1", lambda v: _is_int(v) and v >= 1)
VALUE_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "recipe": _TEXT, "weights": _PATH, "pretrained": _BOOL, "ema": _BOOL,
    "img_size": ("a whole number of pixels (e.g. 224)", _is_int), "opset": ("a whole number (e.g. 17)", _is_int),
    "simplify": _BOOL, "images": _PATH, "calib": _PATH, "calib_size": _COUNT, "method": _TEXT,
    "seed": ("a whole number of at least 0", lambda v: _is_int(v) and v >= 0),
    "tolerance": ("a string or a list of strings, as --tolerance takes them",
                  lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, str) for t in v))),
    "targets": ("a non-empty list of target names, e.g. [\"onnx\", \"openvino-fp32\"]",
                lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(t, str) for t in v)),
    "tensorrt": ("a table ([<table>.tensorrt])", lambda v: isinstance(v, dict)),
    "width": ("a number", _is_number), "resolution": ("a whole number of pixels", _is_int),
    "budget_mflops": ("a positive number", lambda v: _is_number(v) and v > 0), "query_table": _PATH,
    "bench": _BOOL, "bench_batches": ("a non-empty list of whole numbers of at least 1",
                                      lambda v: isinstance(v, list) and len(v) > 0
                                      and all(_is_int(b) and b >= 1 for b in v)),
    "bench_iters": _COUNT, "output": _TEXT, "input": _TEXT, "bgr": _BOOL, "heldout": _PATH,
    "labels": _PATH, "exporter": _TEXT,  # num_classes: checked with its own message where it is read
}
TENSORRT_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "min_batch": _COUNT, "opt_batch": _COUNT, "max_batch": _COUNT,
    "workspace_gb": ("a positive number", lambda v: _is_number(v) and v > 0), "hardware_compat": _TEXT,
    "version_compatible": _BOOL,
}
# Names effexport itself uses at the top of an output root; a model folder of the same name would collide with them.
# Hidden names are effexport's too (.lock, .staging-*, its write checks).
RESERVED_NAMES = ("manifest.json", "SUMMARY.md", *LAYOUTS)


@dataclass(frozen=True)
class Target:
    model: str  # the build file's name for the model
    name: str  # e.g. "onnx", "onnx-dynamic", "openvino-int8", "tensorrt-fp16"
    job: Job
    trt: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)  # {"batches": [...], "iters": N} when the model is benched

    @property
    def kind(self) -> str:
        return "onnx" if ONNX_TARGET.match(self.name) else "backend"

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.kind == "onnx" else self.name.rsplit("-", 1)[0]

    @property
    def precision(self) -> str:
        return "fp32" if self.kind == "onnx" else self.name.rsplit("-", 1)[1]


@dataclass
class BuildPlan:
    path: Path
    out: Path
    targets: list[Target]
    shard: tuple[int, int] | None = None  # (I, N) when this plan is one machine's share

@dataclass
class TargetResult:
    target: Target
    status: str  # built | reused | failed | skipped
    seconds: float = 0.0
    entry: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    exit_code: int | None = None  # of the error that failed it (3 parity, 5 build, 2 bad input)


@dataclass
class BuildResult:
    plan: BuildPlan
    results: list[TargetResult]
    manifest_path: Path
    summary_path: Path
    seconds: float
    repositories: dict[str, list[Path]] = field(default_factory=dict)  # layout -> what it wrote
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> its bench record

    @property
    def failed(self) -> list[TargetResult]:
        return [r for r in self.results if r.status == "failed"]

    def error(self) -> EffexportError | None:
        """The error that ends the build once everything is written: ParityError when only parity failed (exit 3),
        else ExportError (exit 5); None when no target failed."""
        if not self.failed:
            return None
        parity_only = all(r.exit_code == ParityError.exit_code for r in self.failed)
        return (ParityError if parity_only else ExportError)(
            f"{len(self.failed)} of {len(self.results)} targets failed: "
            + "; ".join(f"{r.target.model} {r.target.name}: {r.message}" for r in self.failed),
            report=self.manifest_path)


# ---------------------------------------------------------------------------------------------- the build file


def _closest(word: str, options: tuple[str, ...] | list[str]) -> str:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.4)
    return f" (did you mean {found[0]!r}?)" if found else f" (expected one of {', '.join(options)})"


def _line_of(text: str, key: str, table: str | None = None) -> int:
    """The line where `key` is set (inside `[table]` when given), or its own `[table.key]` header, for error
    messages; the table's header line (or 1) when neither is found."""
    lines = text.splitlines()

    def header(name: str) -> re.Pattern:
        return re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, name.split("."))) + r"\s*\]")

    start, end = 0, len(lines)
    if table is not None:
        start = next((i for i, line in enumerate(lines) if header(table).match(line)), -1) + 1
        end = next((i for i in range(start, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
    assignment = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
    for i in range(start, end):
        if assignment.match(lines[i]):
            return i + 1
    own = header(f"{table}.{key}" if table else key)
    prefix = r"\s*\.\s*".join(map(re.escape, table.split("."))) + r"\s*\.\s*" if table else ""
    quoted = re.compile(r"^\s*\[\s*" + prefix + "[\"']" + re.escape(key) + r"[\"']\s*[.\]]")  # [models."a.b"]
    return next((i + 1 for i, line in enumerate(lines) if own.match(line) or quoted.match(line)), max(start, 1))


def _refuse(path: Path, text: str, message: str, key: str, table: str | None = None) -> UsageError:
    return UsageError(f"{path}:{_line_of(text, key, table)}: {message}")


def load_plan(path: Path, out: Path | None = None, force: bool = False) -> BuildPlan:
    """Read and check the whole build file and resolve every model's job; nothing is built. Raises UsageError
    naming the file, the line and the closest valid name."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"build file {path} cannot be read ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    for key in data:
        if key not in TOP_KEYS:
            raise _refuse(path, text, f"unknown table or key {key!r}{_closest(key, TOP_KEYS)}", key)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise _refuse(path, text, "defaults must be a table ([defaults])", "defaults")
    _check_keys(path, text, defaults, DEFAULT_KEYS, "defaults")
    _check_values(path, text, defaults, "defaults")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise _refuse(path, text, "models must be tables ([models.<name>])", "models")
    if not models:
        raise UsageError(f"{path}: no [models.<name>] table: declare at least one model (effexport build --init "
                         f"writes an example)")
    root = path.parent
    out = Path(out) if out is not None else root / "effexport-build"
    targets = []
    for name, model in models.items():
        table = f"models.{name}"
        if not isinstance(model, dict):
            raise _refuse(path, text, f"[{table}] must be a table", name, "models")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise _refuse(path, text, f"model name {name!r} may use letters, digits, '_', '-' and '.' only", name,
                          "models")
        if name.startswith(".") or name.lower() in (n.lower() for n in RESERVED_NAMES):
            raise _refuse(path, text, f"model name {name!r} is not usable: a model's artifacts go to <out>/<name>/, "
                          f"which must be a folder inside --out that no effexport file uses (not '.', '..', a "
                          f"hidden name, or {', '.join(RESERVED_NAMES)})", name, "models")
        _check_keys(path, text, model, MODEL_KEYS, table)
        _check_values(path, text, model, table)
        if "recipe" not in model:
            raise UsageError(f"{path}:{_line_of(text, name, 'models')}: [{table}] has no recipe")
        settings = {**defaults, **model}
        try:
            check_recipe_name(settings["recipe"])
        except UsageError as exc:
            raise _refuse(path, text, str(exc), "recipe", table) from None
        names = settings.get("targets", ["onnx"])
        for target in names:
            if not (ONNX_TARGET.match(target) or target in BACKEND_TARGETS):
                raise _refuse(path, text, f"[{table}] unknown target {target!r}"
                              f"{_closest(target, list(BACKEND_TARGETS) + ['onnx', 'onnx-dynamic'])}",
                              "targets", table if "targets" in model else "defaults")
        trt = settings.get("tensorrt", {})
        for key in trt:
            if key not in TENSORRT_KEYS:
                raise _refuse(path, text, f"unknown TensorRT option {key!r}{_closest(key, TENSORRT_KEYS)}", key,
                              f"{table}.tensorrt" if "tensorrt" in model else "defaults.tensorrt")
        for key, allowed in (("output", OUTPUTS), ("input", INPUTS)):
            if key in settings and settings[key] not in allowed:
                raise _refuse(path, text, f"[{table}] {key} = {settings[key]!r}: expected one of {', '.join(allowed)}",
                              key, table if key in model else "defaults")
        for key, kind, what in (("num_classes", int, "a positive whole number"), ("labels", str, "a file path")):
            value = settings.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                      or (kind is int and value < 1)):
                raise _refuse(path, text, f"[{table}] {key} must be {what}, not {value!r}", key,
                              table if key in model else "defaults")
        if settings.get("labels") is not None:
            try:
                read_labels(root / settings["labels"], option="labels")
            except UsageError as exc:
                raise _refuse(path, text, f"[{table}] {exc}", "labels", table if "labels" in model else "defaults") \
                    from None
        try:
            job = _job(settings, root, out / name, force)
        except UsageError as exc:
            raise UsageError(f"{path}:{_line_of(text, name, 'models')}: [{table}] {exc}") from None
        bench = {"batches": [int(b) for b in settings.get("bench_batches", [1, 8])],
                 "iters": int(settings.get("bench_iters", 50))} if settings.get("bench") else {}
        if bench and (not bench["batches"] or min(bench["batches"]) < 1 or bench["iters"] < 1):
            raise _refuse(path, text, f"[{table}] bench_batches and bench_iters must be positive", "bench", table)
        targets += [Target(name, t, job, dict(trt), bench) for t in dict.fromkeys(names)]
    return BuildPlan(path, out, targets)


def _check_keys(path: Path, text: str, table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _refuse(path, text, f"[{where}] unknown key {key!r}{_closest(key, allowed)}", key, where)


def _check_values(path: Path, text: str, table: dict, where: str) -> None:
    """Every value of `table` by type and range, with its line, before anything is resolved or built."""
    from effexport.workflow.job import ExportOptions

    def check(key: str, value: Any, rules: dict, at: str) -> None:
        if key not in rules:
            return
        expected, ok = rules[key]
        if not ok(value):
            raise _refuse(path, text, f"[{at}] {key} = {_toml(value)}: expected {expected.replace('<table>', where)}",
                          key, at)

    for key, value in table.items():
        check(key, value, VALUE_RULES, where)
        if key == "img_size":
            try:
                ExportOptions(img_size=value)
            except UsageError as exc:
                raise _refuse(path, text, f"[{where}] img_size = {value}: {exc}", key, where) from None
        if key == "tensorrt":
            for option, setting in value.items():
                check(option, setting, TENSORRT_RULES, f"{where}.tensorrt")


def _toml(value: Any) -> str:
    """A value as the build file wrote it (true, "abc", [224]), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def _relative(root: Path, value: Any) -> Path | None:
    """A path in the build file, relative to the file's folder."""
    return None if value is None else root / Path(value)


def _job(s: dict[str, Any], root: Path, out: Path, force: bool) -> Job:
    if s.get("method", "minmax") not in METHODS:
        raise UsageError(f"unknown calibration method {s['method']!r}; expected one of {', '.join(METHODS)}")
    tolerance = s.get("tolerance", [])
    return resolve_job(
        s["recipe"], weights=_relative(root, s.get("weights")), pretrained=bool(s.get("pretrained", False)),
        ema=bool(s.get("ema", False)),
        export=ExportOptions(opset=int(s.get("opset", 17)), img_size=s.get("img_size"),
                             simplify=bool(s.get("simplify", True)), output=s.get("output", "logits"),
                             input=s.get("input", "float"), bgr=bool(s.get("bgr", False)),
                             exporter=s.get("exporter", "auto")),
        params=RecipeParams(width=s.get("width"), resolution=s.get("resolution"),
                            budget_mflops=s.get("budget_mflops"), query_table=_relative(root, s.get("query_table"))),
        calibration=Int8Options(source=_relative(root, s.get("calib")), method=s.get("method", "minmax"),
                                calib_size=s.get("calib_size"), seed=int(s.get("seed", 0)),
                                heldout=_relative(root, s.get("heldout"))),
        images=_relative(root, s.get("images")), tolerances=[tolerance] if isinstance(tolerance, str) else tolerance,
        out=out, force=force, num_classes=s.get("num_classes"), labels=_relative(root, s.get("labels")))


# ---------------------------------------------------------------------------------------------- shards

# Expected cost of a target in units of one ONNX export at 224 px (measured roughly on a 2-core AMD EPYC: an export
# with its parity check ~5 s, an OpenVINO conversion ~2 s, an INT8 calibration with its forms ~20 s).
TARGET_COST = {"onnx": 1.0, "onnxruntime-fp32": 0.2, "onnxruntime-fp16": 0.5, "openvino-fp32": 0.5,
               "openvino-fp16": 0.5, "onnxruntime-int8": 4.0, "openvino-int8": 4.0, "tensorrt-fp32": 3.0,
               "tensorrt-fp16": 3.0, "tensorrt-int8": 5.0}
SHARD_SLACK = 1.25  # a shard may take up to 25% more than an even share before a model goes to its next choice


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 1 <= I <= N."""
    found = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text or "")
    if not found or not 1 <= int(found.group(1)) <= int(found.group(2)):
        raise UsageError(f"--shard takes I/N with 1 <= I <= N, e.g. 2/4; got {text!r}")
    return int(found.group(1)), int(found.group(2))


def _cost(target: Target) -> float:
    height, width = target.job.preprocess.crop_size
    return TARGET_COST.get(target.name if target.kind == "backend" else "onnx", 1.0) * height * width / 224 ** 2


def _preference(model: str, shards: int) -> list[int]:
    """Rendezvous hashing: each model ranks the shards by a hash of (model, shard), independent of the other
    models, so adding or removing a model elsewhere in the file does not reorder anyone else's choices."""
    def score(shard: int) -> str:
        return hashlib.sha256(f"{model}\0{shard}".encode()).hexdigest()

    return sorted(range(1, shards + 1), key=score, reverse=True)


def shard_of(plan: BuildPlan, shards: int) -> dict[str, int]:
    """Which shard builds each model. A model's targets stay together (they share its export and calibration).
    Models take their first choice (rendezvous hashing) unless that shard is already over an even share of the
    expected cost (with SHARD_SLACK), then their next; models are visited in hash order, not file order, so the
    result depends on the set of models, not on how the file is arranged."""
    cost: dict[str, float] = {}
    for target in plan.targets:
        cost[target.model] = cost.get(target.model, 0.0) + _cost(target)
    capacity = SHARD_SLACK * sum(cost.values()) / shards
    load = dict.fromkeys(range(1, shards + 1), 0.0)
    chosen = {}
    for model in sorted(cost, key=lambda m: hashlib.sha256(m.encode()).hexdigest()):
        ranked = _preference(model, shards)
        shard = next((s for s in ranked if load[s] + cost[model] <= capacity), min(ranked, key=load.get))
        chosen[model] = shard
        load[shard] += cost[model]
    return chosen


def select(plan: BuildPlan, shard: tuple[int, int] | None = None, only: tuple[str, ...] = ()) -> BuildPlan:
    """The share of the plan one machine builds: shard I of N, and/or only the targets of some backends
    ("onnx" for the ONNX exports)."""
    targets = plan.targets
    if only:
        known = ("onnx", "onnxruntime", "openvino", "tensorrt")
        unknown = [b for b in only if b not in known]
        if unknown:
            raise UsageError(f"--only takes {', '.join(known)}; got {', '.join(unknown)}")
        targets = [t for t in targets if ("onnx" if t.kind == "onnx" else t.backend) in only]
    if shard is not None:
        index, count = shard
        owners = shard_of(plan, count)
        targets = [t for t in targets if owners[t.model] == index]
    return replace(plan, targets=targets, shard=shard or plan.shard)


# ---------------------------------------------------------------------------------------------- building



def run_build(plan: BuildPlan, *, fail_fast: bool = False, progress: Progress | None = None,
              on_target: Callable[[TargetResult], None] | None = None, layouts: tuple[str, ...] = ()) -> BuildResult:
    """Build (or reuse) every target of the plan; write manifest.json and SUMMARY.md whatever happened, and the
    serving repositories asked for (`<out>/triton/`, `<out>/ovms/`) from the artifacts that were built or reused."""
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown:
        raise UsageError(f"unknown layout {', '.join(unknown)}; expected {' or '.join(LAYOUTS)}")
    started = time.perf_counter()
    results: list[TargetResult] = []
    contexts: dict[str, Any] = {}
    for target in plan.targets:
        if fail_fast and any(r.status == "failed" for r in results):
            result = TargetResult(target, "skipped", message="not built: an earlier target failed (--fail-fast)")
        else:
            if progress:
                progress(f"{target.model}: {target.name}")
            result = _build_target(target, plan.out, contexts)
        results.append(result)
        if on_target:
            on_target(result)
    benchmarks = _benchmarks(plan, results, progress)
    seconds = time.perf_counter() - started
    result = BuildResult(plan, results, plan.out / MANIFEST_FILE, plan.out / SUMMARY_FILE, seconds,
                         benchmarks=benchmarks)
    data = manifest(result)
    write_json(result.manifest_path, data)
    write_bytes(result.summary_path, summary(result).encode())
    if layouts:
        from effexport.workflow import layouts as repositories

        served = [a for a in data["artifacts"] if a["status"] in ("built", "reused")]
        for layout in layouts:
            if progress:
                progress(f"writing the {layout} repository")
            writer = repositories.write_triton_repository if layout == "triton" else \
                repositories.write_ovms_repository
            result.repositories[layout] = writer(served, plan.out, plan.out / layout)
    return result


def _benchmarks(plan: BuildPlan, results: list[TargetResult], progress: Progress | None) -> dict[str, dict]:
    """`bench = true`: per model, PyTorch eager and every backend and precision it built, timed by effexport
    bench's harness in one run; p50 and the speed-up against eager go into the manifest, the chart into SUMMARY.md.
    A benchmark that cannot run is recorded with its reason; it never fails the build."""
    from effexport.exporter.timing import BenchConfig
    from effexport.workflow.bench import BASELINE, bench_recipe

    records = {}
    for model in dict.fromkeys(t.model for t in plan.targets if t.bench):
        done = [r for r in results if r.target.model == model and r.status in ("built", "reused")
                and r.target.kind == "backend"]
        first = next(t for t in plan.targets if t.model == model)
        backends = list(dict.fromkeys(r.target.backend for r in done)) or ["onnxruntime"]
        precisions = tuple(dict.fromkeys(r.target.precision for r in done)) or ("fp32",)
        if progress:
            progress(f"{model}: benchmarking {', '.join(backends)}")
        config = BenchConfig(iters=first.bench["iters"], max_warmup=max(10, first.bench["iters"]),
                             min_warmup=min(5, first.bench["iters"]))
        try:
            bench = bench_recipe(first.job, [BASELINE, *backends], first.bench["batches"], precisions, config=config)
        except EffexportError as exc:
            records[model] = {"error": str(exc)}
            continue
        records[model] = {
            "json": bench.json_path.resolve().relative_to(plan.out.resolve()).as_posix(),
            "chart": bench.chart_path.resolve().relative_to(plan.out.resolve()).as_posix()
            if bench.chart_path else None,
            "cpu": bench.machine["cpu"], "threads": bench.machine["threads"],
            "results": [{"backend": e.backend, "precision": e.precision, "batch": e.batch,
                         "p50_ms": round(e.stats.p50 * 1e3, 3), "throughput_ips": round(e.stats.throughput, 1),
                         "speedup_vs_torch": None if e.speedup is None else round(e.speedup, 2)}
                        for e in bench.entries if e.stats is not None]}
    return records


def _build_target(target: Target, out: Path, contexts: dict[str, Any]) -> TargetResult:
    from effexport.backends import get_backend

    started = time.perf_counter()
    try:
        if target.kind == "onnx":
            record = _onnx_target(target)
        else:
            found = get_backend(target.backend).probe()
            if not found.available:
                return TargetResult(target, "skipped", message=f"{target.backend} is not available here: "
                                                               f"{found.reason}")
            record = _backend_target(target, contexts)
    except MissingDependencyError as exc:
        return TargetResult(target, "skipped", time.perf_counter() - started, message=str(exc))
    except EffexportError as exc:
        return TargetResult(target, "failed", time.perf_counter() - started, message=str(exc),
                            exit_code=exc.exit_code)
    status = "reused" if record["reused"] else "built"
    return TargetResult(target, status, time.perf_counter() - started, _entry(target, record, out))


def _onnx_target(target: Target) -> dict[str, Any]:
    from effexport.workflow.export import export_recipe

    suffix = target.name[len("onnx"):]
    export = replace(target.job.export, dynamic_batch=suffix == "-dynamic",
                     batch=int(suffix[2:]) if suffix.startswith("-b") else 1)
    result = export_recipe(replace(target.job, export=export))
    report = result.report
    return {"reused": result.reused, "path": result.path, "report": report, "io": report,
            "max_batch": None if export.dynamic_batch else export.batch, "options": None}


def _backend_target(target: Target, contexts: dict[str, Any]) -> dict[str, Any]:
    from effexport.workflow.deploy import ensure_artifact, open_context

    if target.model not in contexts:
        contexts[target.model] = open_context(target.job)
    ctx = contexts[target.model]
    options = None
    max_batch = None
    if target.backend == "tensorrt":
        from effexport.backends.tensorrt import TrtOptions

        options = TrtOptions(**{k: v for k, v in target.trt.items()})
        max_batch = options.max_batch
    artifact = ensure_artifact(ctx, target.backend, target.precision, options)
    return {"reused": artifact.reused, "path": artifact.path, "report": artifact.report, "io": ctx.onnx.report,
            "max_batch": max_batch, "options": artifact.report.get("options")}


def _entry(target: Target, record: dict[str, Any], out: Path) -> dict[str, Any]:
    path: Path = record["path"]
    folder = path.parent
    report = record["report"]
    names = (report.get("artifact") or {}).get("files") or {path.name: None}
    files = {name: {"sha256": sha256_of(folder / name), "bytes": (folder / name).stat().st_size} for name in names}
    parity = report.get("parity", {})
    parity = parity.get("onnxruntime", parity)
    weights = report.get("weights") or {}
    return {
        "model": target.model,
        "target": target.name,
        "recipe": target.job.recipe.name,
        "backend": target.backend,
        "precision": target.precision,
        "folder": folder.resolve().relative_to(out.resolve()).as_posix(),
        "main": path.name,
        "files": files,
        "inputs": record["io"].get("inputs", []),
        "outputs": record["io"].get("outputs", []),
        "max_batch": record["max_batch"],
        "num_classes": record["io"].get("num_classes"),
        "labels": (record["io"].get("labels") or {}).get("names"),
        "weights": {"source": weights.get("source"), "sha256": weights.get("sha256")},
        "fingerprint": report.get("fingerprint"),
        "exporter": record["io"].get("exporter"),
        "options": record["options"],
        "parity": {k: parity.get(k) for k in ("inputs", "samples", "max_abs", "max_rel", "min_cosine", "mean_cosine",
                                              "top1_agreement", "top5_agreement", "tolerance", "passed", "enforced")
                   if k in parity},
        "execution": report.get("execution"),
        "job": job_record(target.job),
    }


def job_record(job: Job) -> dict[str, Any]:
    """What `effexport reverify` needs to rebuild the PyTorch reference of an entry: the weights (absolute path),
    the recipe's options, the graph's ends and the parity images. Paths are absolute; `--weights MODEL=PATH`
    points a reverify elsewhere when the tree moved to another machine."""
    def text(path: Path | None) -> str | None:
        return None if path is None else str(Path(path).resolve())

    params, cal = job.params, job.calibration
    return {"weights": text(job.weights.path), "pretrained": job.weights.pretrained, "ema": job.weights.use_ema,
            "img_size": job.export.img_size, "opset": job.export.opset, "output": job.export.output,
            "input": job.export.input, "bgr": job.export.bgr, "num_classes": job.num_classes,
            "images": text(job.images),
            "params": {"width": params.width, "resolution": params.resolution, "budget_mflops": params.budget_mflops,
                       "query_table": text(params.query_table), "calib": text(params.calib)},
            # the calibration whose data decides which photographs INT8 was judged on (the held-out ones it did not see)
            "calibration": {"source": text(cal.source), "method": cal.method, "calib_size": cal.calib_size,
                            "seed": cal.seed, "percentile": cal.percentile, "views": cal.views,
                            "heldout": text(cal.heldout)}}


def dry_run(plan: BuildPlan) -> list[tuple[Target, str, str]]:
    """What `run_build` would do, without building: (target, "reuse" | "build" | "skip", why). ONNX exports and
    backend artifacts built from the FP32 export are judged exactly as the build will judge them; the others
    depend on an artifact the build makes first (the FP16 graph, the calibration) and say so."""
    from effexport.backends import get_backend
    from effexport.exporter.artifacts import key_digest
    from effexport.workflow import deploy
    from effexport.workflow.deploy import artifact_folder, artifact_precision, backend_options
    from effexport.workflow.export import export_identity, find_reusable, onnx_folder

    def export_state(job: Job) -> tuple[str, str | None]:
        fingerprint = key_digest(export_identity(job))
        reusable = not job.force and find_reusable(onnx_folder(job), fingerprint) is not None
        return ("reuse" if reusable else "build"), (fingerprint if reusable else None)

    planned = []
    for target in plan.targets:
        job = target.job
        if target.kind == "onnx":
            suffix = target.name[len("onnx"):]
            export = replace(job.export, dynamic_batch=suffix == "-dynamic",
                             batch=int(suffix[2:]) if suffix.startswith("-b") else 1)
            state, _ = export_state(replace(job, export=export))
            planned.append((target, state, "identity unchanged" if state == "reuse" else "new or changed inputs"))
            continue
        backend = get_backend(target.backend)
        found = backend.probe()
        if not found.available:
            planned.append((target, "skip", f"{target.backend} is not available here: {found.reason}"))
            continue
        source_state, source = export_state(job.for_backends())
        module = backend.load()
        built_for = artifact_precision(backend, target.precision)
        options = None
        if target.backend == "tensorrt":
            from effexport.backends.tensorrt import TrtOptions

            options = TrtOptions(**target.trt)
        options = backend_options(backend, _FolderOnly(job.folder), options)
        if source is None:
            planned.append((target, "build", "its source export is built first"))
        elif target.backend == "onnxruntime" and built_for == "fp32":
            planned.append((target, "reuse", "the verified dynamic-batch export"))
        elif module.source_precision(built_for, options) != "fp32":
            planned.append((target, "build or reuse", f"decided once its {module.source_precision(built_for, options)}"
                                                      f" source is ready"))
        else:  # the identity ensure_artifact computes, from the same parts
            folder = artifact_folder(job, target.backend, built_for, options)
            source_model = deploy.SourceModel(onnx_folder(job.for_backends()) / "model.onnx", "fp32", source)
            identity = deploy.artifact_identity(source_model, target.backend, found, built_for, options, job.images,
                                                None)
            same = deploy.reusable_artifact(folder, key_digest(identity)) is not None
            planned.append((target, "reuse" if same and not job.force else "build",
                            "identity unchanged" if same else "new or changed inputs"))
    return planned


@dataclass
class _FolderOnly:
    """What backend_options reads of a Context (the model folder, for TensorRT's timing cache)."""

    folder: Path


# ---------------------------------------------------------------------------------------------- reports


def machine() -> dict[str, Any]:
    from effexport.backends.cuda_env import cuda_environment

    env = cuda_environment()
    return {"cpu": cpu_model(), "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))),
            "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "gpus": [g.get("name") for g in env.get("gpus", [])]}


def versions() -> dict[str, str]:
    found = {"effexport": __version__, "python": platform.python_version()}
    for dist in ("torch", "timm", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "tensorrt", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def manifest(result: BuildResult) -> dict[str, Any]:
    plan = result.plan
    artifacts = []
    for r in result.results:
        entry = dict(r.entry) if r.entry else {"model": r.target.model, "target": r.target.name,
                                                "recipe": r.target.job.recipe.name, "backend": r.target.backend,
                                                "precision": r.target.precision}
        entry.update(status=r.status, seconds=round(r.seconds, 2))
        if r.message:
            entry["message"] = r.message
        artifacts.append(entry)
    return {
        "schema": MANIFEST_SCHEMA,
        "build_file": {"path": str(plan.path), "sha256": sha256_of(plan.path)},
        **({"shard": f"{plan.shard[0]}/{plan.shard[1]}"} if plan.shard else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(result.seconds, 2),
        "machine": machine(),
        "versions": versions(),
        "artifacts": artifacts,
        **({"benchmarks": result.benchmarks} if result.benchmarks else {}),
    }


def summary(result: BuildResult) -> str:
    lines = [f"# effexport build: {result.plan.path.name}", "",
             f"{len(result.results)} targets in {result.seconds:.1f} s: "
             + ", ".join(f"{sum(r.status == s for r in result.results)} {s}"
                         for s in ("built", "reused", "failed", "skipped")), ""]
    for model in dict.fromkeys(r.target.model for r in result.results):
        rows = [r for r in result.results if r.target.model == model]
        lines += [f"## {model} ({rows[0].target.job.recipe.name})", "",
                  "| target | status | file | size | max rel | cosine | top-1 | time |", "|---" * 8 + "|"]
        for r in rows:
            e = r.entry
            p = e.get("parity", {})
            size = sum(f["bytes"] for f in e.get("files", {}).values())
            cells = [r.target.name, r.status, f"`{e['folder']}/{e['main']}`" if e else (r.message[:80] or "-"),
                     f"{size / 1e6:.1f} MB" if e else "-",
                     f"{p['max_rel']:.1e}" if "max_rel" in p else "-",
                     f"{p['min_cosine']:.6f}" if "min_cosine" in p else "-",
                     f"{p['top1_agreement']:.0%}" if "top1_agreement" in p else "-", f"{r.seconds:.1f} s"]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
        bench = result.benchmarks.get(model)
        if bench and "results" in bench:
            lines += [f"Latency on {bench['cpu']}, {bench['threads']} threads (effexport bench, PyTorch eager as the "
                      f"baseline in the same run):", "", "| backend | precision | batch | p50 ms | img/s | vs torch |",
                      "|---" * 6 + "|"]
            lines += [f"| {e['backend']} | {e['precision']} | {e['batch']} | {e['p50_ms']:.2f} | "
                      f"{e['throughput_ips']:.1f} | {e['speedup_vs_torch'] or '-'}x |" for e in bench["results"]]
            lines += (["", f"![{model} latency]({bench['chart']})"] if bench.get("chart") else []) + [""]
        elif bench:
            lines += [f"Benchmark not run: {bench['error']}", ""]
    return "\n".join(lines)


INIT_EXAMPLE = '''\
# effexport build file: `effexport build effexport.toml` builds every target below, reuses what has not changed,
# and writes <out>/manifest.json and <out>/SUMMARY.md (default out: effexport-build/ beside this file).
# Paths are relative to this file.

[defaults]                    # every model takes these unless it says otherwise
targets = ["onnx", "onnx-dynamic", "openvino-fp32", "openvino-int8", "onnxruntime-int8", "tensorrt-fp16"]
# targets: onnx (static batch 1), onnx-b<N>, onnx-dynamic, onnxruntime-fp32|fp16|int8, openvino-fp32|fp16|int8,
#          tensorrt-fp32|fp16|int8 (skipped, and said so, on a machine without TensorRT and a GPU)
opset = 17
# images = "photos"           # your photographs for the parity checks (default: the built-in ones)
# calib = "calibration"       # INT8 calibration images (a folder or a .npy/.npz); default: the built-in photographs
# calib_size = 300            # a seeded sample of the calibration images
# heldout = "heldout"         # photographs the INT8 gate judges on (none may be in the calibration set)
# output = "logits"           # logits | softmax | sigmoid (multi-label heads, judged by label-set agreement)
# input = "float"             # float | uint8-nchw | uint8-nhwc (raw pixels; bgr = true for OpenCV-decoded images)
method = "minmax"             # minmax | entropy | percentile
# tolerance = ["int8:min_top1=0.9"]   # as --tolerance: PRECISION:KEY=VALUE

[defaults.tensorrt]           # the batch profile of TensorRT engines
min_batch = 1
opt_batch = 8
max_batch = 32

[models.rexnet]               # the name in the manifest; its artifacts go to <out>/rexnet/
recipe = "rexnet_1.0"
# weights = "weights/rexnet_1.0.pth"   # without weights: random, and every report says so
# num_classes = 10                     # default: the checkpoint's classifier decides (a fine-tuned head)
# labels = "classes.txt"               # one name a line, a JSON list or index -> name; default: ImageNet's for 1000

[models.lite0]
recipe = "efficientnet_lite0"
img_size = 224

[models.mnv3_pfd]
recipe = "mobilenetv3_large_pfd"
targets = ["onnx", "openvino-fp32"]     # overrides [defaults]
'''


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json, shipped in the package (effexport/schemas/manifest.schema.json)."""
    import json
    from importlib import resources

    return json.loads(resources.files("effexport").joinpath("schemas/manifest.schema.json").read_text())


def write_init(path: Path) -> Path:
    """The commented example build file; refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{path} exists; effexport build --init writes a new example only where there is none")
    try:
        write_bytes(path, INIT_EXAMPLE.encode())
    except OSError as exc:  # --init has no --out: the way out is another path for the file
        raise UsageError(f"{path} cannot be written ({exc.strerror or exc}); give --init a path in a folder you can "
                         f"write: effexport build <folder>/effexport.toml --init") from None
    return path
