"""The `effexport` command line: parses arguments and calls one library function per command.

torch, timm and onnx are imported inside the commands so that `effexport --help` answers at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from effexport.errors import EXIT_CODES, EffexportError, ExportError

app = typer.Typer(
    name="effexport",
    help="Export efficient CNN classifiers to verified ONNX, OpenVINO and TensorRT artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog="Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
)


def _console(stderr: bool) -> Console:
    """Rich wraps at 80 columns when output is not a terminal (CI logs, pipes, `tee`), which cuts the tables'
    file names in half; 120 keeps a row on one line. A terminal's own width, or COLUMNS, still decides.
    The stream itself is left to rich, which looks it up at each write (tests swap sys.stdout)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 120
    return Console(stderr=stderr, width=width)


console = _console(stderr=False)
err = _console(stderr=True)

OutOption = Annotated[Path, typer.Option("--out", help=(
    "Output root: <out>/<model>/<artifact folder>/, where <model> is the recipe name, timm-<name> for timm:<name>, "
    "or <recipe>-w<W>-r<R> for a slimmable point (README: Output layout)."))]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# ---------------------------------------------------------------------------------------------- slimmable options
# Only recipes that take them (the slimmable networks) accept these; any other recipe exits 2.

WidthOption = Annotated[float | None, typer.Option(
    "--width", help="Slimmable recipes: the width to export (within the trained range).")]
ResolutionOption = Annotated[int | None, typer.Option(
    "--resolution", help="Slimmable recipes: the input resolution (BatchNorm statistics are re-estimated there).")]
BudgetOption = Annotated[float | None, typer.Option(
    "--budget-mflops", help="Slimmable recipes: export the most accurate query-table point within this budget.")]
QueryTableOption = Annotated[Path | None, typer.Option(
    "--query-table", help="Slimmable recipes: your own query table for --budget-mflops (CSV: "
                          "mflops,width,resolution,top1).")]


# ---------------------------------------------------------------------------------------------- calibration options
# One calibration serves every INT8 artifact of a recipe (effexport/calibration/build.py); --calib also feeds the
# BatchNorm re-estimation of slimmable recipes.

CalibOption = Annotated[Path | None, typer.Option(
    "--calib", help="Calibration images: a folder (jpg/png/webp, recursive) or a .npy/.npz of preprocessed inputs, "
                    "for INT8 and for the BatchNorm re-estimation of slimmable recipes; default: the built-in "
                    "photographs.")]
MethodOption = Annotated[str, typer.Option("--method", help="Calibration: minmax, entropy or percentile.")]
CalibSizeOption = Annotated[int | None, typer.Option("--calib-size", help="Use a seeded sample of N images.")]
ToleranceOption = Annotated[list[str] | None, typer.Option(
    "--tolerance", help="Override, e.g. int8:min_top1=0.9 or fp16:min_cosine=0.9995 (repeatable).")]


def _job(name: str, *, weights=None, pretrained=False, ema=False, img_size=None, opset=17, batch=1,
         dynamic_batch=False, simplify=True, images=None, tolerance=None, calib=None, method="minmax", calib_size=None,
         seed=0, openvino=None, width=None, resolution=None, budget_mflops=None, query_table=None, force=False,
         out=Path("effexport-out")):
    """Every command's inputs, resolved once into a Job (effexport.job) and checked before any work."""
    from effexport.calibration.options import Int8Options
    from effexport.job import ExportOptions, resolve_job
    from effexport.recipes import RecipeParams

    return resolve_job(
        name, weights=weights, pretrained=pretrained, ema=ema,
        export=ExportOptions(opset=opset, batch=batch, dynamic_batch=dynamic_batch, img_size=img_size,
                             simplify=simplify),
        params=RecipeParams(width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table),
        calibration=Int8Options(source=calib, method=method, calib_size=calib_size, seed=seed, openvino=openvino),
        images=images, tolerances=tolerance or [], out=out, force=force)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage.")] = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])
    for chatty in ("huggingface_hub", "httpx", "urllib3"):  # their retries end in our one-line error
        logging.getLogger(chatty).setLevel(logging.ERROR)


def _warn(text: str) -> None:
    """One warning line; the text is not markup (it names pip extras like 'effexport[nncf]')."""
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False)


@contextmanager
def _status(message: str):
    """A spinner on stderr whose text each pipeline stage updates."""
    if not err.is_terminal:
        yield lambda msg: logging.getLogger("effexport").info(msg)
        return
    with err.status(message) as status:
        yield lambda msg: status.update(msg)


# ---------------------------------------------------------------------------------------------- list / info


