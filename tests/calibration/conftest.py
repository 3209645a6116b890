"""A tiny ONNX classifier (BN already folded) and image folders, made by the tests themselves."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from effexport.exporter.inputs import synthetic_images
from effexport.recipes import Preprocess
from effexport.workflow.export import export_recipe
from effexport.workflow.job import ExportOptions, resolve_job

PP = Preprocess((32, 32), crop_pct=1.0)
RECIPE = "mobilenetv3_small"  # the recipe whose real export the INT8 build tests share
SMALL = ExportOptions(img_size=64, dynamic_batch=True)  # INT8 starts from the dynamic-batch export


class Tiny(nn.Module):
    """stem conv -> ReLU6 -> depthwise conv -> ReLU -> pointwise conv -> pool -> linear, like the mobile nets."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.clamp(self.stem(x), 0, 6)
        x = torch.relu(self.dw(x))
        x = self.pw(x).mean((2, 3))
        return self.fc(x)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Tiny().eval()
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One verified FP32 export of RECIPE per test module; each test copies it into its own folder."""
    return export_recipe(resolve_job(RECIPE, export=SMALL, out=tmp_path_factory.mktemp("fp32"))).path


@pytest.fixture
def calib_inputs() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1, (6, 3, 32, 32)).astype(np.float32)


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n readable photos-like images in jpg/png/webp, some in a sub-folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(synthetic_images(n, size=48, seed=seed)):
        ext = ("jpg", "png", "webp")[i % 3]
        sub = folder / "sub" if i % 2 else folder
        sub.mkdir(exist_ok=True)
        path = sub / f"img{i:02d}.{ext}"
        image.save(path)
        paths.append(path)
    return paths


def write_corrupt(folder: Path) -> list[str]:
    """A garbage .jpg and a truncated .png; returns their names relative to `folder`."""
    (folder / "garbage.jpg").write_bytes(b"\x00not an image" * 20)
    good = folder / "img00.jpg"
    data = good.read_bytes() if good.exists() else b""
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + data[:40])
    return ["garbage.jpg", "truncated.png"]


def calibration_folder(folder: Path, n: int) -> Path:
    """n readable images (jpg/png/webp, some in a sub-folder) and two corrupt files: what --calib meets."""
    write_images(folder, n)
    write_corrupt(folder)
    return folder
