"""Generic deploy rewrites: each takes a model and a sample input and returns the deploy-ready model.

Every rewrite replaces children (never patches classes) and is parity-checked by `apply_rewrites` right
after it runs, so a rewrite that changes the function is an error, not a silent drift.
Family-specific rewrites (ReXNet's shortcut, TResNet's SpaceToDepth) live with their recipes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from effexport.errors import ExportError

log = logging.getLogger(__name__)

Rewrite = Callable[[nn.Module, torch.Tensor], nn.Module]


# ---------------------------------------------------------------------------------------------- helpers


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the child at dotted path `name`, keeping its train/eval mode."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    module.train(getattr(parent, child).training)  # a new module must not run in training mode
    setattr(parent, child, module)


def _class_name(module: nn.Module) -> str:
    return type(module).__name__


@dataclass(frozen=True)
class RewriteRecord:
    name: str
    changed: int
    max_abs_diff: float
    rel_diff: float


def _run(model: nn.Module, sample: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(sample).float()


def apply_rewrites(
    model: nn.Module,
    rewrites: tuple[Rewrite, ...],
    sample: torch.Tensor,
    rel_tolerance: float = 1e-4,
) -> tuple[nn.Module, list[RewriteRecord]]:
    """Apply each rewrite in turn; after each, compare outputs with the model before it on `sample`.

    The tolerance is relative to the logit range, the same measure the ONNX parity check uses.
    """
    records = []
    model.eval()
    before = _run(model, sample)
    for rewrite in rewrites:
        types_before = {n: type(m) for n, m in model.named_modules()}
        model = rewrite(model, sample)
        model.eval()
        after = _run(model, sample)
        if after.shape != before.shape:
            raise ExportError(f"rewrite {rewrite.__name__} changed the output shape {tuple(before.shape)} -> "
                              f"{tuple(after.shape)}")
        max_abs = (after - before).abs().max().item()
        span = (before.max() - before.min()).item() or 1.0
        rel = max_abs / span
        types_after = {n: type(m) for n, m in model.named_modules()}
        changed = sum(types_before.get(n) is not t for n, t in types_after.items())
        log.info("rewrite %s: rel diff %.2e", rewrite.__name__, rel)
        if not rel <= rel_tolerance:  # also catches NaN
            raise ExportError(f"rewrite {rewrite.__name__} changed the model's outputs: max abs diff {max_abs:.3e}, "
                              f"{rel:.3e} of the logit range (tolerance {rel_tolerance:.0e}). This is a bug in the "
                              f"rewrite for this architecture; please report it with the recipe name.")
        records.append(RewriteRecord(rewrite.__name__, changed, max_abs, rel))
        before = after
    return model, records


# ---------------------------------------------------------------------------------------------- BatchNorm


class ChannelAffine(nn.Module):
    """A BatchNorm in eval mode with no convolution before it: y = x * scale + shift per channel."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _bn_replacement(bn: nn.Module) -> nn.Module:
    """What stays of a BN once its affine transform is folded away: timm's BatchNormAct2d keeps its act."""
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, (nn.Identity, nn.Dropout))]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> tuple[list[tuple[str, str]], list[str]]:
    """Find (conv, bn) pairs where the BN's input is exactly the conv's output tensor.

    Found by running the model once with hooks rather than by matching module names, so it works for
    any layout (Sequential, ConvNormAct, SE blocks, heads) without knowing the family.
    """
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # hold outputs so their ids are not reused during the pass
    pairs: list[tuple[str, str]] = []
    lone: list[str] = []
    hooks = []

    def conv_hook(mod, _inp, out):
        keep.append(out)
        produced[id(out)] = names[mod]

    def bn_hook(mod, inp):
        src = produced.get(id(inp[0]))
        (pairs.append((src, names[mod])) if src is not None else lone.append(names[mod]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(bn_hook))
    try:
        _run(model, sample)
    finally:
        for h in hooks:
            h.remove()
    # A conv whose output feeds two BNs (or a BN run twice) cannot be folded safely.
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    pairs = [(c, b) for c, b in pairs if convs.count(c) == 1 and bns.count(b) == 1]
    return pairs, sorted(set(lone))


def fold_batchnorm(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Fold every BatchNorm into the convolution that feeds it; a BN with no conv before it becomes a
    per-channel affine (Mul + Add), so no BatchNormalization node reaches the exported graph."""
    pairs, lone = _conv_bn_pairs(model, sample)
    for conv_name, bn_name in pairs:
        conv: nn.Conv2d = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        scale, shift = _bn_scale_shift(bn)
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        set_submodule(model, bn_name, _bn_replacement(bn))
    for bn_name in lone:
        bn = model.get_submodule(bn_name)
        scale, shift = _bn_scale_shift(bn)
        affine = ChannelAffine(scale.float(), shift.float())
        rest = _bn_replacement(bn)
        set_submodule(model, bn_name, affine if isinstance(rest, nn.Identity) else nn.Sequential(affine, rest))
    log.info("folded %d BatchNorm layers into convolutions, %d into per-channel affines", len(pairs), len(lone))
    return model


# ---------------------------------------------------------------------------------------------- inplace-ABN


def _is_inplace_abn(module: nn.Module) -> bool:
    # The inplace_abn package (needs CUDA to build) is matched by its interface, so checkpoints trained
    # with it convert even where the package itself cannot be installed.
    return _class_name(module) in {"ABN", "InPlaceABN", "InPlaceABNSync"} and hasattr(module, "activation")


def _abn_activation(module: nn.Module) -> nn.Module:
    kind = module.activation
    if kind == "leaky_relu":
        return nn.LeakyReLU(module.activation_param)
    if kind == "elu":
        return nn.ELU(module.activation_param)
    if kind == "relu":
        return nn.ReLU()
    if kind == "identity":
        return nn.Identity()
    raise ExportError(f"inplace-ABN activation {kind!r} is not supported")


def iabn_to_bn(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Replace inplace-ABN layers with BatchNorm2d + their activation (folded later by fold_batchnorm).

    InPlaceABN scales by |weight| + eps at run time; the equivalent BatchNorm weight is stored directly.
    """
    for name, module in list(model.named_modules()):
        if not _is_inplace_abn(module):
            continue
        bn = nn.BatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            bn.weight.copy_(module.weight.abs() + module.eps)
            bn.bias.copy_(module.bias)
            bn.running_mean.copy_(module.running_mean)
            bn.running_var.copy_(module.running_var)
        act = _abn_activation(module)
        set_submodule(model, name, nn.Sequential(bn, act) if not isinstance(act, nn.Identity) else bn)
    return model


# ---------------------------------------------------------------------------------------------- op swaps

_ACTIVATION_SWAPS: dict[str, Callable[[], nn.Module]] = {
    # timm memory-efficient / jit / custom activations
    "Swish": nn.SiLU,
    "SwishMe": nn.SiLU,
    "SwishAutoFn": nn.SiLU,
    "SwishJit": nn.SiLU,
    "MemoryEfficientSwish": nn.SiLU,  # efficientnet_pytorch
    "HardSwish": nn.Hardswish,
    "HardSwishMe": nn.Hardswish,
    "HardSwishJit": nn.Hardswish,
    "HardSigmoid": nn.Hardsigmoid,
    "HardSigmoidMe": nn.Hardsigmoid,
    "HardSigmoidJit": nn.Hardsigmoid,
    "Mish": nn.Mish,
    "MishMe": nn.Mish,
    "Sigmoid": nn.Sigmoid,
}


def swap_activations(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Replace training-time (memory-efficient, JIT, autograd.Function) activations with torch's own,
    which every exporter maps to standard ONNX ops."""
    for name, module in list(model.named_modules()):
        make = _ACTIVATION_SWAPS.get(_class_name(module))
        if make is not None and type(module).__module__.split(".")[0] != "torch":
            set_submodule(model, name, make())
    return model


def remove_dropout(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Drop Dropout/DropPath/DropBlock modules: identities in eval mode, noise nodes in some exporters."""
    dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    for name, module in list(model.named_modules()):
        if name and (isinstance(module, dropouts) or _class_name(module) in {"DropPath", "DropBlock2d"}):
            set_submodule(model, name, nn.Identity())
    return model


def _input_sizes(model: nn.Module, sample: torch.Tensor, want: Callable[[nn.Module], bool]) -> dict[str, tuple]:
    names = {m: n for n, m in model.named_modules()}
    sizes: dict[str, tuple] = {}

    def record(mod, inp) -> None:  # a pre-hook that returned a value would replace the input
        sizes.setdefault(names[mod], tuple(inp[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if want(m)]
    try:
        _run(model, sample)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _same_pads(size: tuple[int, int], kernel, stride, dilation) -> tuple[int, int, int, int]:
    from timm.layers.padding import get_same_padding  # the library's own rule, so both sides agree

    k, s, d = (nn.modules.utils._pair(v) for v in (kernel, stride, dilation))
    ph = get_same_padding(size[0], k[0], s[0], d[0])
    pw = get_same_padding(size[1], k[1], s[1], d[1])
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def static_same_padding(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Turn TF-"SAME" layers that pad from the input shape at run time into static padding for the export
    size, so the graph has no Shape/Gather arithmetic. Symmetric padding goes into the layer itself."""
    same = {"Conv2dSame", "MaxPool2dSame", "AvgPool2dSame"}
    sizes = _input_sizes(model, sample, lambda m: _class_name(m) in same)
    for name, size in sizes.items():
        m = model.get_submodule(name)
        kind = _class_name(m)
        dilation = getattr(m, "dilation", 1) if kind != "AvgPool2dSame" else 1
        left, right, top, bottom = _same_pads(size, m.kernel_size, m.stride, dilation)
        symmetric = left == right and top == bottom
        if kind == "Conv2dSame":
            new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                            padding=(top, left) if symmetric else 0, dilation=m.dilation, groups=m.groups,
                            bias=m.bias is not None)
            new.load_state_dict(m.state_dict())
            pad_value = 0.0
        elif kind == "MaxPool2dSame":
            new = nn.MaxPool2d(m.kernel_size, m.stride, padding=(top, left) if symmetric else 0,
                               dilation=m.dilation, ceil_mode=m.ceil_mode)
            pad_value = float("-inf")
        else:
            # timm pads zeros explicitly, so the zeros count in the average whatever count_include_pad says.
            new = nn.AvgPool2d(m.kernel_size, m.stride, padding=0, ceil_mode=m.ceil_mode,
                               count_include_pad=m.count_include_pad)
            symmetric = symmetric and left == 0 and top == 0
            pad_value = 0.0
        if not symmetric:
            new = nn.Sequential(nn.ConstantPad2d((left, right, top, bottom), pad_value), new)
        set_submodule(model, name, new)
    return model


GENERIC_REWRITES: tuple[Rewrite, ...] = (remove_dropout, swap_activations, static_same_padding, iabn_to_bn,
                                          fold_batchnorm)


def modules_of(model: nn.Module, class_names: set[str]) -> Iterator[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if _class_name(m) in class_names)


def pad_channels(x: torch.Tensor, extra: int) -> torch.Tensor:
    """Zero-pad dim 1 of an NCHW tensor by `extra` channels at the end: one ONNX Pad node.

    `extra` must be a Python int fixed when the module is built: computed from `x.shape` it is traced as
    shape arithmetic (a Slice with step -1 that onnxslim 0.1.98 was seen to constant-fold wrongly).
    """
    return F.pad(x, (0, 0, 0, 0, 0, extra))
