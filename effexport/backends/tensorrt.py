"""TensorRT 10.x and 11.x engines (model.plan) built from the verified ONNX, and a runner for them.

Written to the documented Python API of both majors. What differs:

- TensorRT 11 builds strongly typed networks only: the FP16/INT8 builder flags, the INT8 calibrators and
  EXPLICIT_BATCH are gone and precision comes from the ONNX graph. FP16 is therefore the FP16 ONNX graph with
  FP32 inputs/outputs (verified on the CPU in ONNX Runtime first), built strongly typed. TensorRT 10 builds the
  same way by default; `fp16_builder_flag` keeps 10.x's weakly typed alternative (FP32 graph + BuilderFlag.FP16).
- EXPLICIT_BATCH is never set: since 10.0 every network is explicit-batch and the flag is an ignored,
  deprecated member; 11.x removed it.
- Every build clears BuilderFlag.TF32, which TensorRT enables by default and which lets FP32 convolutions and
  matmuls round their inputs to 10 mantissa bits. An FP32 engine would miss the FP32 tolerance; in FP16 and INT8
  engines the FP32 layers are the ones the graph keeps in FP32 on purpose, so they compute FP32 there too.
- INT8 is explicit quantization: the engine is built from the calibration's portable Q/DQ ONNX (checked against
  TensorRT's Q/DQ rules first), strongly typed on both majors. TensorRT's explicit-quantization guide says to use
  it with strong typing and that precision builder flags "are not required and should not be specified"; 10.12
  deprecated weak typing and 11.x removed it, so the 10.x weakly typed route (BuilderFlag.INT8, which 8.x required
  for Q/DQ networks) is not offered. Layers outside the Q/DQ pairs run in the graph's FP32.

The build function and the runner take the `tensorrt` module as an argument, and the runner its device buffers
(torch CUDA tensors by default), so that tests can hand them a recording fake (tests/fakes/tensorrt.py) and host
memory, and check our calls on a machine without TensorRT or a GPU.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from effexport.backends import Availability, BuildOutput, run_in_batches
from effexport.backends.cuda_env import cuda_environment
from effexport.backends.tensorrt_qdq import check_tensorrt_qdq
from effexport.errors import ExportError, MissingDependencyError, UsageError

log = logging.getLogger(__name__)

EXTRA = "tensorrt"
PLAN_FILE = "model.plan"
LAYERS_FILE = "layers.json"
TIMING_CACHE_FILE = "tensorrt-timing.cache"  # in <out>/<recipe>/, shared by every engine of the recipe
SUPPORTED_MAJORS = (10, 11)
HARDWARE_COMPAT = ("same", "ampere+")
INSTALL_HINT = f"pip install 'effexport[{EXTRA}]' (NVIDIA's wheels) or use JetPack on Jetson"


@dataclass(frozen=True)
class TrtOptions:
    """Engine build options; batch sizes give the optimization profile of the dynamic batch dimension."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    workspace_gb: float | None = None
    timing_cache: Path | None = None
    hardware_compat: str = "same"
    version_compatible: bool = False
    fp16_builder_flag: bool = False  # TensorRT 10 only: FP32 graph + BuilderFlag.FP16 instead of the FP16 graph

    def __post_init__(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UsageError(f"batch sizes must satisfy 1 <= min <= opt <= max, got min {self.min_batch}, "
                             f"opt {self.opt_batch}, max {self.max_batch}")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise UsageError(f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}, "
                             f"got {self.hardware_compat!r}")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise UsageError(f"--workspace must be positive (GB), got {self.workspace_gb}")

    @classmethod
    def from_batches(cls, batch: int | None = None, min_batch: int | None = None, opt_batch: int | None = None,
                     max_batch: int | None = None, **kwargs: Any) -> TrtOptions:
        """`--batch B` (a static profile) or `--min/--opt/--max-batch` (a range); not both."""
        ranged = (min_batch, opt_batch, max_batch)
        if batch is not None and any(v is not None for v in ranged):
            raise UsageError("--batch and --min-batch/--opt-batch/--max-batch exclude each other")
        if batch is not None:
            return cls(batch, batch, batch, **kwargs)
        high = max_batch or max(v or 1 for v in ranged)
        low = min_batch or 1
        return cls(low, opt_batch or high, high, **kwargs)

    def identity(self) -> dict:
        """What the engine depends on (the timing cache only changes how long the build takes)."""
        d = asdict(self)
        d.pop("timing_cache")
        return d


