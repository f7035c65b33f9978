"""The module :func:`fcnkit.convert.convolutionalize` returns: a classifier's scores for every full window."""

from __future__ import annotations

import torch
from torch import fx, nn

from fcnkit.errors import InputError
from fcnkit.layers import is_traced


class ConvolutionalizedNet(nn.Module):
    """A convolutionalized classifier: (N, C, H, W) -> (N, K, H', W'), one score vector per full window.

    ``H' = (H - window[0]) // stride[0] + 1`` (0 when the image is smaller than a window); grid cell (i, j) holds
    the scores of the window whose top-left pixel is ``(stride[0] * i, stride[1] * j)``. ``body`` is the rewritten
    torch.fx graph; where a pooling layer drops a window's last rows it computes one more position than there are
    full windows, and ``crop`` (measured by :func:`convolutionalize`) says to cut it off. ``exact_window`` is the
    crop size on which the scores equal the classifier's: ``window`` itself, larger where a ``ceil_mode`` pooling
    has a partial window at ``window``, None where padding makes them equal only approximately.
    """

    output_kind = "grid"

    def __init__(self, body: fx.GraphModule, *, window: tuple[int, int], stride: tuple[int, int],
                 num_classes: int, in_channels: int, crop: bool,
                 exact_window: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.body = body
        self.window = tuple(window)
        self.stride = tuple(stride)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.crop = crop
        self.exact_window = tuple(exact_window) if exact_window is not None else None

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') score grid of an H x W image: the number of full windows along each axis."""
        return tuple(max(0, (size - win) // s + 1) for size, win, s in  # type: ignore[return-value]
                     zip((height, width), self.window, self.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checks are skipped while torch.fx traces the model (fcnkit's geometry analyzer reads the graph).
        if not is_traced(x):
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise InputError(f"convolutionalized classifier input: expected a (N, {self.in_channels}, H, W) "
                                 f"tensor, got shape {tuple(x.shape)}; add the batch axis or fix the channel count.")
            rows, cols = self.grid_size(x.shape[2], x.shape[3])
            if rows == 0 or cols == 0:  # no full window fits: an empty grid, as the sliding classifier gives
                dtype = next(self.parameters()).dtype
                return torch.zeros(x.shape[0], self.num_classes, rows, cols, dtype=dtype, device=x.device)
        y = self.body(x)  # (N, K, H', W'), for some networks with extra positions at the bottom/right
        if not self.crop:
            return y
        rows = (x.shape[2] - self.window[0]) // self.stride[0] + 1
        cols = (x.shape[3] - self.window[1]) // self.stride[1] + 1
        return y[:, :, :rows, :cols]

    def extra_repr(self) -> str:
        text = f"window={self.window}, stride={self.stride}, num_classes={self.num_classes}, crop={self.crop}"
        return text if self.exact_window == self.window else f"{text}, exact_window={self.exact_window}"
