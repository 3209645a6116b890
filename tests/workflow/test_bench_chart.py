"""The bench chart on known rows: a speed-up and a latency label on every bar, unavailable rows named, a log latency
axis with room for the labels, the load warning under the title."""

import math

import pytest

from effexport.exporter.timing import summarize
from effexport.workflow.bench import BenchEntry
from effexport.workflow.bench_chart import LABEL_FRACTION, _log_limits, draw_chart, write_chart

pytest.importorskip("matplotlib")

SERIES = [("torch", "fp32", 0.030), ("torch-compile", "fp32", None), ("onnxruntime", "fp32", 0.010),
          ("onnxruntime", "fp16", 0.024), ("onnxruntime", "int8", 0.006), ("openvino", "fp32", 0.008),
          ("openvino", "bf16", 0.0075), ("openvino", "int8", 0.004)]


def _entries():
    entries = []
    for batch in (1, 8):
        for backend, precision, p50 in SERIES:
            stats = None if p50 is None else summarize([p50 * batch] * 3, batch)
            entry = BenchEntry(backend, precision, batch, stats, None)
            entry.speedup = None if p50 is None else SERIES[0][2] / p50
            entries.append(entry)
    return entries


def _texts(ax):
    return [t.get_text().strip() for t in ax.texts]


def test_every_bar_has_its_value_and_unavailable_rows_say_so():
    fig = draw_chart(_entries(), "small on a CPU, 2 threads", warning="load average 3.1 exceeded the 2 CPUs")
    speed_1, lat_1, speed_8, lat_8 = fig.axes
    assert _texts(speed_1) == ["1.00x", "unavailable", "3.00x", "1.25x", "5.00x", "3.75x", "4.00x", "7.50x"]
    assert _texts(lat_1)[:3] == ["30 ms, 33 img/s", "unavailable", "10 ms, 100 img/s"]
    assert _texts(lat_8)[0] == "240 ms, 33 img/s" and _texts(speed_8)[-1] == "7.50x"
    top_down = sorted(speed_1.get_yticklabels(), key=lambda t: -t.get_position()[1])
    assert [t.get_text() for t in top_down] == [f"{b} {p}" for b, p, _ in SERIES]  # the first series on top
    assert all(ax.get_xscale() == "log" for ax in (lat_1, lat_8))
    assert any("WARNING: load average 3.1" in t.get_text() for t in fig.texts)
    assert "small on a CPU" in fig._suptitle.get_text()


def test_log_limits_leave_room_right_of_the_longest_whisker():
    low, high = _log_limits(4.0, 300.0)
    assert low == pytest.approx(4.0 / 1.6)
    free = (math.log10(high) - math.log10(300.0)) / (math.log10(high) - math.log10(low))
    assert free == pytest.approx(LABEL_FRACTION)


def test_write_chart_writes_a_png(tmp_path):
    path = write_chart(_entries(), tmp_path / "bench.png", "small")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
