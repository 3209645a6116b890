"""What the commands print: one printer per result, tables on stdout, warnings and errors on stderr.

The commands in cli.py parse, call one workflow function and hand its result to a printer here; nothing here
computes a result, and nothing in the workflow prints.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _console(stderr: bool) -> Console:
    """Rich wraps at 80 columns when output is not a terminal (CI logs, pipes, `tee`), which cuts the tables'
    file names in half; 120 keeps a row on one line. A terminal's own width, or COLUMNS, still decides.
    The stream itself is left to rich, which looks it up at each write (tests swap sys.stdout)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 120
    return Console(stderr=stderr, width=width)


console = _console(stderr=False)
err = _console(stderr=True)


def warn(text: str) -> None:
    """One warning line; the text is not markup (it names pip extras like 'effexport[nncf]')."""
    err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False)


@contextmanager
def status(message: str):
    """A spinner on stderr whose text each pipeline stage updates."""
    if not err.is_terminal:
        yield lambda msg: logging.getLogger("effexport").info(msg)
        return
    with err.status(message) as spinner:
        yield lambda msg: spinner.update(msg)


@contextmanager
def bench_progress(message: str):
    """A progress bar on stderr for the bench: yields (stage(message), timed(label, done, total)) callbacks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(message, total=None)

        def stage(text: str) -> None:
            bar.update(task, description=text)
            logging.getLogger("effexport").info(text)

        def timed(label: str, done: int, total: int) -> None:
            bar.update(task, description=f"timing {label}", completed=done, total=total)

        yield stage, timed


def warn_random(weights: dict | None) -> None:
    """Random weights, and a slimmable recipe's BatchNorm statistics estimated on the built-in photographs."""
    if weights and weights.get("source") == "random":
        warn(weights["note"])
    if weights and (weights.get("finalized") or {}).get("warning"):
        warn(weights["finalized"]["warning"])


def print_export(result) -> None:
    report = result.report
    parity = report["parity"]["onnxruntime"]
    warn_random(report["weights"])
    counts = report["node_counts"]
    ops = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])
    state = "reused" if result.reused else "wrote"
    console.print(f"{state} {result.path} (opset {report['opset']}, {sum(counts.values())} nodes: {ops})", markup=False)
    console.print(f"parity vs PyTorch FP32 in ONNX Runtime: [green]passed[/] - max abs {parity['max_abs']:.2e}, "
                  f"rel {parity['max_rel']:.2e}, cosine {parity['min_cosine']:.6f}, top-1 "
                  f"{parity['top1_agreement']:.0%}, top-5 {parity['top5_agreement']:.0%} "
                  f"over {parity['samples']} inputs{_rule_note(parity)}")
    if "num_classes" in report:
        labels = report.get("labels")
        named = f"{labels['count']} from {labels['source']}" if labels else "none (pass --labels FILE)"
        console.print(f"classes: {report['num_classes']}, labels: {named}", markup=False)
    console.print(f"report: {result.report_path}", markup=False)


def print_artifact(artifact) -> None:
    report = artifact.report
    warn_random(report.get("weights"))
    parity = report["parity"]
    execution = report.get("execution", {})
    runs = execution.get("execution_precision") or artifact.precision
    state = "reused" if artifact.reused else "wrote"
    if artifact.calibration is not None:  # INT8: where it came from
        print_int8_source(artifact.calibration, report["int8"]["form"])
    device = execution.get("device_name") or execution.get("device") or artifact.availability.device
    console.print(f"{state} {artifact.path} ({artifact.backend} {artifact.precision}, executes {runs} on {device})",
                  markup=False)
    verdict = "[green]passed[/]" if parity["passed"] else "[yellow]outside the tolerance, not enforced[/]"
    console.print(f"parity vs PyTorch FP32: {verdict} - max abs {parity['max_abs']:.2e}, rel "
                  f"{parity['max_rel']:.2e}, cosine {parity['min_cosine']:.6f}, top-1 {parity['top1_agreement']:.0%},"
                  f" top-5 {parity['top5_agreement']:.0%} over {parity['samples']} inputs: "
                  f"{escape(parity['inputs'])}{_rule_note(parity)} (tolerance: "
                  f"{_describe_tolerance(parity['tolerance'])})")
    if parity.get("enforced") is False:
        err.print(f"[bold red]{parity['note']}[/]", highlight=False)
    console.print(f"report: {artifact.folder / 'report.json'}", markup=False)


def print_int8_source(result, form: str | None = None) -> None:
    """Where INT8 artifacts came from: the calibration, its data and what it kept in float."""
    for warning in result.warnings:
        warn(warning)
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


def _rule_note(parity: dict) -> str:
    """What judged a multi-label head: its label sets at 0.5 (top-k outputs say nothing more)."""
    if parity.get("rule", "top-k") == "top-k":
        return ""
    return (f"; judged by {parity['rule']}: same label set {parity['label_set_agreement']:.1%}, mean Jaccard "
            f"{parity['mean_jaccard']:.4f}, max probability error {parity['max_abs']:.2e}")


def _describe_tolerance(tol) -> str:
    from effexport.exporter.parity import Tolerance

    return (tol if isinstance(tol, Tolerance) else Tolerance(**tol)).describe()