def profile_tag(options: TrtOptions) -> str:
    """The batch profile as a folder suffix: "b8" for a static batch of 8, "b1-8-32" for min 1, opt 8, max 32."""
    if options.min_batch == options.opt_batch == options.max_batch:
        return f"b{options.max_batch}"
    return f"b{options.min_batch}-{options.opt_batch}-{options.max_batch}"


def covers(options: TrtOptions, batch: int) -> bool:
    """Whether an engine built with `options` takes `batch` samples in one execution (no chunking or padding)."""
    return options.min_batch <= batch <= options.max_batch


def options_for_batch(batch: int) -> TrtOptions:
    """What verify/bench build when no engine of the user's covers `batch`: a static profile at exactly `batch`."""
    return TrtOptions.from_batches(batch=batch)


def options_from_record(record: dict[str, Any]) -> TrtOptions:
    """The options an engine's report.json recorded (`TrtOptions.identity()`), to find and reuse that engine."""
    return TrtOptions(**record)


def default_options(options: TrtOptions | None, recipe_folder: Path) -> TrtOptions:
    """Fill in the recipe's timing cache so that every rebuild starts from the last build's timings."""
    options = options or TrtOptions()
    if options.timing_cache is None:
        options = replace(options, timing_cache=Path(recipe_folder) / TIMING_CACHE_FILE)
    return options


# ---------------------------------------------------------------------------------------------- environment


def trt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


def probe() -> Availability:
    problems = []
    version = None
    try:
        import tensorrt as trt

        version = trt.__version__
        if trt_major(trt) not in SUPPORTED_MAJORS:
            problems.append(f"TensorRT {version} is not supported (10.x or 11.x)")
    except ImportError:
        problems.append(f"TensorRT is not installed ({INSTALL_HINT})")
    env = cuda_environment()
    if not env["gpus"]:
        problems.append(f"no CUDA GPU is visible ({env['error'] or 'no device'})")
    # The runner's device buffers are torch CUDA tensors: with a CPU-only torch a build would succeed and its parity
    # run would then fail, so say it here, before any work.
    if not env["torch_cuda"]:
        problems.append("torch is a CPU-only build; the TensorRT runner needs CUDA tensors: install a CUDA build of "
                        "torch")
    gpu = env["gpus"][0] if env["gpus"] else None
    device = f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else None
    return Availability("tensorrt", not problems, version=version, device=device,
                        reason=" and ".join(problems) or None, details=env)


def require_tensorrt() -> ModuleType:
    """The tensorrt module and a GPU, or one line naming what is missing."""
    found = probe()
    if not found.available:
        raise MissingDependencyError(f"the TensorRT backend is unavailable: {found.reason}")
    import tensorrt as trt

    return trt


# ---------------------------------------------------------------------------------------------- build


def source_precision(precision: str, options: TrtOptions | None = None) -> str:
    """Strongly typed: an engine of precision P is built from the ONNX variant P (fp16: the FP16 graph; a Q/DQ
    graph for int8), except with the 10.x FP16 builder flag, which starts from the FP32 graph."""
    if precision == "fp16" and options is not None and options.fp16_builder_flag:
        return "fp32"
    return precision


def network_flags(trt: ModuleType, strongly_typed: bool) -> int:
    flags = 0
    member = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and member is not None:  # 11.x is strongly typed whether or not the member exists
        flags |= 1 << int(member)
    return flags


