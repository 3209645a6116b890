"""Our TensorRT build calls, checked against the recording fake (tests/fakes/tensorrt.py) for the 10.x and 11.x
API surfaces. The fake never computes: these tests check flags, profiles, cache handling and error paths only;
engines and their parity are tested under the `gpu` marker (tests/exporter/test_tensorrt_gpu.py)."""

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from effexport.backends import tensorrt as trt_backend
from effexport.backends.tensorrt import TrtOptions, build_engine, source_precision
from effexport.errors import ExportError, MissingDependencyError, UsageError
from effexport.exporter import onnx as onnx_stage
from tests.fakes.tensorrt import fake_plan, make_fake_tensorrt

pytestmark = pytest.mark.tensorrt

VERSIONS = ["10.9.0", "11.1.0"]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    onnx_stage.export_onnx(model, torch.randn(2, 3, 32, 32), path, 17, dynamic_batch=True)
    return path


@pytest.fixture(scope="module")
def static_onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trt_static") / "model.onnx"
    onnx_stage.export_onnx(nn.Conv2d(3, 2, 1).eval(), torch.randn(1, 3, 8, 8), path, 17, dynamic_batch=False)
    return path


def _calls(trt, name):
    return [c for c in trt.calls if c[0] == name]


@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_build_is_strongly_typed_without_tf32_or_explicit_batch(version, onnx_file, tmp_path):
    trt = make_fake_tensorrt(version)
    result = build_engine(trt, onnx_file, "fp32", TrtOptions(timing_cache=tmp_path / "t.cache"))
    (flags,) = [c[1] for c in _calls(trt, "create_network")]
    assert flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        assert not flags & (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    assert ("clear_flag", "TF32") in trt.calls and not _calls(trt, "set_flag")
    assert ("profiling_verbosity", "DETAILED") in trt.calls
    assert ("get_engine_information", "JSON") in trt.calls
    assert json.loads(result.layers)["Layers"] and result.plan.startswith(b"FAKE-PLAN")
    assert result.report["strongly_typed"] and result.report["tensorrt"] == version
    assert _calls(trt, "parse_from_file") == [("parse_from_file", str(onnx_file))]


@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_uses_the_fp16_graph_and_no_builder_flag(version, onnx_file):
    trt = make_fake_tensorrt(version)
    options = TrtOptions()
    assert source_precision("fp16", options) == "fp16" and source_precision("fp32", options) == "fp32"
    result = build_engine(trt, onnx_file, "fp16", options)
    assert not _calls(trt, "set_flag")
    assert result.report["fp16_from"] == "FP16 ONNX graph"


TF32_CASES = [(v, p, TrtOptions()) for v in VERSIONS for p in ("fp32", "fp16", "int8")]
TF32_CASES.append(("10.9.0", "fp16", TrtOptions(fp16_builder_flag=True)))  # 10.x's weakly typed FP16


@pytest.mark.parametrize("version, precision, options", TF32_CASES)
def test_every_precision_builds_with_tf32_off(version, precision, options, onnx_file, qdq_file):
    """The FP32 layers of FP16 and INT8 engines are the graph's deliberate FP32 layers: no TF32 there either."""
    trt = make_fake_tensorrt(version)
    result = build_engine(trt, qdq_file if precision == "int8" else onnx_file, precision, options)
    (seen,) = [c[1] for c in _calls(trt, "build_serialized_network")]
    assert "TF32" not in seen and "TF32 off" in result.report["settings"]
    assert ("clear_flag", "TF32") in trt.calls


def test_tensorrt_11_without_a_strongly_typed_member_builds_with_no_flags(onnx_file):
    trt = make_fake_tensorrt("11.2.0", strongly_typed_member=False)
    build_engine(trt, onnx_file, "fp16", TrtOptions())
    assert _calls(trt, "create_network") == [("create_network", 0)]


def test_tensorrt_10_fp16_builder_flag_path_is_weakly_typed(onnx_file):
    trt = make_fake_tensorrt("10.3.0")
    options = TrtOptions(fp16_builder_flag=True)
    assert source_precision("fp16", options) == "fp32"  # the FP32 graph, with the flag
    result = build_engine(trt, onnx_file, "fp16", options)
    assert _calls(trt, "create_network") == [("create_network", 0)]
    assert ("set_flag", "FP16") in trt.calls and result.report["fp16_from"] == "builder flag"


def test_tensorrt_11_refuses_the_fp16_builder_flag_before_any_call(onnx_file):
    trt = make_fake_tensorrt("11.0.0")
    with pytest.raises(UsageError, match="no FP16 builder flag"):
        build_engine(trt, onnx_file, "fp16", TrtOptions(fp16_builder_flag=True))
    assert trt.calls == []


@pytest.mark.parametrize("options, expected", [
    (TrtOptions.from_batches(), ((1, 3, 32, 32),) * 3),
    (TrtOptions.from_batches(batch=8), ((8, 3, 32, 32),) * 3),
    (TrtOptions.from_batches(min_batch=1, opt_batch=4, max_batch=16), ((1, 3, 32, 32), (4, 3, 32, 32),
                                                                       (16, 3, 32, 32))),
    (TrtOptions.from_batches(max_batch=32), ((1, 3, 32, 32), (32, 3, 32, 32), (32, 3, 32, 32))),
])
@pytest.mark.parametrize("version", VERSIONS)
def test_optimization_profile_shapes(version, onnx_file, options, expected):
    trt = make_fake_tensorrt(version)
    result = build_engine(trt, onnx_file, "fp32", options)
    assert _calls(trt, "set_shape") == [("set_shape", "input", *expected)]
    assert _calls(trt, "add_optimization_profile") == [("add_optimization_profile",)]
    assert result.report["profile"]["max"] == list(expected[2])


def test_batch_options_are_validated():
    with pytest.raises(UsageError, match="exclude each other"):
        TrtOptions.from_batches(batch=4, max_batch=8)
    with pytest.raises(UsageError, match="min <= opt <= max"):
        TrtOptions.from_batches(min_batch=8, opt_batch=4, max_batch=16)
    with pytest.raises(UsageError, match="hardware-compat"):
        TrtOptions(hardware_compat="turing+")


@pytest.mark.parametrize("options, tag", [
    (TrtOptions(), "b1"),
    (TrtOptions.from_batches(batch=8), "b8"),
    (TrtOptions.from_batches(min_batch=1, opt_batch=8, max_batch=32), "b1-8-32"),
    (TrtOptions.from_batches(max_batch=32), "b1-32-32"),
    (TrtOptions(4, 4, 16), "b4-4-16"),
])
def test_profile_tag_names_the_batch_profile(options, tag):
    assert trt_backend.profile_tag(options) == tag
    assert trt_backend.profile_tag(replace(options, workspace_gb=2, hardware_compat="ampere+")) == tag


@pytest.mark.parametrize("batch, covered", [(1, False), (2, True), (4, True), (8, True), (9, False)])
def test_covers_is_the_profile_range(batch, covered):
    assert trt_backend.covers(TrtOptions(2, 4, 8), batch) is covered
    assert trt_backend.covers(TrtOptions.from_batches(batch=8), batch) is (batch == 8)


def test_a_fixed_batch_model_cannot_build_other_batches(static_onnx_file):
    trt = make_fake_tensorrt()
    with pytest.raises(UsageError, match="fixed batch of 1"):
        build_engine(trt, static_onnx_file, "fp32", TrtOptions(8, 8, 8))
    trt = make_fake_tensorrt()
    build_engine(trt, static_onnx_file, "fp32", TrtOptions())
    assert not _calls(trt, "set_shape")


def _entries(blob: bytes) -> list[str]:
    """The build markers in one of the fake's timing caches."""
    return json.loads(blob)["entries"]


@pytest.mark.parametrize("version", VERSIONS)
def test_timing_cache_is_loaded_updated_and_saved(version, onnx_file, tmp_path):
    cache = tmp_path / "sub" / "timing.cache"
    first = make_fake_tensorrt(version)
    report = build_engine(first, onnx_file, "fp32", TrtOptions(timing_cache=cache)).report
    assert _calls(first, "create_timing_cache") == [("create_timing_cache", b"")]
    assert report["timing_cache"]["loaded_bytes"] == 0 and not report["timing_cache"]["loaded"]
    assert "reason" not in report["timing_cache"]  # nothing saved yet is no problem
    saved = cache.read_bytes()
    assert _entries(saved) == ["build 1"] and report["timing_cache"]["saved_bytes"] == len(saved)

    second = make_fake_tensorrt(version)
    report = build_engine(second, onnx_file, "fp32", TrtOptions(timing_cache=cache)).report
    assert _calls(second, "create_timing_cache") == [("create_timing_cache", saved)]
    assert report["timing_cache"]["loaded"] and report["timing_cache"]["loaded_bytes"] == len(saved)
    assert _entries(cache.read_bytes()) == ["build 1", "build 2"]
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # written atomically


def test_a_timing_cache_of_another_gpu_is_replaced_by_a_new_one(onnx_file, tmp_path, caplog):
    cache = tmp_path / "timing.cache"
    build_engine(make_fake_tensorrt(), onnx_file, "fp32", TrtOptions(timing_cache=cache))
    foreign = cache.read_bytes()
    trt = make_fake_tensorrt(cache_matches=False)  # same version, other device: set_timing_cache says False
    report = build_engine(trt, onnx_file, "fp32", TrtOptions(timing_cache=cache)).report
    assert [c[1] for c in _calls(trt, "create_timing_cache")] == [foreign, b""]
    record = report["timing_cache"]
    assert record["rejected_bytes"] == len(foreign) and record["loaded_bytes"] == 0 and not record["loaded"]
    assert record["reason"] == "it does not match this TensorRT version or GPU"
    assert _entries(cache.read_bytes()) == ["build 1"]  # this build's timings only
    assert "not used: it does not match" in caplog.text


@pytest.mark.parametrize("blob", [b"\x00\x01 not a timing cache", b'{"fake_timing_cache": "11.1.0", "entr'])
def test_an_unreadable_timing_cache_is_built_without_and_overwritten(blob, onnx_file, tmp_path, caplog):
    """create_timing_cache gives None for bytes TensorRT cannot read: a warning and a fresh cache, no traceback."""
    cache = tmp_path / "timing.cache"
    cache.write_bytes(blob)
    trt = make_fake_tensorrt("11.1.0")
    with caplog.at_level("WARNING", logger=trt_backend.__name__):
        result = build_engine(trt, onnx_file, "fp32", TrtOptions(timing_cache=cache))
    assert [c[1] for c in _calls(trt, "create_timing_cache")] == [blob, b""]
    assert _calls(trt, "set_timing_cache") == [("set_timing_cache", 0, False)]  # only the fresh one
    record = result.report["timing_cache"]
    assert not record["loaded"] and record["reason"].startswith("TensorRT cannot read it")
    assert record["rejected_bytes"] == len(blob) and record["saved_bytes"] == len(cache.read_bytes())
    assert _entries(cache.read_bytes()) == ["build 1"]
    assert f"timing cache {cache} not used: TensorRT cannot read it" in caplog.text


def test_a_tensorrt_upgrade_replaces_the_persisted_timing_cache(onnx_file, tmp_path):
    """The default cache outlives the TensorRT that wrote it; the next major must not end in a traceback."""
    options = trt_backend.default_options(None, tmp_path)
    build_engine(make_fake_tensorrt("10.9.0"), onnx_file, "fp16", options)
    upgraded = make_fake_tensorrt("11.1.0")
    report = build_engine(upgraded, onnx_file, "fp16", options).report
    assert not report["timing_cache"]["loaded"] and "another TensorRT version" in report["timing_cache"]["reason"]
    assert json.loads(options.timing_cache.read_bytes())["fake_timing_cache"] == "11.1.0"
    again = make_fake_tensorrt("11.1.0")
    assert build_engine(again, onnx_file, "fp16", options).report["timing_cache"]["loaded"]


def test_tensorrt_failing_to_create_an_empty_timing_cache_is_one_line(onnx_file, tmp_path, monkeypatch):
    trt = make_fake_tensorrt()
    make_config = trt.Builder.create_builder_config

    def failing_config(builder):
        config = make_config(builder)
        config.create_timing_cache = lambda blob: None
        return config

    monkeypatch.setattr(trt.Builder, "create_builder_config", failing_config)
    with pytest.raises(ExportError, match="could not create an empty timing cache; see the log"):
        build_engine(trt, onnx_file, "fp32", TrtOptions(timing_cache=tmp_path / "c"))
    assert not _calls(trt, "build_serialized_network") and not (tmp_path / "c").exists()


def test_no_timing_cache_path_keeps_the_cache_in_memory(onnx_file):
    trt = make_fake_tensorrt()
    report = build_engine(trt, onnx_file, "fp32", TrtOptions()).report
    assert report["timing_cache"]["saved_bytes"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_hardware_and_version_compatibility(version, onnx_file):
    trt = make_fake_tensorrt(version)
    result = build_engine(trt, onnx_file, "fp32", TrtOptions(hardware_compat="ampere+", version_compatible=True,
                                                             workspace_gb=2))
    assert ("hardware_compatibility_level", "AMPERE_PLUS") in trt.calls
    assert ("set_flag", "VERSION_COMPATIBLE") in trt.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in trt.calls
    assert ("deserialize_cuda_engine", True) in trt.calls  # version-compatible plans carry host code
    assert "HardwareCompatibilityLevel.AMPERE_PLUS" in result.report["settings"]


def test_defaults_leave_hardware_compat_and_workspace_alone(onnx_file):
    trt = make_fake_tensorrt()
    build_engine(trt, onnx_file, "fp32", TrtOptions())
    assert not _calls(trt, "hardware_compatibility_level") and not _calls(trt, "set_memory_pool_limit")
    assert ("deserialize_cuda_engine", False) in trt.calls


def test_parser_errors_fail_in_one_line_before_building(onnx_file):
    trt = make_fake_tensorrt(parse_errors=("No importer registered for op: FancyOp", "second error"))
    with pytest.raises(ExportError, match=r"could not parse model.onnx: No importer registered for op: FancyOp "
                                          r"\(and 1 more\)"):
        build_engine(trt, onnx_file, "fp32", TrtOptions())
    assert not _calls(trt, "build_serialized_network")


def test_build_failure_reports_the_last_tensorrt_error(onnx_file, tmp_path):
    trt = make_fake_tensorrt(build_error="out of workspace memory")
    with pytest.raises(ExportError, match="failed to build the engine: out of workspace memory"):
        build_engine(trt, onnx_file, "fp32", TrtOptions(timing_cache=tmp_path / "c"))
    assert not (tmp_path / "c").exists()  # nothing is saved from a failed build


def test_build_writes_the_plan_and_the_layer_json(onnx_file, tmp_path, monkeypatch):
    trt = make_fake_tensorrt("11.1.0")
    monkeypatch.setattr(trt_backend, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "cuda_environment", lambda: {"cuda_runtime": "13.0", "gpus": []})
    output = trt_backend.build(onnx_file, tmp_path, "fp16", TrtOptions())
    assert output.main == "model.plan" and sorted(output.files) == ["layers.json", "model.plan"]
    assert (tmp_path / "model.plan").read_bytes().startswith(b"FAKE-PLAN")
    assert json.loads((tmp_path / "layers.json").read_text())["Layers"] == ["fake layer"]
    assert output.info["environment"]["cuda_runtime"] == "13.0" and output.info["tensorrt"] == "11.1.0"


def test_default_options_put_the_timing_cache_in_the_recipe_folder(tmp_path):
    options = trt_backend.default_options(None, tmp_path)
    assert options.timing_cache == tmp_path / "tensorrt-timing.cache"
    kept = trt_backend.default_options(TrtOptions(timing_cache=tmp_path / "mine"), tmp_path)
    assert kept.timing_cache == tmp_path / "mine"
    assert "timing_cache" not in options.identity()  # the cache changes build time, not the engine


def test_probe_names_what_is_missing_here():
    found = trt_backend.probe()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert not found.available and "TensorRT is not installed" in found.reason
        assert "effexport[tensorrt]" in found.reason
    env = trt_backend.cuda_environment()
    if not env["gpus"]:
        assert not found.available and "no CUDA GPU is visible" in found.reason


GPU = {"index": 0, "name": "Fake GPU", "compute_capability": "8.6"}


def _environment(torch_cuda):
    return {"cuda_runtime": "12.8", "driver_cuda_version": "12.8", "driver": None, "torch_cuda": torch_cuda,
            "gpus": [GPU], "error": None}


@pytest.mark.parametrize("version", VERSIONS)
def test_probe_refuses_a_cpu_only_torch_before_any_build(version, onnx_file, tmp_path, monkeypatch):
    """TensorRT and a GPU are there, but torch cannot allocate the runner's CUDA buffers."""
    trt = make_fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "cuda_environment", lambda: _environment(None))
    found = trt_backend.probe()
    assert not found.available and found.version == version
    assert found.reason == ("torch is a CPU-only build; the TensorRT runner needs CUDA tensors: install a CUDA build "
                            "of torch")
    with pytest.raises(MissingDependencyError, match="unavailable: torch is a CPU-only build"):
        trt_backend.build(onnx_file, tmp_path, "fp32", TrtOptions())
    assert trt.calls == [] and not any(tmp_path.iterdir())

    monkeypatch.setattr(trt_backend, "cuda_environment", lambda: _environment("12.8"))
    found = trt_backend.probe()
    assert found.available and found.reason is None and found.device == "Fake GPU (compute capability 8.6)"


# ---------------------------------------------------------------------------------------------- run
# The runner's own logic on the fake's execution API, with host arrays as device memory (trt.memory). The fake
# engine fills each output row with its sample's first input value, a tag, not a model output.


def _plan(trt, onnx_path, options, folder):
    plan = folder / "model.plan"
    plan.write_bytes(build_engine(trt, onnx_path, "fp32", options).plan)
    trt.calls.clear()
    return plan


def _tagged(n, shape=(3, 32, 32)):
    x = np.random.default_rng(n).normal(size=(n, *shape)).astype(np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(1, n + 1)  # sample k carries tag k + 1
    return x


def _runner(trt, plan):
    return trt_backend.TrtRunner(plan, trt=trt, buffers=trt.memory)


@pytest.mark.parametrize("version", VERSIONS)
def test_runner_chunks_beyond_the_profile_and_pads_below_it(version, onnx_file, tmp_path):
    trt = make_fake_tensorrt(version)
    plan = _plan(trt, onnx_file, TrtOptions(4, 4, 8), tmp_path)
    with _runner(trt, plan) as runner:
        assert (runner.min_batch, runner.max_batch) == (4, 8)
        assert runner.execution["batch_range"] == [4, 8] and runner.execution["tensorrt"] == version
        out = runner.run(_tagged(11))  # 8, then 3 padded to 4 with a repeat of the last sample
        assert [c[2] for c in _calls(trt, "set_input_shape")] == [(8, 3, 32, 32), (4, 3, 32, 32)]
        assert _calls(trt, "execute_async_v3") == [("execute_async_v3", 7, (8, 3, 32, 32)),
                                                   ("execute_async_v3", 7, (4, 3, 32, 32))]
        assert [c[1] for c in _calls(trt, "set_tensor_address")] == ["input", "logits"] * 2
        np.testing.assert_array_equal(out, np.repeat(np.arange(1, 12, dtype=np.float32)[:, None], 5, axis=1))

        trt.calls.clear()
        one = runner.run(_tagged(1))
        assert [c[2] for c in _calls(trt, "set_input_shape")] == [(4, 3, 32, 32)]
        np.testing.assert_array_equal(one, np.ones((1, 5), np.float32))

        trt.calls.clear()
        assert runner.run(_tagged(6)).shape == (6, 5)  # inside the profile: one execution
        assert [c[2] for c in _calls(trt, "set_input_shape")] == [(6, 3, 32, 32)]
    assert trt.memory.downloads == 4 and runner.context is None


def test_runner_of_a_static_engine_runs_one_sample_at_a_time(static_onnx_file, tmp_path):
    trt = make_fake_tensorrt("11.1.0")
    with _runner(trt, _plan(trt, static_onnx_file, TrtOptions(), tmp_path)) as runner:
        assert (runner.min_batch, runner.max_batch) == (1, 1)
        out = runner.run(_tagged(3, (3, 8, 8)))
    assert [c[2] for c in _calls(trt, "set_input_shape")] == [(1, 3, 8, 8)] * 3
    assert out.shape == (3, 2, 8, 8) and [set(o.ravel()) for o in out] == [{1.0}, {2.0}, {3.0}]


def test_runner_allocates_the_output_in_the_engine_type_and_returns_float32(tmp_path):
    """An FP16 output (TensorRT's DataType.HALF) gets a float16 buffer; the fake asserts the buffer's type."""
    trt = make_fake_tensorrt("11.1.0")
    plan = tmp_path / "model.plan"
    plan.write_bytes(fake_plan([{"name": "x", "shape": [-1, 3, 4, 4], "dtype": "FLOAT"}],
                               [{"name": "y", "shape": [-1, 10], "dtype": "HALF"}],
                               {"x": [[1, 3, 4, 4], [2, 3, 4, 4], [2, 3, 4, 4]]}))
    with _runner(trt, plan) as runner:
        out = runner.run(_tagged(3, (3, 4, 4)))
    assert out.dtype == np.float32 and out.shape == (3, 10)
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3])
    assert {a.dtype for a in trt.memory.arrays.values()} == {np.dtype(np.float32), np.dtype(np.float16)}