@app.command("list")
def list_cmd(as_json: JsonOption = False) -> None:
    """Every recipe with its family, input size and parameter count."""
    from effexport.info import recipe_rows

    rows = recipe_rows()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} recipes (any other timm model: timm:<name>)")
    for col in ("recipe", "family", "input", "params", "aliases"):
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold",
                         no_wrap=col != "aliases")
    for r in rows:
        table.add_row(r["name"], r["family"], "x".join(map(str, r["input_size"][1:])), f"{r['params'] / 1e6:.1f}M",
                      ", ".join(r["aliases"]))
    console.print(table)


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    img_size: Annotated[int | None, typer.Option(help="Count MACs at this input size.")] = None,
    as_json: JsonOption = False,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
) -> None:
    """Params, MACs, input spec, preprocessing, rewrites and origin of one recipe."""
    from effexport.info import recipe_info
    from effexport.recipes import RecipeParams

    data = recipe_info(name, img_size, RecipeParams(width=width, resolution=resolution, budget_mflops=budget_mflops,
                                                    query_table=query_table))
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(show_header=False, title=data["name"], title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    pp = data["preprocessing"]
    rows = [
        ("family", data["family"]),
        ("source", data["source"]),
        ("paper", data["paper"] or "-"),
        ("params", f"{data['params']:,} ({data['params'] / 1e6:.2f}M)"),
        ("MACs", f"{data['macs']:,} ({data['macs'] / 1e9:.3f} G) at {data['input']['shape'][2]}x"
                 f"{data['input']['shape'][3]}; multiply-accumulates, what the papers call FLOPs"),
        ("input", f"{data['input']['name']} {data['input']['shape']} {data['input']['dtype']} NCHW"),
        ("output", f"{data['output']['name']} {data['output']['shape']}"),
        ("preprocessing", f"resize short side to {pp['resize']} ({pp['interpolation']}), center-crop "
                          f"{pp['crop_size'][0]}x{pp['crop_size'][1]} (crop fraction {pp['crop_pct']}), scale to "
                          f"[0, 1], mean {pp['mean']}, std {pp['std']}"),
        ("rewrites", "\n".join(f"{r['name']}: {r['doc']}" for r in data["rewrites"]) or "-"),
        ("checkpoints", ", ".join(data["checkpoint_layouts"])),
        ("pretrained", "available through timm (--pretrained)" if data["pretrained_available"]
         else "not published through timm: use --weights PATH"),
    ]
    if data["configuration"]:
        rows.append(("configuration", ", ".join(f"{k} {v}" for k, v in data["configuration"].items())))
    if data["notes"]:
        rows.append(("notes", data["notes"]))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


# ---------------------------------------------------------------------------------------------- onnx


@app.command("onnx")
def onnx_cmd(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    opset: Annotated[int, typer.Option(help="ONNX opset; the file has exactly this opset or the command fails.")] = 17,
    batch: Annotated[int, typer.Option(help="Static batch size.")] = 1,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension.")] = False,
    img_size: Annotated[int | None, typer.Option(help="Export resolution (default: the recipe's).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Checkpoint (.pth/.pt/.safetensors).")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (network).")] = False,
    ema: Annotated[bool, typer.Option("--ema", help="Prefer the EMA weights in a training checkpoint.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    images: Annotated[Path | None, typer.Option(help="Folder of photos for the parity check.")] = None,
    tolerance: ToleranceOption = None,
    force: Annotated[bool, typer.Option("--force", help="Export again even if nothing changed.")] = False,
    out: OutOption = Path("effexport-out"),
    int8: Annotated[bool, typer.Option("--int8", help="Also build the INT8 forms ('effexport calibrate').")] = False,
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="Calibration images (a folder, or a .npy/.npz of preprocessed inputs): BatchNorm "
                        "re-estimation of slimmable recipes, INT8 calibration with --int8.")] = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
) -> None:
    """Export a recipe to ONNX, check and simplify it, and verify it against PyTorch in ONNX Runtime.
    Writes <out>/<model>/onnx-<b1|bN|dynamic>[-<img>px][-opset<N>]/model.onnx (see README, Output layout)."""
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, batch=batch,
               dynamic_batch=dynamic_batch, simplify=simplify, images=images, tolerance=tolerance, calib=calib,
               method=method, calib_size=calib_size, width=width, resolution=resolution, budget_mflops=budget_mflops,
               query_table=query_table, force=force, out=out)
    from effexport.exporter.pipeline import export_recipe

    with _status(f"exporting {name}") as progress:
        result = export_recipe(job, progress)
    _print_export(result)
    if int8:
        _calibrate(job, enforce=None)


def _print_export(result) -> None:
    report = result.report
    parity = report["parity"]["onnxruntime"]
    _warn_random(report["weights"])
    counts = report["node_counts"]
    ops = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])
    state = "reused" if result.reused else "wrote"
    console.print(f"{state} {result.path} (opset {report['opset']}, {sum(counts.values())} nodes: {ops})", markup=False)
    console.print(f"parity vs PyTorch FP32 in ONNX Runtime: [green]passed[/] - max abs {parity['max_abs']:.2e}, "
                  f"rel {parity['max_rel']:.2e}, cosine {parity['min_cosine']:.6f}, top-1 "
                  f"{parity['top1_agreement']:.0%}, top-5 {parity['top5_agreement']:.0%} "
                  f"over {parity['samples']} inputs")
    console.print(f"report: {result.report_path}", markup=False)


# ---------------------------------------------------------------------------------------------- backends
# effexport backends / openvino / trt / verify / bench: the backend artifacts of one recipe, built from the
# shared verified (dynamic-batch) ONNX in <out>/<model>/onnx-dynamic/ and checked against PyTorch.

WeightsOption = Annotated[Path | None, typer.Option("--weights", help="Checkpoint (.pth/.pt/.safetensors).")]
PretrainedOption = Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (network).")]
EmaOption = Annotated[bool, typer.Option("--ema", help="Prefer the EMA weights in a training checkpoint.")]
ImgSizeOption = Annotated[int | None, typer.Option("--img-size", help="Input resolution (default: the recipe's).")]
OpsetOption = Annotated[int, typer.Option("--opset", help="Opset of the shared ONNX export.")]
ImagesOption = Annotated[Path | None, typer.Option("--images", help="Folder of photos for the parity check.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Build again even if nothing changed.")]


