"""The reference every backend is compared with: the PyTorch FP32 model (as built, before any deploy rewrite) on
the parity inputs. Cached in `<out>/<recipe>/reference.npz`, keyed by the verified ONNX's fingerprint and the
image folder, so that `openvino`, `trt`, `verify` and `bench` on one recipe build the PyTorch model once."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effexport.exporter.artifacts import recipe_dir, write_bytes
from effexport.exporter.inputs import image_files, parity_inputs
from effexport.exporter.pipeline import OnnxResult, Progress, WeightsSpec, build_model, run_torch
from effexport.recipes import Recipe

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.npz"


@dataclass
class Reference:
    inputs: np.ndarray
    outputs: np.ndarray
    description: str


def images_key(images: Path | None) -> str:
    """Changes when the folder's images change (names, sizes, modification times)."""
    if images is None:
        return "builtin"
    digest = hashlib.sha256()
    for path in image_files(images):
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"{Path(images).resolve()}:{digest.hexdigest()[:16]}"


def reference_for(recipe: Recipe, weights: WeightsSpec, img_size: int | None, onnx_result: OnnxResult,
                  images: Path | None, out: Path, progress: Progress | None = None) -> Reference:
    """PyTorch FP32 outputs on the parity inputs, computed once per (model, images) and cached."""
    pp = recipe.preprocess.at(img_size) if img_size else recipe.preprocess
    return cached_reference(recipe, weights, onnx_result, out, REFERENCE_FILE, images_key(images),
                            lambda: parity_inputs(pp, images_dir=images), progress)


def cached_reference(recipe: Recipe, weights: WeightsSpec, onnx_result: OnnxResult, out: Path, file_name: str,
                     inputs_key: str, make_inputs: Callable[[], tuple[np.ndarray, str]],
                     progress: Progress | None = None) -> Reference:
    """PyTorch FP32 outputs on the inputs `make_inputs` returns (with their description), cached in
    `<out>/<recipe>/<file_name>` under the verified ONNX's fingerprint and `inputs_key`."""
    say = progress or (lambda _msg: None)
    path = recipe_dir(out, recipe.name) / file_name
    key = f"{onnx_result.report.get('fingerprint')}|{inputs_key}"
    cached = _load(path, key)
    if cached is not None:
        return cached
    inputs, described = make_inputs()
    say(f"running the PyTorch FP32 reference on {len(inputs)} inputs")
    model, _ = build_model(recipe, weights)
    reference = Reference(inputs, run_torch(model, inputs), described)
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), inputs=reference.inputs, outputs=reference.outputs,
             description=np.array(described))
    write_bytes(path, buffer.getvalue())
    return reference


def _load(path: Path, key: str) -> Reference | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return Reference(data["inputs"], data["outputs"], str(data["description"]))
    except (OSError, KeyError, ValueError):
        return None
