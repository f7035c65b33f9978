"""Shift-and-stitch (Long et al. 2015, section 3.2): a convolutionalized classifier's scores at a finer step.

A convolutionalized classifier scores one window every ``stride`` pixels. Running it on the image shifted by every
offset ``(dy, dx)`` below the stride, and interleaving the grids, scores the windows in between as well: the
output is as dense as sliding the classifier one pixel at a time, and exactly equal to it, for ``(stride / step)^2``
passes instead of one. A window's score then sits at its own centre, so a heat map's peak can land on the pixel
where a digit is best centred rather than on the nearest cell of a coarse grid.

>>> dense = shift_and_stitch(fcn, image)  # doctest: +SKIP
>>> dense.shape[-2:] == (h - fcn.window[0] + 1, w - fcn.window[1] + 1)  # doctest: +SKIP
True
"""

from __future__ import annotations

import torch
from torch import nn

from fcnkit.convert.reference import as_batch
from fcnkit.errors import InputError

__all__ = ["shift_and_stitch"]


@torch.no_grad()
def shift_and_stitch(fcn: nn.Module, image: object, *, step: int = 1) -> torch.Tensor:
    """Scores of every full window whose top-left corner lies on a ``step``-pixel grid: (N, K, H', W').

    ``fcn`` is a convolutionalized classifier (``window`` and ``stride`` attributes, as
    :func:`fcnkit.convolutionalize` returns); ``image`` a (N, C, H, W) tensor or one (H, W, C) / (H, W) array.
    ``H' = (H - window) // step + 1``; cell (i, j) holds the scores of the window at ``(step * i, step * j)``.
    ``step`` must divide the FCN's stride; ``step`` equal to the stride is a single ordinary pass.
    """
    window, stride = getattr(fcn, "window", None), getattr(fcn, "stride", None)
    if window is None or stride is None:
        raise InputError(f"shift_and_stitch: expected a convolutionalized classifier (with window and stride), got "
                         f"a {type(fcn).__name__}; pass fcnkit.convolutionalize(classifier, input_size=...).")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1 or any(s % step for s in stride):
        raise InputError(f"shift_and_stitch: step must be a positive integer dividing the stride {tuple(stride)}, "
                         f"got {step!r}; pass step=1 for every window.")
    x = as_batch(image)
    height, width = x.shape[-2:]
    if height < window[0] or width < window[1]:
        raise InputError(f"image: expected at least one full {window[0]}x{window[1]} window, got a "
                         f"{height}x{width} image.")
    rows, cols = (height - window[0]) // step + 1, (width - window[1]) // step + 1
    (sy, sx) = (s // step for s in stride)  # passes along each axis
    out = None
    for a in range(sy):
        for b in range(sx):
            grid = fcn(x[:, :, a * step:, b * step:])  # (N, K, rows_a, cols_b): windows at (a*step + stride*i, ...)
            if out is None:
                out = grid.new_empty(grid.shape[0], grid.shape[1], rows, cols)
            out[:, :, a::sy, b::sx] = grid[:, :, :len(range(a, rows, sy)), :len(range(b, cols, sx))]
    return out
