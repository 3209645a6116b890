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

# ---------------------------------------------------------------------------------------------- slimmable options
# Only recipes that take them (the slimmable networks) accept these; any other recipe exits 2.

WidthOption = Annotated[Optional[float], typer.Option(
    "--width", help="Slimmable recipes: the width to export (within the trained range).")]
ResolutionOption = Annotated[Optional[int], typer.Option(
    "--resolution", help="Slimmable recipes: the input resolution (BatchNorm statistics are re-estimated there).")]
BudgetOption = Annotated[Optional[float], typer.Option(
    "--budget-mflops", help="Slimmable recipes: export the most accurate query-table point within this budget.")]
QueryTableOption = Annotated[Optional[Path], typer.Option(
    "--query-table", help="Slimmable recipes: your own query table for --budget-mflops (CSV: "
                          "mflops,width,resolution,top1).")]


def _recipe_params(width, resolution, budget_mflops, query_table, calib=None):
    from effexport.recipes import RecipeParams

    return RecipeParams(width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table,
                        calib=calib)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage.")] = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])
    for chatty in ("huggingface_hub", "httpx", "urllib3"):  # their retries end in our one-line error
        logging.getLogger(chatty).setLevel(logging.ERROR)


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
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
) -> None:
    """Params, MACs, input spec, preprocessing, rewrites and origin of one recipe."""
    from effexport.info import recipe_info

    data = recipe_info(name, img_size, _recipe_params(width, resolution, budget_mflops, query_table))
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
    img_size: Annotated[Optional[int], typer.Option(help="Export resolution (default: the recipe's).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint (.pth/.pt/.safetensors).")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (network).")] = False,
    ema: Annotated[bool, typer.Option("--ema", help="Prefer the EMA weights in a training checkpoint.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    images: Annotated[Optional[Path], typer.Option(help="Folder of photos for the parity check.")] = None,
    max_rel: Annotated[Optional[float], typer.Option(help="FP32 parity tolerance (of the logit range).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Export again even if nothing changed.")] = False,
    out: OutOption = Path("effexport-out"),
    calib: Annotated[Optional[Path], typer.Option(
        "--calib", help="Calibration images: BatchNorm re-estimation of slimmable recipes.")] = None,
    width: WidthOption = None,
    resolution: ResolutionOption = None,
    budget_mflops: BudgetOption = None,
    query_table: QueryTableOption = None,
) -> None:
    """Export a recipe to ONNX, check and simplify it, and verify it against PyTorch in ONNX Runtime."""
    from effexport.exporter.pipeline import OnnxOptions, WeightsSpec, export_recipe

    if dynamic_batch and batch != 1:
        raise typer.BadParameter("--batch and --dynamic-batch exclude each other")
    spec = WeightsSpec(path=weights, pretrained=pretrained, use_ema=ema)
    options = OnnxOptions(opset=opset, batch=batch, dynamic_batch=dynamic_batch, img_size=img_size,
                          simplify=simplify, images=images, max_rel=max_rel, force=force, calib=calib,
                          width=width, resolution=resolution, budget_mflops=budget_mflops, query_table=query_table)
    with _status(f"exporting {name}") as progress:
        result = export_recipe(name, spec, options, out, progress)
    _print_export(result)


def _print_export(result) -> None:
    report = result.report
    parity = report["parity"]["onnxruntime"]
    weights = report["weights"]
    if weights["source"] == "random":
        err.print(f"[yellow]warning:[/] {weights['note']}")
    if weights.get("finalized", {}).get("warning"):
        err.print(f"[yellow]warning:[/] {weights['finalized']['warning']}")
    counts = report["node_counts"]
    ops = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])
    state = "reused" if result.reused else "wrote"
    console.print(f"{state} {result.path} (opset {report['opset']}, {sum(counts.values())} nodes: {ops})")
    console.print(f"parity vs PyTorch FP32 in ONNX Runtime: [green]passed[/] - max abs {parity['max_abs']:.2e}, "
                  f"rel {parity['max_rel']:.2e}, cosine {parity['min_cosine']:.6f}, top-1 "
                  f"{parity['top1_agreement']:.0%}, top-5 {parity['top5_agreement']:.0%} "
                  f"over {parity['samples']} inputs")
    console.print(f"report: {result.report_path}")


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