BACKEND_OPSET = 17  # effexport.job.DEFAULT_OPSET, without importing torch at --help


@app.command("backends")
def backends_cmd(as_json: JsonOption = False) -> None:
    """Every backend: available (version, device) or missing and why."""
    from dataclasses import asdict

    from rich.markup import escape

    from effexport.exporter.backends import BACKENDS, probe_all

    found = probe_all()
    if as_json:
        console.print_json(json.dumps([asdict(a) for a in found], default=str))
        return
    table = Table(title="backends")
    for col in ("backend", "status", "version", "device", "precisions", "install / why missing"):
        table.add_column(col, overflow="fold")
    for a in found:
        spec = BACKENDS[a.name]
        status = "[green]available[/]" if a.available else "[red]missing[/]"
        hint = a.reason or (f"pip install 'effexport[{spec.extra}]'" if spec.extra else "core dependency")
        table.add_row(a.name, status, a.version or "-", a.device or "-", ", ".join(spec.precisions), escape(hint))
    console.print(table)


@app.command("openvino")
def openvino_cmd(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    precision: Annotated[str, typer.Option(help="fp32 (FP32 weights, f32 execution), fp16 (FP16 weights) or int8 "
                                                "(NNCF, from the recipe's calibration).")] = "fp32",
    int8: Annotated[bool, typer.Option("--int8", help="The NNCF INT8 model (same as --precision int8).")] = False,
    calib: CalibOption = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    device: Annotated[str, typer.Option(help="OpenVINO device for the parity check.")] = "CPU",
    images: ImagesOption = None,
    tolerance: ToleranceOption = None,
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    force: ForceOption = False,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Convert the verified ONNX to OpenVINO IR (model.xml/.bin), or take the NNCF INT8 model of the recipe's
    calibration, and verify it against PyTorch. Writes <out>/<model>/openvino-<precision>/."""
    from effexport.exporter.backends import get_backend

    precision = _int8_precision(precision, int8, ("fp32", "fp16", "int8"))
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, force=force, out=out)
    get_backend("openvino").ensure_available("effexport openvino")
    from effexport.exporter.backends.openvino import OvOptions
    from effexport.exporter.deploy import ensure_artifact, open_context

    with _status(f"building OpenVINO {precision} for {name}") as progress:
        ctx = open_context(job, progress)
        artifact = ensure_artifact(ctx, "openvino", precision, OvOptions(device))
    _print_artifact(artifact, ctx)


def _int8_precision(precision: str, int8: bool, allowed: tuple[str, ...]) -> str:
    if precision not in allowed:
        raise typer.BadParameter(f"--precision must be one of {', '.join(allowed)}, got {precision!r}")
    if int8 and precision not in ("fp32", "int8"):
        raise typer.BadParameter(f"--int8 and --precision {precision} exclude each other")
    return "int8" if int8 else precision


@app.command("trt")
def trt_cmd(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine from the FP16 ONNX graph (FP32 inputs/outputs).")]
    = False,
    batch: Annotated[int | None, typer.Option(help="Static batch size (a one-point profile).")] = None,
    min_batch: Annotated[int | None, typer.Option(help="Dynamic batch profile: smallest batch.")] = None,
    opt_batch: Annotated[int | None, typer.Option(help="Dynamic batch profile: batch to optimize for.")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Dynamic batch profile: largest batch.")] = None,
    workspace: Annotated[float | None, typer.Option(help="Builder workspace limit in GB.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file (default: "
                                                              "<out>/<model>/tensorrt-timing.cache).")] = None,
    hardware_compat: Annotated[str, typer.Option(help="same (this GPU) or ampere+ (any Ampere or newer GPU).")]
    = "same",
    version_compatible: Annotated[bool, typer.Option("--version-compatible",
                                                     help="Engine that later TensorRT versions can run.")] = False,
    fp16_builder_flag: Annotated[bool, typer.Option("--fp16-builder-flag",
                                                    help="TensorRT 10.x only: FP32 graph + the FP16 builder flag.")]
    = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from the calibration's Q/DQ ONNX (explicit "
                                                      "quantization, strongly typed).")] = False,
    calib: CalibOption = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    images: ImagesOption = None,
    tolerance: ToleranceOption = None,
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    force: ForceOption = False,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Build a TensorRT engine (model.plan + layers.json) and verify it against PyTorch on the GPU."""
    from effexport.exporter.backends import get_backend
    from effexport.exporter.backends.tensorrt import TrtOptions

    if fp16 and int8:
        raise typer.BadParameter("--fp16 and --int8 exclude each other")
    options = TrtOptions.from_batches(batch, min_batch, opt_batch, max_batch, workspace_gb=workspace,
                                      timing_cache=timing_cache, hardware_compat=hardware_compat,
                                      version_compatible=version_compatible, fp16_builder_flag=fp16_builder_flag)
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, force=force, out=out)
    get_backend("tensorrt").ensure_available("effexport trt")  # one line, before any export, calibration or build
    from effexport.exporter.deploy import ensure_artifact, open_context

    with _status(f"building TensorRT {precision} for {name}") as progress:
        ctx = open_context(job, progress)
        artifact = ensure_artifact(ctx, "tensorrt", precision, options)
    _print_artifact(artifact, ctx)


