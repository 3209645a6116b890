"""Accuracy-aware INT8: the one-layer-in-float variants, the ranking and the tuning loop."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from effexport.backends.tensorrt_qdq import check_tensorrt_qdq
from effexport.calibration import int8, qdq, sensitivity
from effexport.calibration.options import Int8Options
from effexport.calibration.qdq import FloatLayer
from effexport.exporter.parity import Tolerance, compare, tolerance_for
from effexport.recipes import FIRST_CONV, KeepFloat, get_recipe
from tests.calibration.conftest import RECIPE
from tests.calibration.test_int8 import PP


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def portable(tiny_onnx, tmp_path_factory):
    """The tiny model's portable QDQ form with only the stem in float, calibrated on random inputs."""
    folder = tmp_path_factory.mktemp("portable")
    inputs = np.random.default_rng(1).normal(0, 1, (8, 3, 32, 32)).astype(np.float32)
    cache = folder / "ranges.json"
    qdq.calibrate_ranges(tiny_onnx, inputs, "minmax", cache, folder)
    keep = qdq.resolve_keep_float(onnx.load(str(tiny_onnx)), (KeepFloat(FIRST_CONV, "stem"),))
    path = folder / "qdq.onnx"
    qdq.build_form(tiny_onnx, path, qdq.PORTABLE, cache, "minmax", keep)
    return path, keep


def quantized_nodes(path: Path) -> list[str]:
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in qdq.WEIGHTED_OPS
            and producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"]


def test_every_layer_in_float_gives_back_the_fp32_model(tiny_onnx, portable, calib_inputs):
    path, _ = portable
    fp32_model, model = onnx.load(str(tiny_onnx)), onnx.load(str(path))
    names = quantized_nodes(path)
    assert len(names) == 3  # dw, pw, fc: the stem was kept in float
    for name in names:
        model = sensitivity.float_variant(model, fp32_model, name)
    reference, quantized = run(tiny_onnx, calib_inputs), run(path, calib_inputs)
    assert not np.allclose(quantized, reference, atol=1e-4)  # the QDQ model really rounds
    np.testing.assert_allclose(run(model, calib_inputs), reference, rtol=1e-4, atol=1e-4)


def test_one_layer_in_float_leaves_the_others_quantized(tiny_onnx, portable):
    path, _ = portable
    variant = sensitivity.float_variant(onnx.load(str(path)), onnx.load(str(tiny_onnx)), quantized_nodes(path)[0])
    out = Path(path).parent / "variant.onnx"
    onnx.save(variant, str(out))
    assert quantized_nodes(out) == quantized_nodes(path)[1:]
    assert onnx.load(str(path)) != variant  # the input model is not modified


def test_ranking_orders_layers_by_what_float_gives_back(tiny_onnx, portable, calib_inputs):
    path, keep = portable
    reference = run(tiny_onnx, calib_inputs)
    scores = sensitivity.rank_layers(tiny_onnx, path, calib_inputs, reference, {f.node for f in keep})
    assert [s.node for s in scores] != [] and {s.node for s in scores} == set(quantized_nodes(path))
    assert [s.gain for s in scores] == sorted((s.gain for s in scores), reverse=True)
    # each gain is the loss of the quantized model minus the loss with that one layer in float
    base = sensitivity.loss(reference, run(path, calib_inputs))
    fp32_model, model = onnx.load(str(tiny_onnx)), onnx.load(str(path))
    for score in scores:
        alone = sensitivity.loss(reference, run(sensitivity.float_variant(model, fp32_model, score.node), calib_inputs))
        assert score.gain == pytest.approx(base - alone, rel=1e-6, abs=1e-12)


def test_spaced_spreads_over_the_inputs():
    x = np.arange(100)[:, None]
    assert sensitivity.spaced(x, 200) is x
    picked = sensitivity.spaced(x, 5)[:, 0].tolist()
    assert picked == [0, 25, 50, 74, 99]


