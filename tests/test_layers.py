"""Imports run one way: the CLI over the workflow (one function per command, over a Job) over the core (recipes,
rewrites, checkpoints, ONNX, parity, backends, calibration). The core never imports the workflow."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "effexport"
WORKFLOW = {"effexport.cli", "effexport.info", "effexport.job", "effexport.matrix", "effexport.merge",
            "effexport.exporter.pipeline",
            "effexport.exporter.deploy", "effexport.exporter.reference", "effexport.exporter.verify",
            "effexport.exporter.bench_recipe"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        yield name, imported


def test_the_core_never_imports_the_workflow():
    # the package's own __init__ is the Python API, a skin over the workflow like the CLI (its imports are lazy)
    offenders = {name: sorted(imported & WORKFLOW) for name, imported in _modules()
                 if name not in WORKFLOW and name != "effexport" and imported & WORKFLOW}
    assert offenders == {}


def test_the_workflow_list_names_real_modules():
    assert WORKFLOW <= {name for name, _ in _modules()}