def _warn_random(weights: dict | None) -> None:
    """Random weights, and a slimmable recipe's BatchNorm statistics estimated on the built-in photographs."""
    if weights and weights.get("source") == "random":
        _warn(weights["note"])
    if weights and (weights.get("finalized") or {}).get("warning"):
        _warn(weights["finalized"]["warning"])


def _print_artifact(artifact, ctx=None) -> None:
    from rich.markup import escape

    report = artifact.report
    _warn_random(report.get("weights"))
    parity = report["parity"]
    execution = report.get("execution", {})
    runs = execution.get("execution_precision") or artifact.precision
    state = "reused" if artifact.reused else "wrote"
    if artifact.precision == "int8" and ctx is not None:
        _print_int8_source(ctx.int8_build(), report["int8"]["form"])
    device = execution.get("device_name") or execution.get("device") or artifact.availability.device
    console.print(f"{state} {artifact.path} ({artifact.backend} {artifact.precision}, executes {runs} on {device})",
                  markup=False)
    verdict = "[green]passed[/]" if parity["passed"] else "[yellow]outside the tolerance, not enforced[/]"
    console.print(f"parity vs PyTorch FP32: {verdict} - max abs {parity['max_abs']:.2e}, rel "
                  f"{parity['max_rel']:.2e}, cosine {parity['min_cosine']:.6f}, top-1 {parity['top1_agreement']:.0%},"
                  f" top-5 {parity['top5_agreement']:.0%} over {parity['samples']} inputs: "
                  f"{escape(parity['inputs'])} (tolerance: {_describe_tolerance(parity['tolerance'])})")
    if parity.get("enforced") is False:
        err.print(f"[bold red]{parity['note']}[/]", highlight=False)
    console.print(f"report: {artifact.folder / 'report.json'}", markup=False)


def _print_int8_source(result, form: str | None = None) -> None:
    """Where INT8 artifacts came from: the calibration, its data and what it kept in float."""
    for warning in result.warnings:
        _warn(warning)
    manifest = result.manifest
    data = manifest["data"]
    source = "built-in photographs" if data["kind"] == "builtin" else data["source"]
    console.print(f"INT8 from the calibration {result.manifest_path} ({'reused' if result.reused else 'built'}): "
                  + (f"{form} form, " if form else "") + f"{manifest['method']} over {data['inputs']} inputs from "
                  f"{data['count']} images ({source})" + (f", {len(manifest['forms'][form]['keep_float'])} layers kept "
                                                          f"in float" if form else ""),
                  highlight=False, markup=False)
    if data["skipped"]:
        names = ", ".join(s["file"] for s in data["skipped"])
        err.print(f"[yellow]skipped {len(data['skipped'])} unreadable file(s):[/] {names}")


def _describe_tolerance(tol) -> str:
    from effexport.exporter.parity import Tolerance

    return (tol if isinstance(tol, Tolerance) else Tolerance(**tol)).describe()


def _available_backends() -> str:
    from effexport.exporter.backends import probe_all

    return ",".join(a.name for a in probe_all() if a.available)


