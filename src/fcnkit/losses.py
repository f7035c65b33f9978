"""Per-pixel cross-entropy with an ignore label, as FCNs are trained (Long et al. 2015 §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fcnkit.errors import InputError

__all__ = ["pixel_cross_entropy"]


def pixel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy averaged over the pixels whose label is not ``ignore_index``.

    Args:
        logits: ``(N, K, H, W)`` dense scores, or ``(N, K)`` scores of a classifier.
        target: ``(N, H, W)`` (or ``(N,)``) integer labels in ``[0, K)`` or ``ignore_index``.
        weight: optional ``(K,)`` class weights; the mean is then weighted (divided by the summed weights of the
            valid pixels), like ``torch.nn.functional.cross_entropy``.
        ignore_index: the label that contributes nothing (255, the VOC border).

    Returns:
        A scalar tensor; 0 (with a zero gradient, never NaN) when no pixel is valid.

    Raises:
        InputError: shapes that do not pair up, or labels outside ``[0, K)`` other than ``ignore_index``.

    Example:
        >>> logits = torch.zeros(1, 2, 1, 2)
        >>> round(pixel_cross_entropy(logits, torch.tensor([[[1, 255]]])).item(), 4)
        0.6931
    """
    if logits.dim() not in (2, 4) or target.dim() != logits.dim() - 1:
        raise InputError(
            f"expected logits (N, K, H, W) with target (N, H, W), or logits (N, K) with target (N,), got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}; give one label per output pixel."
        )
    if logits.shape[:1] + logits.shape[2:] != target.shape:
        raise InputError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)} without the class "
            f"axis; resize the label to the model's output (nearest) or crop the logits."
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise InputError(f"target must hold integer labels, got dtype {target.dtype}; cast it with .long().")
    num_classes = logits.shape[1]
    target = target.long()
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        found = sorted({int(v) for v in target[bad].unique()[:5].tolist()})
        raise InputError(
            f"target holds labels {found} outside [0, {num_classes}) other than the ignore label {ignore_index}; "
            f"check the model's num_classes or map those labels to {ignore_index}."
        )
    if weight is not None and tuple(weight.shape) != (num_classes,):
        raise InputError(
            f"weight must have shape ({num_classes},), one per class, got {tuple(weight.shape)}."
        )
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if weight is None:
        count = valid.sum().to(total.dtype)
    else:
        count = weight[target[valid]].sum().to(total.dtype)
    # With no valid pixel the sum is 0 and stays so; dividing by 1 keeps both the value and the gradient finite.
    return total / torch.where(count > 0, count, torch.ones_like(count))
