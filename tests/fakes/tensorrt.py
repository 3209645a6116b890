"""A recording FAKE of the TensorRT Python API, with the 10.x or the 11.x surface, for testing our own calls on
machines without TensorRT or a GPU. It records every call in `module.calls`, reads only the input shape of the
ONNX file it is given, and never computes anything: its "plan" is a marker string, its timing cache a list of
build markers tagged with the fake's version (`create_timing_cache` returns None, as TensorRT does, for bytes it
cannot read: not a fake cache, or one of another version). It models the documented differences we depend on:

- 10.x: NetworkDefinitionCreationFlag has EXPLICIT_BATCH (deprecated) and STRONGLY_TYPED; BuilderFlag has FP16,
  INT8 and BF16 (rejected for strongly typed networks, as TensorRT documents).
- 11.x: no EXPLICIT_BATCH, no FP16/INT8/BF16 builder flags (using them is an AttributeError, as in the real
  module); STRONGLY_TYPED may or may not still be listed (`strongly_typed_member`).
"""

from __future__ import annotations

import enum
import json
import types

import onnx


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _ParserError:
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc


def make_fake_tensorrt(version: str = "10.9.0", *, strongly_typed_member: bool = True, parse_errors: tuple = (),
                       build_error: str | None = None, cache_matches: bool = True) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    record = trt.calls.append

    creation = {}
    if major < 11:
        creation["EXPLICIT_BATCH"] = 0
    if strongly_typed_member:
        creation["STRONGLY_TYPED"] = 1 if major < 11 else 0
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation) if creation else \
        types.SimpleNamespace()
    flags = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "VERSION_COMPATIBLE",
             "EXCLUDE_LEAN_RUNTIME"]
    if major < 11:
        flags += ["FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel",
                                                  ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"])
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", ["ONELINE", "JSON"])

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    trt.ILogger = ILogger

    class Input:
        def __init__(self, name, shape):
            self.name = name
            self.shape = shape

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[Input] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Input:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: Network, logger):
            self.network = network
            self.errors = [_ParserError(e) for e in parse_errors]

        def parse_from_file(self, path: str) -> bool:
            record(("parse_from_file", path))
            if self.errors:
                return False
            model = onnx.load(path, load_external_data=False)
            for value in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                self.network.inputs.append(Input(value.name, dims))
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> _ParserError:
            return self.errors[index]

    trt.OnnxParser = OnnxParser

    class TimingCache:
        def __init__(self, entries: list[str]):
            self.entries = entries

        def serialize(self) -> bytes:
            return json.dumps({"fake_timing_cache": version, "entries": self.entries}).encode()

    def read_timing_cache(blob: bytes) -> list[str] | None:
        try:
            data = json.loads(blob)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("fake_timing_cache") != version:
            return None
        return list(data["entries"])

    class Profile:
        def set_shape(self, name, low, opt, high):
            record(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

    class BuilderConfig:
        def __init__(self, logger):
            self.logger = logger
            self.flags: set = {trt.BuilderFlag.TF32}  # on by default in TensorRT
            self.cache: TimingCache | None = None
            self._hardware = trt.HardwareCompatibilityLevel.NONE
            self._verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY

        def set_memory_pool_limit(self, pool, size):
            record(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            record(("set_flag", flag.name))
            self.flags.add(flag)

        def clear_flag(self, flag):
            record(("clear_flag", flag.name))
            self.flags.discard(flag)

        def get_flag(self, flag) -> bool:
            return flag in self.flags

        @property
        def hardware_compatibility_level(self):
            return self._hardware

        @hardware_compatibility_level.setter
        def hardware_compatibility_level(self, level):
            record(("hardware_compatibility_level", level.name))
            self._hardware = level

        @property
        def profiling_verbosity(self):
            return self._verbosity

        @profiling_verbosity.setter
        def profiling_verbosity(self, level):
            record(("profiling_verbosity", level.name))
            self._verbosity = level

        def add_optimization_profile(self, profile) -> int:
            record(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, blob: bytes) -> TimingCache | None:
            record(("create_timing_cache", bytes(blob)))
            entries = read_timing_cache(blob) if blob else []
            if entries is None:
                self.logger.log(_Severity.ERROR, "could not deserialize the timing cache")
                return None
            return TimingCache(entries)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache is None:  # the binding takes an ITimingCache reference: None is a TypeError there too
                raise TypeError("set_timing_cache(): incompatible function arguments")
            record(("set_timing_cache", len(cache.entries), ignore_mismatch))
            if cache.entries and not cache_matches:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            record(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig(self.logger)

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig):
            record(("build_serialized_network", tuple(sorted(f.name for f in config.flags))))  # what the build saw
            strongly = "STRONGLY_TYPED" in creation and network.flags & (1 << creation["STRONGLY_TYPED"])
            precision_flags = {f.name for f in config.flags} & {"FP16", "INT8", "BF16"}
            if strongly and precision_flags:  # documented: precision flags are errors in strongly typed mode
                self.logger.log(_Severity.ERROR, f"{sorted(precision_flags)} set on a strongly typed network")
                return None
            if build_error:
                self.logger.log(_Severity.ERROR, build_error)
                return None
            if config.cache is not None:  # the build adds its timings to the cache in use
                config.cache.entries.append(f"build {len(config.cache.entries) + 1}")
            return b"FAKE-PLAN (not an engine)"

    trt.Builder = Builder

    class Inspector:
        def get_engine_information(self, fmt) -> str:
            record(("get_engine_information", fmt.name))
            return json.dumps({"Layers": ["fake layer"], "Bindings": ["input", "logits"]})

    class Engine:
        def create_engine_inspector(self) -> Inspector:
            return Inspector()

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan: bytes):
            record(("deserialize_cuda_engine", self.engine_host_code_allowed))
            return Engine()

    trt.Runtime = Runtime
    return trt
