"""ONNX export: exactly the requested opset, checked, simplified, large models as external data.

Two exporters behind `export_onnx` (torch 2.14.1, onnxscript 0.7.2):
- TorchScript (`torch.onnx.export(dynamo=False)`): writes exactly the asked opset from 7 up (above 20 it warns
  that the opset is unsupported; the warning is surfaced), and an autograd.Function's `symbolic` gives a custom op
  its ONNX node. Deprecated upstream: `torchscript_available()` tells whether this torch still has it.
- torch.export (`dynamo=True`, onnxscript's translation, `optimize=True`): the supported future. It writes opset 18
  or more; asked for less, torch 2.14.1 silently writes 18. effexport therefore always asks max(18, opset) and
  converts 14..17 down itself (`convert_down`: drop opset-18 default attributes the converter chokes on, hold Pad/
  Split/Identity forms it has no adapter for, onnx's version converter, full check, the opset asserted). Below 14
  the converter has no form for HardSwish and similar ops: a UsageError. Custom ops reach it as
  `torch.library.custom_op`s with a translation registered here (`register_translation`), never by patching torch.
`exporter="auto"` (the default): torch.export from opset 18 on, TorchScript below it while `torchscript_available()`,
else torch.export converted down (14..17) or a UsageError naming 14. So the default opset 17 stays on TorchScript
and its files are byte-identical to before. Every written file's opset is checked: never a silent 18.

Measured (AMD EPYC, 2 shared cores; 64 px, random weights with randomized BatchNorm, deploy rewrites applied; node
counts after Identity removal and onnxslim, as the pipeline ships; parity = max |ORT - torch| / logit range on
3 random inputs; export seconds side by side in one process after a warm-up, static batch unless "dyn"):

    recipe                   nodes: TS@17 dynamo@18   parity TS / dynamo   seconds: TS@17 dyn@18 dyn@17 dyn@18-dyn
    rexnet_1.0                       202    202       3.8e-07 / 3.8e-07             0.58   2.43   2.81   4.60
    tresnet_m                        258    258       3.2e-07 / 3.2e-07             1.50   3.95   3.77   5.18
    efficientnet_b0                  239    239       4.2e-07 / 4.2e-07             0.56   2.83   2.25   3.96
    tf_efficientnet_b0 (SAME)        239    239       3.6e-07 / 3.3e-07             0.56   2.13   2.57   3.86
    efficientnet_lite0                94     94       6.0e-07 / 5.7e-07             1.12   1.63   1.74   5.06
    mobilenetv3_small                122    122       3.1e-07 / 3.2e-07             0.66   1.78   2.25   5.03
    ghostnet                         209    209       2.2e-07 / 2.4e-07             1.69   2.53   2.97   4.90
    mobilenetv3_large_pfd            154    154       5.1e-07 / 5.5e-07             0.99   2.31   1.96   6.04
    shufflenetv2                     186    173       2.4e-07 / 2.4e-07             0.48   2.64   3.22   4.86
    mutualnet_mobilenet_v2 (w0.7)    100    100       2.3e-07 / 2.5e-07             0.47   2.14   1.82   5.39
    rexnet_lite_1.0                  109    109       2.1e-07 / 2.3e-07             0.83   1.83   1.73   6.34
    timm:resnet18                     49     49       3.5e-07 / 3.3e-07             0.49   1.19   1.63   2.27
    resnext101_32x8d_wsl (own run)   241    241       3.7e-07 / 3.6e-07             5.38  10.39  16.27   9.10

No BatchNormalization, Identity or (static) Shape node is left on either path; the converted opset-17 and
opset-14 files have the same node counts and parity as opset 18. Differences: torch.export writes a global
average pool as ReduceMean + Reshape (TorchScript: GlobalAveragePool + Flatten, same count) and shufflenet's
channel split as one Split instead of two Slices (173 vs 186 nodes). torch.export's own optimizer matters: without
it (optimize=False) rexnet_1.0 is 310 raw / 234 after onnxslim nodes, tresnet_m 316 / 264, efficientnet_b0
278 / 239; with it the raw export is already what onnxslim leaves, and it holds no local functions. Its per-node
metadata (stack traces with local paths) is stripped. torch.export costs 1.5-4x the TorchScript time here, about
2 s more per model, and about 2 s more again with a dynamic batch (timings on shared cores vary by ~30%).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from effexport.errors import ExportError, UsageError, require

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf refuses messages over 2 GiB; keep a margin
FORBIDDEN_OPS = ("BatchNormalization", "Identity")
SHAPE_OPS = ("Shape", "Size")


EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMO_OPSET = 18  # the lowest opset torch's torch.export-based exporter writes; lower ones are converted from it
DYNAMO_MIN_OPSET = 14  # HardSwish (opset 14) has no earlier form, so conversion stops here for most recipes
# Opset-18 attributes whose default value is also the behaviour of the earlier opsets; onnx's version converter keeps
# them and its checker then rejects the converted node, so they are dropped before converting.
NEW_IN_18_DEFAULTS = {
    op: ("noop_with_empty_axes", 0)
    for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSumSquare")
}
# Forms that mean exactly their version at the asked opset, for which onnx's version converter has no adapter (it
# stops at "No Adapter To Version $17 for Pad"): such nodes are held out of the conversion under a private domain and
# put back unchanged. Each function says whether the node qualifies (and may drop an attribute that only restates
# what the earlier version does anyway); the converted graph is then checked with full shape inference.
def _pad_as_13(node: onnx.NodeProto) -> bool:
    return len(node.input) < 4 or not node.input[3]  # Pad-18 without its new `axes` input is Pad-13


def _split_as_13(node: onnx.NodeProto) -> bool:
    # Split-18's `num_outputs` restates the number of outputs; without a `split` input Split-13 splits equally too
    # (shape inference refuses an uneven split, so the check after conversion catches that case).
    kept = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept)
    return True


def _identity_as_14(node: onnx.NodeProto) -> bool:
    return True  # Identity-16 only adds optional- and sequence-typed inputs, which a traced CNN has none of


SAME_BELOW_18 = {"Pad": _pad_as_13, "Split": _split_as_13, "Identity": _identity_as_14}
HOLD_DOMAIN = "effexport.hold"
# Known exporter chatter that says nothing about the written file; everything else the exporters warn is surfaced.
CHATTER = (
    re.compile(r"legacy TorchScript-based ONNX export"),
    re.compile(r"Constant folding - Only steps=1 can be constant folded"),
    re.compile(r"^\[torch\.onnx\] "),
)
# Node metadata the torch.export-based exporter and its optimizer record: stack traces with this machine's paths,
# module hierarchies, rewrite-rule names: useful to debug the exporter, noise (and a leak of local paths) in a shipped
# artifact.
NODE_METADATA_PREFIXES = ("pkg.torch.onnx.", "pkg.onnxscript.", "namespace")

_TRANSLATIONS: dict[Callable, Callable] = {}


@dataclass(frozen=True)
class ExportRecord:
    """Which exporter wrote the file, at which opset, and what it warned that may make the file wrong."""

    exporter: str  # "torchscript", "dynamo" or "dynamo+converted-from-18"
    opset: int
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"exporter": self.exporter, "opset": self.opset, "warnings": list(self.warnings)}


def register_translation(op: Callable, translation: Callable) -> None:
    """Give the torch.export-based exporter an ONNX translation (an onnxscript function) for a custom op.

    Recipes register the ops their rewrites introduce; the table is handed to each export, nothing in torch changes.
    """
    if _TRANSLATIONS.get(op, translation) is not translation:
        raise ValueError(f"an ONNX translation for {op} is registered twice")
    _TRANSLATIONS[op] = translation


def translations() -> dict[Callable, Callable]:
    return dict(_TRANSLATIONS)


def torchscript_available() -> bool:
    """Whether this torch still ships the (deprecated) TorchScript exporter behind `torch.onnx.export(dynamo=False)`."""
    return importlib.util.find_spec("torch.onnx._internal.torchscript_exporter") is not None


def opset_range(exporter: str = "auto") -> tuple[int, int]:
    """The opsets `export_onnx` writes exactly with `exporter` on this torch."""
    from torch.onnx import _constants

    high = _constants.ONNX_MAX_OPSET
    if exporter == "dynamo" or (exporter == "auto" and not torchscript_available()):
        return DYNAMO_MIN_OPSET, high
    return _constants.ONNX_MIN_OPSET, high


def check_opset(opset: int, exporter: str = "auto") -> None:
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    if exporter == "torchscript" and not torchscript_available():
        raise UsageError(f"torch {_torch_version()} no longer has the TorchScript exporter: use the dynamo exporter "
                         f"(opsets {DYNAMO_MIN_OPSET} to {opset_range('dynamo')[1]})")
    low, high = opset_range(exporter)
    if not low <= opset <= high:
        how = (f"the torch.export-based exporter reaches opset {low} at the lowest (torch writes {DYNAMO_OPSET}, "
               f"effexport converts it down)" if opset < low == DYNAMO_MIN_OPSET
               else f"torch {_torch_version()} exports opsets {low} to {high} exactly")
        raise UsageError(f"opset {opset} is not supported: {how} (effexport never writes a different opset than "
                         f"asked)")


def choose_exporter(opset: int, exporter: str = "auto") -> str:
    """"torchscript" or "dynamo" for `opset`: auto takes torch.export from opset 18 on, where torch writes the
    asked opset itself, and the TorchScript exporter below it for as long as torch has it."""
    check_opset(opset, exporter)
    if exporter != "auto":
        return exporter
    return "dynamo" if opset >= DYNAMO_OPSET or not torchscript_available() else "torchscript"


def _torch_version() -> str:
    return torch.__version__.split("+")[0]


@dataclass(frozen=True)
class GraphCheck:
    node_counts: dict[str, int]
    problems: tuple[str, ...]


def model_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(model: nn.Module, sample: torch.Tensor, path: Path, opset: int, dynamic_batch: bool, *,
                exporter: str = "auto", output_name: str = OUTPUT_NAME) -> ExportRecord:
    """torch -> ONNX at exactly `opset`; writes `path` (and external data files beside it if large).

    `exporter`: "auto", "dynamo" (torch.export) or "torchscript"; see the module docstring for which runs when.
    """
    path = Path(path)
    chosen = choose_exporter(opset, exporter)
    with _ExporterNotes() as notes:
        if chosen == "torchscript":
            _export_torchscript(model, sample, path, opset, dynamic_batch, output_name)
            written = "torchscript"
        else:
            written = _export_dynamo(model, sample, path, opset, dynamic_batch, output_name)
    found = model_opset(onnx.load(str(path), load_external_data=False))
    if found != opset:  # the promise of this stage; a change in torch that breaks it fails here
        raise ExportError(f"the {written} exporter wrote opset {found} for {type(model).__name__}, not the requested "
                          f"{opset}")
    for line in notes.problems:
        log.warning("exporter warning (%s, opset %d): %s", written, opset, line)
    return ExportRecord(written, opset, notes.problems)


def _export_torchscript(model: nn.Module, sample: torch.Tensor, path: Path, opset: int, dynamic_batch: bool,
                        output_name: str) -> None:
    dynamic_axes = {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(model, (sample,), str(path), opset_version=opset, dynamo=False,
                              input_names=[INPUT_NAME], output_names=[output_name], dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
    except Exception as exc:  # the exporter raises many types; the message is what helps
        raise ExportError(f"torch.onnx (TorchScript) could not export {type(model).__name__} at opset {opset}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc


def _export_dynamo(model: nn.Module, sample: torch.Tensor, path: Path, opset: int, dynamic_batch: bool,
                   output_name: str) -> str:
    """torch.export, then onnxscript's translation at max(18, opset); below 18, converted down here. Returns the
    path's name for the record."""
    require("onnxscript", None, "the torch.export-based ONNX exporter")
    dynamic_shapes = None
    if dynamic_batch:
        # A batch of one would specialise the dimension to 1 (torch.export treats sizes 0 and 1 as constants).
        if sample.shape[0] < 2:
            sample = sample.expand(2, *sample.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim("batch")},)
    target = max(opset, DYNAMO_OPSET)
    try:
        with torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(model, (sample,), None, opset_version=target, dynamo=True,
                                        input_names=[INPUT_NAME], output_names=[output_name],
                                        dynamic_shapes=dynamic_shapes, custom_translation_table=translations(),
                                        optimize=True, verbose=False)
    except Exception as exc:
        raise ExportError(f"torch.export-based ONNX export of {type(model).__name__} failed at opset {target}: "
                          f"{_failure_summary(exc)}") from exc
    strip_debug_metadata(program.model)
    if opset == target:
        program.save(str(path))  # onnx_ir moves the weights to one external file itself above 2 GiB
        return "dynamo"
    if sum(t.numel() * t.element_size() for t in model.state_dict().values()) > EXTERNAL_DATA_THRESHOLD:
        raise ExportError(f"{type(model).__name__} is larger than 2 GiB, which onnx's version converter cannot take: "
                          f"through torch.export it can only be written at opset {DYNAMO_OPSET} or more; ask for that, "
                          f"or for the TorchScript exporter")
    try:
        exported = convert_down(program.model_proto, opset)
    except ExportError as exc:  # it names the op; say which model too
        raise ExportError(f"{type(model).__name__}: {exc}") from exc
    save_onnx(exported, path)
    return f"dynamo+converted-from-{target}"