@app.command("verify")
def verify_cmd(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    backends: Annotated[str | None, typer.Option(help="Comma-separated backends (default: every available one).")]
    = None,
    precision: Annotated[str, typer.Option(help="Comma-separated precisions: fp32, fp16, bf16, int8 (each backend "
                                                "runs its own INT8 form of one calibration).")] = "fp32",
    images: ImagesOption = None,
    tolerance: ToleranceOption = None,
    calib: CalibOption = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    device: Annotated[str, typer.Option(help="OpenVINO device.")] = "CPU",
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Run every backend and precision on the same inputs and compare with PyTorch FP32 in one table. Uses the
    artifacts already built when they match (a TensorRT engine with your batch profile), else builds them."""
    from effexport.errors import ParityError
    from effexport.exporter.backends import BACKENDS, parse_list
    from effexport.exporter.parity import POLICY

    chosen = parse_list(backends or _available_backends(), BACKENDS, "backend")
    precisions = parse_list(precision, POLICY, "precision")
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out)
    from effexport.exporter.backends.openvino import OvOptions
    from effexport.exporter.verify import verify_recipe

    with _status(f"verifying {name}") as progress:
        result = verify_recipe(job, chosen, precisions, {"openvino": OvOptions(device)}, progress)
    _warn_random(result.weights)
    if result.int8 is not None:
        _print_int8_source(result.int8)
    _print_verify(result)
    if not result.passed:
        rows = ", ".join(f"{r.backend} {r.precision} ({r.note or r.status})" for r in result.failures)
        raise ParityError(f"{len(result.failures)} of {len(result.rows)} checks failed: {rows} (table: {result.path})")


def _print_verify(result) -> None:
    from rich import box
    from rich.markup import escape

    compared = [r for r in result.rows if r.status != "not supported"]
    groups: dict[str, list[str]] = {}  # inputs -> precisions compared on them (INT8: photos calibration never saw)
    for r in compared:
        groups.setdefault(r.inputs or result.inputs, [])
        if r.precision not in groups[r.inputs or result.inputs]:
            groups[r.inputs or result.inputs].append(r.precision)
    over = f" over {next(iter(groups))}" if len(groups) == 1 else ""
    table = Table(title=f"{result.recipe}: parity with PyTorch FP32{over}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("backend", "precision", "max abs", "max rel", "cosine", "top-1", "top-5", "result"):
        table.add_column(col, justify="left" if col in ("backend", "precision", "result") else "right",
                         no_wrap=col != "precision", min_width={"backend": 11, "precision": 9}.get(col))
    for r in result.rows:
        p = r.parity or {}
        runs = r.execution.get("execution_precision")
        precision = r.precision if runs in (None, r.precision) else f"{r.precision} ({runs})"
        colour = {"passed": "green", "failed": "red", "error": "red"}.get(r.status, "yellow")
        status = "n/a" if r.status == "not supported" else r.status
        cells = [f"{p['max_abs']:.1e}", f"{p['max_rel']:.1e}", f"{p['min_cosine']:.6f}", f"{p['top1_agreement']:.0%}",
                 f"{p['top5_agreement']:.0%}"] if "max_abs" in p else ["-"] * 5
        table.add_row(r.backend, precision, *cells, f"[{colour}]{status}[/]")
    console.print(table)
    used = dict.fromkeys(r.precision for r in compared)
    console.print("tolerance: " + "; ".join(f"{p} {_describe_tolerance(result.policy[p])}" for p in used), markup=False)
    if len(groups) > 1:
        for inputs, precisions in groups.items():
            console.print(f"{', '.join(precisions)} compared over {inputs}", highlight=False, markup=False)
    for r in result.rows:
        if r.status == "error":
            err.print(f"[red]{r.backend} {r.precision}:[/] {escape(r.note)}", highlight=False, soft_wrap=True)
    if any(r.status == "not enforced" or (r.precision == "int8" and r.status == "passed" and result.weights and
                                          result.weights.get("source") == "random") for r in result.rows):
        from effexport.calibration.build import RANDOM_NOTE

        err.print(f"[bold red]{RANDOM_NOTE}[/]", highlight=False)
    console.print(f"table: {result.path}", markup=False)


@app.command("bench")
def bench_cmd(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    backends: Annotated[str, typer.Option(help="Comma-separated: torch (the baseline, always run), torch-compile "
                                               "(torch.compile with inductor; needs a C++ compiler, compiles for "
                                               "tens of seconds per batch size, so not by default), onnxruntime, "
                                               "openvino, tensorrt.")] = "torch,onnxruntime,openvino",
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    precision: Annotated[str, typer.Option(help="Comma-separated precisions for the backends, e.g. fp32,int8.")]
    = "fp32",
    threads: Annotated[int | None, typer.Option(help="Threads for every backend (default: all CPUs).")] = None,
    iters: Annotated[int, typer.Option(help="Timed runs per backend and batch size (after warm-up).")] = 50,
    max_warmup: Annotated[int, typer.Option(help="Most warm-up runs (warm-up ends earlier once stable).")] = 100,
    chart: Annotated[bool, typer.Option("--chart/--no-chart", help="Write bench.png (matplotlib).")] = True,
    tolerance: ToleranceOption = None,
    calib: CalibOption = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Time PyTorch eager and each backend with one harness: p50/p90/p99 latency, throughput, speed-up, achieved
    GMAC/s against this machine's peak, and the share of MACs INT8 rows run in INT8."""
    from effexport.exporter.backends import parse_list
    from effexport.exporter.bench import BenchConfig
    from effexport.exporter.bench_recipe import bench_recipe, check_backends, known_backends, parse_batches
    from effexport.exporter.parity import POLICY

    chosen = parse_list(backends, known_backends(), "backend")
    batches = parse_batches(batch)
    precisions = tuple(parse_list(precision, POLICY, "precision"))
    config = BenchConfig(iters=iters, max_warmup=max_warmup, min_warmup=min(5, max_warmup))
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be at least 1, got {threads}")
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out)
    check_backends(chosen)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(f"preparing {name}", total=None)

        def stage(message: str) -> None:
            bar.update(task, description=message)
            logging.getLogger("effexport").info(message)

        def timed(label: str, done: int, total: int) -> None:
            bar.update(task, description=f"timing {label}", completed=done, total=total)

        result = bench_recipe(job, chosen, batches, precisions, threads, config, chart=chart, progress=stage,
                              on_run=timed)
    _print_bench(result)


