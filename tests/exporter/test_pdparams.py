"""PaddlePaddle `.pdparams` weights: the restricted reader and the PaddleClas layouts, on files written as
paddle.save writes them (tests/exporter/paddle_format.py), without Paddle."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from effexport.errors import CheckpointError
from effexport.exporter.checkpoint import check_weights_path, load_weights, randomize_batchnorm, read_checkpoint
from effexport.exporter.pdparams import PADDLECLAS_EVAL, pdparams_num_classes, read_pdparams
from effexport.recipes import get_recipe
from tests.exporter.paddle_format import efficientnet_to_paddle, resnext_to_paddle, write_pdparams

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _source(name: str, seed: int = 0, num_classes: int | None = None):
    """A recipe's model with random weights and non-trivial BatchNorm statistics (a fine-tuned head when asked)."""
    if num_classes is None:
        model = get_recipe(name).build(False)
    else:
        import timm

        model = timm.create_model(name, num_classes=num_classes).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    randomize_batchnorm(model, seed)
    return model


@pytest.fixture(scope="module")
def b0():
    return _source("tf_efficientnet_b0", seed=1)


@pytest.fixture(scope="module")
def b3():
    return _source("tf_efficientnet_b3", seed=3)


def _assert_same(model, source):
    ours = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(ours[key], value), key
    with torch.no_grad():
        assert torch.equal(model(X), source(X))


