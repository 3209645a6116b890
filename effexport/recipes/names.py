"""Every recipe name and alias, known without importing a family module, and the nearest names to a typo.

The family modules import torch and timm (seconds), so an unknown name is refused from this table before any of
them loads. tests/recipes/test_names.py asserts the table equals the registry's names and aliases exactly: a recipe
added to a family module without a line here fails that test.
"""

from __future__ import annotations

import difflib

RECIPE_NAMES: dict[str, tuple[str, ...]] = {  # recipe name: its aliases (timm's names for the same model)
    # rexnet.py
    "rexnet_0.9": (),
    "rexnet_1.0": ("rexnet_100",),
    "rexnet_1.3": ("rexnet_130",),
    "rexnet_1.5": ("rexnet_150",),
    "rexnet_2.0": ("rexnet_200",),
    "rexnet_3.0": ("rexnet_300",),
    # tresnet.py
    "tresnet_m": ("tresnet_m.miil_in1k",),
    "tresnet_l": ("tresnet_l.miil_in1k",),
    "tresnet_xl": ("tresnet_xl.miil_in1k",),
    "tresnet_m_448": ("tresnet_m.miil_in1k_448",),
    "tresnet_l_448": ("tresnet_l.miil_in1k_448",),
    "tresnet_xl_448": ("tresnet_xl.miil_in1k_448",),
    # efficientnet.py
    **{f"{prefix}efficientnet_b{n}": () for n in range(8) for prefix in ("", "tf_")},
    **{f"efficientnet_lite{n}": (f"tf_efficientnet_lite{n}",) for n in range(5)},
    "efficientnet_b0_small": (),
    # resnext_wsl.py
    **{f"resnext101_32x{d}d_wsl": (f"resnext101_32x{d}d.fb_wsl_ig1b_ft_in1k",) for d in (8, 16, 32)},
    "resnext101_32x48d_wsl": (),
    "fix_resnext101_32x48d_wsl": (),
    # mobile.py
    "mobilenetv3_large": ("mobilenetv3_large_100",),
    "mobilenetv3_small": ("mobilenetv3_small_100",),
    "mobilenetv2": ("mobilenetv2_100",),
    "ghostnet": ("ghostnet_100",),
    # padding_free.py
    "mobilenetv3_large_pfd": (),
    "mobilenetv3_large_cifar": (),
    "mobilenetv3_large_pfd_cifar": (),
    "ghostnet_pfd": (),
    "ghostnet_cifar": (),
    "ghostnet_pfd_cifar": (),
    "shufflenetv2": ("shufflenet_v2_x1_0",),
    "shufflenetv2_pfd": (),
    "shufflenetv2_cifar": (),
    "shufflenetv2_pfd_cifar": (),
    # mutualnet.py
    "mutualnet_mobilenet_v1": (),
    "mutualnet_mobilenet_v2": (),
    "usnet_mobilenet_v1": (),
    "usnet_mobilenet_v2": (),
    # rexnet_lite.py
    "rexnet_lite_1.0": (),
    "rexnet_lite_1.3": (),
    "rexnet_lite_1.5": (),
    "rexnet_lite_2.0": (),
}

# Characters a reader mistakes for each other (O/0, l/1/I, S/5, ...), and separators typed for each other. Case is
# folded first. m/n are here because "tresnet_n" means tresnet_m far more often than tresnet_l.
CONFUSABLE = ("o0", "l1i|", "s5", "z2", "b8", "g9q", "mn", "uv", "_-. ,")
NEAR_FREE = 0.1  # the cost of swapping two confusable characters; any other edit costs 1
CASE_COST = 0.01  # a change of case only: almost free, but an exact spelling still ranks first
PREFIX_COST = 0.5  # a name that starts with what was typed ("resnext"): near, though the rest is missing
CUTOFF = 0.5  # difflib similarity (after folding confusables) below which a name is not suggested
_CANONICAL = {c: group[0] for group in CONFUSABLE for c in group}


def known_names() -> list[str]:
    """Every name `get_recipe` resolves without the `timm:` prefix: recipe names, then aliases."""
    return [*RECIPE_NAMES, *(alias for aliases in RECIPE_NAMES.values() for alias in aliases)]


def _fold(text: str) -> str:
    return "".join(_CANONICAL.get(c, c) for c in text.casefold())


def _substitution(a: str, b: str) -> float:
    if a == b:
        return 0.0
    if a.casefold() == b.casefold():
        return CASE_COST
    return NEAR_FREE if _fold(a) == _fold(b) else 1.0


def distance(typed: str, name: str) -> float:
    """Edit distance (insert, delete, substitute, swap two neighbours) where confusable characters are near-free."""
    rows = len(typed) + 1
    cols = len(name) + 1
    d = [[float(i + j) if i == 0 or j == 0 else 0.0 for j in range(cols)] for i in range(rows)]
    for i in range(1, rows):
        for j in range(1, cols):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + _substitution(typed[i - 1], name[j - 1]))
            if i > 1 and j > 1 and typed[i - 1] == name[j - 2] and typed[i - 2] == name[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def closest(typed: str, names: list[str] | None = None, n: int = 5) -> list[str]:
    """Up to `n` names near `typed`, nearest first. Which names qualify is difflib's judgement, with confusables
    folded; the order is the distance above (to the whole name or, plus PREFIX_COST, to its start), so `rexnet_1.O`
    puts rexnet_1.0 first and "resnext" its own family."""
    names = known_names() if names is None else names
    folded = _fold(typed)
    scored = []
    for name in names:
        similarity = difflib.SequenceMatcher(None, folded, _fold(name)).ratio()
        if similarity >= CUTOFF:
            near = distance(typed, name)
            if len(name) > len(typed):
                near = min(near, distance(typed, name[:len(typed)]) + PREFIX_COST)
            scored.append((near, -similarity, name))
    return [name for *_, name in sorted(scored)[:n]]