def _print_bench(result) -> None:
    m = result.machine
    from rich import box

    from effexport.exporter.bench_recipe import COMPILED

    entries = result.entries
    compiled = any(e.backend == COMPILED and e.stats for e in entries)
    int8 = any(e.precision == "int8" for e in entries)
    table = Table(title=f"{result.recipe}: latency in ms on {m['cpu']}, {m['threads']} threads, load average "
                        f"{m['load_average_at_start'][0]} -> {m['load_average_at_end'][0]}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = ["backend", "precision", "batch", "p50", "p90", "p99", "img/s", "vs torch",
               *(["vs compile"] if compiled else []), "GMAC/s", "% peak", *(["INT8 MACs"] if int8 else [])]
    for col in columns:
        table.add_column(col, justify="left" if col in ("backend", "precision") else "right",
                         no_wrap=col != "precision", min_width={"backend": 11, "precision": 9}.get(col))
    for e in entries:
        runs = e.execution.get("execution_precision")
        precision = e.precision if runs in (None, e.precision) else runs if runs.startswith(f"{e.precision} (") \
            else f"{e.precision} ({runs})"  # "bf16 (emulated)", "fp16 (fp32)"
        if e.stats is None:
            table.add_row(e.backend, precision, str(e.batch), "n/a", *["-"] * (len(columns) - 4))  # why: below
            continue
        s = e.stats
        row = [e.backend, precision, str(e.batch), f"{s.p50 * 1e3:.1f}", f"{s.p90 * 1e3:.1f}", f"{s.p99 * 1e3:.1f}",
               f"{s.throughput:.1f}", f"{e.speedup:.2f}x" if e.speedup else "-"]
        if compiled:
            row.append(f"{e.speedup_vs_compiled:.2f}x" if e.speedup_vs_compiled else "-")
        row += [_small(e.gmacs) if e.gmacs else "-",
                f"{_small(e.percent_of_peak)}%" if e.percent_of_peak is not None else "-"]
        if int8:
            row.append(f"{e.int8.share:.1%}" if e.int8 else "-")
        table.add_row(*row)
    console.print(table)
    for line in _bench_notes(result):
        console.print(line, markup=False, highlight=False)
    if result.load is not None and result.load.warning:
        _warn(result.load.warning)
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    console.print(f"{versions}; CPU flags: {', '.join(m['cpu_flags']) or 'none of note'}", markup=False)
    console.print(f"results: {result.json_path}" + (f", chart: {result.chart_path}" if result.chart_path else ""),
                  markup=False)


def _small(value: float) -> str:
    """One decimal, or two significant digits below 1 (eager PyTorch on a tiny model reaches 0.03% of peak)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _bench_notes(result) -> list[str]:
    """The lines under the bench table: the peaks the rows are held against, compile times, unavailable rows,
    INT8 rows slower than FP32 and the layers INT8 rows leave in float."""
    from effexport.exporter.bench_recipe import int8_slower

    lines = []
    if result.peaks:
        measured = [f"{p} {peak.gmacs:.0f} GMAC/s ({peak.runtime})" for p, peak in result.peaks.items() if peak.gmacs]
        blank = [f"{p} none, {peak.note}" for p, peak in result.peaks.items() if not peak.gmacs]
        macs = f"; the model does {result.macs / 1e6:,.1f} M MACs per image" if result.macs else ""
        lines.append(f"% peak: GMAC/s (model MACs x batch / p50) against this machine's peak GEMM rate in the "
                     f"precision the row executed, {result.machine['threads']} threads: "
                     f"{'; '.join(measured + blank)}{macs}")
    compiles = [f"batch {e.batch} {e.compile_s:.1f} s" for e in result.entries if e.compile_s is not None]
    if compiles:
        lines.append(f"torch-compile: compile time (not in latency) {', '.join(compiles)}")
    lines += [f"{e.backend} {e.precision} batch {e.batch} unavailable: {e.unavailable}"
              for e in result.entries if e.stats is None]
    lines += [f"{s['backend']} int8 at batch {s['batch']} ran slower than fp32 ({s['int8_p50_ms']:.2f} ms against "
              f"{s['fp32_p50_ms']:.2f} ms): {s['recommendation']}" for s in int8_slower(result.entries)]
    seen = set()
    for e in result.entries:
        if e.int8 is None or e.int8.float_layers == () or (e.backend, e.int8.float_layers) in seen:
            continue
        seen.add((e.backend, e.int8.float_layers))
        floats = sorted(e.int8.float_layers, key=lambda layer: -layer.macs)
        named = ", ".join(f"{layer.name} ({_small(100 * layer.macs / e.int8.total_macs)}%)" for layer in floats[:4])
        more = f" and {len(floats) - 4} more" if len(floats) > 4 else ""
        lines.append(f"{e.backend} int8 keeps {len(floats)} of {e.int8.layers} weighted layers in float: {named}{more}")
    return lines


# ---------------------------------------------------------------------------------------------- end of backends
# ---------------------------------------------------------------------------------------------- int8 / calibrate
# INT8: one calibration, every form (effexport/calibration/build.py). The backend commands call the same library.


@app.command()
def calibrate(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    calib: CalibOption = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the --calib-size sample.")] = 0,
    openvino: Annotated[bool | None, typer.Option("--openvino/--no-openvino", help="Build the NNCF OpenVINO "
                                                     "model (default: when openvino and nncf are installed).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Checkpoint (.pth/.pt/.safetensors).")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (network).")] = False,
    ema: Annotated[bool, typer.Option("--ema", help="Prefer the EMA weights in a training checkpoint.")] = False,
    img_size: Annotated[int | None, typer.Option(help="Export resolution (default: the recipe's).")] = None,
    opset: OpsetOption = BACKEND_OPSET,
    images: Annotated[Path | None, typer.Option(help="Folder of photos for the parity checks.")] = None,
    tolerance: ToleranceOption = None,
    force: Annotated[bool, typer.Option("--force", help="Calibrate and quantize again even if nothing changed.")]
    = False,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Calibrate a recipe's verified dynamic-batch ONNX and build its INT8 forms: QDQ ONNX for TensorRT, an ONNX
    Runtime CPU form, and an NNCF OpenVINO model, with calibration.json, in <out>/<model>/int8-<method>/."""
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, seed=seed, openvino=openvino,
               width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, force=force,
               out=out)
    _calibrate(job, enforce=None)


