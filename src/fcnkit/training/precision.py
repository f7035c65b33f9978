"""Mixed precision for training: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling; the weights, the optimizer state and the
loss stay fp32 (autocast only runs the convolutions and matmuls in bf16). On a CPU it pays only with native bf16
instructions (AMX tiles or AVX512-BF16): there a width-0.25 U-Net training step ran ~3x faster than fp32; without
them oneDNN emulates bf16 and is slower than fp32, so ``"auto"`` keeps fp32.

>>> autocast_dtype("fp32", torch.device("cpu")) is None
True
"""

from __future__ import annotations

import torch

from fcnkit.errors import InputError
from fcnkit.hardware import native_bf16, warn_if_emulated

PRECISIONS = ("auto", "fp32", "bf16")

__all__ = ["PRECISIONS", "autocast_dtype", "native_bf16", "resolve_precision"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` becomes bf16 where :func:`native_bf16`, else fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}; pass "
                         f"--precision auto (bf16 where the hardware has it), fp32 or bf16.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    warn_if_emulated(precision, device, stacklevel=3)
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the forward pass to on ``device`` (None: plain fp32)."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None