def _nothing_left(tmp_path, before):
    assert set(tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------------------- PaddleClas layouts


def test_efficientnet_b0_keys_are_paddleclas_names(b0):
    """Names as PaddleClas's EfficientNet registers them: flat block numbers, a stage's first block "_blocks.i.",
    the others "block.i.", both ending in a dot."""
    params, names = efficientnet_to_paddle(b0)
    assert len(params) == 311 == len([k for k in b0.state_dict() if not k.endswith("num_batches_tracked")])
    for key in ("_ef._conv_stem._conv._conv._conv.weight", "_ef._conv_stem._conv._bn._variance",
                "_ef._blocks.0.._dcn._conv._conv._conv.weight", "_ef._blocks.0.._se._conv1._conv.bias",
                "_ef._blocks.1.._ecn._conv._bn._mean", "_ef.block.2.._pcn._conv._conv._conv.weight",
                "_ef._blocks.15.._se._conv2._conv.weight", "_conv._conv._conv.weight", "_conv._bn.weight",
                "_fc.weight", "_fc.bias"):
        assert key in params, key
    assert not any(k.startswith("_ef._blocks.2..") or "_blocks.0.._ecn" in k for k in params)
    assert params["_fc.weight"].shape == (1280, 1000)  # Linear weights are [in, out]
    assert names["_ef._blocks.1.._ecn._conv._bn._mean"] == "_blocks.1._bn0_mean"


@pytest.mark.parametrize("recipe, protocol", [("tf_efficientnet_b0", 4), ("tf_efficientnet_b0", 2),
                                              ("tf_efficientnet_b3", 4), ("efficientnet_b0_small", 2),
                                              ("efficientnet_b0_small", 4)])
def test_paddleclas_efficientnet_loads_exactly(tmp_path, request, recipe, protocol):
    source = {"tf_efficientnet_b0": lambda: request.getfixturevalue("b0"),
              "tf_efficientnet_b3": lambda: request.getfixturevalue("b3")}.get(recipe, lambda: _source(recipe))()
    path = write_pdparams(tmp_path / "model.pdparams", *efficientnet_to_paddle(source), protocol=protocol)
    model = get_recipe(recipe).build(False)
    loaded = load_weights(model, path, get_recipe(recipe).layouts)
    assert loaded.layout == "PaddleClas .pdparams"
    _assert_same(model, source)


def test_fine_tuned_efficientnet_head(tmp_path):
    """A PaddleClas model fine-tuned to 10 classes: the converter takes any head; a 1000-class model is refused
    with the file's class count."""
    source = _source("tf_efficientnet_b0", seed=5, num_classes=10)
    path = write_pdparams(tmp_path / "finetuned.pdparams", *efficientnet_to_paddle(source))
    assert pdparams_num_classes(read_checkpoint(path)) == 10
    import timm

    recipe = get_recipe("tf_efficientnet_b0")
    model = timm.create_model("tf_efficientnet_b0", num_classes=10).eval()
    load_weights(model, path, recipe.layouts)
    _assert_same(model, source)
    with pytest.raises(CheckpointError, match=r"_fc.weight \(1280, 10\).*classifier has 10 classes, the model 1000"):
        load_weights(recipe.build(False), path, recipe.layouts)


@pytest.mark.parametrize("file, recipe, match", [
    ("b3", "tf_efficientnet_b0", "the weights are PaddleClas EfficientNetB3; this recipe takes PaddleClas "
                                 "EfficientNetB0: use recipe tf_efficientnet_b3"),
    ("b0", "efficientnet_b0", "PaddleClas EfficientNetB0; this recipe has symmetric padding .* use recipe "
                              "tf_efficientnet_b0"),
    ("small", "tf_efficientnet_b0", "PaddleClas EfficientNetB0_small; .* use recipe efficientnet_b0_small"),
    ("b0", "efficientnet_b0_small", "PaddleClas EfficientNetB0; this recipe takes PaddleClas EfficientNetB0_small: "
                                    "use recipe tf_efficientnet_b0"),
])
def test_wrong_efficientnet_variant_is_refused_naming_the_file(tmp_path, request, file, recipe, match):
    source = _source("efficientnet_b0_small") if file == "small" else request.getfixturevalue(file)
    path = write_pdparams(tmp_path / "w.pdparams", *efficientnet_to_paddle(source))
    with pytest.raises(CheckpointError, match=match):
        load_weights(get_recipe(recipe).build(False), path, get_recipe(recipe).layouts)


def test_efficientnet_variant_table_matches_timm():
    """The (stem, blocks, head) signatures that tell the PaddleClas variants apart are timm's models' own."""
    from effexport.recipes.efficientnet import PADDLE_EFFICIENTNETS

    for name, ((stem, blocks, head, se), recipe) in PADDLE_EFFICIENTNETS.items():
        with torch.device("meta"):
            model = get_recipe(recipe).build(False)
        assert (model.conv_stem.out_channels, sum(len(s) for s in model.blocks), model.conv_head.out_channels) == \
               (stem, blocks, head), name
        assert any(hasattr(b.se, "conv_reduce") for s in model.blocks for b in s) == se
        assert name in PADDLECLAS_EVAL and PADDLECLAS_EVAL[name].crop == get_recipe(recipe).input_size[-1]


def test_strict_efficientnet_lists_problems_in_paddle_names(tmp_path, b0):
    params, names = efficientnet_to_paddle(b0)
    del params["_ef._blocks.1.._se._conv1._conv.bias"]
    params["_ef._blocks.1.._se._conv3._conv.weight"] = np.zeros((4, 4), np.float32)
    path = write_pdparams(tmp_path / "w.pdparams", params, names)
    with pytest.raises(CheckpointError) as info:
        load_weights(get_recipe("tf_efficientnet_b0").build(False), path, get_recipe("tf_efficientnet_b0").layouts)
    message = str(info.value)
    assert "missing: _ef._blocks.1.._se._conv1._conv.bias" in message
    assert "unexpected: _ef._blocks.1.._se._conv3._conv.weight" in message and "\n" not in message


@pytest.mark.parametrize("width", [8, 16, 32, 48])
def test_paddleclas_resnext_key_mapping(width):
    """Every WSL width, on the meta device: the converter uses every Paddle entry and fills every one of ours, and
    the file's own name table (torchvision's names) agrees with where each entry lands."""
    recipe = get_recipe(f"resnext101_32x{width}d_wsl")
    (layout,) = [lay for lay in recipe.layouts if lay.name == "PaddleClas .pdparams"]
    with torch.device("meta"):
        model = recipe.build(False)
    params, names = resnext_to_paddle(model, tensors=True)
    assert "_conv3_22._conv1._conv.weight" in params and "_conv2_0._short._conv._bn._variance" in params
    assert layout.detect(params) and layout.suffix == ".pdparams"
    out = layout.convert(params, model)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(out) == set(own) and all(out[k].shape == own[k].shape for k in own)
    assert sorted(names.values()) == sorted(own)  # PaddleClas's ParamAttr names are torchvision's keys
    if width == 8:
        with torch.device("meta"):
            wider = get_recipe("resnext101_32x16d_wsl").build(False)
        with pytest.raises(CheckpointError, match="PaddleClas ResNeXt101_32x16d_wsl; this recipe takes PaddleClas "
                                                  "ResNeXt101_32x8d_wsl: use recipe resnext101_32x16d_wsl"):
            layout.convert(resnext_to_paddle(wider, tensors=True)[0], model)


def test_paddleclas_resnext101_32x8d_loads_exactly(tmp_path):
    """The full 88M-parameter model (about 16 s here: under the 20 s that would make it `slow`)."""
    recipe = get_recipe("resnext101_32x8d_wsl")
    source = _source("resnext101_32x8d_wsl")
    path = write_pdparams(tmp_path / "ResNeXt101_32x8d_wsl_pretrained.pdparams", *resnext_to_paddle(source))
    assert pdparams_num_classes(read_checkpoint(path)) == 1000
    model = recipe.build(False)
    assert load_weights(model, path, recipe.layouts).layout == "PaddleClas .pdparams"
    _assert_same(model, source)


# ------------------------------------------------------------------------------------------------- the reader


def test_split_big_parameters_are_joined(tmp_path):
    """paddle.save cuts arrays of over 2^30 bytes into `name@@.i` parts under protocol 2; the reader joins any
    that UnpackBigParamInfor@@ lists, whatever their size and protocol."""
    rng = np.random.default_rng(0)
    params = {"big.weight": rng.standard_normal((7, 5, 3)).astype(np.float32),
              "small.bias": rng.standard_normal(4).astype(np.float32),
              "steps": np.arange(30, dtype=np.int64)}
    for protocol in (2, 4):
        path = write_pdparams(tmp_path / f"p{protocol}.pdparams", params, protocol=protocol, split_over=8)
        assert "big.weight@@.13" in pickle.loads(path.read_bytes())  # really split, into 14 parts
        read = read_pdparams(path)
        assert read.protocol == protocol and set(read.tensors) == set(params)
        for key, value in params.items():
            assert torch.equal(read.tensors[key], torch.from_numpy(value))
        assert read.tensors["big.weight"].dtype == torch.float32 and read.tensors["big.weight"].is_contiguous()
        assert read.parameter_names == {k: k for k in params}


def test_float16_and_big_endian_arrays_become_float32(tmp_path):
    params = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.arange(4, dtype=">f4")}
    read = read_pdparams(write_pdparams(tmp_path / "w.pdparams", params, protocol=2))
    assert all(t.dtype == torch.float32 for t in read.tensors.values())
    assert read.tensors["b"].tolist() == [0, 1, 2, 3]


