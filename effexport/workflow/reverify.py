"""`effexport reverify TREE`: every artifact of a build or merged tree judged again as it is in the tree.

`merge` checks each file against the sha256 its manifest records, and `verify` checks a freshly built artifact;
neither notices a shard whose file was edited and whose manifest was rewritten to match. Reverify does: for every
built or reused entry it rebuilds the PyTorch model from the weights the manifest names (refusing a weights file
whose sha256 differs from the recorded one), runs it on the same parity inputs the artifact was judged on, opens
the artifact file in the tree with its backend's runner, and compares under the tolerance the entry records.
INT8 entries are judged on the photographs their calibration did not see, as the build judged them: the calibration
data the manifest's job names is read again (only to know which photographs it holds), the held-out photographs are
chosen from that as at build time, and the rebuilt set must be the one recorded (its description and count), else
the row fails: the calibration folder or the held-out photographs changed since.

What it proves: the artifact bytes in the tree compute the function of those weights, within the recorded
tolerance, on the parity inputs, on this machine's runtimes. What it does not: it trusts the weights file (a
weights file that was itself replaced, with the manifest's weights sha256 rewritten, passes), this machine's
PyTorch and backends, and says nothing of inputs outside the parity set. Nothing in the tree is written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effexport.errors import EffexportError, ParityError, UsageError
from effexport.exporter.artifacts import sha256_of
from effexport.exporter.parity import ParityReport, Tolerance, compare
from effexport.workflow.job import ExportOptions, Job, resolve_job
from effexport.workflow.merge import MANIFEST_FILE, SERVED, _check, _read

Progress = Callable[[str], None]


@dataclass
class ReverifyRow:
    model: str
    target: str
    path: str  # the artifact's main file, relative to the tree
    status: str  # passed | failed | skipped
    message: str = ""
    parity: ParityReport | None = None
    weights: str = ""  # where the reference's weights came from


@dataclass
class ReverifyResult:
    root: Path
    rows: list[ReverifyRow] = field(default_factory=list)

    @property
    def failed(self) -> list[ReverifyRow]:
        return [r for r in self.rows if r.status == "failed"]

    def error(self) -> ParityError | None:
        if not self.failed:
            return None
        return ParityError(f"{len(self.failed)} of {len(self.rows)} artifacts in {self.root} fail re-verification: "
                           + "; ".join(f"{r.path}: {r.message}" for r in self.failed),
                           report=self.root / MANIFEST_FILE)


def parse_weights(items: list[str] | None) -> dict[str, Path]:
    """`--weights MODEL=PATH` (repeatable) -> {model: path}."""
    found = {}
    for item in items or []:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise UsageError(f"--weights takes MODEL=PATH (the model's name in the manifest); got {item!r}")
        found[model] = Path(path)
    return found


def _weights(entry: dict[str, Any], given: Path | None) -> tuple[Path | None, str]:
    """The weights file of an entry, checked against the sha256 its manifest records, and how it was found."""
    recorded = entry.get("weights") or {}
    job = entry["job"]
    what = f"{entry['model']} {entry['target']}"
    source = recorded.get("source")
    if source == "random":
        if given is not None:
            raise UsageError(f"{what}: the manifest records random weights; --weights {entry['model']}=... does not "
                             f"apply")
        return None, "random weights, rebuilt from their seed"
    if source == "pretrained" or job.get("pretrained"):
        return None, "pretrained weights from timm (not checked by sha256: the manifest records none)"
    path = given if given is not None else (Path(job["weights"]) if job.get("weights") else None)
    if path is None:
        raise UsageError(f"{what}: the manifest names no weights file; pass --weights {entry['model']}=PATH")
    if not path.is_file():
        raise UsageError(f"{what}: weights {path} not found; pass --weights {entry['model']}=PATH")
    if not recorded.get("sha256"):
        raise UsageError(f"{what}: the manifest records no sha256 of its weights, so none can be trusted")
    actual = sha256_of(path)
    if actual != recorded["sha256"]:
        raise UsageError(f"{what}: weights {path} have sha256 {actual[:16]}..., the manifest records "
                         f"{recorded['sha256'][:16]}...: not the weights this artifact was built from")
    return path, f"{path} (sha256 {actual[:16]}... as recorded)"


def _calibration(job: dict[str, Any]):
    from effexport.calibration.options import Int8Options

    cal = job.get("calibration") or {}
    paths = {k: Path(cal[k]) if cal.get(k) else None for k in ("source", "heldout")}
    return Int8Options(method=cal.get("method", "minmax"), calib_size=cal.get("calib_size"), seed=cal.get("seed", 0),
                       percentile=cal.get("percentile", 99.999), views=cal.get("views", True), **paths)


def _job(entry: dict[str, Any], weights: Path | None, out: Path) -> Job:
    job = entry["job"]
    params = job.get("params") or {}
    paths = {k: Path(params[k]) if params.get(k) else None for k in ("query_table", "calib")}
    from effexport.recipes import RecipeParams

    return resolve_job(
        entry["recipe"], weights=weights, pretrained=bool(job.get("pretrained")), ema=bool(job.get("ema")),
        export=ExportOptions(opset=job.get("opset", 17), img_size=job.get("img_size"),
                             output=job.get("output", "logits"), input=job.get("input", "float"),
                             bgr=bool(job.get("bgr"))),
        params=RecipeParams(width=params.get("width"), resolution=params.get("resolution"),
                            budget_mflops=params.get("budget_mflops"), **paths),
        images=Path(job["images"]) if job.get("images") else None, out=out, num_classes=job.get("num_classes"),
        calibration=_calibration(job))


def _parity_inputs(job: Job, precision: str) -> tuple[Any, str]:
    """The inputs an artifact of `precision` was judged on, and their description: the parity set (workflow.
    reference), or for INT8 the photographs its calibration did not see (calibration.heldout.int8_parity_inputs)."""
    if precision != "int8":
        from effexport.exporter.inputs import parity_inputs

        return parity_inputs(job.preprocess, images_dir=job.images)
    from effexport.calibration.data import load_calibration
    from effexport.calibration.heldout import int8_parity_inputs

    cal = job.calibration
    data = load_calibration(cal.source, job.preprocess, cal.calib_size, cal.seed, cal.views)
    photos = int8_parity_inputs(job.preprocess, job.images, data.manifest(), cal.heldout)
    return photos.inputs, photos.description


def _reference(job: Job, precision: str) -> tuple[Any, Any, str]:
    """PyTorch FP32 on the inputs the artifacts of `precision` were judged on, and their description."""
    from effexport.exporter.graph_io import wrap
    from effexport.workflow.export import build_model, run_torch

    inputs, described = _parity_inputs(job, precision)
    inputs = job.export.graph_io.encode(inputs, job.preprocess)
    model, _ = build_model(job.recipe, job.weights, job.num_classes)
    return inputs, run_torch(wrap(model, job.export.graph_io, job.preprocess), inputs), described


def _tolerance(entry: dict[str, Any], job: Job) -> Tolerance:
    recorded = (entry.get("parity") or {}).get("tolerance")
    rule = job.export.graph_io.rule
    if isinstance(recorded, dict) and recorded:
        return Tolerance(**{k: float(v) for k, v in recorded.items() if k in Tolerance.__dataclass_fields__
                            and k != "rule"}, rule=rule)
    return job.tolerance(entry["precision"])


def _options(entry: dict[str, Any]) -> Any:
    if entry["backend"] != "tensorrt":
        return None
    from effexport.backends.tensorrt import TrtOptions

    return TrtOptions(version_compatible=bool((entry.get("options") or {}).get("version_compatible")))


def reverify_tree(root: Path, weights: Mapping[str, Path] | None = None,
                  progress: Progress | None = None) -> ReverifyResult:
    """Judge every built or reused artifact of the tree at `root` as its files are, against PyTorch from the
    weights its manifest records. Raises UsageError (exit 2) for a tree or weights that cannot be trusted; returns
    the rows, whose `error()` is the ParityError (exit 3) when any artifact is outside its tolerance."""
    from effexport.backends import get_backend

    root = Path(root)
    weights = dict(weights or {})
    data = _read(root)
    entries = [e for e in data["artifacts"] if e["status"] in SERVED]
    unknown = sorted(set(weights) - {e["model"] for e in entries})
    if unknown:
        raise UsageError(f"--weights names {', '.join(unknown)}, which {root / MANIFEST_FILE} does not hold")
    result = ReverifyResult(root)
    references: dict[str, tuple[Any, Any, str]] = {}
    with tempfile.TemporaryDirectory(prefix="effexport-reverify-") as scratch:
        for entry in entries:
            path = f"{entry['folder']}/{entry['main']}"
            row = ReverifyRow(entry["model"], entry["target"], path, "skipped")
            result.rows.append(row)
            if "job" not in entry:
                row.message = "the manifest does not record its job (built by an older effexport): rebuild it"
                continue
            if entry["precision"] == "int8" and "calibration" not in entry["job"]:
                row.message = "the manifest does not record the INT8 calibration (built by an older effexport)"
                continue
            found = get_backend(entry["backend"]).probe()
            if not found.available:
                row.message = f"{entry['backend']} is not available here: {found.reason}"
                continue
            file, row.weights = _weights(entry, weights.get(entry["model"]))
            try:
                _check(root, entry)  # the files are those the manifest records (and inside the tree)
            except UsageError as exc:
                row.status, row.message = "failed", str(exc)
                continue
            job = _job(entry, file, Path(scratch))
            kind = "int8" if entry["precision"] == "int8" else "parity"
            key = repr((entry["model"], entry["job"], str(file), kind))
            if key not in references:
                if progress:
                    progress(f"{entry['model']}: the PyTorch reference" + (" on the INT8 held-out photographs"
                                                                           if kind == "int8" else ""))
                references[key] = _reference(job, entry["precision"])
            inputs, outputs, described = references[key]
            recorded = entry.get("parity") or {}
            if kind == "int8" and (recorded.get("samples") not in (None, len(inputs))
                                   or recorded.get("inputs") not in (None, described)):
                row.status = "failed"
                row.message = (f"the INT8 parity inputs rebuilt here ({described}) are not those the artifact was "
                               f"judged on ({recorded.get('inputs') or recorded.get('samples')}): the calibration data "
                               f"or the held-out photographs changed since the build")
                continue
            if progress:
                progress(f"{entry['model']}: {entry['target']} ({path})")
            try:
                module = get_backend(entry["backend"]).load()
                with module.open_runner(root / path, precision=entry["precision"], options=_options(entry)) as runner:
                    candidate = runner.run(inputs)
                row.parity = compare(outputs, candidate, _tolerance(entry, job))
            except (EffexportError, ValueError, RuntimeError) as exc:
                row.status, row.message = "failed", f"{type(exc).__name__}: {exc}"
                continue
            if recorded.get("enforced") is False:  # INT8 of random weights: the build recorded it, judged nothing
                row.message = f"not judged (random weights, as at build time): {row.parity.summary()}"
                continue
            row.status = "passed" if row.parity.passed else "failed"
            row.message = row.parity.summary() if row.parity.passed else "; ".join(row.parity.failures)
    return result
