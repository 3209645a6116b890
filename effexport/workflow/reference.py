"""The reference every backend is compared with: the PyTorch FP32 model (as built, before any deploy rewrite) on
the parity inputs. Cached in `reference.npz` beside the verified ONNX the backends start from, keyed by its
fingerprint and the images' contents, so that `openvino`, `trt`, `verify` and `bench` build the PyTorch model once."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effexport.exporter.artifacts import write_bytes
from effexport.exporter.graph_io import wrap
from effexport.exporter.inputs import images_key, parity_inputs
from effexport.workflow.export import OnnxResult, Progress, build_model, run_torch
from effexport.workflow.job import Job

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.npz"


@dataclass
class Reference:
    inputs: np.ndarray
    outputs: np.ndarray
    description: str


def reference_for(job: Job, onnx_result: OnnxResult, progress: Progress | None = None) -> Reference:
    """PyTorch FP32 outputs on the parity inputs, computed once per (model, images) and cached beside the export."""
    return cached_reference(job, onnx_result, onnx_result.path.parent / REFERENCE_FILE, images_key(job.images),
                            lambda: parity_inputs(job.preprocess, images_dir=job.images), progress)


def cached_reference(job: Job, onnx_result: OnnxResult, path: Path, inputs_key: str,
                     make_inputs: Callable[[], tuple[np.ndarray, str]], progress: Progress | None = None) -> Reference:
    """PyTorch FP32 outputs on the inputs `make_inputs` returns (with their description), cached in `path` under
    the verified ONNX's fingerprint and `inputs_key`."""
    say = progress or (lambda _msg: None)
    key = f"{onnx_result.report.get('fingerprint')}|{inputs_key}"
    cached = _load(path, key)
    if cached is not None:
        return cached
    inputs, described = make_inputs()
    inputs = job.export.graph_io.encode(inputs, job.preprocess)  # what the graph takes (uint8 crops for raw input)
    say(f"running the PyTorch FP32 reference on {len(inputs)} inputs")
    model, _ = build_model(job.recipe, job.weights, job.num_classes)
    reference = Reference(inputs, run_torch(wrap(model, job.export.graph_io, job.preprocess), inputs), described)
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