def print_verify(result) -> None:
    warn_random(result.weights)
    if result.int8 is not None:
        print_int8_source(result.int8)
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
    for r in compared:
        if (r.parity or {}).get("rule", "top-k") != "top-k":
            console.print(f"{r.backend} {r.precision}{_rule_note(r.parity)}", markup=False)
    if len(groups) > 1:
        for inputs, precisions in groups.items():
            console.print(f"{', '.join(precisions)} compared over {inputs}", highlight=False, markup=False)
    for r in result.rows:
        if r.status == "error":
            err.print(f"[red]{r.backend} {r.precision}:[/] {escape(r.note)}", highlight=False, soft_wrap=True)
    if any(r.status == "not enforced" or (r.precision == "int8" and r.status == "passed" and result.weights and
                                          result.weights.get("source") == "random") for r in result.rows):
        from effexport.calibration.int8 import RANDOM_NOTE

        err.print(f"[bold red]{RANDOM_NOTE}[/]", highlight=False)
    console.print(f"table: {result.path}", markup=False)


def print_bench(result) -> None:
    m = result.machine
    from effexport.workflow.bench import COMPILED

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
        warn(result.load.warning)
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
    from effexport.workflow.bench import int8_slower

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


def _some(nodes: list[str], shown: int = 3) -> str:
    return ", ".join(nodes[:shown]) + (f" and {len(nodes) - shown} more" if len(nodes) > shown else "")


def print_int8(result) -> None:
    manifest = result.manifest
    data = manifest["data"]
    for warning in result.warnings:
        warn(warning)
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


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def print_recipes(rows: list[dict]) -> None:
    table = Table(title=f"{len(rows)} recipes (any other timm model: timm:<name>)")
    for col in ("recipe", "family", "input", "params", "aliases"):
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold",
                         no_wrap=col != "aliases")
    for r in rows:
        table.add_row(r["name"], r["family"], "x".join(map(str, r["input_size"][1:])), f"{r['params'] / 1e6:.1f}M",
                      ", ".join(r["aliases"]))
    console.print(table)


def print_info(data: dict) -> None:
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
        ("classes", f"{data['num_classes']}; labels: {data['labels']}"),
        ("preprocessing", f"resize short side to {pp['resize']} ({pp['interpolation']}), center-crop "
                          f"{pp['crop_size'][0]}x{pp['crop_size'][1]} (crop fraction {pp['crop_pct']}), scale to "
                          f"[0, 1], mean {pp['mean']}, std {pp['std']}"),
        ("rewrites", "\n".join(f"{r['name']}: {r['doc']}" for r in data["rewrites"]) or "-"),
        ("checkpoints", ", ".join(data["checkpoint_layouts"]) + "".join(
            f"\n{name}: {note}" for name, note in data.get("layout_notes", {}).items())),
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


def print_backends(found: list, backends: dict) -> None:
    table = Table(title="backends")
    for col in ("backend", "status", "version", "device", "precisions", "install / why missing"):
        table.add_column(col, overflow="fold")
    for a in found:
        spec = backends[a.name]
        state = "[green]available[/]" if a.available else "[red]missing[/]"
        hint = a.reason or (f"pip install 'effexport[{spec.extra}]'" if spec.extra else "core dependency")
        table.add_row(a.name, state, a.version or "-", a.device or "-", ", ".join(spec.precisions), escape(hint))
    console.print(table)


def print_plan(build_file, plan, rows) -> None:
    table = Table(title=f"plan of {build_file}: {len(plan.targets)} targets into {plan.out}", title_justify="left")
    for col in ("model", "target", "action", "why"):
        table.add_column(col, overflow="fold")
    for target, action, why in rows:
        table.add_row(target.model, target.name, action, escape(why), style="dim" if action == "skip" else None)
    console.print(table)


def print_build(build_file, result) -> None:
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


def print_merge(folders, result) -> None:
    served = sum(a["status"] in ("built", "reused") for a in result.artifacts)
    console.print(f"merged {len(folders)} outputs into {result.out}: {served} artifacts ({result.copied} files "
                  f"written), {len(result.artifacts) - served} failed or skipped; manifest: {result.manifest_path}",
                  markup=False)
    for name in result.repositories:
        console.print(f"{name} repository: {result.out / name}", markup=False)
    if result.missing_shards:
        err.print(f"[yellow]partial:[/] shard{'s' if len(result.missing_shards) > 1 else ''} "
                  f"{escape(', '.join(result.missing_shards))} missing (--partial); the manifest records it",
                  highlight=False)


def print_reverify(result) -> None:
    table = Table(title=f"{result.root}: {len(result.rows)} artifacts re-verified as they are in the tree",
                  title_justify="left")
    for col in ("model", "target", "status", "artifact", "against PyTorch from", "parity or reason"):
        table.add_column(col, overflow="fold")
    colours = {"passed": "green", "failed": "red", "skipped": "yellow"}
    for r in result.rows:
        table.add_row(escape(r.model), escape(r.target), f"[{colours[r.status]}]{r.status}[/]", escape(r.path),
                      escape(r.weights or "-"), escape(r.message))
    console.print(table)
    skipped = [r for r in result.rows if r.status == "skipped"]
    if skipped:
        warn(f"{len(skipped)} artifact{'s' if len(skipped) > 1 else ''} not re-verified here (skipped is not passed)")
    if not result.failed:
        console.print(f"{sum(r.status == 'passed' for r in result.rows)} artifacts compute the function of their "
                      f"weights within tolerance on the parity inputs (this trusts the weights files and this "
                      f"machine's runtimes)", markup=False)


def print_error(message: str) -> None:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
