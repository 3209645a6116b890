"""The host CPU as /proc/cpuinfo describes it: model name and the instruction-set flags that decide which INT8
kernels are exact and fast. Never raises: elsewhere (macOS, Windows) the flags are simply empty."""

from __future__ import annotations

import platform
from pathlib import Path

# An 8-bit multiply-accumulate instruction (VNNI, AMX) sums u8*s8 products in 32 bits. Without one, x86 INT8
# kernels use vpmaddubsw, which adds pairs of u8*s8 products into a saturating 16-bit lane: 8-bit weights overflow.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # CPU flags of bf16 arithmetic


def cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


def int8_weights_overflow(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU without an 8-bit dot-product instruction, where 8-bit weights can saturate the 16-bit
    accumulators of ONNX Runtime's and OpenVINO's INT8 kernels (their documented remedy: 7-bit weights)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not any(f in flags for f in INT8_DOT_FLAGS)