def _make_logger(trt: ModuleType):
    class RecordingLogger(trt.ILogger):
        """Forwards TensorRT's messages to our log and keeps the errors for the one-line failure message."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif int(severity) == int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return RecordingLogger()


@dataclass
class EngineBuild:
    plan: bytes
    layers: str  # the engine inspector's JSON
    report: dict = field(default_factory=dict)


def parse_onnx(trt: ModuleType, builder, logger, onnx_path: Path, strongly_typed: bool):
    network = builder.create_network(network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from a file, so external weights are found beside it
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or logger.errors or ["no reason"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ExportError(f"TensorRT {trt.__version__} could not parse {Path(onnx_path).name}: {errors[0]}{more}")
    return network, parser


def add_batch_profile(trt: ModuleType, builder, network, config, options: TrtOptions) -> dict:
    """One optimization profile over the batch dimension: (min, opt, max) x C x H x W."""
    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    if len(shape) != 4 or any(d < 0 for d in shape[1:]):
        raise ExportError(f"expected one NCHW input with only the batch dynamic, got {inp.name} {list(shape)}")
    batches = (options.min_batch, options.opt_batch, options.max_batch)
    if shape[0] >= 0:
        if set(batches) != {shape[0]}:
            raise UsageError(f"the ONNX model has a fixed batch of {shape[0]}; export it with a dynamic batch to "
                             f"build batches {batches}")
        return {"input": inp.name, "static_shape": list(shape)}
    profile = builder.create_optimization_profile()
    dims = [tuple([b, *shape[1:]]) for b in batches]
    profile.set_shape(inp.name, *dims)
    config.add_optimization_profile(profile)
    return {"input": inp.name, "min": list(dims[0]), "opt": list(dims[1]), "max": list(dims[2])}


def load_timing_cache(config, path: Path | None) -> dict:
    """Start the build from the saved timing cache, or from an empty one if there is none or TensorRT cannot use it
    (corrupt, or written by another TensorRT version or GPU: mixing foreign timings would only mislead tactic
    selection). The build's timings replace an unusable file afterwards (save_timing_cache)."""
    blob = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    record: dict[str, Any] = {"path": str(path) if path else None, "loaded": False, "loaded_bytes": 0}
    if blob:
        # create_timing_cache gives None for bytes it cannot read (trtexec checks for it too), and set_timing_cache
        # False for a cache of another version or device when mismatches are not ignored
        cache = config.create_timing_cache(blob)
        if cache is None:
            reason = "TensorRT cannot read it (corrupt, or written by another TensorRT version)"
        elif not config.set_timing_cache(cache, False):
            reason = "it does not match this TensorRT version or GPU"
        else:
            return {**record, "loaded": True, "loaded_bytes": len(blob)}
        log.warning("timing cache %s not used: %s; building without it and replacing it with this build's timings",
                    path, reason)
        record.update(reason=reason, rejected_bytes=len(blob))
    empty = config.create_timing_cache(b"")
    if empty is None:  # no bytes to blame: TensorRT itself failed (its error is in the log)
        raise ExportError("TensorRT could not create an empty timing cache; see the log (rerun with -v)")
    config.set_timing_cache(empty, False)
    return record


def save_timing_cache(config, path: Path | None) -> int:
    """Write the cache the build used (now with its timings) over the file; 0 if there is none to write."""
    cache = config.get_timing_cache() if path is not None else None
    if cache is None:
        return 0
    from effexport.exporter.artifacts import write_bytes

    data = bytes(cache.serialize())
    write_bytes(Path(path), data)
    return len(data)


def configure(trt: ModuleType, config, precision: str, options: TrtOptions) -> list[str]:
    """Builder flags and settings; returns what was set, for the report."""
    done = []
    if options.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
        done.append(f"workspace {options.workspace_gb:g} GiB")
    # TensorRT documents BuilderFlag.TF32 as "Allow (but not require) computations on tensors of type
    # DataType.FLOAT to use TF32", rounding "the inputs to 10-bit mantissas before multiplying", and as "Enabled by
    # default". Cleared for every precision: the FP32 tensors of an FP16 or Q/DQ graph are the layers it keeps in
    # FP32 on purpose (the converter's blocked ops, the recipe's keep-float layers such as the classifier), and the
    # CPU verification of that graph computes them in FP32. A reduced tolerance would hide TF32, not justify it.
    config.clear_flag(trt.BuilderFlag.TF32)
    done.append("TF32 off")
    if options.fp16_builder_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        done.append("BuilderFlag.FP16")
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        done.append("BuilderFlag.VERSION_COMPATIBLE")
    if options.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        done.append("HardwareCompatibilityLevel.AMPERE_PLUS")
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer details for the engine inspector
    return done


