"""Parameter and MAC counts. MACs (multiply-accumulates) are what this field's papers call "FLOPs"."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs of one batch-1 forward pass, counted by torch's FlopCounterMode (convolutions and matmuls;
    elementwise ops and pooling are not counted, as in the papers). Runs on whatever device the model is
    on, including `meta`, where nothing is computed."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def build_on_meta(build, pretrained: bool = False) -> nn.Module:
    """Build a model without allocating or initialising weights, for counting."""
    with torch.device("meta"):
        return build(pretrained)
