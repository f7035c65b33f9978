"""What the machine computes natively, for the choices that depend on it: bf16 where it pays, fused oneDNN calls
where they accept the dtype.

>>> native_bf16(torch.device("meta"))
False
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["EMULATED_BF16", "native_bf16", "onednn_bf16", "warn_if_emulated"]

# measured on an AVX2-only AMD EPYC: a 3×3 convolution 64→64 at 256², channels_last, 113 GFLOP/s in fp32, 13 in bf16;
# a SegNet (width 0.25) training step on 8 patches of 128², bf16 autocast, 4.13 s against 0.39 s in fp32
EMULATED_BF16 = ("precision='bf16' on a CPU without native bf16 (AMX or AVX512-BF16): PyTorch emulates it, several "
                 "times slower than fp32 (on an AVX2 CPU ~9x for a 3x3 convolution, ~11x for a training step); pass "
                 "precision='auto' (fp32 here) or 'fp32' unless you want bf16's numbers.")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: CUDA's own check; on CPU AMX tiles or AVX512-BF16 (PyTorch
    emulates bf16 elsewhere, slower than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def onednn_bf16() -> bool:
    """Whether oneDNN computes bf16 convolutions on this CPU (its own check: AVX512BW/VL/DQ or AVX-NE-CONVERT at
    least). An AVX2-only CPU has none: oneDNN's fused calls refuse bf16 there ("bf16 path needs the cpu support ...")
    while a plain convolution still computes it, emulated."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def warn_if_emulated(precision: str, device: torch.device, *, stacklevel: int = 2) -> None:
    """Warn (:data:`EMULATED_BF16`) when a resolved ``precision`` of ``"bf16"`` will run on a CPU that emulates it.
    ``stacklevel`` counts from the caller of this function, as in ``warnings.warn``."""
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(EMULATED_BF16, stacklevel=stacklevel + 1)
