"""Accuracy-aware INT8: which layers to keep in float, measured rather than guessed.

Measured here on a 2-core AMD EPYC with AVX-512 VNNI (no AMX), ONNX Runtime 1.32, OpenVINO 2026.4, NNCF 3.4.

Each INT8 form is first built with the recipe's keep-float layers (the stem at least) and judged on a tuning set:
the calibration inputs themselves, against FP32, under the INT8 tolerance with a margin (tuning_target): min cosine
on every input, top-1 agreement on the inputs where FP32 is confident (top-1 probability >= CONFIDENT). The margin,
because a form is less faithful on photographs calibration never saw: the trained Lite0's three forms, untuned,
reached min cosine 0.9907, 0.9932 and 0.9918 on the tuning set and 0.9894, 0.9926 and 0.9899 on the held-out views,
two of them outside the gate. Calibration photographs are not
chosen to be recognisable (the built-in ones include a retina and a deep field), and top-1 on the rest measures
near-ties: with it, tuning kept 8 more layers of Lite0's ONNX Runtime form in float (1.2x FP32 speed instead of
1.9x) for a form that already met the gate on the held-out photographs. Only a form that fails the tuning set is
tuned. The held-out photographs that the INT8 gate judges on (all views, top-1 included) are never seen here, so
the gate stays an independent check.

Sensitivity of a layer = how much closer to FP32 the fully quantized model gets when that one layer runs in float
(the loss is the mean of 1 - cosine of the logits over the ranking inputs). It is measured once, on the portable QDQ
form, by rewiring the layer's Conv/Gemm to its float input and float weight in memory: no recalibration, one ONNX
Runtime session per layer (about 25 s for EfficientNet-Lite0's 44 quantized layers). The same ranking serves every
form: it ranks what 8-bit rounding of a layer's input and weights costs, which the forms share; each form is
then rebuilt with its own quantizer and judged again. Layers are added most sensitive first, 1, 2, 4, 8, ... at a
time, until the form meets the tolerance on the tuning set or `MAX_FLOAT_SHARE` of its quantized layers are float;
the smallest passing set found that way is kept (doubling, not a search for the exact minimum: each step is a
rebuild, 2 to 6 s for Lite0), or, when none passes, the step that came closest.

NNCF's `quantize_with_accuracy_control` does the same for OpenVINO alone; on a 2-core machine it had reverted 10
operations after 9 minutes and was still 5% off (EfficientNet-Lite, Intel Xeon AVX-512 VNNI), so effexport uses
one ranking for all three forms instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from effexport.backends import run_in_batches
from effexport.calibration.qdq import WEIGHTED_OPS, FloatLayer
from effexport.exporter.io_spec import LABEL_SET_RULE
from effexport.exporter.parity import Tolerance, compare

log = logging.getLogger(__name__)

CONFIDENT = 0.3  # FP32 top-1 probability from which a tuning input counts for top-1 agreement
COSINE_MARGIN = 0.5  # of the gate's cosine error budget, what a form may use on the tuning set
MIN_CONFIDENT = 10  # with fewer confident inputs, top-1 is judged on all of them
RANKING_INPUTS = 32  # inputs each one-layer-in-float variant runs on (evenly spaced over the tuning set)
TUNING_INPUTS = 128  # at most this many calibration inputs judge a form (evenly spaced)
MAX_FLOAT_SHARE = 0.25  # of the quantized layers, at most this many are added; beyond, INT8 keeps little speed
TUNED_REASON = "accuracy-aware: among the most sensitive layers measured on the calibration inputs"


@dataclass(frozen=True)
class LayerScore:
    node: str
    op_type: str
    gain: float  # loss of the full INT8 model minus loss with this layer in float (higher: more sensitive)


def tuning_target(tolerance: Tolerance) -> Tolerance:
    """The gate's tolerance with a margin: on the tuning set a form may use COSINE_MARGIN of the cosine error
    budget (min cosine 0.995 for the gate's 0.99), since it is less faithful on photographs calibration never saw.
    A multi-label head (the label-set rule) is tuned by its own measures: the same share of the probability error
    (max_abs 0.05 for the gate's 0.1), and the label-set agreement the gate asks for."""
    if tolerance.rule == LABEL_SET_RULE and tolerance.max_abs is not None:
        return replace(tolerance, max_abs=tolerance.max_abs * COSINE_MARGIN)
    if tolerance.min_cosine is None:
        return tolerance
    return replace(tolerance, min_cosine=1.0 - (1.0 - tolerance.min_cosine) * COSINE_MARGIN)


@dataclass(frozen=True)
class Verdict:
    top1_agreement: float  # on the confident inputs (all, when fewer than MIN_CONFIDENT are); label-set agreement
    # for a multi-label head
    min_cosine: float
    mean_cosine: float
    passed: bool


def confident_rows(reference: np.ndarray) -> np.ndarray:
    """The rows whose FP32 top-1 softmax probability is at least CONFIDENT (all rows when fewer than MIN_CONFIDENT
    are): where top-1 agreement measures the model, not a near-tie."""
    logits = reference.reshape(len(reference), -1).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    confident = (probs / probs.sum(1, keepdims=True)).max(1) >= CONFIDENT
    return confident if confident.sum() >= MIN_CONFIDENT else np.ones(len(logits), bool)


@dataclass
class TuningSet:
    """The calibration inputs a form is judged on before the gate, with FP32's outputs on them."""

    inputs: np.ndarray
    reference: np.ndarray
    target: Tolerance

    def __post_init__(self):
        self.confident = confident_rows(self.reference)

    @property
    def reachable(self) -> bool:
        """Whether any model can meet the target (a cosine or an agreement above 1 cannot be met: no tuning)."""
        return (self.target.min_cosine or 0.0) <= 1.0 and (self.target.min_top1 or 0.0) <= 1.0

    def judge(self, outputs: np.ndarray) -> Verdict:
        if self.target.rule == LABEL_SET_RULE:  # sigmoid outputs: the label sets at 0.5 and the probability error
            report = compare(self.reference, outputs, self.target)
            return Verdict(report.label_set_agreement, report.min_cosine, report.mean_cosine, report.passed)
        cosine = compare(self.reference, outputs, Tolerance(min_cosine=self.target.min_cosine))
        agree = self.reference.reshape(len(outputs), -1).argmax(1) == outputs.reshape(len(outputs), -1).argmax(1)
        top1 = float(agree[self.confident].mean())
        return Verdict(top1, cosine.min_cosine, cosine.mean_cosine,
                       cosine.passed and top1 >= (self.target.min_top1 or 0.0))


@dataclass
class FormTuning:
    """What tuning did to one form: the steps tried and the layers it added to the recipe's keep-float."""

    form: str
    target: dict
    steps: list[dict] = field(default_factory=list)  # one _step() per build judged
    added: list[str] = field(default_factory=list)
    passed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def spaced(inputs: np.ndarray, count: int) -> np.ndarray:
    """At most `count` inputs, evenly spaced (views of one photo are adjacent, so this spreads over photos)."""
    if len(inputs) <= count:
        return inputs
    return inputs[np.linspace(0, len(inputs) - 1, count).round().astype(int)]


def loss(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean of 1 - cosine between logits: the continuous measure the ranking orders layers by."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    cos = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-300)
    return float((1.0 - cos).mean())


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def float_variant(qdq_model: onnx.ModelProto, fp32_model: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    """A copy of the portable QDQ model in which `node_name` reads its float input and float weight.

    The QDQ form quantizes only the inputs of Conv/Gemm/MatMul (qdq.PORTABLE): input 0 comes from
    DequantizeLinear(QuantizeLinear(x)), input 1 from DequantizeLinear(quantized weight). Both are bypassed; the
    now unused Q/DQ nodes are left for ONNX Runtime to drop."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    graph = model.graph
    producers = _producers(graph)
    node = next(n for n in graph.node if n.name == node_name)
    source = next(n for n in fp32_model.graph.node if n.name == node_name)
    dq = producers.get(node.input[0])
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
    weight = source.input[1]
    if node.input[1] != weight:
        fp32_init = {t.name: t for t in fp32_model.graph.initializer}
        if weight in fp32_init:
            graph.initializer.append(fp32_init[weight])
            node.input[1] = weight
    return model


def _session_outputs(model: onnx.ModelProto, inputs: np.ndarray, threads: int | None) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Basic optimisations fold the weight DequantizeLinear into constants: the session starts and runs faster,
    # and the arithmetic (float convolutions of dequantized values) is what the QDQ model means.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    return run_in_batches(lambda x: session.run(None, {inp.name: x})[0], inputs, batch, batch)


def rank_layers(fp32: Path, portable: Path, inputs: np.ndarray, reference: np.ndarray, skip: set[str], *,
                threads: int | None = None, progress: Callable[[str], None] | None = None) -> list[LayerScore]:
    """Every quantized weighted layer of the portable QDQ model, most sensitive first (see the module docstring).

    `reference` is the FP32 model's output on `inputs`; `skip` names layers already kept in float."""
    fp32_model = onnx.load(str(fp32))
    qdq_model = onnx.load(str(portable))
    nodes = [n for n in qdq_model.graph.node if n.op_type in WEIGHTED_OPS and n.name not in skip]
    base = loss(reference, _session_outputs(qdq_model, inputs, threads))
    scores = []
    for i, node in enumerate(nodes):
        if progress and i % 10 == 0:
            progress(f"measuring layer sensitivity: {i}/{len(nodes)}")
        variant = float_variant(qdq_model, fp32_model, node.name)
        scores.append(LayerScore(node.name, node.op_type, base - loss(reference, _session_outputs(variant, inputs,
                                                                                                   threads))))
    return sorted(scores, key=lambda s: -s.gain)


def _steps(limit: int) -> list[int]:
    steps, n = [], 1
    while n < limit:
        steps.append(n)
        n *= 2
    return [*steps, limit] if limit else []


def tune_form(form: str, build: Callable[[list[FloatLayer]], Path], run: Callable[[Path], np.ndarray],
              tuning_set: TuningSet, base: list[FloatLayer], built: Path, ranking: Callable[[], list[LayerScore]],
              weighted_layers: int) -> FormTuning:
    """Add the most sensitive layers to `base` until the form rebuilt by `build` passes on the tuning set.

    `built` is the form as built with `base`; `ranking` is called only when tuning is needed (it is the expensive
    part and shared between forms). Leaves the form built with the smallest passing set found, or with the set that
    came closest when none passes (the gate on held-out photographs then decides)."""
    tuning = FormTuning(form, {k: v for k, v in asdict(tuning_set.target).items() if v is not None})
    first = tuning_set.judge(run(built))
    tuning.steps.append(_step(0, first))
    if first.passed or not tuning_set.reachable:
        tuning.passed = first.passed
        return tuning
    ranked = [s for s in ranking() if s.node not in {f.node for f in base}]
    limit = min(len(ranked), max(1, int(MAX_FLOAT_SHARE * (weighted_layers - len(base)))))
    best, best_key = 0, _rank(first)
    for extra in _steps(max(0, limit)):
        verdict = tuning_set.judge(run(build(base + _added(ranked, extra))))
        tuning.steps.append(_step(extra, verdict))
        if _rank(verdict) > best_key:
            best, best_key = extra, _rank(verdict)
        if verdict.passed:
            break
    # One more float layer can make a form worse, so the best step tried is kept, not the last. Measured on the
    # trained EfficientNet-Lite0: its ONNX Runtime CPU form with one depthwise convolution left in float reached min
    # cosine 0.9945 on the tuning set in a session without graph optimisations, 0.981 with them (level BASIC or
    # above, ONNX Runtime 1.32), against 0.993 with that convolution quantized.
    if best != tuning.steps[-1]["extra_float_layers"]:
        build(base + _added(ranked, best))
    tuning.added = [f.node for f in _added(ranked, best)]
    tuning.passed = best_key[0]
    log.info("%s: %d layers added to keep-float (%s)", form, len(tuning.added),
             "passes on the tuning set" if tuning.passed else "still outside the tolerance on the tuning set")
    return tuning


def _added(ranked: list[LayerScore], extra: int) -> list[FloatLayer]:
    return [FloatLayer(s.node, s.op_type, TUNED_REASON, "") for s in ranked[:extra]]


def _rank(report: Verdict) -> tuple[bool, float, float]:
    return report.passed, report.top1_agreement, report.min_cosine


def _step(extra: int, report: Verdict) -> dict:
    return {"extra_float_layers": extra, "top1_agreement_confident": round(report.top1_agreement, 4),
            "min_cosine": round(report.min_cosine, 5), "mean_cosine": round(report.mean_cosine, 5),
            "passed": report.passed}

