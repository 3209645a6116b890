"""The `effexport` command line: parses arguments and calls one library function per command.

torch, timm and onnx are imported inside the commands so that `effexport --help` answers at once.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from effexport.errors import EXIT_CODES, EffexportError

app = typer.Typer(
    name="effexport",
    help="Export efficient CNN classifiers to verified ONNX, OpenVINO and TensorRT artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog="Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
)
console = Console()
err = Console(stderr=True)

OutOption = Annotated[Path, typer.Option("--out", help="Artifacts go to <out>/<recipe>/.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage.")] = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


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
    img_size: Annotated[Optional[int], typer.Option(help="Count MACs at this input size.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Params, MACs, input spec, preprocessing, rewrites and origin of one recipe."""
    from effexport.info import recipe_info

    data = recipe_info(name, img_size)
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
    img_size: Annotated[Optional[int], typer.Option(help="Export resolution (default: the recipe's).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint (.pth/.pt/.safetensors).")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (network).")] = False,
    ema: Annotated[bool, typer.Option("--ema", help="Prefer the EMA weights in a training checkpoint.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    images: Annotated[Optional[Path], typer.Option(help="Folder of photos for the parity check.")] = None,
    max_rel: Annotated[Optional[float], typer.Option(help="FP32 parity tolerance (of the logit range).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Export again even if nothing changed.")] = False,
    out: OutOption = Path("effexport-out"),
    int8: Annotated[bool, typer.Option("--int8", help="Also build the INT8 forms ('effexport calibrate').")] = False,
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration images: a folder (jpg/png/webp, "
                                                  "recursive) or a .npy/.npz of preprocessed inputs.")] = None,
) -> None:
    """Export a recipe to ONNX, check and simplify it, and verify it against PyTorch in ONNX Runtime."""
    from effexport.exporter.pipeline import OnnxOptions, WeightsSpec, export_recipe

    if dynamic_batch and batch != 1:
        raise typer.BadParameter("--batch and --dynamic-batch exclude each other")
    spec = WeightsSpec(path=weights, pretrained=pretrained, use_ema=ema)
    options = OnnxOptions(opset=opset, batch=batch, dynamic_batch=dynamic_batch, img_size=img_size,
                          simplify=simplify, images=images, max_rel=max_rel, force=force, calib=calib)
    with _status(f"exporting {name}") as progress:
        result = export_recipe(name, spec, options, out, progress)
    _print_export(result)
    if int8:
        _int8_after_export(name, spec, options, out)


def _print_export(result) -> None:
    report = result.report
    parity = report["parity"]["onnxruntime"]
    weights = report["weights"]
    if weights["source"] == "random":
        err.print(f"[yellow]warning:[/] {weights['note']}")
    counts = report["node_counts"]
    ops = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])
    state = "reused" if result.reused else "wrote"
    console.print(f"{state} {result.path} (opset {report['opset']}, {sum(counts.values())} nodes: {ops})")
    console.print(f"parity vs PyTorch FP32 in ONNX Runtime: [green]passed[/] - max abs {parity['max_abs']:.2e}, "
                  f"rel {parity['max_rel']:.2e}, cosine {parity['min_cosine']:.6f}, top-1 "
                  f"{parity['top1_agreement']:.0%}, top-5 {parity['top5_agreement']:.0%} "
                  f"over {parity['samples']} inputs")
    console.print(f"report: {result.report_path}")


# ---------------------------------------------------------------------------------------------- int8 / calibrate
# INT8: one calibration, every form (effexport/calibration/build.py). The backend commands call the same library.

MethodOption = Annotated[str, typer.Option("--method", help="Calibration: minmax, entropy or percentile.")]
CalibSizeOption = Annotated[Optional[int], typer.Option("--calib-size", help="Use a seeded sample of N images.")]


