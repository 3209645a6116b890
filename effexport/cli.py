"""The `effexport` command line: parses arguments and calls one library function per command.

torch, timm and onnx are imported inside the commands so that `effexport --help` answers at once.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from effexport import printers
from effexport.errors import EXIT_CODES, EffexportError, ExportError, UsageError

app = typer.Typer(
    name="effexport",
    help="Export efficient CNN classifiers to verified ONNX, OpenVINO and TensorRT artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog="Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
)


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


# ---------------------------------------------------------------------------------------------- classes
# A checkpoint's classifier decides the class count; --num-classes states it (a checkpoint that disagrees exits 2).

NumClassesOption = Annotated[int | None, typer.Option(
    "--num-classes", min=1, help="Classes of the classifier (default: the checkpoint's, else the recipe's).")]
LabelsOption = Annotated[Path | None, typer.Option(
    "--labels", help="Class names: one a line, a JSON list, or a JSON object index -> name; stored in the ONNX "
                     "metadata, the IR's rt_info, the manifest and serving layouts (default: ImageNet's for a "
                     "1000-class head).")]


# ---------------------------------------------------------------------------------------------- calibration options
# One calibration serves every INT8 artifact of a recipe (effexport/calibration/int8.py); --calib also feeds the
# BatchNorm re-estimation of slimmable recipes.

CalibOption = Annotated[Path | None, typer.Option(
    "--calib", help="Calibration images: a folder (jpg/png/webp, recursive) or a .npy/.npz of preprocessed inputs, "
                    "for INT8 and for the BatchNorm re-estimation of slimmable recipes; default: the built-in "
                    "photographs.")]
MethodOption = Annotated[str, typer.Option("--method", help="Calibration: minmax, entropy or percentile.")]
CalibSizeOption = Annotated[int | None, typer.Option("--calib-size", help="Use a seeded sample of N images.")]
ToleranceOption = Annotated[list[str] | None, typer.Option(
    "--tolerance", help="Override, e.g. int8:min_top1=0.9 or fp16:min_cosine=0.9995 (repeatable).")]

# What the graph takes and returns (effexport/exporter/io_spec.py); part of every artifact's folder name.
OutputKindOption = Annotated[str, typer.Option(
    "--output", help="What the graph returns: logits (as trained), softmax, or sigmoid (multi-label heads, judged by "
                     "label-set agreement at 0.5).")]
InputKindOption = Annotated[str, typer.Option(
    "--input", help="What the graph takes: float (the recipe's normalized NCHW), uint8-nchw or uint8-nhwc (the "
                    "decoded, resized and center-cropped image as bytes; scaling and mean/std are in the graph).")]
BgrOption = Annotated[bool, typer.Option("--bgr", help="Raw input is BGR (OpenCV-decoded), not RGB.")]
ExporterOption = Annotated[str, typer.Option(
    "--exporter", help="ONNX exporter: auto (torch.export at opset 18+, TorchScript below while torch has it), dynamo "
                       "(torch.export; below 18 converted down by effexport) or torchscript.")]
HeldoutOption = Annotated[Path | None, typer.Option(
    "--heldout", help="Photographs the INT8 gate judges on (none may be in the calibration set, by content).")]


def _job(name: str, *, weights=None, pretrained=False, ema=False, img_size=None, opset=17, batch=1,
         dynamic_batch=False, simplify=True, images=None, tolerance=None, calib=None, method="minmax", calib_size=None,
         seed=0, openvino=None, width=None, resolution=None, budget_mflops=None, query_table=None, force=False,
         out=Path("effexport-out"), output="logits", input_kind="float", bgr=False, heldout=None, num_classes=None,
         labels=None, exporter="auto"):
    """Every command's inputs, resolved once into a Job (effexport.workflow.job) and checked before any work."""
    from effexport.calibration.options import Int8Options
    from effexport.recipes import RecipeParams
    from effexport.workflow.job import ExportOptions, resolve_job

    return resolve_job(
        name, weights=weights, pretrained=pretrained, ema=ema,
        export=ExportOptions(opset=opset, batch=batch, dynamic_batch=dynamic_batch, img_size=img_size,
                             simplify=simplify, output=output, input=input_kind, bgr=bgr, exporter=exporter),
        params=RecipeParams(width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table),
        calibration=Int8Options(source=calib, method=method, calib_size=calib_size, seed=seed, openvino=openvino,
                                heldout=heldout),
        images=images, tolerances=tolerance or [], out=out, force=force,
        num_classes=num_classes, labels=labels)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage.")] = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=printers.err, show_path=False, show_time=False)])
    for chatty in ("huggingface_hub", "httpx", "urllib3"):  # their retries end in our one-line error
        logging.getLogger(chatty).setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------- list / info