def _failure_summary(exc: Exception) -> str:
    """The exporter's error in one line: its innermost cause, and the ops it names (the one to translate)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporter colours its messages
    causes = re.findall(r"^<class '[\w.]+'>: (.+)$", text, re.MULTILINE)  # its "Exception summary", innermost first
    first = causes[0] if causes else next((line.strip() for line in text.splitlines() if line.strip()), "")
    ops = [f"{op}.{overload}" for op, overload in re.findall(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)", text)]
    ops += re.findall(r"target=torch\.ops\.([\w.]+)", text)
    where = f" (op: {', '.join(dict.fromkeys(ops))})" if ops else ""
    return f"{type(exc).__name__}: {first[:300]}{where}"


def strip_debug_metadata(model) -> int:
    """Drop the exporter's per-node debug metadata (NODE_METADATA_PREFIXES) from an onnx_ir model; returns how many."""
    nodes = [*model.graph.all_nodes(), *(node for function in model.functions.values() for node in function)]
    removed = 0
    for node in nodes:
        for key in [key for key in node.metadata_props if key.startswith(NODE_METADATA_PREFIXES)]:
            del node.metadata_props[key]
            removed += 1
    return removed


def _all_nodes(model: onnx.ModelProto):
    yield from model.graph.node
    for function in model.functions:
        yield from function.node