@app.command()
def calibrate(
    name: Annotated[str, typer.Argument(help="Recipe name, alias, or timm:<model>.")],
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration images: a folder (jpg/png/webp, "
                                                  "recursive) or a .npy/.npz of preprocessed inputs; default: "
                                                  "the built-in photographs.")] = None,
    method: MethodOption = "minmax",
    calib_size: CalibSizeOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the --calib-size sample.")] = 0,
    openvino: Annotated[Optional[bool], typer.Option("--openvino/--no-openvino", help="Build the NNCF OpenVINO "
                                                     "model (default: when openvino and nncf are installed).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint (.pth/.pt/.safetensors).")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (network).")] = False,
    ema: Annotated[bool, typer.Option("--ema", help="Prefer the EMA weights in a training checkpoint.")] = False,
    img_size: Annotated[Optional[int], typer.Option(help="Export resolution (default: the recipe's).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension.")] = False,
    images: Annotated[Optional[Path], typer.Option(help="Folder of photos for the parity checks.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(help="INT8 tolerance: smallest cosine (default 0.99).")] = None,
    min_top1: Annotated[Optional[float], typer.Option(help="INT8 tolerance: top-1 agreement (default 0.95).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Calibrate and quantize again even if nothing changed.")]
    = False,
    out: OutOption = Path("effexport-out"),
) -> None:
    """Calibrate a recipe's verified ONNX and build its INT8 forms: QDQ ONNX for TensorRT, an ONNX
    Runtime CPU form, and an NNCF OpenVINO model; writes calibration.json beside them."""
    from effexport.calibration.build import Int8Options, build_int8
    from effexport.exporter.pipeline import OnnxOptions, WeightsSpec

    spec = WeightsSpec(path=weights, pretrained=pretrained, use_ema=ema)
    options = Int8Options(method=method, calib_size=calib_size, seed=seed, openvino=openvino, min_cosine=min_cosine,
                          min_top1=min_top1, force=force)
    with _status(f"calibrating {name}") as progress:
        result = build_int8(name, calib, options, out, spec,
                            OnnxOptions(img_size=img_size, dynamic_batch=dynamic_batch, images=images), progress)
    _print_int8(result)


def _int8_after_export(name: str, spec, onnx_options, out: Path) -> None:
    from effexport.calibration.build import build_int8

    with _status(f"calibrating {name}") as progress:
        result = build_int8(name, onnx_options.calib, out=out, weights=spec, onnx_options=onnx_options,
                            progress=progress)
    _print_int8(result)


def _print_int8(result) -> None:
    manifest = result.manifest
    data = manifest["data"]
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    if manifest.get("parity_note"):
        err.print(f"[yellow]warning:[/] {manifest['parity_note']}")
    source = "built-in photographs" if data["kind"] == "builtin" else data["source"]
    console.print(f"calibration: {data['count']} inputs from {source}, method {manifest['method']}; cache "
                  f"{manifest['cache']['file']} ({'reused' if result.cache_reused else 'written'})")
    if data["skipped"]:
        names = ", ".join(s["file"] for s in data["skipped"])
        err.print(f"[yellow]skipped {len(data['skipped'])} unreadable file(s):[/] {names}")
    table = Table(title=f"INT8 forms of {manifest['recipe']}" + (" (reused)" if result.reused else ""))
    for col in ("file", "for", "size", "top-1", "cosine (min)", "parity"):
        table.add_column(col, justify="right" if col in ("size", "top-1", "cosine (min)") else "left")
    for form_name, form in manifest["forms"].items():
        parity = manifest["parity"][form_name]
        verdict = ("[green]passed[/]" if parity["passed"] else "[red]failed[/]") if manifest["parity_judged"] \
            else ("within" if parity["passed"] else "outside") + " (not enforced)"
        table.add_row(form["file"], ", ".join(form["backends"]), f"{form['bytes'] / 1e6:.1f} MB",
                      f"{parity['top1_agreement']:.0%}", f"{parity['min_cosine']:.4f}", verdict)
    console.print(table)
    console.print(f"INT8 tolerance {manifest['tolerance']} vs the FP32 model on {manifest['parity_inputs']}")
    check = manifest["qdq_check"]
    console.print(f"QDQ form check (TensorRT rules): {'passed' if check['passed'] else 'FAILED'} - "
                  f"{check['activation_quantizers']} activation quantizers per-tensor, zero points 0, "
                  f"{check['weight_quantizers']} weights per output channel")
    by_reason: dict[str, list[str]] = {}
    for layer in manifest["keep_float"]:
        by_reason.setdefault(layer["reason"], []).append(layer["node"])
    for reason, nodes in by_reason.items():
        shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        console.print(f"kept in float ({len(nodes)}): {shown} - {reason}", highlight=False)
    console.print(f"manifest: {result.manifest_path}")


# ---------------------------------------------------------------------------------------------- entry point


def main() -> None:
    try:
        app()
    except EffexportError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: nothing half-written was left behind")
        sys.exit(130)


if __name__ == "__main__":
    main()
