"""What goes into and comes out of the exported graph, importable without torch (the CLI resolves it first).

`--output` picks what the graph returns: the classifier's logits (as trained), or softmax / sigmoid appended to the
graph for clients that want probabilities (sigmoid: a multi-label head, judged by label-set agreement, parity.py).
`--input` picks what the graph takes: the recipe's float input, or the decoded, resized and cropped image as uint8
bytes (NCHW or NHWC, RGB or with `--bgr` OpenCV's BGR), the scaling, mean/std and channel order folded into the
graph (graph_io.RawInput). Resizing and cropping stay with the client: `client_contract` says exactly how.

Every input effexport feeds a graph (parity, calibration, held-out photographs) is made by
inputs.preprocess_images, which normalizes timm's uint8 crop in float32; `encode` inverts that normalization and
rounds, which gives back the uint8 crop exactly (tests/exporter/test_graph_io.py checks it on the shipped
photographs), so one float pipeline serves every input kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effexport.errors import UsageError
from effexport.exporter.model_spec import Preprocess

OUTPUTS = ("logits", "softmax", "sigmoid")
INPUTS = ("float", "uint8-nchw", "uint8-nhwc")
TOP_K_RULE = "top-k"
LABEL_SET_RULE = "label-set@0.5"
LABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class GraphIO:
    """The graph's input kind and output kind (the defaults are the model as trained: float in, logits out)."""

    output: str = "logits"
    input: str = "float"
    bgr: bool = False

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise UsageError(f"--output takes one of {', '.join(OUTPUTS)}, not {self.output!r}")
        if self.input not in INPUTS:
            raise UsageError(f"--input takes one of {', '.join(INPUTS)}, not {self.input!r}")
        if self.bgr and not self.raw:
            raise UsageError("--bgr describes raw pixels: use it with --input uint8-nchw or uint8-nhwc")

    @property
    def raw(self) -> bool:
        return self.input != "float"

    @property
    def layout(self) -> str:
        return "NHWC" if self.input == "uint8-nhwc" else "NCHW"

    @property
    def rule(self) -> str:
        """The parity rule that judges this output: multi-label heads by their label sets, the others by top-k."""
        return LABEL_SET_RULE if self.output == "sigmoid" else TOP_K_RULE

    @property
    def output_name(self) -> str:
        return "logits" if self.output == "logits" else "probabilities"

    @property
    def tags(self) -> list[str]:
        """Folder-name parts ([] for the defaults): onnx-b1-sigmoid, onnx-dynamic-u8nhwc-bgr."""
        parts = [] if self.output == "logits" else [self.output]
        if self.raw:
            parts.append("u8" + self.layout.lower())
        if self.bgr:
            parts.append("bgr")
        return parts

    def input_shape(self, pp: Preprocess) -> tuple[int, int, int]:
        h, w = pp.crop_size
        return (h, w, pp.channels) if self.layout == "NHWC" else (pp.channels, h, w)

    def encode(self, inputs: np.ndarray, pp: Preprocess) -> np.ndarray:
        """Float NCHW inputs of the recipe's preprocessing -> what this graph takes (unchanged for float input)."""
        if not self.raw:
            return inputs
        mean = np.asarray(pp.mean, dtype=np.float32).reshape(1, pp.channels, 1, 1)
        std = np.asarray(pp.std, dtype=np.float32).reshape(1, pp.channels, 1, 1)
        pixels = np.clip(np.rint((inputs * std + mean) * np.float32(255)), 0, 255).astype(np.uint8)
        if self.bgr:
            pixels = pixels[:, ::-1]
        if self.layout == "NHWC":
            pixels = pixels.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(pixels)

    def client_contract(self, pp: Preprocess) -> dict:
        """What a client must send, for the ONNX metadata (`effexport.input`), the report and the README."""
        h, w = pp.crop_size
        c = pp.channels
        if not self.raw:
            return {"dtype": "float32", "layout": "NCHW", "shape": ["batch", c, h, w],
                    "channel_order": "RGB" if c == 3 else "grey",
                    "client": f"resize the short side to {pp.resize} ({pp.interpolation}), center-crop {h}x{w}, "
                              f"scale to [0, 1], normalize (x - mean) / std with mean {list(pp.mean)} and std "
                              f"{list(pp.std)}, NCHW float32"}
        order = "grey" if c == 1 else "BGR" if self.bgr else "RGB"
        shape = ["batch", h, w, c] if self.layout == "NHWC" else ["batch", c, h, w]
        return {"dtype": "uint8", "layout": self.layout, "shape": shape, "channel_order": order,
                "client": f"decode to {order} uint8, resize the short side to {pp.resize} ({pp.interpolation}), "
                          f"center-crop {h}x{w}, send the bytes as {self.layout} uint8; no scaling or normalization "
                          f"(the graph divides by 255 and normalizes with mean {list(pp.mean)}, std {list(pp.std)})"}

    def output_contract(self) -> dict:
        meaning = {"logits": "raw class scores (apply softmax or sigmoid yourself)",
                   "softmax": "class probabilities (softmax over the classes, summing to 1)",
                   "sigmoid": f"independent per-class probabilities (multi-label); a label is predicted at "
                              f">= {LABEL_THRESHOLD}"}[self.output]
        return {"name": self.output_name, "kind": self.output, "meaning": meaning, "parity_rule": self.rule}