def check_options(trt: ModuleType, precision: str, options: TrtOptions) -> None:
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"TensorRT builds fp32, fp16 or (from a Q/DQ graph) int8, not {precision}")
    if options.fp16_builder_flag:
        if trt_major(trt) >= 11:
            raise UsageError(f"TensorRT {trt.__version__} has no FP16 builder flag (removed in 11.x): build the "
                             f"FP16 ONNX graph instead (leave out the builder-flag option)")
        if precision != "fp16":
            raise UsageError("the FP16 builder flag only applies to --fp16 builds")


def build_engine(trt: ModuleType, onnx_path: Path, precision: str, options: TrtOptions) -> EngineBuild:
    """Parse the ONNX file, configure the builder and build the serialized engine, with the timing cache
    loaded before and saved after; returns the plan, the engine inspector's layer JSON and a report."""
    check_options(trt, precision, options)
    strongly_typed = not options.fp16_builder_flag
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, Path(onnx_path), strongly_typed)
    config = builder.create_builder_config()
    settings = configure(trt, config, precision, options)
    profile = add_batch_profile(trt, builder, network, config, options)
    cache = load_timing_cache(config, options.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        reason = logger.errors[-1] if logger.errors else "see the log (rerun with -v)"
        raise ExportError(f"TensorRT {trt.__version__} failed to build the engine: {reason}")
    plan = bytes(plan)
    cache["saved_bytes"] = save_timing_cache(config, options.timing_cache)
    layers = inspect_engine(trt, plan, logger, options.version_compatible)
    report = {"tensorrt": trt.__version__, "strongly_typed": strongly_typed,
              "fp16_from": ("builder flag" if options.fp16_builder_flag else "FP16 ONNX graph")
              if precision == "fp16" else None,
              "int8_from": "Q/DQ ONNX (explicit quantization, no precision flags)" if precision == "int8" else None,
              "settings": settings, "profile": profile, "timing_cache": cache, "options": options.identity()}
    return EngineBuild(plan, layers, report)


def inspect_engine(trt: ModuleType, plan: bytes, logger, host_code_allowed: bool) -> str:
    runtime = trt.Runtime(logger)
    if host_code_allowed:  # a version-compatible plan carries the lean runtime as host code
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} cannot load the engine it just built")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def check_int8_source(onnx_path: Path) -> dict:
    """TensorRT accepts only symmetric INT8 Q/DQ (zero points 0, per-tensor activations, per-output-channel
    weights): check the file before spending a build on it."""

    check = check_tensorrt_qdq(Path(onnx_path))
    if not check.passed:
        problems = "; ".join(check.problems[:3]) or "no quantized weights"
        raise ExportError(f"{Path(onnx_path).name} is not in TensorRT's Q/DQ form: {problems}; rebuild it with "
                          f"'effexport calibrate' (the portable model_int8_qdq.onnx)")
    return check.to_dict()


def build(source: Path, folder: Path, precision: str, options: TrtOptions | None = None) -> BuildOutput:
    trt = require_tensorrt()
    options = options or TrtOptions()
    qdq_check = check_int8_source(source) if precision == "int8" else None
    result = build_engine(trt, Path(source), precision, options)
    (Path(folder) / PLAN_FILE).write_bytes(result.plan)
    (Path(folder) / LAYERS_FILE).write_text(_pretty_json(result.layers))
    info = {**result.report, "environment": cuda_environment(), **({"qdq_check": qdq_check} if qdq_check else {})}
    return BuildOutput(PLAN_FILE, [LAYERS_FILE, PLAN_FILE], info)


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2) + "\n"
    except ValueError:
        return text


# ---------------------------------------------------------------------------------------------- run


def open_runner(artifact: Path, *, precision: str = "fp32", threads: int | None = None, batch: int | None = None,
                options: TrtOptions | None = None) -> TrtRunner:
    return TrtRunner(artifact, host_code_allowed=bool(options and options.version_compatible))


