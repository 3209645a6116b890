"""A recording FAKE of the TensorRT Python API, with the 10.x or the 11.x surface, for testing our own calls on
machines without TensorRT or a GPU. It records every call in `module.calls`, reads only the input and output
shapes and types of the ONNX file it is given, and never computes a model: its "plan" is a marker string with those
shapes and the batch profile, its timing cache a list of build markers tagged with the fake's version
(`create_timing_cache` returns None, as TensorRT does, for bytes it cannot read: not a fake cache, or one of another
version). It models the documented differences we depend on:

- 10.x: NetworkDefinitionCreationFlag has EXPLICIT_BATCH (deprecated) and STRONGLY_TYPED; BuilderFlag has FP16,
  INT8 and BF16 (rejected for strongly typed networks, as TensorRT documents).
- 11.x: no EXPLICIT_BATCH, no FP16/INT8/BF16 builder flags (using them is an AttributeError, as in the real
  module); STRONGLY_TYPED may or may not still be listed (`strongly_typed_member`).

Execution (Runtime -> engine -> execution context) follows the documented name-based API: `set_input_shape` and
`set_tensor_address` return False for what TensorRT rejects (a shape outside the profile, an unknown tensor, or a
tensor named in `reject_address_of`), `execute_async_v3` returns False with a logged error (`execute_error`) or
when an address is missing. Device memory is host memory (`module.memory`, a FakeDeviceMemory that the runner takes
as its buffers). The fake engine writes no model output: each output row is filled with the first input value of
the same sample, a tag that lets tests follow samples through chunking, padding and slicing. Buffers of the wrong
shape or type, or addresses the memory did not hand out, are AssertionErrors: on a GPU they would corrupt memory.
"""

from __future__ import annotations

import enum
import json
import types

import numpy as np
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


PLAN_PREFIX = b"FAKE-PLAN (not an engine)\n"
ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT8: "INT8",
              onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64"}
NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
               "BOOL": np.bool_, "UINT8": np.uint8}


def fake_plan(inputs: list[dict], outputs: list[dict], profile: dict | None = None) -> bytes:
    """The fake's serialized "engine": tensors as {"name", "shape" (-1 for dynamic), "dtype" (a DataType name)} and
    the batch profile as {input name: [min, opt, max] shapes}."""
    return PLAN_PREFIX + json.dumps({"inputs": inputs, "outputs": outputs, "profile": profile or {}}).encode()


