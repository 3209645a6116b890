"""ONNX Runtime (CPU): the reference runtime every ONNX export is verified in."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OrtRunner:
    """Runs an ONNX model on NumPy NCHW batches, in chunks when the model's batch size is fixed."""

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def __enter__(self) -> OrtRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.session = None

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.batch is None or len(x) == self.batch:
            return self.session.run(None, {self.input_name: x})[0]
        outs = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(self.session.run(None, {self.input_name: chunk})[0][: self.batch - pad])
        return np.concatenate(outs)