class DeviceBuffers(Protocol):
    """Where the runner's tensors live and the stream TensorRT runs on: CUDA memory through torch in production
    (TorchCudaBuffers); tests hand the runner host memory so that its own logic runs without a GPU."""

    @property
    def stream_handle(self) -> int: ...

    def upload(self, x: np.ndarray) -> Any: ...

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any: ...

    def address(self, buffer: Any) -> int: ...

    def download(self, buffer: Any) -> np.ndarray:
        """Wait for the stream, then the buffer as float32 on the host."""
        ...


class TorchCudaBuffers:
    """Device buffers from torch.cuda on one stream of the first GPU (torch is a core dependency)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def upload(self, x: np.ndarray) -> Any:
        with self.torch.cuda.stream(self.stream):
            return self.torch.from_numpy(x).to("cuda")

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        torch_dtype = self.torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        with self.torch.cuda.stream(self.stream):
            return self.torch.empty(shape, dtype=torch_dtype, device="cuda")

    def address(self, buffer: Any) -> int:
        return buffer.data_ptr()

    def download(self, buffer: Any) -> np.ndarray:
        self.stream.synchronize()
        return buffer.float().cpu().numpy()


class TrtRunner:
    """Runs a plan on the first GPU, in chunks that fit its batch profile (run_in_batches)."""

    def __init__(self, plan: Path, host_code_allowed: bool = False, *, trt: ModuleType | None = None,
                 buffers: DeviceBuffers | None = None):
        trt = trt if trt is not None else require_tensorrt()
        self.trt = trt
        self.logger = _make_logger(trt)
        runtime = trt.Runtime(self.logger)
        runtime.engine_host_code_allowed = host_code_allowed
        self.engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT {trt.__version__} cannot load {plan} (built by another version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        engine_shape = [int(d) for d in self.engine.get_tensor_shape(self.input)]
        self.sample_shape = engine_shape[1:]  # C, H, W: fixed at build time (add_batch_profile)
        static = engine_shape[0]
        if static >= 0:
            self.min_batch = self.max_batch = static
        else:
            low, _opt, high = self.engine.get_tensor_profile_shape(self.input, 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.buffers = buffers if buffers is not None else TorchCudaBuffers()
        env = cuda_environment()
        self.execution = {"device": env["gpus"][0]["name"] if env["gpus"] else "cuda", "tensorrt": trt.__version__,
                          "batch_range": [self.min_batch, self.max_batch], "cuda_runtime": env["cuda_runtime"]}

    def __enter__(self) -> TrtRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.context = None
        self.engine = None

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out_dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(self.output)))
        device_in = self.buffers.upload(x)
        # TensorRT reports a rejected shape or address by returning False (and logging); going on would run the
        # engine on stale shapes or leave the output unwritten, so each call is checked.
        if not self.context.set_input_shape(self.input, tuple(x.shape)):
            raise ExportError(f"TensorRT rejected the shape {list(x.shape)} of input {self.input!r}: the engine's "
                              f"profile takes batches {self.min_batch} to {self.max_batch} of {self.sample_shape}; "
                              f"give inputs of that size or rebuild the engine for this one{self._reason()}")
        self._set_address(self.input, device_in, x.shape, x.dtype)
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output))
        device_out = self.buffers.empty(out_shape, out_dtype)
        self._set_address(self.output, device_out, out_shape, out_dtype)
        if not self.context.execute_async_v3(self.buffers.stream_handle):
            reason = self.logger.errors[-1] if self.logger.errors else "no reason given"
            raise ExportError(f"TensorRT execution failed: {reason}; rerun with -v for TensorRT's log")
        return self.buffers.download(device_out)

    def _set_address(self, name: str, buffer: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        address = self.buffers.address(buffer)
        if not self.context.set_tensor_address(name, address):
            raise ExportError(f"TensorRT rejected the {np.dtype(dtype).name} buffer {list(shape)} at {address:#x} "
                              f"for tensor {name!r}{self._reason()}; rerun with -v for TensorRT's log")

    def _reason(self) -> str:
        return f" (TensorRT: {self.logger.errors[-1]})" if self.logger.errors else ""

    def run(self, x: np.ndarray) -> np.ndarray:
        return run_in_batches(self._infer, x, self.max_batch, self.min_batch)
