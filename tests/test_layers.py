"""Imports run downwards only, folder by folder: the folders are the layers.

From the top: the CLI, its printers and the Python API (`effexport/__init__.py`); the workflow (one module per
command over a Job); calibration; the backends; the recipes; the core stages (`exporter/`); the errors and the
version. A module may import its own floor and any floor below it, never one above, including imports inside
functions and under TYPE_CHECKING. A module the table below does not place fails the test: a newcomer decides its
floor."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "effexport"
FLOORS = (  # top to bottom: module name prefixes
    ("effexport", "effexport.cli", "effexport.printers"),
    ("effexport.workflow",),
    ("effexport.calibration",),
    ("effexport.backends",),
    ("effexport.recipes",),
    ("effexport.exporter",),
    ("effexport.errors", "effexport.version"),
)


def floor_of(module: str) -> int | None:
    """The floor of `module` (a dotted name in the package), by the longest matching prefix."""
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    return None if best is None else best[0]


def imports_of(source: str, known: set[str]) -> set[str]:
    """The package modules `source` imports: `from a import b` names a.b when that is a module, else a."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "effexport" or m.startswith("effexport.")}


def package_modules() -> dict[str, str]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path.read_text()
    return modules


def climbing(modules: dict[str, str]) -> dict[str, list[str]]:
    """Every module that imports one on a higher floor, with what it imports."""
    known = set(modules)
    out = {}
    for name, source in modules.items():
        up = sorted(m for m in imports_of(source, known) if floor_of(m) is not None and floor_of(m) < floor_of(name))
        if up:
            out[name] = up
    return out


def test_every_module_has_a_floor():
    assert [name for name in package_modules() if floor_of(name) is None] == []


def test_no_import_climbs():
    assert climbing(package_modules()) == {}


def test_the_floors_name_real_folders_and_modules():
    modules = package_modules()
    for prefixes in FLOORS:
        for prefix in prefixes:
            assert prefix in modules, prefix


@pytest.mark.parametrize(("module", "line"), [
    ("effexport.exporter.onnx", "from effexport.workflow.job import Job"),  # the core reaching the workflow
    ("effexport.backends.tensorrt", "    from effexport.calibration import qdq"),  # inside a function
    ("effexport.recipes.mutualnet", "from effexport.calibration.data import load_calibration"),
    ("effexport.calibration.int8", "from effexport import __version__"),  # the Python API from below
    ("effexport.exporter.checkpoint", "if TYPE_CHECKING:\n    from effexport.recipes import Recipe"),
])
def test_an_added_upward_import_is_caught(module, line):
    modules = package_modules()
    modules[module] += "\n\ndef _added():\n" + "\n".join("    " + s for s in line.splitlines()) + "\n"
    assert module in climbing(modules)
