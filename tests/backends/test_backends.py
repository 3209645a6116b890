"""The backend table and the pieces every backend shares. Loops over BACKENDS, so a new backend is covered."""

import numpy as np
import pytest

from effexport.backends import BACKENDS, Availability, get_backend, parse_list, run_in_batches
from effexport.errors import MissingDependencyError, UsageError, require
from effexport.exporter.parity import POLICY


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_module_has_the_interface_and_a_probe(name):
    backend = BACKENDS[name]
    module = backend.load()
    for function in ("probe", "source_precision", "build", "open_runner"):
        assert callable(getattr(module, function)), f"{name} lacks {function}"
    assert set(backend.precisions) <= set(POLICY)
    found = backend.probe()
    assert isinstance(found, Availability) and found.name == name
    assert found.version if found.available else found.reason


def test_backend_extras_are_declared_in_pyproject():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for backend in BACKENDS.values():
        assert backend.extra is None or backend.extra in extras, backend.name


def test_require_names_the_pip_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'effexport\[openvino\]'"):
        require("a_package_that_is_not_there", "openvino", "the OpenVINO backend")


def test_unknown_backend_and_list_parsing():
    with pytest.raises(UsageError, match="unknown backend 'onnx'"):
        get_backend("onnx")
    assert parse_list("openvino, onnxruntime,openvino", BACKENDS, "backend") == ["openvino", "onnxruntime"]
    with pytest.raises(UsageError, match="unknown precision fp8"):
        parse_list("fp32,fp8", POLICY, "precision")


def test_run_in_batches_chunks_pads_and_drops_the_padding():
    seen = []

    def infer(x):
        seen.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)

    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    out = run_in_batches(infer, x, max_batch=3, min_batch=3)
    assert seen == [3, 3, 3] and out.shape == (7, 1)
    np.testing.assert_array_equal(out[:, 0], x.sum(axis=1))
    seen.clear()
    assert run_in_batches(infer, x, None).shape == (7, 1) and seen == [7]
    seen.clear()
    run_in_batches(infer, x[:1], max_batch=8, min_batch=2)
    assert seen == [2]
