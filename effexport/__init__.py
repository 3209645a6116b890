"""effexport: verified deployment artifacts for efficient CNN image classifiers.

The functions below are what the command line calls, with its option names as keyword arguments; they return the
result objects instead of printing, and raise `effexport.errors` exceptions (EffexportError subclasses). `import
effexport` stays light (`effexport --help` depends on it): torch, timm and onnx are imported inside each function.

    result = effexport.export_onnx("mobilenetv3_small", img_size=64, out="artifacts")
    artifact = effexport.build_backend("mobilenetv3_small", "openvino", "fp16", out="artifacts")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from effexport.calibration.int8 import Int8Result
    from effexport.exporter.parity import Tolerance
    from effexport.workflow.bench import BenchResult
    from effexport.workflow.build import BuildResult, Target
    from effexport.workflow.deploy import Artifact
    from effexport.workflow.export import OnnxResult
    from effexport.workflow.job import Job
    from effexport.workflow.reverify import ReverifyResult
    from effexport.workflow.verify import VerifyResult

from effexport.version import __version__

__all__ = ["__version__", "bench", "build", "build_backend", "calibrate", "export_onnx", "reverify", "verify"]

StrPath = str | PathLike[str]
Progress = Callable[[str], None]  # called with each stage's description
Tolerances = Iterable[str] | Mapping[str, "Tolerance"]  # "int8:min_top1=0.9" strings, or parsed per precision
DEFAULT_OUT = "effexport-out"
BACKEND_OPSET = 17  # effexport.workflow.job.DEFAULT_OPSET, without importing it here


def _path(value: StrPath | None) -> Path | None:
    return None if value is None else Path(value)


def _job(name: str, *, weights: StrPath | None, pretrained: bool, ema: bool, img_size: int | None, opset: int,
         images: StrPath | None, tolerance: Tolerances, width: float | None, resolution: int | None,
         budget_mflops: float | None, query_table: StrPath | None, out: StrPath, force: bool, batch: int = 1,
         dynamic_batch: bool = False, simplify: bool = True, calib: StrPath | None = None, method: str = "minmax",
         calib_size: int | None = None, seed: int = 0, openvino: bool | None = None, output: str = "logits",
         input: str = "float", bgr: bool = False, heldout: StrPath | None = None, num_classes: int | None = None,
         labels: StrPath | None = None, exporter: str = "auto") -> Job:
    """Every function's inputs, resolved once into a Job and checked before any work (as the CLI's `_job`)."""
    from effexport.calibration.options import Int8Options
    from effexport.recipes import RecipeParams
    from effexport.workflow.job import ExportOptions, resolve_job

    return resolve_job(
        name, weights=_path(weights), pretrained=pretrained, ema=ema,
        export=ExportOptions(opset=opset, batch=batch, dynamic_batch=dynamic_batch, img_size=img_size,
                             simplify=simplify, output=output, input=input, bgr=bgr, exporter=exporter),
        params=RecipeParams(width=width, resolution=resolution, budget_mflops=budget_mflops,
                            query_table=_path(query_table)),
        calibration=Int8Options(source=_path(calib), method=method, calib_size=calib_size, seed=seed,
                                openvino=openvino, heldout=_path(heldout)),
        images=_path(images), tolerances=tolerance, out=Path(out), force=force, num_classes=num_classes,
        labels=_path(labels))


def _names(value: str | Sequence[str], known: Iterable[str], what: str) -> list[str]:
    """"a,b" or ["a", "b"] -> ["a", "b"], each checked against `known` (UsageError naming the valid ones)."""
    from effexport.backends import parse_list

    return parse_list(value if isinstance(value, str) else ",".join(value), known, what)


def export_onnx(name: str, *, opset: int = BACKEND_OPSET, exporter: str = "auto", batch: int = 1,
                dynamic_batch: bool = False, img_size: int | None = None, weights: StrPath | None = None,
                pretrained: bool = False, ema: bool = False, simplify: bool = True, images: StrPath | None = None,
                tolerance: Tolerances = (),
                out: StrPath = DEFAULT_OUT, force: bool = False, width: float | None = None,
                resolution: int | None = None, budget_mflops: float | None = None,
                query_table: StrPath | None = None, calib: StrPath | None = None,
                num_classes: int | None = None, labels: StrPath | None = None,
                output: str = "logits", input: str = "float", bgr: bool = False, heldout: StrPath | None = None,
                progress: Progress | None = None) -> OnnxResult:
    """`effexport onnx`: export a recipe to ONNX, check and simplify it, and verify it against PyTorch in ONNX
    Runtime (ParityError outside the tolerance). Reused while nothing that shapes it changed, unless `force`."""
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, batch=batch,
               dynamic_batch=dynamic_batch, simplify=simplify, images=images, tolerance=tolerance, calib=calib,
               width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out,
               force=force,
               exporter=exporter, num_classes=num_classes, labels=labels, output=output, input=input, bgr=bgr,
               heldout=heldout)
    from effexport.workflow.export import export_recipe

    return export_recipe(job, progress)


def build_backend(name: str, backend: str, precision: str = "fp32", *, options: Any = None,
                  img_size: int | None = None, opset: int = BACKEND_OPSET, exporter: str = "auto",
                  weights: StrPath | None = None, pretrained: bool = False, ema: bool = False,
                  images: StrPath | None = None, tolerance: Tolerances = (), calib: StrPath | None = None,
                  method: str = "minmax",
                  calib_size: int | None = None, width: float | None = None, resolution: int | None = None,
                  budget_mflops: float | None = None, query_table: StrPath | None = None, out: StrPath = DEFAULT_OUT,
                  force: bool = False, num_classes: int | None = None, labels: StrPath | None = None,
                  output: str = "logits", input: str = "float", bgr: bool = False, heldout: StrPath | None = None,
                  progress: Progress | None = None) -> Artifact:
    """`effexport openvino` / `effexport trt`, for any backend: build (or reuse) the backend's artifact at
    `precision` from the verified dynamic-batch ONNX and check it against PyTorch. `options` are the backend's own
    (`OvOptions`, `TrtOptions`); INT8 comes from the recipe's one calibration (`calib`, `method`, `calib_size`)."""
    from effexport.backends import get_backend
    from effexport.errors import UsageError

    spec = get_backend(backend)  # an unknown backend or precision is refused before the job is resolved
    if precision not in spec.precisions:
        raise UsageError(f"{backend} supports {', '.join(spec.precisions)}, not {precision}")
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out, force=force,
               exporter=exporter, num_classes=num_classes, labels=labels, output=output, input=input, bgr=bgr,
               heldout=heldout)
    from effexport.workflow.deploy import deploy

    return deploy(job, backend, precision, options, progress)


