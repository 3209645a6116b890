"""The graph's ends (exporter/graph_io.py, io_spec.py) and the label-set parity rule, on small hand-built modules."""

import numpy as np
import pytest
import torch
from torch import nn

from effexport.errors import UsageError
from effexport.exporter.graph_io import OutputHead, RawInput, wrap
from effexport.exporter.inputs import _make_uint8_transform, builtin_images, preprocess_images
from effexport.exporter.io_spec import LABEL_SET_RULE, GraphIO
from effexport.exporter.model_spec import Preprocess
from effexport.exporter.parity import compare, recheck, tolerance_for

PP = Preprocess((64, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _net(classes: int = 7) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, classes))
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def _pixels(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)  # NCHW RGB


def _normalized(pixels: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(PP.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(PP.std).reshape(1, 3, 1, 1)
    return (torch.from_numpy(pixels).float() / 255 - mean) / std


@pytest.mark.parametrize("layout,bgr", [("NCHW", False), ("NHWC", False), ("NCHW", True), ("NHWC", True)])
def test_raw_input_equals_the_model_on_normalized_pixels(layout, bgr):
    net, pixels = _net(), _pixels()
    fed = pixels[:, ::-1] if bgr else pixels
    fed = fed.transpose(0, 2, 3, 1) if layout == "NHWC" else fed
    with torch.no_grad():
        want = net(_normalized(pixels))
        got = RawInput(net, layout, bgr, PP.mean, PP.std)(torch.from_numpy(np.ascontiguousarray(fed)))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_output_heads():
    net, x = _net(), _normalized(_pixels())
    with torch.no_grad():
        logits = net(x)
        assert torch.allclose(OutputHead(net, "softmax")(x), torch.softmax(logits, 1))
        assert torch.allclose(OutputHead(net, "sigmoid")(x), torch.sigmoid(logits))
    assert wrap(net, GraphIO(), PP) is net


def test_encode_gives_back_the_uint8_crops_of_the_shipped_photographs():
    photos = builtin_images().images[:6]
    transform = _make_uint8_transform(PP)
    crops = np.stack([transform(im).numpy() for im in photos])  # uint8 NCHW RGB, no normalization
    floats = preprocess_images(photos, PP)
    assert np.array_equal(GraphIO(input="uint8-nchw").encode(floats, PP), crops)
    assert np.array_equal(GraphIO(input="uint8-nhwc", bgr=True).encode(floats, PP),
                          crops[:, ::-1].transpose(0, 2, 3, 1))
    assert GraphIO().encode(floats, PP) is floats


def test_bad_graph_ends_are_refused():
    with pytest.raises(UsageError, match="--bgr"):
        GraphIO(bgr=True)
    with pytest.raises(UsageError, match="--output"):
        GraphIO(output="probs")
    with pytest.raises(UsageError, match="--input"):
        GraphIO(input="uint8")
    assert GraphIO(output="sigmoid", input="uint8-nhwc", bgr=True).tags == ["sigmoid", "u8nhwc", "bgr"]


def test_label_set_rule_passes_close_probabilities_and_fails_a_flipped_label():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 1, (20, 80)).astype(np.float32)
    ref[np.abs(ref - 0.5) < 0.05] = 0.9  # no probability near the threshold
    tol = tolerance_for("int8", rule=LABEL_SET_RULE)
    close = compare(ref, ref + rng.uniform(-0.02, 0.02, ref.shape), tol)
    assert close.passed and close.rule == LABEL_SET_RULE
    assert close.label_set_agreement == 1.0 and close.mean_jaccard == 1.0
    flipped = ref.copy()
    flipped[:5, 0] = np.where(ref[:5, 0] >= 0.5, 0.3, 0.7)  # 5 of 20 samples change one label: 75% < 80%
    report = compare(ref, flipped, tol)
    assert not report.passed
    assert report.label_set_agreement == 0.75
    assert 0.95 < report.mean_jaccard < 1.0
    assert any("label set" in f for f in report.failures)
    assert recheck(report.to_dict(), tol) == list(report.failures)
    assert report.to_dict()["rule"] == LABEL_SET_RULE


def test_a_label_within_the_tolerance_of_the_threshold_is_undecided_and_does_not_fail_the_set():
    # a random sigmoid head sits near 0.5: a candidate inside the probability tolerance may put such labels on either
    # side of the threshold, which says nothing of the artifact; a decided label that flips still fails
    ref = np.full((10, 4), 0.9, np.float32)
    ref[:, 0] = 0.5001
    tol = tolerance_for("fp16", rule=LABEL_SET_RULE)  # max_abs 5e-3
    near = ref.copy()
    near[:, 0] = 0.4999  # every input's label 0 crosses 0.5 by 2e-4
    report = compare(ref, near, tol)
    assert report.passed and report.label_set_agreement == 1.0 and report.undecided_labels == 0.25
    assert report.mean_jaccard < 1.0  # the raw sets do differ, and that is recorded
    assert "undecided" in report.summary() and report.to_dict()["undecided_labels"] == 0.25
    decided = ref.copy()
    decided[:2, 1] = 0.1  # a label at 0.9 dropped in 2 of 10 inputs: outside the tolerance, and a changed set
    report = compare(ref, decided, tol)
    assert not report.passed and report.label_set_agreement == 0.8
    assert any("label set" in f for f in report.failures) and any("probability error" in f for f in report.failures)
