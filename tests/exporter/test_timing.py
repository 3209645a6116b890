"""The timing harness on known sequences of durations and a fake clock: statistics, warm-up until stable, caps,
speed-up, the load-average watch on known load sequences. No wall-clock assertions."""

import os

import numpy as np
import pytest

from effexport.errors import UsageError
from effexport.exporter.macs import Int8Share, Layer, Peak
from effexport.exporter.timing import (
    BenchConfig,
    LoadWatch,
    Warmup,
    available_cpus,
    is_stable,
    measure,
    speedup,
    summarize,
    warm_up,
)
from effexport.workflow.bench import (
    BenchEntry,
    _add_speedups,
    _plan,
    add_rates,
    int8_slower,
    known_backends,
    make_batch,
    parse_batches,
    peak_precision,
)


class FakeClock:
    """Each step advances time by the next duration of a known sequence."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.now = 0.0
        self.steps = 0

    def __call__(self) -> float:
        return self.now

    def step(self):
        self.now += self.durations[self.steps]
        self.steps += 1


def test_percentiles_of_a_known_sequence():
    stats = summarize([i / 1000 for i in range(1, 101)], batch=4)  # 1 ms .. 100 ms
    assert stats.p50 == pytest.approx(0.0505)
    assert stats.p90 == pytest.approx(0.0901)
    assert stats.p99 == pytest.approx(0.09901)
    assert stats.min == 0.001 and stats.max == 0.1 and stats.runs == 100
    assert stats.mean == pytest.approx(0.0505)
    assert stats.throughput == pytest.approx(4 / 0.0505)
    d = stats.to_dict()
    assert d["p50_ms"] == 50.5 and d["throughput_ips"] == round(4 / 0.0505, 2)


def test_percentiles_ignore_order_and_see_the_tail():
    times = [0.010] * 98 + [0.500, 0.020]
    shuffled = list(np.random.default_rng(0).permutation(times))
    a, b = summarize(times, 1), summarize(shuffled, 1)
    assert (a.p50, a.p90, a.p99, a.min, a.max) == (b.p50, b.p90, b.p99, b.min, b.max)
    assert a.p50 == 0.010 and a.p90 == 0.010 and a.p99 > 0.02


def test_warm_up_stops_when_the_rolling_median_settles():
    # slow first runs (allocation, kernel choice), then a steady 10 ms with a little jitter
    seq = [0.080, 0.050, 0.030, 0.020, 0.015, 0.012, 0.010, 0.0101, 0.0099, 0.010, 0.0102, 0.010, 0.0098, 0.010,
           0.010, 0.0101, 0.010]
    clock = FakeClock(seq + [0.010] * 50)
    warm = warm_up(clock.step, BenchConfig(window=3, min_warmup=5, stable_rel=0.05), clock)
    assert warm.stable
    # at run 10 the medians of runs 5-7 (12 ms) and 8-10 (10 ms) differ by 17%; at run 11 those of runs 6-8
    # (10.1 ms) and 9-11 (10.0 ms) differ by 1%, within 5%: warm-up ends there
    assert warm.runs == 11 and clock.steps == 11
    assert warm.last_median_s == pytest.approx(0.010)


def test_warm_up_is_capped_and_says_not_stable():
    clock = FakeClock([0.010 * 0.8 ** i for i in range(200)])  # keeps getting faster, never settles
    warm = warm_up(clock.step, BenchConfig(window=3, max_warmup=30), clock)
    assert not warm.stable and warm.runs == 30


def test_warm_up_time_cap():
    clock = FakeClock([1.5] * 100)
    warm = warm_up(clock.step, BenchConfig(window=50, max_warmup=100, max_warmup_s=10.0), clock)
    assert not warm.stable and warm.runs == 7  # 7 runs of 1.5 s pass the 10 s cap


def test_single_outlier_does_not_break_stability():
    assert is_stable([0.010, 0.010, 0.500, 0.010, 0.010, 0.010], window=3, stable_rel=0.05)
    assert not is_stable([0.020, 0.020, 0.020, 0.010, 0.010, 0.010], window=3, stable_rel=0.05)
    assert not is_stable([0.010] * 5, window=3, stable_rel=0.05)  # not two windows yet


def test_measure_times_exactly_iters_runs_after_warm_up():
    warm_seq = [0.010] * 10
    timed = [0.001 * (i + 1) for i in range(20)]
    clock = FakeClock(warm_seq + timed)
    seen = []
    warm, stats = measure(clock.step, 8, BenchConfig(iters=20, window=5, min_warmup=5), clock, on_run=seen.append)
    assert warm.runs == 10 and stats.runs == 20 and seen == list(range(1, 21))
    assert stats.min == pytest.approx(0.001) and stats.max == pytest.approx(0.020)
    assert stats.p50 == pytest.approx(0.0105)


def entry(backend, batch, p50, precision="fp32", execution=None):
    stats = None if p50 is None else summarize([p50] * 3, batch)
    warmup = None if p50 is None else Warmup(10, True, p50)
    return BenchEntry(backend, precision, batch, stats, warmup, dict(execution or {}))


def test_speedups_are_against_torch_at_the_same_batch():
    entries = [entry("torch", 1, 0.030), entry("torch", 8, 0.200), entry("openvino", 1, 0.010),
               entry("openvino", 8, 0.050)]
    _add_speedups(entries)
    assert [e.speedup for e in entries] == pytest.approx([1.0, 1.0, 3.0, 4.0])
    assert speedup(entries[0].stats, entries[2].stats) == pytest.approx(3.0)


def test_batch_parsing_and_batches_of_real_inputs():
    assert parse_batches("1,8,32,8") == [1, 8, 32]
    with pytest.raises(UsageError):
        parse_batches("1,x")
    with pytest.raises(UsageError):
        parse_batches("0")
    inputs = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    batch = make_batch(inputs, 5)
    assert batch.shape == (5, 2) and (batch[3] == inputs[0]).all() and batch.flags["C_CONTIGUOUS"]


def test_bench_config_is_validated():
    with pytest.raises(UsageError, match="--iters"):
        BenchConfig(iters=0)


def _loads(*values):
    """A getloadavg that returns the given 1-minute load averages in turn."""
    it = iter(values)
    return lambda: (next(it), 0.0, 0.0)


def test_load_watch_warns_when_the_load_exceeded_the_cpus():
    watch = LoadWatch.start(cpus=2, getloadavg=_loads(1.2, 1.9, 3.46, 2.5))
    for when in ("timing start", "openvino fp32 batch 8", "end"):
        watch.sample(when)
    assert watch.samples == [("start", 1.2), ("timing start", 1.9), ("openvino fp32 batch 8", 3.46), ("end", 2.5)]
    assert watch.peak == ("openvino fp32 batch 8", 3.46)
    assert watch.warning.startswith("load average 3.46 (1 min, at openvino fp32 batch 8) exceeded the 2 CPUs")
    record = watch.to_dict()
    assert record["max_1min"] == 3.46 and record["cpus"] == 2 and record["warning"] == watch.warning
    assert [s["load_1min"] for s in record["samples"]] == [1.2, 1.9, 3.46, 2.5]


def test_load_watch_is_quiet_at_or_below_the_cpus():
    watch = LoadWatch.start(cpus=2, getloadavg=_loads(0.5, 2.0))
    watch.sample("end")
    assert watch.warning is None and watch.to_dict()["warning"] is None
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_torch_compile_is_a_second_baseline_and_an_unavailable_row_gets_no_ratio():
    entries = [entry("torch", 1, 0.030), entry("torch-compile", 1, 0.015), entry("openvino", 1, 0.010),
               entry("torch", 8, 0.200), entry("torch-compile", 8, None), entry("openvino", 8, 0.050)]
    entries[4].unavailable = "torch.compile (inductor) failed: no C++ compiler"
    _add_speedups(entries)
    assert [e.speedup for e in entries] == pytest.approx([1.0, 2.0, 3.0, 1.0, None, 4.0])
    assert [e.speedup_vs_compiled for e in entries] == pytest.approx([0.5, 1.0, 1.5, None, None, None])
    row = entries[4].to_dict()
    assert row == {"backend": "torch-compile", "precision": "fp32", "batch": 8,
                   "unavailable": "torch.compile (inductor) failed: no C++ compiler", "execution": {}}
    assert entries[2].to_dict()["speedup_vs_torch_compile"] == 1.5


def test_torch_compile_is_planned_once_in_fp32_right_after_eager():
    assert "torch-compile" in known_backends() and known_backends()[0] == "torch"
    assert _plan(["onnxruntime", "torch-compile"], ["fp32", "int8"]) == [
        ("torch", "fp32"), ("torch-compile", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert _plan(["onnxruntime"], ["fp32"]) == [("torch", "fp32"), ("onnxruntime", "fp32")]


def test_achieved_rate_against_the_peak_of_the_precision_each_row_executed():
    peaks = {"fp32": Peak("fp32", 200.0, "onnxruntime MatMul"), "bf16": Peak("bf16", 400.0, "openvino"),
             "fp16": Peak("fp16", None, None, "the CPU does not compute fp16"), "int8": Peak("int8", 800.0, "ort")}
    entries = [entry("torch", 2, 0.010),  # 0.5 GMAC x 2 / 10 ms = 100 GMAC/s
               entry("openvino", 2, 0.005, "bf16", {"execution_precision": "bf16"}),
               entry("openvino", 2, 0.005, "bf16", {"execution_precision": "fp32"}),  # the hint ran f32
               entry("openvino", 2, 0.005, "bf16", {"execution_precision": "bf16 (emulated)"}),
               entry("onnxruntime", 2, 0.010, "fp16", {"execution_precision": "fp16"}),
               entry("openvino", 2, 0.002, "int8", {"execution_precision": "int8"}),
               entry("torch-compile", 2, None)]
    add_rates(entries, 500_000_000, peaks)
    assert [e.gmacs for e in entries] == pytest.approx([100, 200, 200, 200, 100, 500, None])
    assert [peak_precision(e) for e in entries[:6]] == ["fp32", "bf16", "fp32", None, "fp16", "int8"]
    assert [e.percent_of_peak for e in entries] == pytest.approx([50, 50, 100, None, None, 62.5, None])
    row = entries[5].to_dict()
    assert row["gmacs"] == 500 and row["percent_of_peak"] == 62.5 and row["peak_precision"] == "int8"


def test_int8_share_in_the_row():
    e = entry("onnxruntime", 1, 0.004, "int8", {"execution_precision": "int8"})
    e.int8 = Int8Share("onnxruntime", 986, 1000, (Layer("/stem/Conv", "Conv", 14, "float"),), 53, "how")
    record = e.to_dict()["int8_macs"]
    assert record["share"] == 0.986 and record["float_layers"] == [
        {"name": "/stem/Conv", "op": "Conv", "macs": 14, "precision": "float"}]


def test_int8_slower_than_fp32_is_named_with_fp32_to_serve():
    def row(backend, precision, batch, ms):
        return BenchEntry(backend, precision, batch, summarize([ms / 1e3] * 3, batch), None)

    entries = [row("onnxruntime", "fp32", 1, 2.0), row("onnxruntime", "int8", 1, 2.5),
               row("onnxruntime", "fp32", 8, 16.0), row("onnxruntime", "int8", 8, 12.0),
               row("openvino", "int8", 1, 9.0),  # no fp32 row to hold it against
               BenchEntry("openvino", "fp32", 1, None, None, unavailable="not installed")]
    (slower,) = int8_slower(entries)
    assert slower == {"backend": "onnxruntime", "batch": 1, "int8_p50_ms": 2.5, "fp32_p50_ms": 2.0,
                      "recommendation": "serve fp32 on onnxruntime at batch 1 on this CPU"}
