"""What a model implies for inference on an image, found once per call: its geometry (analysed once per model and
cached for it), the output size and class count (shape-only fake runs), the tiling margins of the exact-tiling rule,
and the memory one pixel costs in flight.

The functions take an :class:`~fcnkit.inference.model.InferenceModel`: its prepared copy runs, the caller's model
keys the caches, so nothing is re-analysed for a throwaway copy.
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch

from fcnkit.errors import InputError, ModelError, NotExactError
from fcnkit.inference.inputs import check_channels
from fcnkit.inference.model import InferenceModel
from fcnkit.inference.plan import Margins, activation_bytes_per_pixel, round_up
from fcnkit.inference.runner import finish

_GEOMETRY_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name}={value!r} must be a positive integer; pass e.g. {name}=512.")


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the duration; every module's own training flag restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def geometry_of(prepared: InferenceModel, channels: int) -> Any:
    """``fcnkit.analyze`` of the caller's model in eval mode (as inference runs it), once per model and channels."""
    from fcnkit.geometry.analysis import analyze

    check_channels(prepared.source, channels)
    cached = _GEOMETRY_CACHE.setdefault(prepared.source, {})
    if channels not in cached:
        # a probing analysis must not move the caller's random stream
        with torch.random.fork_rng(devices=[]), _evaluating(prepared.source):
            cached[channels] = analyze(prepared.source, in_channels=channels)
    return cached[channels]


def check_local(geometry: Any, allow_inexact: bool) -> None:
    if geometry.local:
        return
    reason = geometry.nonlocal_reason or "a layer of the model depends on the whole image"
    if not allow_inexact:
        raise NotExactError(f"tiled inference cannot equal the whole-image run: {reason}; use fcnkit.predict on the "
                            f"whole image, or pass allow_inexact=True to accept approximate tiles.")
    warnings.warn(f"tiled output will differ from the whole-image run: {reason}.", stacklevel=4)


def margins_for(geometry: Any, halo: int | None, *, pad_edges: bool = True) -> Margins:
    """``lo``/``hi`` context of the rule (see :mod:`~fcnkit.inference.plan`), multiples of D, and D itself (a
    multiple of the output stride); ``pad_edges`` from :func:`sizing`."""
    s = int(geometry.output_stride)
    d = math.lcm(int(geometry.input_multiple), s)
    if geometry.padding == "valid":
        lo, hi = 0, max(0, int(geometry.receptive_field) - s)
    else:
        lo = hi = int(geometry.halo)
    if halo is not None:
        if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
            raise InputError(f"halo={halo!r} must be a non-negative integer (context pixels each side); pass "
                             f"halo=None to use fcnkit.analyze(model).halo.")
        if halo < max(lo, hi):
            warnings.warn(f"halo={halo} is smaller than the {max(lo, hi)} pixels this model needs; tiles will not "
                          f"equal the whole-image run.", stacklevel=4)
        lo = hi = int(halo)
    return Margins(multiple=d, stride=s, lo=round_up(lo, d), hi=round_up(hi, d), pad_edges=pad_edges)


def tile_size(tile: int | tuple[int, int], multiple: int) -> tuple[int, int]:
    """``tile`` as ``(height, width)``, each rounded up to a multiple of D (documented in ``predict_tiled``)."""
    sides = (tile, tile) if not isinstance(tile, (tuple, list)) else tuple(tile)
    if len(sides) != 2:
        raise InputError(f"tile={tile!r} must be an int or a (height, width) pair.")
    for side in sides:
        check_positive("tile", side)
    return round_up(int(sides[0]), multiple), round_up(int(sides[1]), multiple)