def _calibrate(job, enforce) -> None:
    """Every INT8 form of the job's one calibration, from the dynamic-batch export every backend shares."""
    from effexport.exporter.deploy import open_context

    with _status(f"calibrating {job.name}") as progress:
        result = open_context(job, progress).int8_build(enforce=enforce)
    _print_int8(result)


def _some(nodes: list[str], shown: int = 3) -> str:
    return ", ".join(nodes[:shown]) + (f" and {len(nodes) - shown} more" if len(nodes) > shown else "")


def _print_int8(result) -> None:
    manifest = result.manifest
    data = manifest["data"]
    for warning in result.warnings:
        _warn(warning)
    if manifest.get("parity_note"):
        err.print(f"[bold red]{manifest['parity_note']}[/]", highlight=False)
    source = "built-in photographs" if data["kind"] == "builtin" else data["source"]
    console.print(f"calibration: {data['inputs']} inputs ({data['views_per_image']} per image) from {data['count']} "
                  f"images ({source}), method {manifest['method']}; cache "
                  f"{manifest['cache']['file']} ({'reused' if result.cache_reused else 'written'})", markup=False)
    if data["skipped"]:
        names = ", ".join(s["file"] for s in data["skipped"])
        err.print(f"[yellow]skipped {len(data['skipped'])} unreadable file(s):[/] {names}")
    table = Table(title=f"INT8 forms of {manifest['recipe']}" + (" (reused)" if result.reused else ""))
    numeric = ("size", "float layers", "top-1", "cosine (min)", "b1 vs FP32")
    for col in ("file", "for", "size", "float layers", "top-1", "cosine (min)", "b1 vs FP32", "parity"):
        table.add_column(col, justify="right" if col in numeric else "left")
    speed = manifest.get("speed", {})
    for form_name, form in manifest["forms"].items():
        parity = manifest["parity"][form_name]
        timed = speed.get(form_name)
        enforced = form_name in manifest.get("parity_enforced", [])
        verdict = ("[green]passed[/]" if parity["passed"] else "[red]failed[/]") if enforced \
            else ("within" if parity["passed"] else "outside") + " (not enforced)"
        table.add_row(form["file"], ", ".join(form["backends"]), f"{form['bytes'] / 1e6:.1f} MB",
                      str(len(form["keep_float"])), f"{parity['top1_agreement']:.1%}", f"{parity['min_cosine']:.4f}",
                      f"{timed['speedup']:.2f}x ({timed['backend']})" if timed else "-", verdict)
    console.print(table)
    photos = manifest["parity_inputs"]
    console.print(f"INT8 tolerance {manifest['tolerance']} vs the FP32 model on {photos['description']}",
                  highlight=False, markup=False)
    if not photos["held_out"]:
        err.print("[yellow]warning:[/] INT8 parity was measured on the calibration photographs themselves")
    console.print(f"weights: {manifest['cpu']['why']}", highlight=False, markup=False)
    check = manifest["qdq_check"]
    console.print(f"QDQ form check (TensorRT rules): {'passed' if check['passed'] else 'FAILED'} - "
                  f"{check['activation_quantizers']} activation quantizers per-tensor, zero points 0, "
                  f"{check['weight_quantizers']} weights per output channel", markup=False)
    by_reason: dict[str, list[str]] = {}
    for layer in manifest["keep_float"]:
        by_reason.setdefault(layer["reason"], []).append(layer["node"])
    for reason, nodes in by_reason.items():
        console.print(f"kept in float ({len(nodes)}): {_some(nodes)} - {reason}", highlight=False, markup=False)
    for form_name, form in manifest["forms"].items():
        added = form.get("tuning", {}).get("added", [])
        if added:
            console.print(f"{form_name}: also kept in float ({len(added)}), the most sensitive layers on the "
                          f"calibration inputs: {_some(added)}", highlight=False, markup=False)
    if speed:
        console.print("b1 vs FP32: batch-1 speed-up over FP32 on the backend that serves the form, measured at build "
                      f"time on {next(iter(speed.values()))['cpu']}", highlight=False, markup=False)
    console.print(f"manifest: {result.manifest_path}", markup=False)


# ---------------------------------------------------------------------------------------------- build