def test_check_weights_path_lists_pdparams_in_a_folder(tmp_path):
    (tmp_path / "run").mkdir()
    write_pdparams(tmp_path / "run" / "EfficientNetB0_pretrained.pdparams", {"w": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match=r"it holds EfficientNetB0_pretrained.pdparams"):
        check_weights_path(tmp_path / "run")


def test_num_classes_needs_a_classifier():
    assert pdparams_num_classes({"_out.weight": torch.zeros(2048, 7)}) == 7
    with pytest.raises(CheckpointError, match="no PaddleClas classifier"):
        pdparams_num_classes({"conv.weight": torch.zeros(3)})


class _Payload:
    """Runs a shell command if it is ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (builtins.eval, ("1 + 1",))


def _refused(tmp_path, name: str, data: bytes, match: str) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    before = set(tmp_path.iterdir())
    with pytest.raises(CheckpointError, match=match) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    _nothing_left(tmp_path, before)
    return message


def _paddle_dict(**extra) -> dict:
    return {"w": np.ones((2, 2), np.float32), "StructuredToParameterName@@": {"w": "w_0"}, **extra}


@pytest.mark.parametrize("protocol", [2, 4])
def test_code_payload_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps(_paddle_dict(payload=_Payload(marker)), protocol=protocol)
    message = _refused(tmp_path, "evil.pdparams", data, r"refused as unsafe: .*imports or builds posix\.system")
    assert "run code" in message and not marker.exists()


@pytest.mark.parametrize("value, named", [
    (_Eval(), "builtins.eval"),
    (collections.OrderedDict(w=np.zeros(2, np.float32)), "collections.OrderedDict"),
    (np.array([1, "a", None], dtype=object), r"a numpy array of dtype object \('O8?'\)"),
    (np.zeros(2, dtype=[("x", "f4")]), r"a numpy array of dtype \|V4"),
    (np.float32(1.5), r"numpy\._?core\.multiarray\.scalar"),
])
@pytest.mark.parametrize("protocol", [2, 4])
def test_other_globals_and_dtypes_are_refused_naming_them(tmp_path, value, named, protocol):
    data = pickle.dumps(_paddle_dict(extra=value), protocol=protocol)
    _refused(tmp_path, "odd.pdparams", data, f"refused as unsafe: .*{named}")


def test_trailing_bytes_are_refused(tmp_path):
    data = pickle.dumps(_paddle_dict(), protocol=4)
    _refused(tmp_path, "joined.pdparams", data + b"\x80\x04N.", "4 bytes follow the end of the pickle")
    # inside the last protocol-4 frame, after STOP
    assert data[2:3] == pickle.FRAME
    size = struct.unpack("<Q", data[3:11])[0]
    assert len(data) == 11 + size
    padded = data[:3] + struct.pack("<Q", size + 3) + data[11:] + b"abc"
    _refused(tmp_path, "padded.pdparams", padded, "3 bytes follow the end of the pickle")


@pytest.mark.parametrize("protocol", [2, 4])
def test_truncated_file_is_refused(tmp_path, protocol):
    data = pickle.dumps(_paddle_dict(big=np.zeros(10_000, np.float32)), protocol=protocol)
    for cut in (len(data) // 2, len(data) - 1):
        _refused(tmp_path, "cut.pdparams", data[:cut], r"not a readable \.pdparams file \(corrupt, truncated")


def test_a_length_beyond_the_file_is_refused_before_it_is_read(tmp_path):
    """A 20-byte file whose BINBYTES8 claims 2^40 bytes: refused as truncated, nothing allocated for it."""
    data = b"\x80\x04" + b"\x8e" + struct.pack("<Q", 2**40) + b"abc"
    _refused(tmp_path, "bomb.pdparams", data, r"truncated\)")


@pytest.mark.parametrize("data, match", [
    (pickle.dumps(_paddle_dict(), protocol=0), "not a pickle"),
    (pickle.dumps(_paddle_dict(), protocol=5), "a pickle of protocol 5"),
    (b"PK\x03\x04 a zip", "not a pickle"),
    (pickle.dumps([np.zeros(2, np.float32)], protocol=4), "holds a list, not a dict"),
    (pickle.dumps({"w@@.0": np.zeros(2, np.float32)}, protocol=4), "does not list"),
    (pickle.dumps({"w@@.0": np.zeros(2, np.float32),
                   "UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 2), "slices": ["w@@.0", "w@@.1"]}}}),
     r"parts w@@\.1 of the split parameter w are missing"),
])
def test_other_malformed_files_are_refused(tmp_path, data, match):
    message = _refused(tmp_path, "bad.pdparams", data, match)
    assert "not a readable .pdparams file" in message and "unsafe" not in message


@pytest.mark.slow
@pytest.mark.parametrize("paddle_name, recipe, size", [("EfficientNetB0", "tf_efficientnet_b0", 224),
                                                       ("EfficientNetB0_small", "efficientnet_b0_small", 224)])
def test_matches_paddlepaddle_inference(tmp_path, paddle_name, recipe, size):
    """A file paddle.save itself wrote, from PaddleClas's own model code, against PaddlePaddle's inference."""
    paddle = pytest.importorskip("paddle")
    zoo = pytest.importorskip("ppcls.arch.backbone.model_zoo.efficientnet")
    rng = np.random.default_rng(0)
    layer = getattr(zoo, paddle_name)()
    layer.set_state_dict({k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith(("_variance", "_bn.weight"))
                              else rng.normal(0, 0.1, v.shape) if k.endswith(("_mean", "bias"))
                              else v.numpy()).astype("float32") for k, v in layer.state_dict().items()})
    layer.eval()
    path = tmp_path / f"{paddle_name}.pdparams"
    paddle.save(layer.state_dict(), str(path))
    x = rng.standard_normal((2, 3, size, size)).astype("float32")
    expected = layer(paddle.to_tensor(x)).numpy()
    model = get_recipe(recipe).build(False)
    load_weights(model, path, get_recipe(recipe).layouts)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * (expected.max() - expected.min())
