"""The four FCN metrics of Long et al. 2015 (§5), computed from a confusion matrix.

With ``n_ij`` the number of pixels of true class ``i`` predicted as class ``j`` and ``t_i = sum_j n_ij`` the pixels
of class ``i``:

- pixel accuracy      ``sum_i n_ii / sum_i t_i``
- mean accuracy       ``(1 / n_cl) sum_i n_ii / t_i``
- mean IU             ``(1 / n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)``
- frequency-weighted  ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

Like the paper's reference scoring code, the confusion matrix is accumulated over the whole dataset first (not
averaged per image), and ``n_cl`` counts only the classes where the ratio is defined:

- a class absent from both truth and prediction has IU ``0/0``: it is NaN in ``iu`` and left out of every mean;
- a class that is only predicted (never in the truth) has IU 0 and counts in mean IU, but its accuracy
  ``n_ii / t_i = 0/0`` is undefined, so it is left out of mean accuracy.

Example:
    >>> cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    >>> scores(cm)["mean_iu"]
    0.5
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fcnkit.errors import InputError

__all__ = ["ConfusionMeter", "confusion_matrix", "scores"]


def _flat(x: Any, name: str) -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().reshape(-1)
    array = np.asarray(x)
    if array.dtype.kind not in "iub":
        raise InputError(
            f"{name} must hold integer class indices, got dtype {array.dtype}; take the argmax of the scores first."
        )
    return array.reshape(-1)


def _first_bad(values: np.ndarray | torch.Tensor, bad: np.ndarray | torch.Tensor) -> list[int]:
    found = values[bad]
    found = found.cpu().numpy() if isinstance(found, torch.Tensor) else found
    return sorted({int(v) for v in np.unique(found)[:5]})


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Count pixels by (true class, predicted class).

    Args:
        pred: predicted labels, any shape, numpy array or torch tensor (a CUDA tensor is counted on its device).
        target: true labels, same number of elements; pixels equal to ``ignore_index`` are not counted.
        num_classes: K.
        ignore_index: the "ignore" label of ``target`` (255 by default); None counts every pixel.

    Returns:
        ``(K, K)`` int64 numpy array; row = true class, column = predicted class.

    Raises:
        InputError: sizes differ, or a counted pixel holds a value outside ``[0, K)``.
    """
    if int(num_classes) < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}; pass the number of classes K.")
    k = int(num_classes)
    p, t = _flat(pred, "pred"), _flat(target, "target")
    if p.shape[0] != t.shape[0]:
        raise InputError(
            f"pred and target must have the same number of pixels, got {tuple(np.shape(pred))} and "
            f"{tuple(np.shape(target))}; compare a prediction with the label of the same image."
        )
    torch_mode = isinstance(p, torch.Tensor) or isinstance(t, torch.Tensor)
    if torch_mode:
        p, t = torch.as_tensor(p), torch.as_tensor(t)
        t = t.to(p.device)
        p, t = p.long(), t.long()
    else:
        p, t = p.astype(np.int64), t.astype(np.int64)
    keep = t != ignore_index if ignore_index is not None else (t == t)
    p, t = p[keep], t[keep]
    for name, values in (("target", t), ("pred", p)):
        bad = (values < 0) | (values >= k)
        if bool(bad.any()):
            ignored = f" other than the ignore label {ignore_index}" if ignore_index is not None else ""
            raise InputError(
                f"{name} holds values {_first_bad(values, bad)} outside [0, {k}){ignored}; check num_classes={k} "
                f"or map those labels to {ignore_index} to ignore them."
            )
    flat = t * k + p
    if torch_mode:
        counts = torch.bincount(flat, minlength=k * k).cpu().numpy()
    else:
        counts = np.bincount(flat, minlength=k * k)
    return counts.reshape(k, k).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (and no warning)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def scores(confusion: Any) -> dict[str, Any]:
    """The four metrics of Long et al. 2015 from a ``(K, K)`` confusion matrix (rows = truth).

    Returns:
        ``{"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"}`` as floats and ``"iu"``, a list of K floats.
        A class absent from truth and prediction has IU NaN and is left out of the means; a class only predicted
        has IU 0 (it counts in mean IU) and is left out of mean accuracy, whose per-class ratio ``n_ii / t_i`` is
        undefined for it. An empty matrix (no counted pixel) gives NaN everywhere.

    Raises:
        InputError: not a square 2-D matrix of non-negative counts.
    """
    cm = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise InputError(
            f"confusion must be a square (K, K) matrix, got shape {cm.shape}; pass the output of confusion_matrix."
        )
    if cm.dtype.kind not in "iuf" or (cm < 0).any():
        raise InputError(
            "confusion must hold non-negative pixel counts, got negative or non-numeric values; "
            "pass the output of confusion_matrix."
        )
    cm = cm.astype(np.float64)
    hits = np.diag(cm)
    truth = cm.sum(axis=1)  # t_i
    predicted = cm.sum(axis=0)  # sum_j n_ji
    total = truth.sum()
    iu = _ratio(hits, truth + predicted - hits)
    present = truth > 0
    return {
        "pixel_accuracy": float(hits.sum() / total) if total > 0 else math.nan,
        "mean_accuracy": _nanmean(_ratio(hits, truth)),
        "mean_iu": _nanmean(iu),
        "fw_iu": float((truth[present] * iu[present]).sum() / total) if total > 0 else math.nan,
        "iu": [float(v) for v in iu],
    }


class ConfusionMeter:
    """A confusion matrix accumulated over a dataset, batch by batch, and summed across DDP processes.

    Example:
        >>> meter = ConfusionMeter(3)
        >>> meter.update(np.array([[0, 1]]), np.array([[0, 255]]))
        >>> int(meter.value.sum())
        1
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if int(num_classes) < 1:
            raise InputError(f"num_classes must be at least 1, got {num_classes}; pass the number of classes K.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.value = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add the pixels of one prediction/label pair (any shape, numpy or torch) to the running matrix."""
        self.value += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        self.value = np.zeros_like(self.value)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes in place when torch.distributed is initialised; a no-op otherwise."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        tensor = torch.from_numpy(self.value.copy())
        if torch.distributed.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
            tensor = tensor.cuda()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        self.value = tensor.cpu().numpy()

    def scores(self) -> dict[str, Any]:
        """``scores(self.value)``: the four metrics of the pixels seen so far."""
        return scores(self.value)