def convert_down(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """An opset-18 graph at `opset` (14..17) with onnx's version converter, checked; ExportError if it cannot be."""
    from onnx import version_converter

    if model.functions:  # the converter does not look inside local functions
        model = onnx.inliner.inline_local_functions(model)
    drop_new_defaults(model)
    held = hold_unchanged(model)
    try:
        converted = version_converter.convert_version(model, opset)
        release_held(converted)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        raise ExportError(f"converting the opset-{DYNAMO_OPSET} export to opset {opset} failed: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        release_held(model)
    log.debug("converted to opset %d (%d node(s) held out of the converter)", opset, held)
    if model_opset(converted) != opset:
        raise ExportError(f"the version converter wrote opset {model_opset(converted)}, not the requested {opset}")
    return converted


def hold_unchanged(model: onnx.ModelProto) -> int:
    """Move the nodes SAME_BELOW_18 covers into HOLD_DOMAIN, out of the converter's sight; returns how many."""
    held = 0
    for node in _all_nodes(model):
        same = SAME_BELOW_18.get(node.op_type)
        if same is not None and node.domain in ("", "ai.onnx") and same(node):
            node.domain = HOLD_DOMAIN
            held += 1
    if held:
        model.opset_import.append(onnx.helper.make_opsetid(HOLD_DOMAIN, 1))
    return held


def release_held(model: onnx.ModelProto) -> None:
    for node in _all_nodes(model):
        if node.domain == HOLD_DOMAIN:
            node.domain = ""
    kept = [o for o in model.opset_import if o.domain != HOLD_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def drop_new_defaults(model: onnx.ModelProto) -> int:
    """Remove opset-18 attributes set to the value that is also the earlier opsets' behaviour (NEW_IN_18_DEFAULTS);
    a non-default value has no earlier form and is left for the converter to refuse. Returns how many."""
    removed = 0
    for node in _all_nodes(model):
        name, default = NEW_IN_18_DEFAULTS.get(node.op_type, (None, None))
        if name is None or node.domain not in ("", "ai.onnx"):
            continue
        for attr in list(node.attribute):
            if attr.name == name and onnx.helper.get_attribute_value(attr) == default:
                node.attribute.remove(attr)
                removed += 1
    return removed


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


class _ExporterNotes:
    """Collect what the exporters say while they run, from Python warnings and from the torch.onnx and onnxscript
    loggers: known chatter (deprecations, CHATTER) goes to the debug log, the rest into `problems`, one line each."""

    LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")
    QUIET = (DeprecationWarning, FutureWarning)

    def __init__(self):
        self.problems: tuple[str, ...] = ()
        self._logged: list[str] = []
        self._handler = _Collect(self._logged)
        self._loggers = [logging.getLogger(name) for name in self.LOGGERS]

    def __enter__(self) -> _ExporterNotes:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self._propagate = [logger.propagate for logger in self._loggers]
        for logger in self._loggers:
            logger.addHandler(self._handler)
            logger.propagate = False  # collected here and logged once, at the level it deserves
        return self

    def __exit__(self, *exc_info) -> None:
        for logger, propagate in zip(self._loggers, self._propagate, strict=True):
            logger.removeHandler(self._handler)
            logger.propagate = propagate
        self._catcher.__exit__(*exc_info)
        chatter: dict[str, None] = {}
        problems: dict[str, None] = {}
        said = [(str(w.message), issubclass(w.category, self.QUIET)) for w in self._caught]
        for text, quiet in [*said, *((text, False) for text in self._logged)]:
            line = next((part.strip() for part in text.splitlines() if part.strip()), "")[:300]
            if line:
                (chatter if quiet or any(p.search(line) for p in CHATTER) else problems)[line] = None
        for line in chatter:
            log.debug("exporter note: %s", line)
        self.problems = tuple(problems)


def eliminate_identity(model: onnx.ModelProto) -> int:
    """Remove Identity nodes by rewiring their consumers (graph outputs keep a name via the producer)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    removed = 0
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        src, dst = node.input[0], node.output[0]
        if dst in outputs:
            producer = next((n for n in graph.node if src in n.output), None)
            if producer is None or src in outputs:
                continue
            producer.output[list(producer.output).index(src)] = dst
            for n in graph.node:
                for i, name in enumerate(n.input):
                    if name == src:
                        n.input[i] = dst
        else:
            for n in graph.node:
                for i, name in enumerate(n.input):
                    if name == dst:
                        n.input[i] = src
        graph.node.remove(node)
        removed += 1
    return removed


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, dead-code removal and fusions (e.g. Pad into Conv)."""
    import onnxslim

    try:
        slim = onnxslim.slim(model)
    except Exception as exc:
        raise ExportError(f"onnxslim failed to simplify the graph ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"rerun with --no-simplify to skip simplification") from exc
    restore_initializer_inputs(slim)
    return slim


def restore_initializer_inputs(model: onnx.ModelProto) -> int:
    """Below IR version 4 (the exporter writes IR 3 for opsets 7 and 8) every initializer must also be a graph
    input, and onnxslim writes them as initializers only, which the checker rejects. List each one missing as an input
    after the real ones (runtimes feed the first input). Returns how many were added."""
    if model.ir_version >= 4:
        return 0
    listed = {value.name for value in model.graph.input}
    missing = [tensor for tensor in model.graph.initializer if tensor.name not in listed]
    model.graph.input.extend(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
                             for tensor in missing)
    return len(missing)


def set_metadata(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Write `props` into the model's `metadata_props`, replacing entries with the same key and keeping others."""
    bad = [key for key, value in props.items() if not isinstance(value, str)]
    if bad:  # protobuf would fail later with a message that names no key
        raise TypeError(f"ONNX metadata values must be strings: {', '.join(bad)}")
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **props})


def read_metadata(path: Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file, without reading its external weights."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def drop_intermediate_value_info(model: onnx.ModelProto) -> int:
    """Remove the shapes recorded for intermediate tensors (graph inputs and outputs keep theirs); returns how many.

    In a dynamic-batch export they all carry the symbolic `batch`, and a runtime that fixes the batch on the input
    (tract's `set_input_fact`) then finds them contradicting it and refuses the model; runtimes infer these shapes
    from the graph anyway.
    """
    removed = len(model.graph.value_info)
    del model.graph.value_info[:]
    return removed


def check_graph(model: onnx.ModelProto, *, static_shape: bool) -> GraphCheck:
    counts = Counter(n.op_type for n in model.graph.node)
    problems = [f"{counts[op]} {op} node(s)" for op in FORBIDDEN_OPS if counts.get(op)]
    if static_shape:
        problems += [f"{counts[op]} {op} node(s) (shape arithmetic in a static graph)"
                     for op in SHAPE_OPS if counts.get(op)]
    return GraphCheck(dict(sorted(counts.items())), tuple(problems))


def io_spec(model: onnx.ModelProto) -> dict:
    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    def spec(values):
        return [{"name": v.name, "shape": dims(v),
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name} for v in values]

    return {"inputs": spec(model.graph.input), "outputs": spec(model.graph.output)}


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save; above the protobuf limit, all weights go to one `<name>.data` file beside it."""
    path = Path(path)
    try:
        return _save(model, path)
    except OSError as exc:  # onnx's writer drops the file name: keep it for the one-line error
        raise OSError(exc.errno, exc.strerror, str(exc.filename or path)) from exc


def _save(model: onnx.ModelProto, path: Path) -> list[Path]:
    large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD if _fits_bytesize(model) else True
    if large:
        data = path.with_name(path.name + ".data")
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def _fits_bytesize(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # ByteSize overflows for >2 GiB messages on some protobuf builds
        return False


def is_large(model: onnx.ModelProto) -> bool:
    return sum(t.ByteSize() if not t.external_data else 0 for t in model.graph.initializer) > \
        EXTERNAL_DATA_THRESHOLD or any(t.external_data for t in model.graph.initializer)


def load_onnx(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def check_model(path: Path) -> None:
    """onnx's checker (by path, so external data and >2 GiB models are checked too), with shapes."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"onnx checker rejected {path.name}: {str(exc).splitlines()[0][:300]}") from exc