@app.command("build")
def build_cmd(
    build_file: Annotated[Path, typer.Argument(help="The TOML build file (effexport build --init writes one).")]
    = Path("effexport.toml"),
    out: Annotated[Path | None, typer.Option("--out", help="Output root (default: effexport-build/ beside the "
                                                            "build file).")] = None,
    init: Annotated[bool, typer.Option("--init", help="Write a commented example build file and stop.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be built and reused; build nothing.")]
    = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed target.")] = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", help="Build share I of N (e.g. 2/4): whole models, stable when models are added elsewhere, "
                        "balanced by expected cost; combine the outputs with effexport merge.")] = None,
    only: Annotated[str | None, typer.Option(
        "--only", help="Only the targets of these backends, comma-separated: onnx, onnxruntime, openvino, tensorrt "
                       "(e.g. a GPU job: --only tensorrt).")] = None,
    layout: Annotated[list[str] | None, typer.Option(
        "--layout", help="Also write a serving repository from the artifacts: triton (<out>/triton/, config.pbtxt per "
                         "model) or ovms (<out>/ovms/, config.json); repeatable.")] = None,
    force: ForceOption = False,
) -> None:
    """Build every model and target of a build file, reuse what has not changed, and write manifest.json and
    SUMMARY.md; exits 3 (parity) or 5 (build) at the end when a target failed."""
    from effexport.exporter.backends import parse_list
    from effexport.matrix import LAYOUTS, load_plan, parse_shard, run_build, select, write_init
    from effexport.matrix import dry_run as plan_only

    layouts = tuple(parse_list(",".join(layout), LAYOUTS, "layout")) if layout else ()

    if init:
        console.print(f"wrote {write_init(build_file)}; edit it, then: effexport build {build_file}", markup=False)
        return
    from rich.markup import escape

    plan = select(load_plan(build_file, out, force), parse_shard(shard) if shard else None,
                  tuple(b.strip() for b in only.split(",") if b.strip()) if only else ())
    if dry_run:
        table = Table(title=f"plan of {build_file}: {len(plan.targets)} targets into {plan.out}", title_justify="left")
        for col in ("model", "target", "action", "why"):
            table.add_column(col, overflow="fold")
        for target, action, why in plan_only(plan):
            table.add_row(target.model, target.name, action, escape(why), style="dim" if action == "skip" else None)
        console.print(table)
        return
    with _status(f"building {build_file}") as progress:
        result = run_build(plan, fail_fast=fail_fast, progress=progress, layouts=layouts)
    table = Table(title=f"{build_file}: {len(result.results)} targets in {result.seconds:.1f} s", title_justify="left")
    for col in ("model", "target", "status", "parity", "time", "artifact or reason"):
        table.add_column(col, overflow="fold", justify="right" if col == "time" else "left")
    colours = {"built": "green", "reused": "green", "failed": "red", "skipped": "yellow"}
    for r in result.results:
        p = r.entry.get("parity", {})
        parity = (f"rel {p['max_rel']:.1e}, cos {p['min_cosine']:.4f}, top-1 {p['top1_agreement']:.0%}"
                  if "max_rel" in p else "-")
        where = f"{r.entry['folder']}/{r.entry['main']}" if r.entry else r.message
        table.add_row(r.target.model, r.target.name, f"[{colours[r.status]}]{r.status}[/]", parity,
                      f"{r.seconds:.1f} s", escape(where))
    console.print(table)
    console.print(f"manifest: {result.manifest_path}; summary: {result.summary_path}", markup=False)
    for name, written in result.repositories.items():
        console.print(f"{name} repository: {result.plan.out / name} ({sum(p.is_dir() for p in written)} models)",
                      markup=False)
    if result.failed:
        from effexport.errors import ExportError, ParityError

        parity_only = all(r.exit_code == ParityError.exit_code for r in result.failed)
        raise (ParityError if parity_only else ExportError)(
            f"{len(result.failed)} of {len(result.results)} targets failed: "
            + "; ".join(f"{r.target.model} {r.target.name}: {r.message}" for r in result.failed))


@app.command("merge")
def merge_cmd(
    folders: Annotated[list[Path], typer.Argument(help="Output folders of effexport build (shards, a GPU job).")],
    out: Annotated[Path, typer.Option("--out", help="The merged tree and manifest.json.")] = Path("effexport-merged"),
    layout: Annotated[list[str] | None, typer.Option(
        "--layout", help="Also write a serving repository: triton or ovms (repeatable).")] = None,
) -> None:
    """Combine build outputs from other machines into one tree and one manifest; refuses conflicting artifacts,
    files whose sha256 differs from their manifest, and any path that leads outside its tree."""
    from effexport.exporter.backends import parse_list
    from effexport.matrix import LAYOUTS
    from effexport.merge import merge

    layouts = tuple(parse_list(",".join(layout), LAYOUTS, "layout")) if layout else ()
    result = merge(folders, out, layouts)
    served = sum(a["status"] in ("built", "reused") for a in result.artifacts)
    console.print(f"merged {len(folders)} outputs into {result.out}: {served} artifacts ({result.copied} files "
                  f"written), {len(result.artifacts) - served} failed or skipped; manifest: {result.manifest_path}",
                  markup=False)
    for name in result.repositories:
        console.print(f"{name} repository: {result.out / name}", markup=False)


# ---------------------------------------------------------------------------------------------- entry point


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM (timeout, CI cancellation, docker stop). Raised by our own handlers rather than left to
    KeyboardInterrupt, which the command-line framework turns into a bare exit before we could say anything; a
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it, while every `with` block on
    the way out (staging folders, locks) still cleans up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, _frame) -> None:
    raise Interrupted(signum)


# Errors of the machine, not of effexport: one line and exit 5 (the artifact could not be produced), no traceback.
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EFBIG: "file too large", errno.EACCES: "permission denied"}


def main() -> None:
    """The console entry point: documented exit codes for every error effexport raises on purpose."""
    from rich.markup import escape  # messages name pip extras like 'effexport[openvino]'

    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app()
    except EffexportError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        err.print(f"[red]{word}[/]: stopped; nothing half-written was left behind and every verified artifact is as "
                  f"it was", highlight=False)
        sys.exit(128 + signum)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/] {DISK_ERRNOS[exc.errno]}{escape(where)}; free space or choose another --out "
                  f"(nothing half-written was left behind)", highlight=False, soft_wrap=True)
        sys.exit(ExportError.exit_code)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