def calibrate(name: str, *, calib: StrPath | None = None, method: str = "minmax", calib_size: int | None = None,
              seed: int = 0, openvino: bool | None = None, weights: StrPath | None = None, pretrained: bool = False,
              ema: bool = False, img_size: int | None = None, opset: int = BACKEND_OPSET, exporter: str = "auto",
              images: StrPath | None = None, tolerance: Tolerances = (), width: float | None = None,
              resolution: int | None = None, budget_mflops: float | None = None, query_table: StrPath | None = None,
              out: StrPath = DEFAULT_OUT, force: bool = False, enforce_all: bool = True,
              num_classes: int | None = None, labels: StrPath | None = None,
              output: str = "logits", input: str = "float", bgr: bool = False, heldout: StrPath | None = None,
              progress: Progress | None = None) -> Int8Result:
    """`effexport calibrate`: calibrate the verified dynamic-batch ONNX and build every INT8 form (QDQ ONNX, ONNX
    Runtime CPU, NNCF OpenVINO when `openvino` is not False and it is installed). With `enforce_all` (the CLI's
    behaviour) a form outside the INT8 tolerance raises ParityError; without, parity is recorded in the manifest."""
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, seed=seed, openvino=openvino,
               width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out,
               force=force,
               exporter=exporter, num_classes=num_classes, labels=labels, output=output, input=input, bgr=bgr,
               heldout=heldout)
    from effexport.workflow.deploy import calibrate as calibrate_job

    return calibrate_job(job, enforce=None if enforce_all else (), progress=progress)


def verify(name: str, *, backends: str | Sequence[str] | None = None, precisions: str | Sequence[str] = ("fp32",),
           device: str = "CPU", options: Mapping[str, Any] | None = None, images: StrPath | None = None,
           tolerance: Tolerances = (), calib: StrPath | None = None, method: str = "minmax",
           calib_size: int | None = None, weights: StrPath | None = None, pretrained: bool = False, ema: bool = False,
           img_size: int | None = None, opset: int = BACKEND_OPSET, exporter: str = "auto", width: float | None = None,
           resolution: int | None = None, budget_mflops: float | None = None, query_table: StrPath | None = None,
           out: StrPath = DEFAULT_OUT, check: bool = True, num_classes: int | None = None,
           labels: StrPath | None = None,
           output: str = "logits", input: str = "float", bgr: bool = False, heldout: StrPath | None = None,
           progress: Progress | None = None) -> VerifyResult:
    """`effexport verify`: run each backend (default: every one available here) at each precision on the same
    inputs and compare with PyTorch FP32; writes verify.json. With `check` (the CLI's behaviour) any failed row
    raises ParityError after the table is written; otherwise inspect `result.passed` and `result.failures`.
    `options` maps a backend to its options (the OpenVINO default: `OvOptions(device)`)."""
    from effexport.backends import BACKENDS, probe_all
    from effexport.exporter.parity import POLICY

    if backends is None:
        backends = [a.name for a in probe_all() if a.available]
    chosen = _names(backends, BACKENDS, "backend")
    wanted = _names(precisions, POLICY, "precision")
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out, force=False,
               exporter=exporter, num_classes=num_classes, labels=labels, output=output, input=input, bgr=bgr,
               heldout=heldout)
    from effexport.backends.openvino import OvOptions
    from effexport.workflow.verify import verify_recipe

    result = verify_recipe(job, chosen, wanted, {"openvino": OvOptions(device), **(options or {})}, progress)
    if check and (error := result.error()) is not None:
        raise error
    return result


