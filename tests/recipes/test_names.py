"""The static name index: it matches the registry exactly, refuses a typo without importing torch, and suggests the
nearest names first."""

import os
import subprocess
import sys

import pytest

from effexport.errors import UsageError
from effexport.recipes import check_recipe_name, get_recipe, list_recipes
from effexport.recipes.names import RECIPE_NAMES, closest, distance, known_names
from tests.conftest import REPO


def test_the_index_is_exactly_the_registered_names_and_aliases():
    assert RECIPE_NAMES == {r.name: r.aliases for r in list_recipes()}
    assert len(known_names()) == len(set(known_names()))


def test_an_unknown_name_is_refused_without_importing_torch_or_timm():
    code = ("import sys\n"
            "from effexport.errors import UsageError\n"
            "from effexport.recipes import get_recipe\n"
            "try:\n"
            "    get_recipe('nope')\n"
            "except UsageError as exc:\n"
            "    print(exc)\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unknown recipe 'nope'.")


def test_known_and_generic_names_pass_the_check():
    for name in ("rexnet_1.0", "rexnet_100", "tresnet_m.miil_in1k", "timm:resnet18"):
        check_recipe_name(name)


@pytest.mark.parametrize("typed, first", [
    ("rexnet_1.O", "rexnet_1.0"),  # letter O for zero
    ("REXNET_1.0", "rexnet_1.0"),  # case
    ("tresnet_n", "tresnet_m"),
    ("efficientnet_bO", "efficientnet_b0"),
    ("efficientnet_IiteO", "efficientnet_lite0"),  # capital I for l, O for 0
    ("rexnet-1.5", "rexnet_1.5"),  # separator
    ("mobilenetv3_lagre", "mobilenetv3_large"),  # two letters swapped
])
def test_suggestions_put_the_nearest_name_first(typed, first):
    assert closest(typed)[0] == first
    with pytest.raises(UsageError, match=rf"Closest: {first.replace('.', '[.]')}(,|\.)"):
        check_recipe_name(typed)


def test_confusable_characters_and_case_are_near_free():
    assert distance("rexnet_1.O", "rexnet_1.0") < 0.5 <= distance("rexnet_1.O", "rexnet_1.5")
    assert 0 < distance("REXNET", "rexnet") < 0.1
    assert distance("ab", "ba") == 1  # a swap is one edit


def test_a_prefix_still_finds_its_family_and_nonsense_finds_nothing():
    assert set(closest("resnext")) >= {"resnext101_32x8d_wsl", "resnext101_32x16d_wsl"}
    assert closest("qqqqqq") == []
    with pytest.raises(UsageError, match=r"^unknown recipe 'qqqqqq'\. Run 'effexport list'"):
        get_recipe("qqqqqq")