@pytest.mark.parametrize("version", VERSIONS)
def test_runner_stops_when_tensorrt_rejects_the_input_shape(version, onnx_file, tmp_path):
    trt = make_fake_tensorrt(version)
    with _runner(trt, _plan(trt, onnx_file, TrtOptions(1, 4, 8), tmp_path)) as runner:
        with pytest.raises(ExportError, match=r"rejected the shape \[2, 3, 16, 16\] of input 'input': the engine's "
                                              r"profile takes batches 1 to 8 of \[3, 32, 32\]; give inputs of that "
                                              r"size .*outside the engine's profile"):
            runner.run(_tagged(2, (3, 16, 16)))
    assert not _calls(trt, "set_tensor_address") and not _calls(trt, "execute_async_v3")


@pytest.mark.parametrize("tensor, what", [("input", r"float32 buffer \[3, 3, 32, 32\]"),
                                          ("logits", r"float32 buffer \[3, 5\]")])
def test_runner_stops_when_tensorrt_rejects_a_tensor_address(tensor, what, onnx_file, tmp_path):
    trt = make_fake_tensorrt("11.1.0", reject_address_of=(tensor,))
    with _runner(trt, _plan(trt, onnx_file, TrtOptions(1, 4, 8), tmp_path)) as runner:
        with pytest.raises(ExportError, match=rf"rejected the {what} at 0x[0-9a-f]+ for tensor '{tensor}' "
                                              rf"\(TensorRT: cannot set the address of tensor {tensor}\)"):
            runner.run(_tagged(3))
    assert not _calls(trt, "execute_async_v3")


