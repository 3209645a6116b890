"""PaddlePaddle `.pdparams` weights, read without Paddle and without running anything the file asks for.

The format, as `paddle.save(layer.state_dict(), path)` writes it (Paddle's `framework/io.py`): one bare pickle
(protocol 4 by default, 2 from Paddle <= 2.1) of a plain dict, structured parameter name -> numpy array (float32,
C-contiguous), plus `StructuredToParameterName@@`: structured name -> the parameter's own name (str -> str).
Under protocols 2 and 3 an array of more than (2^30 - 1) / itemsize elements is flattened and cut into
`name@@.0`, `name@@.1`, ... of at most that many elements each, and `UnpackBigParamInfor@@` maps `name` to
`{"OriginShape": shape, "slices": [part names in order]}`; loading concatenates the parts and reshapes. Protocol 4
writes big arrays whole. The pickle imports `numpy.core.multiarray._reconstruct` (`numpy._core...` from numpy 2),
`numpy.ndarray` and `numpy.dtype`, and under protocol 2 also `_codecs.encode` (bytes pickled as latin-1 text).

So the reader is an unpickler that admits exactly those four globals, each replaced by a checked stand-in
(`numpy.ndarray` is only a marker, `numpy.dtype` admits float and integer types, `_codecs.encode` only latin-1),
and plain dict/list/tuple/str/int values. Any other import is refused, naming it, as read_checkpoint refuses an
unsafe `.pth`; so are arrays of other dtypes (object arrays hold arbitrary pickled objects), bytes after the
pickle's STOP, and length fields that claim more bytes than the file has left (refused before anything is allocated
for them, so a short file cannot ask for gigabytes).

PaddleClas's model tables count FLOPs in their own way (the repository ships the tables, not the counter). Checked
against timm's equal models at the native size: 2 x (dense conv MACs + grouped conv MACs / groups + FC MACs), i.e.
a grouped convolution divided by its group count once more than its real cost, plus 2 per BatchNorm output for the
EfficientNets: B0 0.717 G (table 0.72), B1 1.276 (1.27), B3 3.437 (3.43), B7 72.36 (72.35); the ResNeXt-WSL rows fit
without the BatchNorm term: 32x8d 29.13 (29.14), 32x16d 57.54 (57.55). `paddle.flops` itself says 0.40 G for B0.
"""

from __future__ import annotations

import _compat_pickle
import logging
import pickle
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effexport.errors import CheckpointError
from effexport.exporter.model_spec import Preprocess

log = logging.getLogger(__name__)

SUFFIX = ".pdparams"
NAME_TABLE = "StructuredToParameterName@@"
SPLIT_TABLE = "UnpackBigParamInfor@@"
SPLIT_PART = re.compile(r"@@\.\d+$")
PROTOCOLS = (2, 3, 4)
ARRAY_KINDS = "fiu"  # float, signed and unsigned integer
CLASSIFIER_KEYS = ("_fc.weight", "_out.weight")  # PaddleClas EfficientNet, ResNeXt-WSL; Linear weights are [in, out]
SHOWN = 20  # names listed in one mismatch message before the count


@dataclass(frozen=True)
class PaddleClasEval:
    """PaddleClas's evaluation transform (`ppcls/data/preprocess/ops/operators.py`, the models' yaml configs).

    cv2 decodes to BGR and DecodeImage(to_rgb=True) flips it to RGB. ResizeImage(resize_short) scales the short side
    to `resize_short` and the other to int(round(long * resize_short / short)) with cv2.INTER_LINEAR, which has no
    antialias filter (PIL's and torchvision's bilinear do, when shrinking). CropImage takes the centre
    (start (size - crop) // 2); NormalizeImage multiplies by 1/255, subtracts `mean` and divides by `std`; the HWC
    image is then transposed to CHW.
    """

    crop: int
    resize_short: int
    interpolation: str = "bilinear"
    antialias: bool = False
    channels: str = "RGB"  # after decoding BGR with cv2
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def preprocess(self, model: str) -> Preprocess:
        """As effexport's Preprocess: what the parity photographs are prepared with and what reports record."""
        return Preprocess((self.crop, self.crop), crop_pct=self.crop / self.resize_short,
                          interpolation=self.interpolation, mean=self.mean, std=self.std,
                          resize_size=self.resize_short, antialias=self.antialias,
                          origin=f"PaddleClas {model} evaluation (cv2 decode to RGB, short side to {self.resize_short} "
                                 f"with cv2 bilinear, centre crop {self.crop}, /255, mean/std)")


# The short side goes to crop + 32 for every model here but Fix-ResNeXt, whose documented resize is its crop.
PADDLECLAS_EVAL = {
    **{f"EfficientNetB{n}": PaddleClasEval(size, size + 32)
       for n, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))},
    "EfficientNetB0_small": PaddleClasEval(224, 256),
    **{f"ResNeXt101_32x{w}d_wsl": PaddleClasEval(224, 256) for w in (8, 16, 32, 48)},
    "Fix_ResNeXt101_32x48d_wsl": PaddleClasEval(320, 320),
}