def formula_size(geometry: Any, height: int, width: int) -> tuple[int, int]:
    """The output size the geometry gives: ``ceil(H/s)`` for "same", ``(H − RF)//s + 1`` for "valid"."""
    s = int(geometry.output_stride)
    if geometry.padding == "valid":
        rf = int(geometry.receptive_field)
        if min(height, width) < rf:
            raise InputError(f"image is {height}×{width} but this valid-padding model needs at least {rf}×{rf} "
                             f"pixels (its receptive field); use a larger image.")
        return (height - rf) // s + 1, (width - rf) // s + 1
    return -(-height // s), -(-width // s)


class Sizing(NamedTuple):
    """What one image size means for a model: its own output size on the unpadded image, and whether inference
    zero pads the image (and the tiles its edge clips) bottom/right to the input multiple."""

    size: tuple[int, int]
    pad_edges: bool


def sizing(prepared: InferenceModel, geometry: Any, height: int, width: int, channels: int) -> Sizing:
    """The :class:`Sizing` of an H×W image, from one shape-only (fake tensor) run at that size; a model without one
    (an ONNX model) gets one small real run at the same sizes modulo D, and one that fails that too gets the
    geometry's formula.

    A "same" model is padded, as fcnkit's own models pad themselves. A "valid" model that runs on the image as it
    is (either run succeeds) is not: padding would show its last windows zeros where the model run on the image sees
    nothing, which changes a ``ceil_mode`` pooling's partial window after a PReLU (MTCNN's P-Net: up to 0.43 in a
    logit). A valid model that needs its multiple is padded, as before.
    """
    formula = formula_size(geometry, height, width)
    valid = geometry.padding == "valid"
    try:
        y = _fake_forward(prepared, (1, channels, height, width))
    except Exception:  # no shape-only run (an ONNX model), or the size is refused: one small real run says which
        measured = _measured_size(prepared, geometry, height, width, channels)
        return Sizing(measured or formula, pad_edges=not (valid and measured is not None))
    if not isinstance(y, torch.Tensor) or y.ndim != 4:
        finish(y, "logits")  # raises the ModelError that explains it
    return Sizing((int(y.shape[2]), int(y.shape[3])), pad_edges=not valid)


def _measured_size(prepared: InferenceModel, geometry: Any, height: int, width: int,
                   channels: int) -> tuple[int, int] | None:
    """The output size on an H×W image from one real run on a small image of the same sizes modulo D: a
    translation-equivariant model's output grows by D/s rows for every D input rows, so ``size(n) = size(m) +
    (n − m)/D · D/s`` for m ≡ n (mod D) above the receptive field. This catches what the formula cannot know, e.g.
    the extra partial window of a ``ceil_mode`` pooling on an odd side. None if the model fails on it."""
    s = int(geometry.output_stride)
    d = math.lcm(int(geometry.input_multiple), s)
    if s < 1 or d < 1:  # nothing measured: no period to follow
        return None
    base = round_up(max(int(geometry.receptive_field), d), d) + d
    small = [n if n < base + d else base + (n - base) % d for n in (height, width)]
    try:
        with torch.no_grad():
            x = torch.zeros((1, channels, *small), device=prepared.device, dtype=prepared.dtype)
            y = prepared.net(x.contiguous(memory_format=prepared.memory_format))
    except Exception:  # the padded run is what predict does anyway; its own error explains more
        return None
    if not isinstance(y, torch.Tensor) or y.ndim != 4:
        return None
    return tuple(int(m) + (n - k) // d * (d // s) for m, n, k in zip(y.shape[2:], (height, width), small))


def _fake_forward(prepared: InferenceModel, shape: tuple[int, ...]) -> Any:
    """The model's output for an input of ``shape``, computed on fake tensors: shapes only, no memory, no time."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a failing fake op logs a traceback; the caller handles the failure
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.empty(shape, device=prepared.device, dtype=prepared.dtype)
            return prepared.net(x.contiguous(memory_format=prepared.memory_format))
    finally:
        log.setLevel(level)


def num_classes(prepared: InferenceModel, channels: int, geometry: Any) -> int:
    spec = getattr(prepared.source, "fcnkit_spec", None)
    if isinstance(spec, dict) and isinstance(spec.get("num_classes"), int):
        return spec["num_classes"]
    side = round_up(max(64, int(geometry.receptive_field)), int(geometry.input_multiple))
    y = _fake_forward(prepared, (1, channels, side, side))
    if y.ndim != 4:
        raise ModelError(f"the model returned shape {tuple(y.shape)}; expected a dense (N, K, H, W) output.")
    return int(y.shape[1])


def bytes_per_pixel(prepared: InferenceModel, channels: int, geometry: Any, output: str) -> float:
    """Bytes one padded input pixel costs in flight: activations (measured), plus input and output copies."""
    activations = activation_bytes_per_pixel(prepared, channels, geometry.input_multiple)
    k = num_classes(prepared, channels, geometry)
    s2 = int(geometry.output_stride) ** 2
    out_bytes = (1 if output == "labels" else 4 * k) / s2
    # the reader's batch and the queue hold ~3 input copies; the result is copied to CPU and queued for the writer
    return activations + 3 * 4 * channels + 3 * out_bytes