# ---------------------------------------------------------------------------------------------- the tuning loop
# The loop's own logic, with a stand-in for building and running a form: the "form" is a vector of logits whose
# error shrinks with each float layer, so the step that passes is known in advance.

REFERENCE = np.tile(np.array([[4.0, 3.0, 0.0, -1.0]]), (20, 1))
TARGET = Tolerance(min_cosine=0.99, min_top1=0.95)
STEM = (FloatLayer("stem", "Conv", "stem", ""),)
RANKED = [sensitivity.LayerScore(f"layer{i}", "Conv", 1.0 / (i + 1)) for i in range(10)]


class StandIn:
    """build() records the float set asked for; run() returns logits that flip top-1 on `flips(n)` inputs."""

    def __init__(self, flips):
        self.flips, self.built, self.ranked = flips, [], 0

    def build(self, keep: list[FloatLayer]) -> Path:
        self.built.append([f.node for f in keep])
        return Path(f"form-{len(keep)}")

    def run(self, path: Path) -> np.ndarray:
        out = REFERENCE.copy()
        out[: self.flips(int(path.name.split("-")[1]) - 1), :2] = [3.0, 4.0]  # swap the two top logits
        return out

    def ranking(self):
        self.ranked += 1
        return RANKED

    def tune(self, base=STEM, weighted=40):
        tuning_set = sensitivity.TuningSet(REFERENCE, REFERENCE, TARGET)
        return sensitivity.tune_form("f", self.build, self.run, tuning_set, list(base), self.build(list(base)),
                                     self.ranking, weighted)


def test_a_form_that_passes_is_not_tuned():
    stand_in = StandIn(lambda extra: 0)
    tuning = stand_in.tune()
    assert tuning.passed and tuning.added == [] and stand_in.ranked == 0 and len(tuning.steps) == 1


def test_layers_are_added_most_sensitive_first_until_the_form_passes():
    stand_in = StandIn(lambda extra: max(0, 4 - extra))  # 4 flips in 20; passes (no flip) from 4 more layers
    tuning = stand_in.tune()
    assert tuning.passed and tuning.added == ["layer0", "layer1", "layer2", "layer3"]  # steps 1, 2, 4
    assert [s["extra_float_layers"] for s in tuning.steps] == [0, 1, 2, 4]
    assert stand_in.built[-1] == ["stem", "layer0", "layer1", "layer2", "layer3"]
    assert stand_in.ranked == 1


def test_without_a_passing_step_the_closest_one_is_rebuilt():
    flips = {0: 6, 1: 5, 2: 2, 4: 3, 8: 4, 9: 4}  # best at 2 extra layers, never without a flip
    stand_in = StandIn(lambda extra: flips[extra])
    tuning = stand_in.tune(weighted=37)  # 36 quantized layers: at most 25%, 9, are added
    assert not tuning.passed
    assert [s["extra_float_layers"] for s in tuning.steps] == [0, 1, 2, 4, 8, 9]
    assert tuning.added == ["layer0", "layer1"] and stand_in.built[-1] == ["stem", "layer0", "layer1"]


def test_a_target_no_model_can_meet_is_not_tuned_for():
    stand_in = StandIn(lambda extra: 4)
    tuning_set = sensitivity.TuningSet(REFERENCE, REFERENCE, Tolerance(min_cosine=1.25))
    built = stand_in.build(list(STEM))
    tuning = sensitivity.tune_form("f", stand_in.build, stand_in.run, tuning_set, list(STEM), built, stand_in.ranking,
                                   40)
    assert not tuning.passed and stand_in.ranked == 0 and len(stand_in.built) == 1


