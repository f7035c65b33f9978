"""The slow reference: run a classifier on every full window of an image, and compare an FCN with it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fcnkit.errors import InputError


def as_batch(image: object, *, name: str = "image") -> torch.Tensor:
    """A (N, C, H, W) tensor as it is, or an (H, W, C) / (H, W) array as a (1, C, H, W) float32 tensor.

    Array values are kept (0-255 stays 0-255): fcnkit models normalise their input themselves.
    """
    if isinstance(image, torch.Tensor):
        if image.dim() != 4:
            raise InputError(f"{name}: expected a (N, C, H, W) tensor or an (H, W, C) array, got a tensor of shape "
                             f"{tuple(image.shape)}; add the batch axis with image[None].")
        return image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise InputError(f"{name}: expected an (H, W, C) or (H, W) array, got shape {array.shape}; pass one image "
                         f"with channels last.")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise InputError(f"{name}: expected a positive integer or a pair (H, W) of them, got {value!r}.")
    return pair  # type: ignore[return-value]


@torch.no_grad()
def sliding_window(classifier: nn.Module, image: object, *, window: int | Sequence[int],
                   stride: int | Sequence[int]) -> torch.Tensor:
    """Run ``classifier`` ((N, C, h, w) -> (N, K)) on every full window of ``image``: the slow reference.

    ``image`` is a (N, C, H, W) tensor or one (H, W, C) / (H, W) array (values unchanged, as float32). Returns the
    (N, K, H', W') grid with ``H' = (H - h) // stride + 1``: cell (i, j) holds the scores of the window whose
    top-left pixel is ``(stride * i, stride * j)``. One classifier call per grid row (a batch of W' windows);
    the classifier's train/eval mode is left as it is. ``window=fcn.exact_window`` gives the crops a
    convolutionalized classifier equals exactly when a ``ceil_mode`` pooling made them larger than its window.
    """
    (h, w), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    x = as_batch(image)
    n, c, height, width = x.shape
    if height < h or width < w:
        raise InputError(f"image: expected at least one full {h}x{w} window, got a {height}x{width} image; use a "
                         f"larger image or a smaller window.")
    rows, cols = (height - h) // sh + 1, (width - w) // sw + 1
    out = []
    for i in range(rows):
        strip = x[:, :, i * sh:i * sh + h, :(cols - 1) * sw + w]
        windows = strip.unfold(3, w, sw)  # (N, C, h, W', w)
        windows = windows.permute(0, 3, 1, 2, 4).reshape(n * cols, c, h, w)
        out.append(classifier(windows).reshape(n, cols, -1))  # (N, W', K)
    return torch.stack(out, dim=1).permute(0, 3, 1, 2)  # (N, K, H', W')


class Verification(float):
    """``verify``'s answer: max |FCN − classifier| over the full windows of an image, used as a float.

    ``window`` is the classifier window compared (the training size). ``exact_window`` is the crop size on which the
    FCN is exact (``fcn.exact_window``: larger than ``window`` after a ``ceil_mode`` pooling with a partial window,
    None where padding makes the FCN approximate) and ``exact_difference`` the max difference measured on crops of
    that size (None when it equals ``window``, is unknown, or does not fit in the image).
    """

    window: tuple[int, int]
    exact_window: tuple[int, int] | None
    exact_difference: float | None

    def __new__(cls, difference: float, window: tuple[int, int], exact_window: tuple[int, int] | None,
                exact_difference: float | None) -> Verification:
        self = super().__new__(cls, difference)
        self.window, self.exact_window, self.exact_difference = window, exact_window, exact_difference
        return self

    def summary(self) -> str:
        """One sentence: the difference at the training window, and where the FCN is exact."""
        text = f"max |FCN - classifier| = {float(self):.3g} on {self.window[0]}x{self.window[1]} windows"
        if self.exact_difference is not None:
            e = self.exact_window
            text += f"; {self.exact_difference:.3g} on {e[0]}x{e[1]} crops, where the FCN is exact"  # type: ignore
        elif self.exact_window is None:
            text += "; padding makes the FCN approximate near window borders"
        return text


def verify(classifier: nn.Module, fcn: nn.Module, image: object) -> Verification:
    """max |FCN - classifier| over all full windows of ``image`` (both run in eval mode, restored afterwards).

    The window is ``fcn.window`` (or the classifier's ``input_size``) and the stride ``fcn.stride``, else the one
    that the FCN's output size implies. ``image`` as in :func:`sliding_window`. The result is a float that also
    carries the window size at which the FCN is exact and the difference measured there (:class:`Verification`).
    """
    x = as_batch(image)
    window = getattr(fcn, "window", None) or getattr(classifier, "input_size", None)
    if window is None:
        raise InputError("verify(fcn=...): expected an FCN from convolutionalize (it knows its window) or a "
                         "classifier with `input_size`, found neither; convert with fcnkit.convert.convolutionalize.")
    window = _pair(tuple(window), "window")
    exact = getattr(fcn, "exact_window", window)
    modes = classifier.training, fcn.training
    classifier.eval(), fcn.eval()
    try:
        with torch.no_grad():
            grid = fcn(x)  # (N, K, H', W')
        stride = getattr(fcn, "stride", None) or tuple(
            (size - win) // (n - 1) if n > 1 else win for size, win, n in zip(x.shape[2:], window, grid.shape[2:]))
        expected = sliding_window(classifier, x, window=window, stride=stride)
        at_exact = None
        if exact is not None and tuple(exact) != window and all(s >= e for s, e in zip(x.shape[2:], exact)):
            at_exact = sliding_window(classifier, x, window=exact, stride=stride)
    finally:
        classifier.train(modes[0]), fcn.train(modes[1])
    if grid.shape != expected.shape:
        raise InputError(f"verify: the FCN gives a {tuple(grid.shape)} grid but the image has {tuple(expected.shape)} "
                         f"full windows at stride {stride}; pass the FCN that convolutionalize made from this "
                         f"classifier.")
    exact_difference = None
    if at_exact is not None:  # the crops of the exact size that fit: the grid's top-left cells
        rows, cols = at_exact.shape[2:]
        exact_difference = (grid[:, :, :rows, :cols].float() - at_exact.float()).abs().max().item()
    difference = (grid.float() - expected.float()).abs().max().item()
    return Verification(difference, window, tuple(exact) if exact is not None else None, exact_difference)
