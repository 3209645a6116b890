"""Load checkpoints safely and strictly, converting the upstream layouts users actually hold.

Safety: `.pth/.pt/.bin` files are read with `torch.load(weights_only=True)`, which refuses any pickled
object that is not a tensor or a plain container; `.safetensors` files hold tensors only; PaddlePaddle `.pdparams` files
go through pdparams.py's unpickler, which admits numpy arrays only. A refused file is told
apart from a corrupt one: a file that parses as a whole pickle (pickletools reads the opcodes and runs nothing) was
refused, and the message names the classes it would have imported.
"""

from __future__ import annotations

import logging
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from effexport.errors import CheckpointError
from effexport.exporter.artifacts import sha256_of
from effexport.exporter.model_spec import CheckpointLayout

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_state", "net")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass(frozen=True)
class LoadedWeights:
    path: str
    sha256: str
    layout: str
    tensors: int


# only to list a folder's files
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors", ".pdparams")
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError)
# Globals torch's weights-only loader accepts; listed after the others when naming what a refused pickle holds.
USUAL_GLOBALS = ("torch._utils.", "collections.OrderedDict", "_codecs.encode")
SHOWN_GLOBALS = 3


def check_weights_path(path: Path) -> Path:
    """Refuse, in one line, a checkpoint path that is missing, a directory, unreadable or empty; returns it as a Path.

    Cheap (a stat and a one-byte read), so it can run before anything is built. Any suffix is accepted: the loader
    reads `.safetensors` as safetensors, `.pdparams` as PaddlePaddle parameters and everything else with torch.load.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES)
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise CheckpointError(f"checkpoint {path} is a directory: pass the checkpoint file itself{hint}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path given to --weights")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file: pass the checkpoint file itself")
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror or type(exc).__name__}): check its "
                              f"permissions") from exc
    if empty:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes), not a readable PyTorch checkpoint: the save or "
                              f"download did not finish")
    return path


def read_checkpoint(path: Path) -> object:
    """Read a checkpoint file without unpickling arbitrary objects."""
    path = check_weights_path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if path.suffix == ".pdparams":
        from effexport.exporter.pdparams import read_pdparams

        return read_pdparams(path).tensors
    with warnings.catch_warnings(record=True) as caught:
        # torch warns that a pickle protocol above 2 may not load; the error raised below says what matters.
        warnings.simplefilter("always")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except LOAD_ERRORS as exc:
            error = exc
        finally:
            for w in {str(w.message).splitlines()[0] for w in caught}:
                log.debug("torch.load warning: %s", w)
    raise _load_failure(path, error) from error


def _load_failure(path: Path, exc: Exception) -> CheckpointError:
    """Refused as unsafe (torch names a global it would not import, or the file is a whole pickle), or corrupt."""
    text = str(exc)
    named = re.findall(r"GLOBAL ([\w.]+)", text)
    pickled = None if zipfile.is_zipfile(path) else _pickle_globals(path)
    if not named and pickled is None:
        lines = [line for line in text.splitlines() if line.strip()]
        # torch's unpickling errors end with the reason, then a pointer to its documentation
        detail = lines[-2] if isinstance(exc, pickle.UnpicklingError) and len(lines) > 1 else next(iter(lines), "")
        return _unreadable(path, detail or type(exc).__name__)
    found = list(dict.fromkeys(named + (pickled or [])))
    found = [g for g in found if not g.startswith(USUAL_GLOBALS)] or found  # name what was refused, not tensors
    shown = ", ".join(found[:SHOWN_GLOBALS]) + (f" and {len(found) - SHOWN_GLOBALS} more"
                                               if len(found) > SHOWN_GLOBALS else "")
    if found:
        what = (f"refused as unsafe: it is a plain pickle (pickle.dump, not torch.save) that imports {shown}"
                if pickled is not None else f"refused as unsafe: it holds pickled objects other than tensors ({shown})")
        why = "weights_only=True loading refuses arbitrary objects, since unpickling them would run code from the file"
    else:  # nothing to import, so nothing unsafe: but no tensors either
        what = "refused: it is a plain pickle (pickle.dump, not torch.save) and holds no tensors"
        why = "weights_only=True loading reads only torch.save files"
    return CheckpointError(f"{path} was {what}; {why}. Re-save only the state dict "
                           f"(torch.save(model.state_dict(), ...)) or convert it to .safetensors.")


def _pickle_globals(path: Path) -> list[str] | None:
    """The classes and functions a pickle file would import, read from its opcodes without executing any; None when
    the file is not one whole pickle (corrupt, truncated, or another format)."""
    found: list[str] = []
    strings: list[str | None] = []  # the values pushed most recently (STACK_GLOBAL takes module and name from them)
    memo: dict[int, str | None] = {}
    try:
        with path.open("rb") as f:
            # pickle.dump writes PROTO first (protocol 2 and up); without it, this is some other format.
            if f.read(1) != pickle.PROTO:
                return None
            f.seek(0)
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) == 2 and None not in strings:
                    found.append(f"{strings[0]}.{strings[1]}")
                if "UNICODE" in op.name or op.name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
                    strings.append(str(arg))
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(arg))
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = strings[-1] if strings else None
                    continue
                else:
                    strings.append(None)
                del strings[:-2]
            # pickle.dump writes one pickle; torch's legacy format (several, then raw storage bytes) is not one.
            if f.read(1):
                return None
    except (ValueError, EOFError, OSError, UnicodeDecodeError):
        return None
    return list(dict.fromkeys(found))


def _unreadable(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt, truncated, or not written by "
                           f"torch.save): {detail.strip()[:200]}")


def unwrap(obj: object, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Find the state dict inside a training checkpoint and strip wrapper prefixes."""
    keys = (*EMA_KEYS, *WRAPPER_KEYS) if use_ema else (*WRAPPER_KEYS, *EMA_KEYS)
    seen = 0
    while isinstance(obj, Mapping) and not _is_state_dict(obj) and seen < 4:
        inner = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"no state dict found in the checkpoint (top-level entries: {found}); expected "
                              f"tensors, or one of {', '.join(WRAPPER_KEYS + EMA_KEYS)} holding them")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_state_dict(obj: Mapping) -> bool:
    values = list(obj.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) >= max(1, len(values) // 2)


def map_by_order(src: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an upstream state dict whose modules are registered in the same order as ours.

    Used where upstream and timm define the same layers in the same order under other names (ReXNet's and
    EfficientNet-PyTorch's repositories). Every pair must agree on its kind (weight, bias, running stats)
    and shape (a 1x1-conv classifier may become a Linear); the counts must match. So a structural
    mismatch is an error that names the first differing pair, never a silent mis-assignment.
    """
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    source = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise CheckpointError(f"checkpoint has {len(source)} tensors, the model {len(target)}: "
                              f"not the same architecture (check the variant)")
    out = {}
    for (sk, sv), (tk, tv) in zip(source, target.items(), strict=True):
        if sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise CheckpointError(f"checkpoint entry {sk} does not line up with model entry {tk}")
        if sv.shape != tv.shape:
            if sv.numel() == tv.numel() and sv.squeeze().shape == tv.squeeze().shape:
                sv = sv.reshape(tv.shape)
            else:
                raise CheckpointError(f"checkpoint entry {sk} has shape {tuple(sv.shape)}, model entry {tk} "
                                      f"{tuple(tv.shape)}: not the same variant")
        out[tk] = sv
    return out


def read_state_dict(path: Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside the checkpoint at `path` (read once: `load_weights` takes it back)."""
    return unwrap(read_checkpoint(check_weights_path(path)), use_ema=use_ema)


def load_weights(model: nn.Module, path: Path, layouts: Sequence[CheckpointLayout] = (),
                 use_ema: bool = False, state_dict: Mapping[str, torch.Tensor] | None = None) -> LoadedWeights:
    """Load `path` into `model` strictly, converting the first of `layouts` (the recipe's) that recognises it.
    `state_dict`, when given, is `path`'s already read (read_state_dict), so a large file is not read twice."""
    path = check_weights_path(path)
    sd = dict(state_dict) if state_dict is not None else read_state_dict(path, use_ema)
    layout = "timm"
    for candidate in layouts:
        if candidate.detect(sd):
            if candidate.refuse:
                raise CheckpointError(f"{path.name} is a {candidate.name} checkpoint: {candidate.refuse}")
            sd = candidate.convert(sd, model)
            layout = candidate.name
            break
    strict_load(model, sd, path.name)
    log.info("loaded %s (%s layout, %d tensors)", path, layout, len(sd))
    return LoadedWeights(str(path), sha256_of(path), layout, len(sd))


@dataclass(frozen=True)
class Head:
    """A model's classifier and first convolution, by their state-dict keys (found by `model_head`)."""

    classifier: str  # the classifier's weight key
    num_classes: int
    in_features: int
    first_conv: str | None  # the first convolution's weight key
    in_chans: int | None
    first_conv_shape: tuple[int, ...] = ()


def classifier_of(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the classifier: timm's `get_classifier()` when it is a Linear or a convolution, else the
    last Linear, else the last 1x1 convolution (ReXNet-lite's head)."""
    modules = list(model.named_modules())
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        found = next((name for name, m in modules if m is head), None)
        if found is not None:
            return found, head
    linears = [(name, m) for name, m in modules if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [(name, m) for name, m in modules if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if convs:
        return convs[-1]
    raise CheckpointError(f"{type(model).__name__} has no Linear or 1x1-convolution classifier to read a class count "
                          f"from")


def classes_of(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def model_head(model: nn.Module) -> Head:
    """The classifier and first convolution of `model` (built on the meta device is enough)."""
    name, head = classifier_of(model)
    in_features = head.in_features if isinstance(head, nn.Linear) else head.in_channels
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    return Head(f"{name}.weight", classes_of(head), in_features,
                f"{first[0]}.weight" if first else None, first[1].in_channels if first else None,
                tuple(first[1].weight.shape) if first else ())


def checkpoint_classes(head: Head, sd: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of the checkpoint's classifier: the tensor under the model's classifier key (timm's layout),
    else (upstream layouts name it otherwise) the last 2-D or 1x1 weight whose input width is the classifier's.
    None when neither is found: the strict load then names what does not match."""
    own = sd.get(head.classifier)
    if isinstance(own, torch.Tensor) and own.ndim in (2, 4):
        return int(own.shape[0])
    found = None
    for key, value in sd.items():
        if (key.endswith("weight") and isinstance(value, torch.Tensor) and
                (value.ndim == 2 or (value.ndim == 4 and value.shape[2:] == (1, 1))) and
                value.shape[1] == head.in_features):
            found = int(value.shape[0])
    return found


def checkpoint_in_chans(head: Head, sd: Mapping[str, torch.Tensor]) -> int | None:
    """The input channels of the checkpoint's first convolution: under the model's key, else the first 4-D weight
    with the same output channels and kernel as the model's first convolution; None when neither is found."""
    if head.first_conv is None:
        return None
    own = sd.get(head.first_conv)
    if isinstance(own, torch.Tensor) and own.ndim == 4:
        return int(own.shape[1])
    out_chs, _, *kernel = head.first_conv_shape
    for value in sd.values():
        if isinstance(value, torch.Tensor) and value.ndim == 4:
            return int(value.shape[1]) if value.shape[0] == out_chs and list(value.shape[2:]) == kernel else None
    return None


def strict_load(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) with one readable error listing every missing, unexpected or
    mis-shaped entry. Missing `num_batches_tracked` counters are allowed: eval mode never reads them."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in sd if k in own and sd[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))
    check_finite(sd, what)
    model.load_state_dict({k: v for k, v in sd.items()}, strict=False)


def check_finite(sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse weights holding NaN or infinity: the user's checkpoint is damaged (or its training diverged), and left
    in, they surface much later as a rewrite or parity failure that looks like ours."""
    bad = []
    for key, tensor in sd.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{key} ({count} of {tensor.numel()} values)")
    if bad:
        shown = ", ".join(bad[:6]) + (f", ... ({len(bad)} tensors in all)" if len(bad) > 6 else "")
        raise CheckpointError(f"{what} holds NaN or infinite weights: {shown}; the checkpoint is damaged or its "
                              f"training diverged: export a finite checkpoint (an earlier epoch, or the EMA weights "
                              f"with --ema)")


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    A fresh BN has mean 0, variance 1, weight 1 and bias 0, under which a wrong fold can still look right;
    random-weight exports and tests use these instead so that every rewrite is really exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                if m.weight is not None:
                    m.weight.copy_(m.weight.sign().where(m.weight != 0, torch.ones(n)) *
                                   (torch.rand(n, generator=gen) * 0.5 + 0.75) * m.weight.abs().clamp(min=0.1))
                    m.bias.add_((torch.rand(n, generator=gen) - 0.5) * 0.2)