def test_top1_on_the_tuning_set_counts_only_where_fp32_is_confident():
    reference = np.zeros((20, 4))
    reference[:, 0] = 5.0  # confident: class 0
    reference[10:] = [1.0, 0.9, 0.8, 0.7]  # near-ties: FP32 is not confident on half of the inputs
    target = Tolerance(min_cosine=0.9, min_top1=0.95)
    candidate = reference.copy()
    candidate[10:] = [0.9, 1.0, 0.8, 0.7]  # every near-tie flips; cosine stays above 0.99
    verdict = sensitivity.TuningSet(reference, reference, target).judge(candidate)
    assert verdict.top1_agreement == 1.0 and verdict.min_cosine > 0.99 and verdict.passed
    candidate[0] = [0.0, 5.0, 0.0, 0.0]  # a confident input flips too
    verdict = sensitivity.TuningSet(reference, reference, target).judge(candidate)
    assert verdict.top1_agreement == 0.9 and not verdict.passed
    # with fewer than MIN_CONFIDENT confident inputs, every input counts
    few = sensitivity.TuningSet(reference[5:], reference[5:], target)
    assert few.confident.all() and few.judge(candidate[5:]).top1_agreement == 5 / 15


def test_a_trained_build_tunes_times_and_records_each_form(exported, tmp_path, monkeypatch):
    """With weights treated as trained, every form is judged on the tuning set, tuned when it fails there (a
    tolerance INT8 does not meet on a 64-pixel model forces that here), and timed against FP32 on its backend."""
    fp32 = tmp_path / RECIPE / exported.parent.name / "model.onnx"
    fp32.parent.mkdir(parents=True)
    shutil.copy(exported, fp32)
    monkeypatch.setattr(int8, "_tuning_set", lambda path, inputs, tolerance: sensitivity.TuningSet(
        inputs[:6], int8.run_model(path, inputs[:6]), Tolerance(min_cosine=0.99999)))
    options = Int8Options(openvino=False)
    result = int8.ensure_int8(get_recipe(RECIPE), fp32, PP, options, fp32.parent.parent / options.tag,
                               tmp_path / "cache", enforce=(), tolerance=tolerance_for("int8"))
    manifest = json.loads(result.manifest_path.read_text())
    weighted = sum(n.op_type in qdq.WEIGHTED_OPS for n in onnx.load(str(fp32)).graph.node)
    base = [k["node"] for k in manifest["keep_float"]]
    for name, form in manifest["forms"].items():
        tuning = form["tuning"]
        assert not tuning["passed"] and len(tuning["steps"]) >= 2, name
        assert form["keep_float"] == base + tuning["added"]
        assert len(tuning["added"]) <= int(sensitivity.MAX_FLOAT_SHARE * (weighted - len(base)))
        # the file on disk is the form with those layers in float: none of them has a quantized weight
        assert not set(tuning["added"]) & set(quantized_nodes(result.files[name]))
        share = form["int8_macs"]
        assert 0 < share["share"] < 1 and share["float_macs_share"] == pytest.approx(1 - share["share"], abs=1e-4)
        if name == "qdq":  # read from the file: exactly the layers kept in float
            assert set(share["float_layers"]) == set(form["keep_float"]) and share["runtime"] == "qdq file"
        else:  # what ONNX Runtime compiles: at least those
            assert set(form["keep_float"]) <= set(share["float_layers"]) and share["runtime"] == "onnxruntime"
    # the TensorRT form is checked as published, after tuning rebuilt it
    assert manifest["qdq_check"]["passed"] and check_tensorrt_qdq(result.files["qdq"]).to_dict() == \
        manifest["qdq_check"]
    ranked = manifest["sensitivity"]["most_sensitive"]
    assert ranked and [r["gain"] for r in ranked] == sorted((r["gain"] for r in ranked), reverse=True)
    speed = manifest["speed"]["ort_cpu"]
    assert speed["backend"] == "onnxruntime" and speed["fp32_ms"] > 0 and speed["int8_ms"] > 0
    assert speed["speedup"] == pytest.approx(speed["fp32_ms"] / speed["int8_ms"], rel=1e-2)
    assert "qdq" not in manifest["speed"]  # the portable form is for TensorRT, not timed on a CPU
    slower = [w for w in result.warnings if "serve FP32" in w]
    assert bool(slower) == (speed["speedup"] < 1.0)


