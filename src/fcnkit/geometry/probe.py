"""Empirical geometry: what a model's outputs depend on, measured with probe images on an eval-mode CPU copy.

Used by :func:`fcnkit.analyze` where the fx graph cannot be read, and by the tests to check the analysis. The probe
pixels are NaN rather than large numbers: a NaN survives every convolution, max-pool and up-sampling that reads it,
however small the weights along the way (a ±1e4 pixel at the edge of a deep network's receptive field reaches the
output through a product of many small weights and can round away even in float64), so the measurement is exactly
"which input pixels the network reads".
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from fcnkit.errors import ModelError

MAX_SIZE = 1024  # largest probe image side
MAX_SHIFT = 96  # largest period tried when measuring the input multiple


class NoSpatialOutput(ModelError):
    """The model's output has no (H, W) axes."""


def cpu_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` on the CPU (the caller's model is left as it is)."""
    return copy.deepcopy(model).cpu().eval()


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as exc:  # any failure of the user's model on a probe image is reported as one sentence
        raise ModelError(f"analyze: the model raised {type(exc).__name__} ({exc}) on a probe input of shape "
                         f"{tuple(x.shape)}; it must accept (N, C, H, W) images of any size for fcnkit to measure "
                         f"its geometry.") from exc
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NoSpatialOutput(f"an output of shape {shape}")
    return out


def _image(batch: int, channels: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, channels, h, w, generator=g).mul_(255).expand(batch, -1, -1, -1).clone()


def measure_stride(net: nn.Module, in_channels: int) -> tuple[int, str]:
    """Output stride from the output heights of two inputs 64 rows apart, and ``"same"``/``"valid"`` padding."""
    h1 = _run(net, _image(1, in_channels, 128, 64)).shape[-2]
    h2 = _run(net, _image(1, in_channels, 192, 64)).shape[-2]
    if h2 <= h1 or 64 % (h2 - h1):
        raise ModelError(f"analyze: expected the output height to grow with the input height, got {h1} rows for "
                         f"128 input rows and {h2} for 192; fcnkit analyzes models whose output follows the input size.")
    stride = 64 // (h2 - h1)
    return stride, "valid" if h1 * stride < 128 - (stride - 1) else "same"


def radius_of(net: nn.Module, in_channels: int, max_size: int = MAX_SIZE, size: int | None = None) -> int | None:
    """:func:`probe_radius` on a prepared copy: grows the probe image (from 64, or only ``size``) until it fits."""
    reach = reach_of(net, in_channels, max_size=max_size, size=size)
    return None if reach is None else max(reach)


def reach_of(net: nn.Module, in_channels: int, *, stride: int | None = None, max_size: int = MAX_SIZE,
             size: int | None = None) -> tuple[int, int] | None:
    """How far before and after its own block of input pixels an output pixel reads, ``(before, after)``, the
    larger of rows and columns; ``None`` where a ``max_size`` image is not enough (see :func:`probe_radius`).

    A "same" model reads about as far each way; a "valid" one reads only after its block (output pixel j of
    unpadded convolutions and pools at stride s sees input s*j onwards), so its receptive field is s + before + after,
    not s + 2*max(before, after). ``stride``: the measured output stride (else estimated from the probe's size).
    """
    reaches = []
    for axis in (2, 3):
        side = size or 64
        while (reach := _reach_at(net, in_channels, side, axis, stride)) is None and side < max_size and size is None:
            side *= 2
        if reach is None:
            return None
        reaches.append(reach)
    return max(r[0] for r in reaches), max(r[1] for r in reaches)


def probe_radius(model: nn.Module, in_channels: int = 3, *, max_size: int = MAX_SIZE,
                 size: int | None = None) -> int | None:
    """Largest distance of an input pixel that changes an output pixel, measured on an eval-mode CPU copy.

    The distance is counted (Chebyshev, in input pixels) from the block of input pixels the output pixel stands
    for (one pixel for a dense model, s×s at output stride s): a 3×3 convolution gives 1. On each side of the block
    in turn, all pixels at distance ≥ d are set to NaN at once (see the module docstring), so "the output turns NaN"
    is monotone in d and a bisection finds the largest d; the radius is the larger side (:func:`reach_of` gives
    both). Returns ``None`` when pixels as far as a ``max_size`` image allows still change it (non-local, or a
    receptive field too large to measure). ``size`` probes with that image side only (skipping the growth from 64
    when the radius is roughly known). Raises ``ModelError`` if the model fails on the probe images.

    >>> import torch.nn as nn
    >>> probe_radius(nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)))
    3
    """
    return radius_of(cpu_copy(model), in_channels, max_size, size)


def _reach_at(net: nn.Module, channels: int, size: int, axis: int, stride: int | None) -> tuple[int, int] | None:
    """``(before, after)`` along ``axis`` (2 rows, 3 columns) on a ``size`` × 32 image with NaN lines across the thin
    side; ``None`` when the reach on either side meets the image's edge."""
    shape = (size, 32) if axis == 2 else (32, size)
    base = _image(1, channels, *shape)
    pos = torch.arange(shape[axis - 2])
    batch = base.expand(2, -1, -1, -1).clone()
    batch[1] = math.nan  # one forward gives the reference and "distance >= 0"
    ref, all_nan = _run(net, batch).split(1)
    if ref.isnan().any():
        raise ModelError("analyze: the model returns NaN for a finite probe image; fix the model's weights first.")
    n = ref.shape[axis]
    stride = stride or max(1, round(size / n))
    centre = n // 2
    start, end = centre * stride, centre * stride + stride - 1  # input block of the centre output pixel
    pick = [slice(None)] * 4
    pick[axis], pick[5 - axis] = centre, ref.shape[5 - axis] // 2
    if not bool(all_nan[tuple(pick)].isnan().any()):
        raise ModelError("analyze: the model's output does not change when its whole input does; fcnkit analyzes "
                         "networks whose output is computed from the image.")
    reach = []
    for dist, far in ((start - pos, start), (pos - end, size - 1 - end)):  # before the block, after it
        def changed(d: int, dist: torch.Tensor = dist) -> bool:
            probe = base.clone()
            index: list = [0, slice(None), slice(None), slice(None)]
            index[axis] = dist >= d
            probe[tuple(index)] = math.nan
            return bool(_run(net, probe)[tuple(pick)].isnan().any())

        if far < 0 or changed(far):  # NaN as far as the image's edge still reaches it: the image is too small
            return None
        lo, hi = 0, far  # changed(lo) (distance 0 is the block's own edge pixel) and not changed(hi)
        while hi - lo > 1:  # bisection: fewest probe images in all
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if changed(mid) else (lo, mid)
        reach.append(lo)
    return reach[0], reach[1]


def measure_multiple(net: nn.Module, channels: int, stride: int, radius: int) -> int | None:
    """The input multiple D: the period of the output footprint of one NaN input pixel as that pixel moves.

    Pooling grids make the footprint (first and last output row that turns NaN) a step function of the pixel's
    position that repeats, shifted by t/stride, exactly when the position moves by a multiple t of D. Measured along
    rows and along columns on thin images; ``None`` if no period up to ``MAX_SHIFT`` fits.
    """
    margin = radius + stride + MAX_SHIFT  # footprints stay clear of the borders and the bottom/right padding
    length, thin = 2 * margin + 2 * MAX_SHIFT, max(64, 4 * stride)  # a NaN line across the thin side
    periods = []
    for axis in (2, 3):
        shape = (1, channels, length, thin) if axis == 2 else (1, channels, thin, length)
        first, last = [], []
        period = None
        for start in range(0, 2 * MAX_SHIFT, 32):  # stop as soon as a period is seen over a full extra period
            batch = _image(1, channels, shape[2], shape[3]).expand(32, -1, -1, -1).clone()
            for i in range(32):
                index = [slice(None)] * 4
                index[0], index[axis] = i, margin + start + i
                batch[tuple(index)] = math.nan
            hit = _run(net, batch).isnan().any(dim=1).any(dim=2 if axis == 2 else 1)  # (32, output length)
            rows = torch.arange(hit.shape[1]).expand_as(hit)
            first += rows.masked_fill(~hit, hit.shape[1]).amin(dim=1).tolist()
            last += rows.masked_fill(~hit, -1).amax(dim=1).tolist()
            n = len(first)
            period = next((t for t in range(stride, min(MAX_SHIFT, n // 2) + 1, stride)
                           if all(first[p + t] - first[p] == t // stride and last[p + t] - last[p] == t // stride
                                  for p in range(n - t))), None)
            if period is not None:
                break
        if period is None:
            return None
        periods.append(period)
    return math.lcm(*periods)