def bench(name: str, *, backends: str | Sequence[str] = ("torch", "onnxruntime", "openvino"),
          batches: Sequence[int] = (1, 8), precisions: str | Sequence[str] = ("fp32",), threads: int | None = None,
          iters: int = 50, max_warmup: int = 100, chart: bool = True, options: Mapping[str, Any] | None = None,
          tolerance: Tolerances = (), calib: StrPath | None = None, method: str = "minmax",
          calib_size: int | None = None, weights: StrPath | None = None, pretrained: bool = False, ema: bool = False,
          img_size: int | None = None, opset: int = BACKEND_OPSET, exporter: str = "auto", width: float | None = None,
          resolution: int | None = None, budget_mflops: float | None = None, query_table: StrPath | None = None,
          out: StrPath = DEFAULT_OUT, num_classes: int | None = None, labels: StrPath | None = None,
          output: str = "logits", input: str = "float", bgr: bool = False, heldout: StrPath | None = None,
          progress: Progress | None = None,
          on_run: Callable[[str, int, int], None] | None = None) -> BenchResult:
    """`effexport bench`: time PyTorch eager (the baseline, always run) and each backend with one harness at each
    batch size, every artifact verified first; writes bench.json (and bench.png with `chart`). `on_run(label, done,
    total)` follows the timed runs."""
    from effexport.errors import UsageError
    from effexport.exporter.parity import POLICY
    from effexport.exporter.timing import BenchConfig
    from effexport.workflow.bench import bench_recipe, check_backends, known_backends

    chosen = _names(backends, known_backends(), "backend")
    wanted = tuple(_names(precisions, POLICY, "precision"))
    sizes = list(dict.fromkeys(batches))
    if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise UsageError(f"batches must be positive integers, got {list(batches)}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    config = BenchConfig(iters=iters, max_warmup=max_warmup, min_warmup=min(5, max_warmup))
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=None,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out, force=False,
               exporter=exporter, num_classes=num_classes, labels=labels, output=output, input=input, bgr=bgr,
               heldout=heldout)
    check_backends(chosen)
    return bench_recipe(job, chosen, sizes, wanted, threads, config, options=dict(options) if options else None,
                        chart=chart, progress=progress, on_run=on_run)


def build(build_file: StrPath = "effexport.toml", *, out: StrPath | None = None, fail_fast: bool = False,
          force: bool = False, layouts: Sequence[str] = (), dry_run: bool = False, check: bool = True,
          progress: Progress | None = None) -> BuildResult | list[tuple[Target, str, str]]:
    """`effexport build`: build (or reuse) every model and target of a TOML build file and write manifest.json and
    SUMMARY.md (default output root: effexport-build/ beside the file). With `dry_run`, build nothing and return
    the plan as (target, action, why) rows. With `check` (the CLI's behaviour) failed targets raise ParityError
    (parity only) or ExportError once everything is written; otherwise inspect `result.failed`."""
    from effexport.workflow.build import dry_run as plan_only
    from effexport.workflow.build import load_plan, run_build

    plan = load_plan(Path(build_file), _path(out), force)
    if dry_run:
        return plan_only(plan)
    result = run_build(plan, fail_fast=fail_fast, progress=progress, layouts=tuple(layouts))
    if check and (error := result.error()) is not None:
        raise error
    return result


def reverify(tree: StrPath, *, weights: Mapping[str, StrPath] | None = None, check: bool = True,
             progress: Progress | None = None) -> ReverifyResult:
    """`effexport reverify`: run every built or reused artifact of a build or merged tree, as its files are, against
    PyTorch from the weights its manifest records (`weights`: model -> path where the recorded one does not reach;
    refused unless its sha256 is the recorded one). With `check`, any artifact outside its recorded tolerance raises
    ParityError; otherwise inspect `result.failed`. It trusts the weights files and this machine's runtimes."""
    from effexport.workflow.reverify import reverify_tree

    result = reverify_tree(Path(tree), {k: Path(v) for k, v in (weights or {}).items()}, progress)
    if check and (error := result.error()) is not None:
        raise error
    return result