def test_a_form_slower_than_fp32_is_named_with_the_faster_precision():
    manifest = {"speed": {"ort_cpu": {"backend": "onnxruntime", "fp32_ms": 4.0, "int8_ms": 5.0, "speedup": 0.8,
                                      "cpu": "Some CPU"},
                          "openvino": {"backend": "openvino", "fp32_ms": 4.0, "int8_ms": 2.0, "speedup": 2.0,
                                       "cpu": "Some CPU"}}}
    (warning,) = int8.slower_warnings(manifest)
    assert "ort_cpu" in warning and "5.00 ms" in warning and "4.00 ms" in warning and "serve FP32 on onnxruntime" \
        in warning and "Some CPU" in warning


def test_the_heldout_margin_is_a_share_of_the_gates_error_budget_and_a_thin_pass_is_warned():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((40, 10)) * 0.5
    reference[np.arange(40), rng.integers(0, 10, 40)] += 6.0  # FP32 confident on every input
    gate = tolerance_for("int8")  # min cosine 0.99, top-1 95%
    def margin(candidate, tolerance=gate):
        return int8.heldout_margin(reference, candidate, compare(reference, candidate, tolerance))

    close = margin(reference + rng.standard_normal(reference.shape) * 0.01)
    assert close["min_cosine_target"] == pytest.approx(0.993) and close["top1_confident_target"] == pytest.approx(0.97)
    assert close["met"] and close["confident_views"] == 40
    # inside the gate (cosine >= 0.99) but not the margin (0.993)
    noise = rng.standard_normal(reference.shape)
    unit = noise - (noise * reference).sum(1, keepdims=True) / (reference ** 2).sum(1, keepdims=True) * reference
    unit *= np.linalg.norm(reference, axis=1, keepdims=True) / np.linalg.norm(unit, axis=1, keepdims=True)
    thin = reference + unit * np.tan(np.arccos(0.9915))  # cosine exactly 0.9915 on every input
    standing = margin(thin)
    assert standing["min_cosine"] == pytest.approx(0.9915, abs=1e-4) and not standing["met"]
    manifest = {"weights": "trained", "parity_inputs": {"description": "126 views of 42 held-out photographs"},
                "parity": {"ort_cpu": {"passed": True}, "openvino": {"passed": True}},
                "margin": {"ort_cpu": standing, "openvino": close}}
    (warning,) = int8.margin_warnings(manifest)
    assert "ort_cpu" in warning and "0.9915" in warning and "0.993" in warning and "--calib" in warning
    assert not int8.margin_warnings({**manifest, "weights": "random"})  # random weights are judged by nothing
    from effexport.exporter.io_spec import LABEL_SET_RULE

    assert margin(thin, tolerance_for("int8", rule=LABEL_SET_RULE)) is None


def test_a_multi_label_head_is_tuned_by_label_sets_and_probability_error():
    """Sigmoid outputs: top-1 says nothing, so the tuning set judges them as the gate does (label-set@0.5), with half
    the gate's probability error as the margin."""
    from effexport.exporter.io_spec import LABEL_SET_RULE

    gate = tolerance_for("int8", rule=LABEL_SET_RULE)
    target = sensitivity.tuning_target(gate)
    assert target.rule == LABEL_SET_RULE and target.max_abs == pytest.approx(gate.max_abs / 2)
    assert target.min_label_set == gate.min_label_set
    rng = np.random.default_rng(3)
    reference = rng.choice([0.05, 0.95], size=(20, 8))  # decided labels, far from 0.5
    tuning_set = sensitivity.TuningSet(reference, reference, target)
    close = tuning_set.judge(reference + 0.02)
    assert close.passed and close.top1_agreement == 1.0
    wide = tuning_set.judge(np.clip(reference + 0.07, 0, 1))  # inside the gate's 0.1, outside the tuning margin
    assert not wide.passed
    flipped = reference.copy()
    flipped[:6, 0] = 1.0 - flipped[:6, 0]  # 6 of 20 inputs change a label set: 70% < 80%
    verdict = tuning_set.judge(flipped)
    assert verdict.top1_agreement == pytest.approx(0.7) and not verdict.passed
