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

from fcnkit.hardware import native_bf16, warn_if_emulated
from fcnkit.inference.model import PRECISIONS, resolve_precision

__all__ = ["PRECISIONS", "autocast_dtype", "native_bf16", "resolve_precision"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the forward pass to on ``device`` (None: plain fp32); warns where an explicit bf16 will
    be emulated."""
    resolved = resolve_precision(precision, device)
    warn_if_emulated(resolved, device, stacklevel=2)
    return torch.bfloat16 if resolved == "bf16" else None
