"""Exact inference on images of any size: the whole image at once (``predict``) or tile by tile (``predict_tiled``).

``predict_tiled`` follows DESIGN.md "Exact tiling, the rule": tiles start on multiples of the model's
``input_multiple``, read a halo of context clipped to the image, and keep only their own output, so the result
equals ``predict`` (float32 logits within 1e-4, labels identical) for every local model while memory stays bounded
by the tile. The planning lives in ``_tile_plan``, the threads and batches in ``_tile_runner``.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fcnkit.inference.plan import (
    TILE_SHARE,
    Margins,
    Tile,
    activation_bytes_per_pixel,
    choose_tile,
    default_memory_limit,
    parse_memory,
    plan_axis_tiles,
    round_up,
)
from fcnkit.inference.runner import finish, read_window, run_plan, to_model_input
from fcnkit.errors import InputError, ModelError, NotExactError, OutputError

__all__ = ["Tile", "TilePlan", "expected_channels", "plan_prediction", "plan_tiles", "predict", "predict_tiled"]

OUTPUTS = ("logits", "probs", "labels")
_GEOMETRY_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def label_dtype(num_classes: int) -> np.dtype:
    """The dtype of a label output: uint8 up to 255 classes, int32 above (the same rule everywhere)."""
    return np.dtype(np.uint8 if num_classes <= 255 else np.int32)


def predict(model: torch.nn.Module, image: Any, *, output: str = "logits", device: str | torch.device | None = None
            ) -> np.ndarray:
    """Run ``model`` on the whole image at once: the reference that tiled inference must equal.

    ``image``: ``(H, W, C)`` or ``(H, W)`` array-like (numpy, memmap, zarr, lazy TIFF), uint8 or float; values go
    to the model as float32 unchanged (fcnkit models normalise themselves). The image is zero padded bottom/right to
    the model's ``input_multiple`` and the output cropped back. Returns float32 ``(H', W', K)`` for ``"logits"`` /
    ``"probs"``, or ``(H', W')`` uint8 labels (int32 above 255 classes); ``H' = ceil(H / output_stride)`` for a
    "same" model (the model's own output size when it runs unpadded).

    >>> predict(model, np.zeros((67, 93, 3), np.uint8), output="labels").shape  # doctest: +SKIP
    (67, 93)
    """
    _check_output(output)
    height, width, channels = _image_shape(image)
    with _prepared(model, device) as (net, dev):
        geometry = _geometry(net, channels)
        out_h, out_w = _output_size(net, geometry, height, width, channels, dev)
        d = geometry.input_multiple
        data = np.zeros((1, round_up(height, d), round_up(width, d), channels), np.float32)
        data[0, :height, :width] = read_window(image, (0, height), (0, width))
        param = next(net.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.inference_mode():
            y = finish(net(to_model_input(data, dev, dtype)), output)
        return y[0, :out_h, :out_w].cpu().numpy()


def predict_tiled(model: torch.nn.Module, image: Any, *, tile: int | tuple[int, int] | None = None,
                  halo: int | None = None, output: str = "logits", out: Any = None, batch_size: int | None = None,
                  device: str | torch.device | None = None, memory_limit: int | str | None = None,
                  progress: bool = False, allow_inexact: bool = False) -> Any:
    """Tile by tile inference that equals ``predict`` exactly, with memory bounded by the tile.

    - ``tile``: side (or ``(height, width)``) of a tile in input pixels, rounded **up** to a multiple of the model's
      ``input_multiple`` (and output stride). ``None`` picks it from ``memory_limit`` and a measured activation cost
      per pixel: the tiling with the least total work (halo included) whose tiles fit.
    - ``halo``: context pixels each side (rounded up to ``input_multiple``); ``None`` uses ``fcnkit.analyze``. A
      halo smaller than the analysed one warns: the result is then not exact.
    - ``output``: ``"logits"`` / ``"probs"`` -> float32 ``(H', W', K)``; ``"labels"`` -> ``(H', W')`` uint8 (int32
      above 255 classes), reduced per tile so that only labels are stored.
    - ``out``: an array-like of that shape to write into (numpy, memmap, zarr, ``fcnkit.io`` Output); returned.
      When it has ``done``/``mark_done`` (a resume journal), tiles already done are skipped and each tile is
      marked after its data is written.
    - ``batch_size``: tiles of one shape stacked per forward pass; ``None``: 1 on CPU, on CUDA as many as the
      budget allows (≤ 32). ``memory_limit``: bytes or ``"4GB"``; default half of available memory. It budgets
      the tiles' activations, on top of the process itself (Python, torch and the model: a few hundred MB).
    - A non-local model (``Geometry.local`` false) raises ``NotExactError`` naming the layer, unless
      ``allow_inexact=True`` (then a warning).
    """
    _check_output(output)
    with _prepared(model, device) as (net, dev):
        plan = _plan(net, dev, image, tile=tile, halo=halo, output=output, batch_size=batch_size,
                     memory_limit=memory_limit, allow_inexact=allow_inexact)
        if out is None:
            out = np.empty(plan.shape, plan.dtype)
        elif tuple(out.shape) != plan.shape:
            raise OutputError(f"out has shape {tuple(out.shape)}; expected {plan.shape} for output={output!r} on "
                              f"this image; create it with that shape.")
        journal = hasattr(out, "done") and hasattr(out, "mark_done")
        done = set(out.done) if journal else set()
        todo = [t for t in plan.tiles if t.id not in done]
        run_plan(net, image, todo, output=output, out=out, batch_size=plan.batch_size, device=dev, journal=journal,
                 progress=progress, stride=plan.stride, skipped=len(plan.tiles) - len(todo))
    return out


@dataclass(frozen=True)
class TilePlan:
    """What ``predict_tiled`` will do: ``tiles`` of ``tile`` input pixels, ``batch_size`` per forward pass, into an
    output of ``shape``/``dtype``. ``overhead`` = computed input pixels / image pixels (the halo's extra work, ~
    (T+2h)²/T² for interior tiles); ``halo`` the context in input pixels."""

    tiles: list[Tile]
    tile: tuple[int, int]
    batch_size: int
    shape: tuple[int, ...]
    dtype: np.dtype
    stride: int
    halo: int
    overhead: float


def plan_prediction(model: torch.nn.Module, image: Any, *, tile: int | tuple[int, int] | None = None,
                    halo: int | None = None, output: str = "logits", batch_size: int | None = None,
                    device: str | torch.device | None = None, memory_limit: int | str | None = None,
                    allow_inexact: bool = False) -> TilePlan:
    """The plan ``predict_tiled`` with the same arguments would follow, without running it.

    Lets a caller size its output (chunks aligned to ``plan.tile``) and report the halo overhead; passing
    ``tile=plan.tile, batch_size=plan.batch_size`` to ``predict_tiled`` then reproduces it exactly.
    """
    _check_output(output)
    with _prepared(model, device) as (net, dev):
        return _plan(net, dev, image, tile=tile, halo=halo, output=output, batch_size=batch_size,
                     memory_limit=memory_limit, allow_inexact=allow_inexact)


def _plan(net: torch.nn.Module, dev: torch.device, image: Any, *, tile: Any, halo: int | None, output: str,
          batch_size: int | None, memory_limit: Any, allow_inexact: bool) -> TilePlan:
    height, width, channels = _image_shape(image)
    geometry = _geometry(net, channels)
    _check_local(geometry, allow_inexact)
    out_h, out_w = _output_size(net, geometry, height, width, channels, dev)
    margins = _margins(geometry, halo)
    if batch_size is not None:
        _check_positive("batch_size", batch_size)
    budget = parse_memory(memory_limit) if memory_limit is not None else None
    if tile is None or batch_size is None:
        budget = budget or default_memory_limit(dev)
        per_pixel = _bytes_per_pixel(net, channels, geometry, dev, output)
    if tile is None:
        tile_hw = choose_tile((height, width), (out_h, out_w), margins, bytes_per_pixel=per_pixel, budget=budget,
                              batch_size=batch_size or 1)
    else:
        tile_hw = _tile_size(tile, margins.multiple)
    tiles = plan_axis_tiles((height, width), (out_h, out_w), margins, tile_hw)
    if batch_size is None:
        largest = max(t.padded[0] * t.padded[1] for t in tiles)
        fits = int(budget * TILE_SHARE // (largest * per_pixel))
        # On CPU one tile per pass measured fastest (oneDNN already uses every core); a GPU wants batches.
        batch_size = max(1, min(fits, 32, len(tiles))) if dev.type == "cuda" else 1
    k = _num_classes(net, channels, geometry, dev)
    shape = (out_h, out_w) if output == "labels" else (out_h, out_w, k)
    dtype = label_dtype(k) if output == "labels" else np.dtype(np.float32)
    computed = sum(t.padded[0] * t.padded[1] for t in tiles)
    return TilePlan(tiles=tiles, tile=tile_hw, batch_size=batch_size, shape=shape, dtype=dtype,
                    stride=margins.stride, halo=max(margins.lo, margins.hi), overhead=computed / (height * width))


def plan_tiles(shape: tuple[int, ...], geometry: Any, tile: int | tuple[int, int], *,
               halo: int | None = None) -> list[Tile]:
    """The tiles that ``predict_tiled`` computes for an image of ``shape`` ``(H, W[, C])``, row-major.

    ``geometry`` is a ``fcnkit.Geometry``; ``tile`` in input pixels (rounded up to ``input_multiple``). The output
    size is the geometry's (``ceil(H/s)`` for "same", ``(H − RF)//s + 1`` for "valid").
    """
    margins = _margins(geometry, halo)
    height, width = int(shape[0]), int(shape[1])
    return plan_axis_tiles((height, width), _formula_size(geometry, height, width), margins,
                           _tile_size(tile, margins.multiple))


# ---- helpers -------------------------------------------------------------------------------------------------------


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise InputError(f"output={output!r} is not known; expected one of {', '.join(OUTPUTS)}.")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name}={value!r} must be a positive integer; pass e.g. {name}=512.")


def _image_shape(image: Any) -> tuple[int, int, int]:
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) not in (2, 3):
        found = "no shape" if shape is None else f"shape {tuple(shape)}"
        raise InputError(f"image has {found}; expected an (H, W, C) or (H, W) array; for an NCHW tensor pass "
                         f"x[0].permute(1, 2, 0).numpy().")
    kind = np.dtype(getattr(image, "dtype", np.float32)).kind
    if kind not in "uif":
        raise InputError(f"image has dtype {image.dtype}; expected uint8, an integer or a float type; convert it "
                         f"with .astype(np.float32).")
    height, width = int(shape[0]), int(shape[1])
    channels = int(shape[2]) if len(shape) == 3 else 1
    if min(height, width, channels) == 0:
        raise InputError(f"image has shape {tuple(shape)}; expected at least one pixel and one channel.")
    return height, width, channels


@contextmanager
def _prepared(model: torch.nn.Module, device: str | torch.device | None) -> Iterator[tuple[torch.nn.Module,
                                                                                        torch.device]]:
    """The model in eval mode on ``device`` (a copy when it lives elsewhere); the caller's training flags restored."""
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model is a {type(model).__name__}; expected a torch.nn.Module.")
    param = next(model.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    target = here if device is None else torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={str(device)!r} but CUDA is not available here; pass device='cpu'.")
    net = model if target == here or (target.type == here.type and target.index is None) else \
        copy.deepcopy(model).to(target)  # leave the caller's model where it is
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        yield net, target
    finally:
        for m, mode in modes.items():
            m.training = mode


def _geometry(model: torch.nn.Module, channels: int) -> Any:
    from fcnkit.geometry.analysis import analyze

    _check_channels(model, channels)
    cached = _GEOMETRY_CACHE.setdefault(model, {})
    if channels not in cached:
        with torch.random.fork_rng(devices=[]):  # a probing analysis must not move the caller's random stream
            cached[channels] = analyze(model, in_channels=channels)
    return cached[channels]


def expected_channels(model: torch.nn.Module) -> int | None:
    """The number of input channels ``model`` takes: its fcnkit spec's ``in_channels``, else its first Conv2d's;
    ``None`` when neither says."""
    spec = getattr(model, "fcnkit_spec", None)
    expected = spec.get("in_channels") if isinstance(spec, dict) else None
    if expected is None:
        first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        expected = first.in_channels if first is not None else None
    return expected


def _check_channels(model: torch.nn.Module, channels: int) -> None:
    expected = expected_channels(model)
    if expected is not None and expected != channels:
        raise InputError(f"image has {channels} channel(s) but the model expects {expected}; convert the image "
                         f"(e.g. grey -> RGB with np.repeat) or use a model built with in_channels={channels}.")


def _check_local(geometry: Any, allow_inexact: bool) -> None:
    if geometry.local:
        return
    reason = geometry.nonlocal_reason or "a layer of the model depends on the whole image"
    if not allow_inexact:
        raise NotExactError(f"tiled inference cannot equal the whole-image run: {reason}; use fcnkit.predict on the "
                            f"whole image, or pass allow_inexact=True to accept approximate tiles.")
    warnings.warn(f"tiled output will differ from the whole-image run: {reason}.", stacklevel=3)


def _margins(geometry: Any, halo: int | None) -> Margins:
    """``lo``/``hi`` context of the rule (see ``_tile_plan``), multiples of D, and D itself (a multiple of s)."""
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
                          f"equal the whole-image run.", stacklevel=3)
        lo = hi = int(halo)
    return Margins(multiple=d, stride=s, lo=round_up(lo, d), hi=round_up(hi, d))


def _tile_size(tile: int | tuple[int, int], multiple: int) -> tuple[int, int]:
    """``tile`` as ``(height, width)``, each rounded up to a multiple of D (documented in ``predict_tiled``)."""
    sides = (tile, tile) if not isinstance(tile, (tuple, list)) else tuple(tile)
    if len(sides) != 2:
        raise InputError(f"tile={tile!r} must be an int or a (height, width) pair.")
    for side in sides:
        _check_positive("tile", side)
    return round_up(int(sides[0]), multiple), round_up(int(sides[1]), multiple)


def _formula_size(geometry: Any, height: int, width: int) -> tuple[int, int]:
    s = int(geometry.output_stride)
    if geometry.padding == "valid":
        rf = int(geometry.receptive_field)
        if min(height, width) < rf:
            raise InputError(f"image is {height}×{width} but this valid-padding model needs at least {rf}×{rf} "
                             f"pixels (its receptive field); use a larger image.")
        return (height - rf) // s + 1, (width - rf) // s + 1
    return -(-height // s), -(-width // s)


def _output_size(model: torch.nn.Module, geometry: Any, height: int, width: int, channels: int,
                 device: torch.device) -> tuple[int, int]:
    """The model's own output size on the unpadded image, found by a shape-only (fake tensor) run.

    A model that cannot run unpadded (a foreign one that does not pad itself) gets the geometry's formula.
    """
    formula = _formula_size(geometry, height, width)
    try:
        y = _fake_forward(model, (1, channels, height, width), device)
    except Exception:  # any failure of the unpadded run: the padded run is what predict does anyway
        return formula
    if not isinstance(y, torch.Tensor) or y.ndim != 4:
        finish(y, "logits")  # raises the ModelError that explains it
    return int(y.shape[2]), int(y.shape[3])


def _fake_forward(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> Any:
    """The model's output for an input of ``shape``, computed on fake tensors: shapes only, no memory, no time."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a failing fake op logs a traceback; the caller handles the failure
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            return model(torch.empty(shape, device=device))
    finally:
        log.setLevel(level)


def _num_classes(model: torch.nn.Module, channels: int, geometry: Any, device: torch.device) -> int:
    spec = getattr(model, "fcnkit_spec", None)
    if isinstance(spec, dict) and isinstance(spec.get("num_classes"), int):
        return spec["num_classes"]
    side = round_up(max(64, int(geometry.receptive_field)), int(geometry.input_multiple))
    y = _fake_forward(model, (1, channels, side, side), device)
    if y.ndim != 4:
        raise ModelError(f"the model returned shape {tuple(y.shape)}; expected a dense (N, K, H, W) output.")
    return int(y.shape[1])


def _bytes_per_pixel(model: torch.nn.Module, channels: int, geometry: Any, device: torch.device,
                     output: str) -> float:
    """Bytes one padded input pixel costs in flight: activations (measured), plus input and output copies."""
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    activations = activation_bytes_per_pixel(model, channels, geometry.input_multiple, device, memory_format)
    k = _num_classes(model, channels, geometry, device)
    s2 = int(geometry.output_stride) ** 2
    out_bytes = (1 if output == "labels" else 4 * k) / s2
    # the reader's batch and the queue hold ~3 input copies; the result is copied to CPU and queued for the writer
    return activations + 3 * 4 * channels + 3 * out_bytes
