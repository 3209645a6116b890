"""The graph's ends as torch modules, applied after the deploy rewrites and before export (io_spec says why).

RawInput keeps the normalization as one Mul and one Add of per-channel constants instead of folding it into the
first convolution. Folding the scale into the weights is exact, but the mean is not: the convolution pads with
zeros in normalized space, which is the mean colour in pixel space, so a folded bias is wrong on every border
pixel of the first layer. Measured on timm's mobilenetv3_large_100 (random BN statistics, 96 px, the 9 shipped
photographs, torch CPU): folding both into conv_stem gave a max logit error of 7.1e-2 of the logit range and top-1
agreement of 89 %, against 6.9e-7 and 100 % for Mul/Add; the FP32 parity policy (1e-4) rejects the fold. The two
element-wise ops cost little next to the first convolution, and runtimes may fuse them.
"""

from __future__ import annotations

import torch
from torch import nn

from effexport.exporter.io_spec import GraphIO
from effexport.exporter.model_spec import Preprocess


class OutputHead(nn.Module):
    """The model followed by softmax or sigmoid over the classes."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        if kind not in ("softmax", "sigmoid"):
            raise ValueError(f"OutputHead takes softmax or sigmoid, not {kind!r}")
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return torch.softmax(logits, dim=1) if self.kind == "softmax" else torch.sigmoid(logits)


class RawInput(nn.Module):
    """uint8 pixels (NCHW or NHWC, RGB or BGR) -> the float NCHW RGB input the model was trained on."""

    def __init__(self, model: nn.Module, layout: str, bgr: bool, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"RawInput takes NCHW or NHWC, not {layout!r}")
        self.model, self.layout, self.bgr = model, layout, bgr
        std_t = torch.tensor(std, dtype=torch.float32).reshape(1, len(std), 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, len(mean), 1, 1)
        # (x / 255 - mean) / std as x * scale + shift: one Mul and one Add
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        if self.bgr:
            x = torch.flip(x, dims=(1,))
        return self.model(x * self.scale + self.shift)


def wrap(model: nn.Module, io: GraphIO, pp: Preprocess) -> nn.Module:
    """`model` with the output head and the raw-pixel input `io` asks for (itself, unchanged, for the defaults)."""
    if io.output != "logits":
        model = OutputHead(model, io.output)
    if io.raw:
        model = RawInput(model, io.layout, io.bgr, pp.mean, pp.std)
    return model.eval()
