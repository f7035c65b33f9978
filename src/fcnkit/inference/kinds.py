"""The kinds of output inference gives, and the dtype of a label output: defined once for every caller.

``"logits"`` and ``"probs"`` are float32 ``(H', W', K)``; ``"labels"`` are ``(H', W')`` class indices, uint8 up to
255 classes and int32 above (255 is a class index there, not "ignore": the ignore value belongs to targets only).
"""

from __future__ import annotations

import numpy as np
import torch

from fcnkit.errors import InputError

OUTPUTS = ("logits", "probs", "labels")
MAX_UINT8_CLASSES = 255


def check_output(output: str) -> None:
    """Refuse an unknown ``output`` kind, naming the valid ones."""
    if output not in OUTPUTS:
        raise InputError(f"output={output!r} is not known; expected one of {', '.join(OUTPUTS)}.")


def label_dtype(num_classes: int) -> np.dtype:
    """The numpy dtype of a label output: uint8 up to 255 classes, int32 above."""
    return np.dtype(np.uint8 if num_classes <= MAX_UINT8_CLASSES else np.int32)


def label_torch_dtype(num_classes: int) -> torch.dtype:
    """:func:`label_dtype` as a torch dtype (labels are reduced on the device before they are copied back)."""
    return torch.uint8 if num_classes <= MAX_UINT8_CLASSES else torch.int32


def output_dtype(output: str, num_classes: int) -> np.dtype:
    """The numpy dtype of ``output`` for a model with ``num_classes`` classes."""
    check_output(output)
    return label_dtype(num_classes) if output == "labels" else np.dtype(np.float32)
