"""Load checkpoints safely and strictly, converting the upstream layouts users actually hold.

Safety: `.pth/.pt/.bin` files are read with `torch.load(weights_only=True)`, which refuses any pickled
object that is not a tensor or a plain container; `.safetensors` files hold tensors only.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from effexport.errors import CheckpointError
from effexport.exporter.artifacts import sha256_of

if TYPE_CHECKING:
    from effexport.recipes import Recipe

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


def read_checkpoint(path: Path) -> object:
    """Read a checkpoint file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line), None)
        if refused is None:
            raise _unreadable(path, lines[-2] if len(lines) > 1 else str(exc)) from exc
        raise CheckpointError(
            f"{path} holds pickled objects other than tensors and was refused, because loading it would run "
            f"code from the file ({refused.strip()[:160]}). Re-save only the state dict "
            f"(torch.save(model.state_dict(), ...)) or convert it to .safetensors.") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _unreadable(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


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


def load_weights(model: nn.Module, path: Path, recipe: Recipe, use_ema: bool = False) -> LoadedWeights:
    """Load `path` into `model` strictly, converting a recognised upstream layout first."""
    path = Path(path)
    sd = unwrap(read_checkpoint(path), use_ema=use_ema)
    layout = "timm"
    for candidate in recipe.layouts:
        if candidate.detect(sd):
            if candidate.refuse:
                raise CheckpointError(f"{path.name} is a {candidate.name} checkpoint: {candidate.refuse}")
            sd = candidate.convert(sd, model)
            layout = candidate.name
            break
    strict_load(model, sd, path.name)
    log.info("loaded %s (%s layout, %d tensors)", path, layout, len(sd))
    return LoadedWeights(str(path), sha256_of(path), layout, len(sd))


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
    model.load_state_dict({k: v for k, v in sd.items()}, strict=False)


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
