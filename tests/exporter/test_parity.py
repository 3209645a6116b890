import numpy as np
import pytest

from effexport.errors import UsageError
from effexport.exporter.parity import Tolerance, compare, tolerance_for


def _logits(n=20, k=10, seed=0):
    return np.random.default_rng(seed).normal(0, 3, (n, k))


def test_identical_outputs_pass_with_zero_error():
    ref = _logits()
    r = compare(ref, ref.copy(), tolerance_for("fp32"))
    assert r.passed and r.max_abs == 0 and r.top1_agreement == 1 and r.min_cosine == pytest.approx(1)


def test_relative_error_is_measured_against_the_logit_range():
    ref = _logits()
    cand = ref.copy()
    span = ref.max() - ref.min()
    cand[3, 4] += 2e-4 * span
    r = compare(ref, cand, Tolerance(max_rel=1e-4))
    assert r.max_rel == pytest.approx(2e-4, rel=1e-6)
    assert not r.passed and "relative error" in r.failures[0]
    assert compare(ref, cand, Tolerance(max_rel=3e-4)).passed


def test_top1_and_top5_agreement():
    ref = np.tile(np.arange(10.0), (4, 1))  # top-1 is class 9 everywhere
    cand = ref.copy()
    cand[0, 9] = -1  # sample 0: class 9 falls out of the top 5
    cand[1, 9] = 6.5  # sample 1: class 9 is 4th, top-1 flips to 8
    r = compare(ref, cand, Tolerance(min_top1=0.9))
    assert r.top1_agreement == 0.5
    assert r.top5_agreement == 0.75
    assert not r.passed


def test_nan_never_passes():
    ref = _logits()
    cand = ref.copy()
    cand[0, 0] = np.nan
    r = compare(ref, cand, Tolerance(max_rel=1.0, min_cosine=-1.0))
    assert not r.passed and "NaN" in r.failures[0]


def test_policy_defaults_and_overrides():
    assert tolerance_for("fp32").max_rel == 1e-4
    assert tolerance_for("fp16").min_cosine == 0.999 and tolerance_for("fp16").min_top1 == 0.99
    assert tolerance_for("int8").min_cosine == 0.99 and tolerance_for("int8").min_top1 == 0.95
    assert tolerance_for("fp32", max_rel=1e-3).max_rel == 1e-3
    with pytest.raises(UsageError):
        tolerance_for("fp8")