class FakeDeviceMemory:
    """Host arrays standing in for device memory: the runner's buffers in tests (it has the runner's DeviceBuffers
    methods), and where the fake engine finds its tensors by address."""

    stream_handle = 7  # any handle: the fake records it

    def __init__(self) -> None:
        self.arrays: dict[int, np.ndarray] = {}  # kept alive, so no address is reused within a test
        self.downloads = 0

    def _keep(self, array: np.ndarray) -> np.ndarray:
        self.arrays[array.ctypes.data] = array
        return array

    def upload(self, x: np.ndarray) -> np.ndarray:
        return self._keep(np.array(x, copy=True, order="C"))

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        # NaN where an output was never written, so that a test cannot mistake it for data
        return self._keep(np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f" else np.zeros(shape, dtype))

    def address(self, buffer: np.ndarray) -> int:
        return buffer.ctypes.data

    def download(self, buffer: np.ndarray) -> np.ndarray:
        self.downloads += 1
        return buffer.astype(np.float32)

    def at(self, address: int) -> np.ndarray:
        assert address in self.arrays, f"fake TensorRT: address {address:#x} was not allocated by the fake memory"
        return self.arrays[address]


def make_fake_tensorrt(version: str = "10.9.0", *, strongly_typed_member: bool = True, parse_errors: tuple = (),
                       build_error: str | None = None, cache_matches: bool = True, reject_address_of: tuple = (),
                       execute_error: str | None = None) -> types.ModuleType:
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
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "BF16", "INT64"])
    trt.nptype = lambda dtype: NUMPY_TYPES[trt.DataType(dtype).name]  # KeyError for BF16, which NumPy lacks
    trt.memory = FakeDeviceMemory()

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    trt.ILogger = ILogger

    class Tensor:
        def __init__(self, name: str, shape: tuple, dtype: str):
            self.name = name
            self.shape = shape
            self.dtype = dtype

        def to_dict(self) -> dict:
            return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_output(self, index: int) -> Tensor:
            return self.outputs[index]

    class OnnxParser:
        def __init__(self, network: Network, logger):
            self.network = network
            self.errors = [_ParserError(e) for e in parse_errors]

        def parse_from_file(self, path: str) -> bool:
            record(("parse_from_file", path))
            if self.errors:
                return False
            model = onnx.load(path, load_external_data=False)
            initializers = {i.name for i in model.graph.initializer}
            for values, into in ((model.graph.input, self.network.inputs), (model.graph.output, self.network.outputs)):
                for value in values:
                    if value.name in initializers:
                        continue
                    kind = value.type.tensor_type
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
                    into.append(Tensor(value.name, dims, ONNX_TYPES[kind.elem_type]))
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
        def __init__(self):
            self.shapes: dict[str, list] = {}

        def set_shape(self, name, low, opt, high):
            record(("set_shape", name, tuple(low), tuple(opt), tuple(high)))
            self.shapes[name] = [list(low), list(opt), list(high)]

    class BuilderConfig:
        def __init__(self, logger):
            self.logger = logger
            self.flags: set = {trt.BuilderFlag.TF32}  # on by default in TensorRT
            self.cache: TimingCache | None = None
            self.profiles: list[Profile] = []
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
            self.profiles.append(profile)
            return len(self.profiles) - 1

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
            profile = config.profiles[0].shapes if config.profiles else None
            return fake_plan([t.to_dict() for t in network.inputs], [t.to_dict() for t in network.outputs], profile)

    trt.Builder = Builder

    class ExecutionContext:
        def __init__(self, engine: Engine):
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape) -> bool:
            shape = tuple(int(d) for d in shape)
            record(("set_input_shape", name, shape))
            if not self.engine.accepts(name, shape):
                self.engine.logger.log(_Severity.ERROR, f"{name}: shape {shape} is outside the engine's profile")
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            tensor = self.engine.tensors[name]
            if tensor in self.engine.inputs:
                return self.shapes.get(name, tuple(tensor["shape"]))
            batch = next((self.shapes[t["name"]][0] for t in self.engine.inputs if t["name"] in self.shapes), -1)
            return tuple(batch if d < 0 else d for d in tensor["shape"])  # -1 until the input shape is set

        def set_tensor_address(self, name: str, address: int) -> bool:
            record(("set_tensor_address", name))
            if name not in self.engine.tensors or name in reject_address_of:
                self.engine.logger.log(_Severity.ERROR, f"cannot set the address of tensor {name}")
                return False
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            inp = self.engine.inputs[0]
            record(("execute_async_v3", stream_handle, self.shapes.get(inp["name"])))
            missing = [n for n in self.engine.tensors if n not in self.addresses]
            if execute_error or missing:
                self.engine.logger.log(_Severity.ERROR, execute_error or f"no address for {', '.join(missing)}")
                return False
            arrays = {}
            for name, tensor in self.engine.tensors.items():
                array = trt.memory.at(self.addresses[name])
                expected = (self.get_tensor_shape(name), np.dtype(NUMPY_TYPES[tensor["dtype"]]))
                assert (array.shape, array.dtype) == expected, f"fake TensorRT: buffer of {name} is " \
                    f"{array.shape} {array.dtype}, the engine needs {expected[0]} {expected[1]}"
                arrays[name] = array
            tags = arrays[inp["name"]].reshape(len(arrays[inp["name"]]), -1)[:, 0]  # not a model output: a tag
            for tensor in self.engine.outputs:
                out = arrays[tensor["name"]]
                out[...] = tags.reshape((-1,) + (1,) * (out.ndim - 1)).astype(out.dtype)
            return True

    class Inspector:
        def get_engine_information(self, fmt) -> str:
            record(("get_engine_information", fmt.name))
            return json.dumps({"Layers": ["fake layer"], "Bindings": ["input", "logits"]})

    class Engine:
        def __init__(self, spec: dict, logger):
            self.logger = logger
            self.inputs, self.outputs, self.profile = spec["inputs"], spec["outputs"], spec["profile"]
            self.tensors = {t["name"]: t for t in self.inputs + self.outputs}

        @property
        def num_io_tensors(self) -> int:
            return len(self.tensors)

        def get_tensor_name(self, index: int) -> str:
            return list(self.tensors)[index]

        def get_tensor_mode(self, name: str):
            if name not in self.tensors:
                return trt.TensorIOMode.NONE
            return trt.TensorIOMode.INPUT if self.tensors[name] in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple:
            return tuple(self.tensors[name]["shape"])

        def get_tensor_dtype(self, name: str):
            return trt.DataType[self.tensors[name]["dtype"]]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
            assert profile_index == 0 and name in self.profile, f"fake TensorRT: no profile {profile_index} for {name}"
            return [tuple(s) for s in self.profile[name]]

        def accepts(self, name: str, shape: tuple) -> bool:
            if name not in self.tensors or self.tensors[name] not in self.inputs:
                return False
            static = self.tensors[name]["shape"]
            if len(shape) != len(static):
                return False
            if name in self.profile:
                low, _opt, high = self.profile[name]
                return all(lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True))
            return all(s < 0 or d == s for d, s in zip(shape, static, strict=True))

        def create_execution_context(self) -> ExecutionContext:
            record(("create_execution_context",))
            return ExecutionContext(self)

        def create_engine_inspector(self) -> Inspector:
            return Inspector()

    class Runtime:
        def __init__(self, logger):
            self.logger = logger
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan: bytes):
            record(("deserialize_cuda_engine", self.engine_host_code_allowed))
            if not bytes(plan).startswith(PLAN_PREFIX):
                self.logger.log(_Severity.ERROR, "the plan is not a serialized engine of this TensorRT")
                return None
            return Engine(json.loads(bytes(plan)[len(PLAN_PREFIX):]), self.logger)

    trt.Runtime = Runtime
    return trt