@app.command("list")
def list_cmd(as_json: JsonOption = False) -> None:
    """Every recipe with its family, input size and parameter count."""
    from effexport.workflow.info import recipe_rows

    rows = recipe_rows()
    if as_json:
        printers.print_json(rows)
    else:
        printers.print_recipes(rows)


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    img_size: Annotated[int | None, typer.Option(help="Count MACs at this input size.")] = None,
    as_json: JsonOption = False,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    num_classes: NumClassesOption = None,
) -> None:
    """Params, MACs, input spec, classes, preprocessing, rewrites and origin of one recipe."""
    from effexport.recipes import RecipeParams
    from effexport.workflow.info import recipe_info

    data = recipe_info(name, img_size, RecipeParams(width=width, resolution=resolution, budget_mflops=budget_mflops,
                                                    query_table=query_table), num_classes=num_classes)
    if as_json:
        printers.print_json(data)
    else:
        printers.print_info(data)


# ---------------------------------------------------------------------------------------------- onnx


@app.command("onnx")
def onnx_cmd(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    opset: Annotated[int, typer.Option(help="ONNX opset; the file has exactly this opset or the command fails.")] = 17,
    exporter: ExporterOption = "auto",
    batch: Annotated[int, typer.Option(help="Static batch size.")] = 1,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension.")] = False,
    img_size: Annotated[int | None, typer.Option(help="Export resolution (default: the recipe's).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Checkpoint (.pth/.pt/.safetensors).")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (network).")] = False,
    ema: Annotated[bool, typer.Option("--ema", help="Prefer the EMA weights in a training checkpoint.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    images: Annotated[Path | None, typer.Option(help="Folder of photos for the parity check.")] = None,
    tolerance: ToleranceOption = None,
    output: OutputKindOption = "logits",
    input_kind: InputKindOption = "float",
    bgr: BgrOption = False,
    heldout: HeldoutOption = None,
    force: Annotated[bool, typer.Option("--force", help="Export again even if nothing changed.")] = False,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
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
               query_table=query_table, force=force, out=out,
               output=output, input_kind=input_kind, bgr=bgr, heldout=heldout, num_classes=num_classes, labels=labels,
               exporter=exporter)
    from effexport.workflow.export import export_recipe

    with printers.status(f"exporting {name}") as progress:
        printers.print_export(export_recipe(job, progress))
    if int8:
        _calibrate(job)


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


BACKEND_OPSET = 17  # effexport.workflow.job.DEFAULT_OPSET, without importing torch at --help


@app.command("backends")
def backends_cmd(as_json: JsonOption = False) -> None:
    """Every backend: available (version, device) or missing and why."""
    from dataclasses import asdict

    from effexport.backends import BACKENDS, probe_all

    found = probe_all()
    if as_json:
        printers.print_json([asdict(a) for a in found])
    else:
        printers.print_backends(found, BACKENDS)


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
    output: OutputKindOption = "logits",
    input_kind: InputKindOption = "float",
    bgr: BgrOption = False,
    heldout: HeldoutOption = None,
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    exporter: ExporterOption = "auto",
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    force: ForceOption = False,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Convert the verified ONNX to OpenVINO IR (model.xml/.bin), or take the NNCF INT8 model of the recipe's
    calibration, and verify it against PyTorch. Writes <out>/<model>/openvino-<precision>/."""
    precision = _int8_precision(precision, int8, ("fp32", "fp16", "int8"))
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, force=force, out=out,
               output=output, input_kind=input_kind, bgr=bgr, heldout=heldout, num_classes=num_classes, labels=labels,
               exporter=exporter)
    from effexport.backends.openvino import OvOptions
    from effexport.workflow.deploy import deploy

    with printers.status(f"building OpenVINO {precision} for {name}") as progress:
        printers.print_artifact(deploy(job, "openvino", precision, OvOptions(device), progress, "effexport openvino"))


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
    output: OutputKindOption = "logits",
    input_kind: InputKindOption = "float",
    bgr: BgrOption = False,
    heldout: HeldoutOption = None,
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    exporter: ExporterOption = "auto",
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    force: ForceOption = False,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Build a TensorRT engine (model.plan + layers.json) and verify it against PyTorch on the GPU."""
    from effexport.backends.tensorrt import TrtOptions

    if fp16 and int8:
        raise typer.BadParameter("--fp16 and --int8 exclude each other")
    options = TrtOptions.from_batches(batch, min_batch, opt_batch, max_batch, workspace_gb=workspace,
                                      timing_cache=timing_cache, hardware_compat=hardware_compat,
                                      version_compatible=version_compatible, fp16_builder_flag=fp16_builder_flag)
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, force=force, out=out,
               output=output, input_kind=input_kind, bgr=bgr, heldout=heldout, num_classes=num_classes, labels=labels,
               exporter=exporter)
    from effexport.workflow.deploy import deploy

    with printers.status(f"building TensorRT {precision} for {name}") as progress:  # no TensorRT: one line, first
        printers.print_artifact(deploy(job, "tensorrt", precision, options, progress, "effexport trt"))


def _available_backends() -> str:
    from effexport.backends import probe_all

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
    output: OutputKindOption = "logits",
    input_kind: InputKindOption = "float",
    bgr: BgrOption = False,
    heldout: HeldoutOption = None,
    calib: CalibOption = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    device: Annotated[str, typer.Option(help="OpenVINO device.")] = "CPU",
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    exporter: ExporterOption = "auto",
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Run every backend and precision on the same inputs and compare with PyTorch FP32 in one table. Uses the
    artifacts already built when they match (a TensorRT engine with your batch profile), else builds them."""
    from effexport.backends import BACKENDS, parse_list
    from effexport.exporter.parity import POLICY

    chosen = parse_list(backends or _available_backends(), BACKENDS, "backend")
    precisions = parse_list(precision, POLICY, "precision")
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out,
               output=output, input_kind=input_kind, bgr=bgr, heldout=heldout, num_classes=num_classes, labels=labels,
               exporter=exporter)
    from effexport.backends.openvino import OvOptions
    from effexport.workflow.verify import verify_recipe

    with printers.status(f"verifying {name}") as progress:
        result = verify_recipe(job, chosen, precisions, {"openvino": OvOptions(device)}, progress)
    printers.print_verify(result)
    if (error := result.error()) is not None:
        raise error


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
    output: OutputKindOption = "logits",
    input_kind: InputKindOption = "float",
    bgr: BgrOption = False,
    heldout: HeldoutOption = None,
    calib: CalibOption = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    weights: WeightsOption = None,
    pretrained: PretrainedOption = False,
    ema: EmaOption = False,
    img_size: ImgSizeOption = None,
    opset: OpsetOption = BACKEND_OPSET,
    exporter: ExporterOption = "auto",
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Time PyTorch eager and each backend with one harness: p50/p90/p99 latency, throughput, speed-up, achieved
    GMAC/s against this machine's peak, and the share of MACs INT8 rows run in INT8."""
    from effexport.backends import parse_list
    from effexport.exporter.parity import POLICY
    from effexport.exporter.timing import BenchConfig
    from effexport.workflow.bench import bench_recipe, check_backends, known_backends, parse_batches

    chosen = parse_list(backends, known_backends(), "backend")
    batches = parse_batches(batch)
    precisions = tuple(parse_list(precision, POLICY, "precision"))
    config = BenchConfig(iters=iters, max_warmup=max_warmup, min_warmup=min(5, max_warmup))
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be at least 1, got {threads}")
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, width=width,
               resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, out=out,
               output=output, input_kind=input_kind, bgr=bgr, heldout=heldout, num_classes=num_classes, labels=labels,
               exporter=exporter)
    check_backends(chosen)
    with printers.bench_progress(f"preparing {name}") as (stage, timed):
        result = bench_recipe(job, chosen, batches, precisions, threads, config, chart=chart, progress=stage,
                              on_run=timed)
    printers.print_bench(result)


# ---------------------------------------------------------------------------------------------- end of backends
# ---------------------------------------------------------------------------------------------- int8 / calibrate
# INT8: one calibration, every form (effexport/calibration/int8.py). The backend commands call the same library.


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
    exporter: ExporterOption = "auto",
    images: Annotated[Path | None, typer.Option(help="Folder of photos for the parity checks.")] = None,
    tolerance: ToleranceOption = None,
    output: OutputKindOption = "logits",
    input_kind: InputKindOption = "float",
    bgr: BgrOption = False,
    heldout: HeldoutOption = None,
    force: Annotated[bool, typer.Option("--force", help="Calibrate and quantize again even if nothing changed.")]
    = False,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Calibrate a recipe's verified dynamic-batch ONNX and build its INT8 forms: QDQ ONNX for TensorRT, an ONNX
    Runtime CPU form, and an NNCF OpenVINO model, with calibration.json, in <out>/<model>/int8-<method>/."""
    job = _job(name, weights=weights, pretrained=pretrained, ema=ema, img_size=img_size, opset=opset, images=images,
               tolerance=tolerance, calib=calib, method=method, calib_size=calib_size, seed=seed, openvino=openvino,
               width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table, force=force,
               out=out,
               output=output, input_kind=input_kind, bgr=bgr, heldout=heldout, num_classes=num_classes, labels=labels,
               exporter=exporter)
    _calibrate(job)


def _calibrate(job) -> None:
    from effexport.workflow.deploy import calibrate

    with printers.status(f"calibrating {job.name}") as progress:
        printers.print_int8(calibrate(job, enforce=None, progress=progress))


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
    from effexport.backends import parse_list
    from effexport.workflow.build import LAYOUTS, load_plan, parse_shard, run_build, select, write_init
    from effexport.workflow.build import dry_run as plan_only

    layouts = tuple(parse_list(",".join(layout), LAYOUTS, "layout")) if layout else ()

    if init:
        printers.console.print(f"wrote {write_init(build_file)}; edit it, then: effexport build {build_file}",
                               markup=False)
        return
    plan = select(load_plan(build_file, out, force), parse_shard(shard) if shard else None,
                  tuple(b.strip() for b in only.split(",") if b.strip()) if only else ())
    if dry_run:
        printers.print_plan(build_file, plan, plan_only(plan))
        return
    with printers.status(f"building {build_file}") as progress:
        result = run_build(plan, fail_fast=fail_fast, progress=progress, layouts=layouts)
    printers.print_build(build_file, result)
    if (error := result.error()) is not None:
        raise error


@app.command("merge")
def merge_cmd(
    folders: Annotated[list[Path], typer.Argument(help="Output folders of effexport build (shards, a GPU job).")],
    out: Annotated[Path, typer.Option("--out", help="The merged tree and manifest.json.")] = Path("effexport-merged"),
    layout: Annotated[list[str] | None, typer.Option(
        "--layout", help="Also write a serving repository: triton or ovms (repeatable).")] = None,
    partial: Annotated[bool, typer.Option(
        "--partial", help="Merge even when some shards of the build are missing; the manifest records which.")]
    = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Then run every artifact of the merged tree against PyTorch from its recorded weights "
                         "(as effexport reverify); exit 3 when any is outside its tolerance.")] = False,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", help="With --verify: MODEL=PATH, a model's weights where the manifest's path does not reach "
                          "(repeatable; refused unless its sha256 is the recorded one).")] = None,
) -> None:
    """Combine build outputs from other machines into one tree and one manifest; refuses conflicting artifacts,
    files whose sha256 differs from their manifest, and any path that leads outside its tree."""
    from effexport.backends import parse_list
    from effexport.workflow.build import LAYOUTS
    from effexport.workflow.merge import merge
    from effexport.workflow.reverify import parse_weights

    layouts = tuple(parse_list(",".join(layout), LAYOUTS, "layout")) if layout else ()
    given = parse_weights(weights)
    if given and not verify:
        raise UsageError("merge --weights applies only with --verify")
    printers.print_merge(folders, merge(folders, out, layouts, partial=partial))
    if verify:
        _reverify(out, given)


def _reverify(tree: Path, weights: dict[str, Path]) -> None:
    from effexport.workflow.reverify import reverify_tree

    with printers.status(f"re-verifying {tree}") as progress:
        result = reverify_tree(tree, weights, progress)
    printers.print_reverify(result)
    if (error := result.error()) is not None:
        raise error


@app.command("reverify")
def reverify_cmd(
    tree: Annotated[Path, typer.Argument(help="A build or merged output folder (with its manifest.json).")],
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", help="MODEL=PATH: a model's weights where the manifest's path does not reach (repeatable; "
                          "refused unless its sha256 is the one the manifest records).")] = None,
) -> None:
    """Run every artifact of a tree, as its files are, against PyTorch from the weights its manifest records, on
    the parity inputs it was judged on; exit 3 when any is outside its recorded tolerance. It trusts the weights
    files and this machine's runtimes; nothing in the tree is written."""
    from effexport.workflow.reverify import parse_weights

    _reverify(tree, parse_weights(weights))


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
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app()
    except EffexportError as exc:
        printers.print_error(str(exc))
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        printers.err.print(f"[red]{word}[/]: stopped; nothing half-written was left behind and every verified "
                           f"artifact is as it was", highlight=False)
        sys.exit(128 + signum)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        printers.print_error(f"{DISK_ERRNOS[exc.errno]}{where}; free space or choose another --out (nothing "
                             f"half-written was left behind)")
        sys.exit(ExportError.exit_code)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
