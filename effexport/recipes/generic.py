"""Any other timm model, with the generic rewrites and no family-specific knowledge."""

from __future__ import annotations

from functools import cache, partial

from effexport.errors import UsageError
from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import GENERIC_PREFIX, Recipe
from effexport.recipes._timm import _has_pretrained, build_timm, timm_preprocess


def _default_classes(arch: str, tag: str | None) -> int:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch) or timm.models.get_pretrained_cfg(arch)
    return int(getattr(cfg, "num_classes", None) or 1000)


@cache
def generic_timm_recipe(timm_name: str) -> Recipe:
    import difflib

    import timm

    arch, _, tag = timm_name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Closest timm models: {', '.join(close)}." if close else ""
        raise UsageError(f"timm has no model {arch!r}.{hint}")
    return Recipe(
        name=f"{GENERIC_PREFIX}{timm_name}",
        family="timm (generic)",
        build=partial(build_timm, arch, pretrained_tag=tag or None),
        preprocess=timm_preprocess(arch, None, tag or None),
        rewrites=GENERIC_REWRITES,
        source=f"timm {timm_name}",
        pretrained_available=_has_pretrained(arch, tag or None),
        generic=True,
        strict_graph=False,
        num_classes=_default_classes(arch, tag or None),
        takes_in_chans=True,
        notes="no family-specific recipe exists for this model: only the generic rewrites are applied, and "
              "graph checks (no BatchNormalization/Identity/shape arithmetic) are reported, not enforced",
    )
