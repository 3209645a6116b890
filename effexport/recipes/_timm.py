"""Helpers shared by the recipes whose models timm builds."""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache, partial
from typing import Any
from urllib.parse import urlparse

from effexport.errors import MissingDependencyError, UsageError
from effexport.recipes import CheckpointLayout, KeepFloat, Preprocess, Recipe, register

log = logging.getLogger(__name__)


def build_timm(timm_name: str, pretrained: bool, num_classes: int | None = None, *,
               model_kwargs: dict[str, Any] | None = None, pretrained_tag: str | None = None,
               in_chans: int | None = None):
    """Build `timm_name` in eval mode, with `num_classes` outputs (None: timm's default) over `in_chans` input
    channels (None: 3); with `pretrained`, ask timm for its weights (needs the network)."""
    import timm

    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    name = f"{timm_name}.{pretrained_tag}" if pretrained and pretrained_tag else timm_name
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    if not _weights_cached(name) and not _hub_reachable():
        # Without this, the hub client retries for about a minute before giving up.
        raise _offline(name, OSError("the Hugging Face Hub is unreachable and the weights are not cached"))
    try:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    except RuntimeError as exc:
        if "No pretrained weights" in str(exc):
            raise UsageError(f"timm has no pretrained weights for {name}: pass --weights PATH") from exc
        raise _offline(name, exc) from exc
    except (OSError, ValueError, ImportError) as exc:  # connection, hub cache miss, missing hub client
        raise _offline(name, exc) from exc


def _weights_cached(name: str) -> bool:
    import timm.models
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return False
    return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline(name: str, exc: Exception) -> MissingDependencyError:
    return MissingDependencyError(
        f"could not fetch timm's pretrained weights for {name} ({type(exc).__name__}: {str(exc)[:160]}); "
        f"offline, pass a local checkpoint with --weights PATH")


def timm_preprocess(timm_name: str, size: int | None = None, pretrained_tag: str | None = None) -> Preprocess:
    """Preprocessing from timm's pretrained config (mean, std, interpolation, crop fraction)."""
    import timm.models

    full = f"{timm_name}.{pretrained_tag}" if pretrained_tag else timm_name
    cfg = timm.models.get_pretrained_cfg(full) or timm.models.get_pretrained_cfg(timm_name)
    cfg_d = cfg.to_dict() if cfg is not None else {}
    native = cfg_d.get("input_size", (3, 224, 224))[-1]
    size = size or native
    return Preprocess(
        crop_size=(size, size),
        crop_pct=float(cfg_d.get("crop_pct", 0.875)),
        interpolation=str(cfg_d.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg_d.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg_d.get("std", (0.229, 0.224, 0.225))),
    )


def register_timm(
    name: str,
    timm_name: str,
    *,
    family: str,
    size: int,
    rewrites: tuple,
    paper: str,
    model_kwargs: dict[str, Any] | None = None,
    pretrained_tag: str | None = None,
    layouts: tuple[CheckpointLayout, ...] = (),
    aliases: tuple[str, ...] = (),
    heavy: bool = False,
    timm_alias: bool = True,
    notes: str = "",
    int8_keep_float: tuple[KeepFloat, ...] = (),
) -> Recipe:
    """Register a recipe built by timm; timm's own name becomes an alias when it names the same model."""
    if timm_alias and not model_kwargs and timm_name != name and timm_name not in aliases:
        aliases = (timm_name, *aliases)
    source = f"timm {timm_name}" + (f" ({', '.join(f'{k}={v}' for k, v in model_kwargs.items())})"
                                    if model_kwargs else "")
    if pretrained_tag:
        source += f", pretrained tag {pretrained_tag}"
    return register(Recipe(
        name=name,
        family=family,
        build=partial(build_timm, timm_name, model_kwargs=model_kwargs, pretrained_tag=pretrained_tag),
        preprocess=timm_preprocess(timm_name, size, pretrained_tag),
        rewrites=rewrites,
        source=source,
        paper=paper,
        aliases=aliases,
        layouts=layouts,
        pretrained_available=_has_pretrained(timm_name, pretrained_tag) and not model_kwargs,
        heavy=heavy,
        notes=notes,
        int8_keep_float=int8_keep_float,
        takes_in_chans=True,
    ))


def _has_pretrained(timm_name: str, tag: str | None) -> bool:
    names = _pretrained_names()
    if tag is not None:
        return f"{timm_name}.{tag}" in names
    return any(n.startswith(f"{timm_name}.") for n in names)


@lru_cache(maxsize=1)
def _pretrained_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_pretrained())