@dataclass(frozen=True)
class PaddleParams:
    """A `.pdparams` file's arrays as tensors (floats as float32, C-contiguous), by structured name, and its table
    of structured name -> Paddle parameter name (empty when the file has none)."""

    tensors: dict[str, torch.Tensor]
    parameter_names: dict[str, str]
    protocol: int


class _Refused(Exception):
    """Raised inside the unpickler; turned into one CheckpointError naming the file once loading stops."""

    def __init__(self, what: str, unsafe: bool = True):
        super().__init__(what)
        self.what, self.unsafe = what, unsafe


class _Truncated(Exception):
    pass


_NDARRAY = object()  # stands for numpy.ndarray, which is only ever _reconstruct's first argument


def _reconstruct(subtype, shape, typecode):
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array that the pickle's BUILD then fills."""
    if subtype is not _NDARRAY:
        raise _Refused(f"numpy _reconstruct of {type(subtype).__name__}", unsafe=False)
    return np.empty((0,), np.int8)


def _dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise _Refused(f"a numpy dtype built from {type(spec).__name__}")
    dtype = np.dtype(spec)
    if dtype.kind not in ARRAY_KINDS:
        raise _Refused(f"a numpy array of dtype {dtype} ({spec!r})")
    return np.dtype(spec, bool(align), bool(copy))


def _latin1(text, encoding="utf-8"):
    """`_codecs.encode(text, 'latin1')`: how a protocol-2 pickle stores bytes."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin-1")


ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class _Unpickler(pickle._Unpickler):
    """Python's own pure-Python unpickler: the C one allocates what a length field claims before reading it, and
    this one reads through the file object, whose bounds check then refuses the claim first."""

    def find_class(self, module: str, name: str):
        # Python 3 writes protocol-2 pickles with Python 2's module names (builtins as __builtin__); say what
        # Python 3 would import
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("a persistent id (external object reference)")


class _BoundedReader:
    """The file as the unpickler sees it: a read past the end is refused before it is attempted (pickle allocates
    a bytes object of the size a length field claims). It offers no peek, so the unpickler never reads ahead and
    what is left once it stops is what follows STOP."""

    def __init__(self, f, size: int):
        self._f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else n
        if n > self.left:
            raise _Truncated
        data = self._f.read(n)
        self.left -= len(data)
        return data

    def readinto(self, buffer) -> int:
        n = memoryview(buffer).nbytes
        if n > self.left:
            raise _Truncated
        got = self._f.readinto(buffer)
        self.left -= got
        return got

    def readline(self) -> bytes:
        line = self._f.readline()
        self.left -= len(line)
        return line


def read_pdparams(path: Path) -> PaddleParams:
    """Read a `.pdparams` file (see the module docstring); every refusal is one CheckpointError line naming why."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(2)
        if len(head) < 2 or head[:1] != pickle.PROTO or head[1] not in PROTOCOLS:
            what = (f"a pickle of protocol {head[1]}" if head[:1] == pickle.PROTO and len(head) == 2
                    else f"not a pickle (it starts with {head!r})")
            raise _unreadable(path, f"{what}; paddle.save writes pickle protocols 2 to 4")
        protocol = head[1]
        f.seek(0)
        reader = _BoundedReader(f, size)
        try:
            # latin-1, as Paddle loads: Python 2's str values of old files become str, not an error
            unpickler = _Unpickler(reader, encoding="latin1")
            obj = unpickler.load()
        except _Refused as exc:
            raise _refused(path, exc) from None
        except _Truncated:
            raise _unreadable(path, "the file ends inside the pickle (truncated)") from None
        except Exception as exc:  # untrusted bytes: whatever the unpickler trips on, the file is malformed
            raise _unreadable(path, f"{type(exc).__name__}: {exc}") from None
    in_frame = getattr(getattr(unpickler, "_unframer", None), "current_frame", None)
    left = reader.left + (len(in_frame.read()) if in_frame is not None else 0)
    if left:
        raise _unreadable(path, f"{left} bytes follow the end of the pickle (paddle.save writes one pickle "
                                f"and nothing after it)")
    if not isinstance(obj, dict):
        raise _unreadable(path, f"the pickle holds a {type(obj).__name__}, not a dict of parameters")
    names = obj.pop(NAME_TABLE, {})
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise _unreadable(path, f"its {NAME_TABLE} entry is not a table of names")
    _join_split(path, obj)
    tensors = {}
    for key in list(obj):
        value = obj.pop(key)  # one array in memory twice at a time, not the whole file
        if not isinstance(key, str):
            raise _unreadable(path, f"it has a key of type {type(key).__name__}")
        if not isinstance(value, np.ndarray):
            log.debug("%s: %s is a %s, not a parameter; left out", path.name, key, type(value).__name__)
            continue
        tensors[key] = _to_tensor(path, key, value)
    if not tensors:
        raise _unreadable(path, "it holds no arrays")
    return PaddleParams(tensors, names, protocol)