def test_runner_reports_a_failed_execution_with_tensorrt_s_error(onnx_file, tmp_path):
    trt = make_fake_tensorrt("10.9.0", execute_error="illegal memory access")
    with _runner(trt, _plan(trt, onnx_file, TrtOptions(), tmp_path)) as runner:
        with pytest.raises(ExportError, match="^TensorRT execution failed: illegal memory access; rerun with -v"):
            runner.run(_tagged(1))
    assert trt.memory.downloads == 0


def test_runner_refuses_a_plan_tensorrt_cannot_load(tmp_path):
    trt = make_fake_tensorrt()
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(ExportError, match="cannot load .*model.plan"):
        trt_backend.TrtRunner(plan, trt=trt, buffers=trt.memory)


# ---------------------------------------------------------------------------------------------- INT8


@pytest.fixture(scope="module")
def qdq_file(onnx_file, tmp_path_factory):
    """The calibration's portable Q/DQ form of the small model (symmetric INT8, per-channel weights)."""
    from effexport.calibration import qdq

    folder = tmp_path_factory.mktemp("qdq")
    inputs = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    qdq.calibrate_ranges(onnx_file, inputs, "minmax", folder / "ranges.json", folder)
    qdq.build_form(onnx_file, folder / "model_int8_qdq.onnx", qdq.PORTABLE, folder / "ranges.json", "minmax", [])
    return folder / "model_int8_qdq.onnx"


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_is_explicit_quantization_strongly_typed_without_precision_flags(version, qdq_file):
    trt = make_fake_tensorrt(version)
    assert source_precision("int8", TrtOptions()) == "int8"  # deploy hands it the Q/DQ form
    result = build_engine(trt, qdq_file, "int8", TrtOptions())
    (flags,) = [c[1] for c in _calls(trt, "create_network")]
    assert flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert not _calls(trt, "set_flag")  # no INT8/FP16 flag
    assert result.report["strongly_typed"] and "Q/DQ" in result.report["int8_from"]
    assert _calls(trt, "parse_from_file") == [("parse_from_file", str(qdq_file))]


def test_int8_fp16_builder_flag_is_refused(qdq_file):
    trt = make_fake_tensorrt("10.9.0")
    with pytest.raises(UsageError, match="only applies to --fp16"):
        build_engine(trt, qdq_file, "int8", TrtOptions(fp16_builder_flag=True))
    assert trt.calls == []


def test_int8_build_checks_the_qdq_form_before_tensorrt_sees_it(onnx_file, qdq_file, tmp_path, monkeypatch):
    trt = make_fake_tensorrt("11.1.0")
    monkeypatch.setattr(trt_backend, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "cuda_environment", lambda: {"cuda_runtime": "13.0", "gpus": []})
    with pytest.raises(ExportError, match="not in TensorRT's Q/DQ form: no quantized weights"):
        trt_backend.build(onnx_file, tmp_path, "int8", TrtOptions())  # the FP32 graph is no INT8 source
    assert trt.calls == []
    output = trt_backend.build(qdq_file, tmp_path, "int8", TrtOptions())
    assert output.info["qdq_check"]["passed"] and output.info["qdq_check"]["weight_quantizers"] == 2
    assert output.info["int8_from"] and (tmp_path / "model.plan").is_file()
