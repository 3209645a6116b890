"""torch.compile as the second PyTorch baseline: a real inductor compile of a tiny model, the one-line unavailable
reason when inductor finds no C++ compiler (real inductor, a compiler path that does not exist), a compiled module
that disagrees with eager, and the recompile limit. Compile times are recorded, never asserted."""

import numpy as np
import pytest
import torch
from torch import nn

from effexport.errors import MissingDependencyError
from effexport.workflow.bench import CompiledTorch

X = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _no_compiler(model):
    # inductor's own option, scoped to this compile: the compiler it searches for does not exist
    return torch.compile(model, backend="inductor", dynamic=False, options={"cpp.cxx": ("/nonexistent/g++",)})


def test_without_a_cpp_compiler_the_rows_are_unavailable_with_one_line():
    compiled = CompiledTorch(tiny(), torch.get_num_threads(), _no_compiler)
    with pytest.raises(MissingDependencyError) as first:
        compiled.open(X)
    message = str(first.value)
    assert message.startswith("torch.compile (inductor) failed: ") and "C++ compiler" in message
    assert "\n" not in message
    with pytest.raises(MissingDependencyError) as again:  # other batch sizes are not compiled again
        compiled.open(X[:1])
    assert str(again.value) == message


def test_a_real_compile_computes_what_eager_does():
    model = tiny()
    compiled = CompiledTorch(model, torch.get_num_threads())
    runner, seconds = compiled.open(X)
    assert seconds > 0 and runner.execution["compile_s"] == round(seconds, 2)
    assert runner.execution["mode"] == CompiledTorch.MODE and runner.execution["execution_precision"] == "fp32"
    assert runner.execution["max_rel_vs_eager"] <= 1e-4
    with runner, torch.inference_mode():
        np.testing.assert_allclose(runner.run(X), model(torch.from_numpy(X)).numpy(), rtol=1e-4, atol=1e-6)


def test_a_compiled_model_that_differs_from_eager_is_not_timed():
    compiled = CompiledTorch(tiny(), torch.get_num_threads(), lambda m: (lambda x: m(x) * 1.5))
    with pytest.raises(MissingDependencyError, match="differ from eager"):
        compiled.open(X)


def test_more_batch_sizes_than_torch_recompiles_are_refused():
    compiled = CompiledTorch(tiny(), torch.get_num_threads(), lambda m: m)
    with torch._dynamo.config.patch(recompile_limit=1):  # scoped: monkeypatch's undo deletes the config alias
        compiled.open(X)
        compiled.open(X)  # the same batch size again is no new shape
        with pytest.raises(MissingDependencyError, match="at most 1 shapes"):
            compiled.open(X[:1])