def _join_split(path: Path, obj: dict) -> None:
    """Join the `name@@.i` parts that UnpackBigParamInfor@@ lists, in its order, back into `name`."""
    info = obj.pop(SPLIT_TABLE, {})
    if not isinstance(info, dict):
        raise _unreadable(path, f"its {SPLIT_TABLE} entry is not a table")
    for name, entry in info.items():
        slices = entry.get("slices") if isinstance(entry, dict) else None
        shape = entry.get("OriginShape") if isinstance(entry, dict) else None
        if (not isinstance(slices, list | tuple) or not slices or not all(isinstance(s, str) for s in slices)
                or not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise _unreadable(path, f"its {SPLIT_TABLE} entry for {name} is malformed")
        if name in obj:
            raise _unreadable(path, f"{name} is stored both whole and in parts")
        absent = [s for s in slices if not isinstance(obj.get(s), np.ndarray)]
        if absent:
            raise _unreadable(path, f"the parts {', '.join(absent[:3])} of the split parameter {name} are missing")
        parts = [_checked(path, s, obj.pop(s)).reshape(-1) for s in slices]
        if len({p.dtype for p in parts}) > 1 or sum(p.size for p in parts) != int(np.prod(shape)):
            raise _unreadable(path, f"the parts of the split parameter {name} do not make its shape {tuple(shape)}")
        obj[name] = np.concatenate(parts).reshape(tuple(shape))
    stray = [k for k in obj if isinstance(k, str) and SPLIT_PART.search(k)]
    if stray:
        raise _unreadable(path, f"{stray[0]} is part of a split parameter that {SPLIT_TABLE} does not list")


def _checked(path: Path, key: str, value: np.ndarray) -> np.ndarray:
    # The dtype stand-in admits only these kinds; a pickle's BUILD could still reshape a dtype, so check the result.
    dtype = value.dtype
    if type(value) is not np.ndarray or dtype.kind not in ARRAY_KINDS or dtype.fields or dtype.subdtype:
        raise _refused(path, _Refused(f"the array {key} of dtype {dtype}"))
    return value


def _to_tensor(path: Path, key: str, value: np.ndarray) -> torch.Tensor:
    value = _checked(path, key, value)
    dtype = np.float32 if value.dtype.kind == "f" else value.dtype.newbyteorder("=")
    # a copy: arrays unpickled from bytes are read-only, and may be big-endian or not contiguous
    return torch.from_numpy(np.array(value, dtype=dtype, order="C", copy=True))


def _refused(path: Path, exc: _Refused) -> CheckpointError:
    if not exc.unsafe:
        return _unreadable(path, exc.what)
    return CheckpointError(f"{path} was refused as unsafe: it is a pickle that imports or builds {exc.what}; a "
                           f"{SUFFIX} file is read for numpy float and integer arrays only, since unpickling anything "
                           f"else would run code from the file. Re-save only the weights "
                           f"(paddle.save(layer.state_dict(), ...)).")


def _unreadable(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable {SUFFIX} file (corrupt, truncated, or not written by "
                           f"paddle.save): {detail.strip()[:200]}")


def pdparams_num_classes(sd: Mapping[str, torch.Tensor]) -> int:
    """The class count of a PaddleClas classifier's weights (as read_checkpoint returns them): its Linear's
    output width. Fine-tuned models have other counts than ImageNet's 1000."""
    for key in CLASSIFIER_KEYS:
        if key in sd and sd[key].dim() == 2:
            return int(sd[key].shape[1])
    raise CheckpointError(f"no PaddleClas classifier in the weights (looked for {', '.join(CLASSIFIER_KEYS)})")


BN_PARAMS = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}


def convert_named(sd: Mapping[str, torch.Tensor], model: nn.Module, names: Mapping[str, str], *,
                  transposed: Collection[str], what: str) -> dict[str, torch.Tensor]:
    """Our state dict from Paddle's by `names` (our key -> Paddle structured name), strictly.

    Every Paddle entry must be used and every one of ours supplied, with its shape; `transposed` are our Linear
    weights, which Paddle stores [in, out]. Problems are listed in Paddle's names, the ones the user's file holds.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    used = set(names.values())
    missing = [names[k] for k in own if names[k] not in sd]
    unexpected = [k for k in sd if k not in used]
    shapes, out, classes = [], {}, None
    for key, target in own.items():
        source = sd.get(names[key])
        if source is None:
            continue
        value = source.t() if key in transposed and source.dim() == 2 else source
        if value.shape != target.shape:
            shapes.append(f"{names[key]} {tuple(source.shape)} (model {tuple(target.shape)})")
            if key in transposed and value.shape[1:] == target.shape[1:]:
                classes = (value.shape[0], target.shape[0])
            continue
        out[key] = value.contiguous()
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            shown = ", ".join(items[:SHOWN]) + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")
            problems.append(f"{label}: {shown}")
    if problems:
        hint = (f". The file's classifier has {classes[0]} classes, the model {classes[1]}: build the model with "
                f"the file's class count" if classes else "")
        raise CheckpointError(f"the {what} weights do not match the model: " + "; ".join(problems) + hint)
    return out
