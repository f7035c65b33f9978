"""Exact inference on images of any size: the whole image at once (``predict``) or tile by tile (``predict_tiled``).

``predict_tiled`` follows docs/design.md "Exact tiling, the rule": tiles start on multiples of the model's
``input_multiple``, read a halo of context clipped to the image, and keep only their own output, so the result
equals ``predict`` (float32 logits within 1e-4, labels identical) for every local model while memory stays bounded
by the tile. The model is prepared once per call (:mod:`fcnkit.inference.model`), the tiles are planned once
(:mod:`fcnkit.inference.plan`; ``plan_prediction`` returns the plan, ``predict_tiled(plan=...)`` follows it) and
run by :mod:`fcnkit.inference.runner`; the input checks and the pixel conversion are :mod:`fcnkit.inference.inputs`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fcnkit.errors import InputError, OutputError
from fcnkit.inference.inputs import check_array_like, expected_channels, model_input
from fcnkit.inference.kinds import check_output, output_dtype
from fcnkit.inference.model import InferenceModel, prepare
from fcnkit.inference.plan import (
    TILE_SHARE,
    Tile,
    choose_tile,
    default_memory_limit,
    parse_memory,
    plan_axis_tiles,
    round_up,
)
from fcnkit.inference.runner import finish, read_window, run_plan, to_model_input
from fcnkit.inference.shapes import (
    bytes_per_pixel,
    check_local,
    check_positive,
    formula_size,
    geometry_of,
    margins_for,
    num_classes,
    sizing,
    tile_size,
)

__all__ = ["Tile", "TileOverheadWarning", "TilePlan", "expected_channels", "plan_prediction", "plan_tiles", "predict",
           "predict_tiled"]

Model = torch.nn.Module | InferenceModel
# A given tile smaller than the model's halo whose halo makes more than this many times the image's pixels is worth
# a warning (--tile 16 with U-Net's halo of 112 on a 400x600 photo: 175x)
HEAVY_OVERHEAD = 25.0


class TileOverheadWarning(UserWarning):
    """A tile given by the caller is so small next to the model's halo that most of the work is the halo."""


def predict(model: Model, image: Any, *, output: str = "logits", device: str | torch.device | None = None,
            precision: str | None = None) -> np.ndarray:
    """Run ``model`` on the whole image at once: the reference that tiled inference must equal.

    ``image``: ``(H, W, C)`` or ``(H, W)`` array-like (numpy, memmap, zarr, lazy TIFF), uint8, uint16 or float,
    converted by the one pixel rule (:mod:`fcnkit.io.pixels`: grey -> RGB and alpha dropped when the model takes 3
    channels, 16-bit scaled to 0-255 for fcnkit models, other values as given; fcnkit models normalise themselves
    and take 0-255 values: a float image in [0, 1] gets a ``PixelRangeWarning``). A torch tensor is refused. The
    image is zero padded bottom/right to the model's ``input_multiple`` and the output cropped back (not for a
    "valid" model that runs on any size: it sees the image as it is, as it would run on it directly). Returns float32
    ``(H', W', K)`` for ``"logits"`` / ``"probs"``, or ``(H', W')`` uint8 labels (int32 above 255 classes);
    ``H' = ceil(H / output_stride)`` for a "same" model (the model's own output size when it runs unpadded).
    ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` (bf16 where the device computes it natively);
    outputs are float32 either way. ``model`` may be an ``InferenceModel`` from ``fcnkit.inference.prepare``.

    >>> predict(model, np.zeros((67, 93, 3), np.uint8), output="labels").shape  # doctest: +SKIP
    (67, 93)
    """
    check_output(output)
    prepared = prepare(model, device=device, precision=precision)
    image = model_input(prepared.source, image)
    height, width, channels = check_array_like(image)
    geometry = geometry_of(prepared, channels)
    (out_h, out_w), pad_edges = sizing(prepared, geometry, height, width, channels)
    d = geometry.input_multiple if pad_edges else 1
    data = np.zeros((1, round_up(height, d), round_up(width, d), channels), np.float32)
    data[0, :height, :width] = read_window(image, (0, height), (0, width))
    with torch.inference_mode():
        y = finish(prepared(to_model_input(data, prepared.device, prepared.dtype)), output)
    return y[0, :out_h, :out_w].cpu().numpy()


def predict_tiled(model: Model, image: Any, *, tile: int | tuple[int, int] | None = None,
                  halo: int | None = None, output: str = "logits", out: Any = None, batch_size: int | None = None,
                  device: str | torch.device | None = None, memory_limit: int | str | None = None,
                  progress: bool | str = False, allow_inexact: bool = False, precision: str | None = None,
                  plan: TilePlan | None = None) -> Any:
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
      budget allows (≤ 32). ``memory_limit``: bytes or ``"4GB"``; default ``plan.DEFAULT_BUDGET`` (capped by
      half of the available memory). It budgets the tiles' activations, on top of the process itself (Python,
      torch and the model: a few hundred MB).
    - ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"auto"``; see ``predict``.
    - ``plan``: a ``TilePlan`` from ``plan_prediction`` for this image and output, followed as it is (it replaces
      ``tile``, ``halo``, ``batch_size`` and ``memory_limit``, and gives the device and precision).
    - A non-local model (``Geometry.local`` false) raises ``NotExactError`` naming the layer, unless
      ``allow_inexact=True`` (then a warning).
    """
    check_output(output)
    if plan is not None:
        given = [name for name, value in (("tile", tile), ("halo", halo), ("batch_size", batch_size),
                                          ("memory_limit", memory_limit)) if value is not None]
        if given:
            raise InputError(f"plan= already fixes {', '.join(given)}; pass either plan= or {given[0]}=, not both.")
        prepared = prepare(model, device=device if device is not None else plan.device,
                           precision=precision if precision is not None else plan.precision)
        image = model_input(prepared.source, image)
        check_plan(plan, prepared, image, output)
    else:
        prepared = prepare(model, device=device, precision=precision)
        image = model_input(prepared.source, image)
        plan = _plan(prepared, image, tile=tile, halo=halo, output=output, batch_size=batch_size,
                     memory_limit=memory_limit, allow_inexact=allow_inexact)
    if out is None:
        out = np.empty(plan.shape, plan.dtype)
    elif tuple(out.shape) != plan.shape:
        raise OutputError(f"out has shape {tuple(out.shape)}; expected {plan.shape} for output={output!r} on "
                          f"this image; create it with that shape.")
    journal = hasattr(out, "done") and hasattr(out, "mark_done")
    done = set(out.done) if journal else set()
    todo = [t for t in plan.tiles if t.id not in done]
    run_plan(prepared, image, todo, output=output, out=out, batch_size=plan.batch_size, device=prepared.device,
             dtype=prepared.dtype, journal=journal, progress=progress, stride=plan.stride,
             skipped=len(plan.tiles) - len(todo))
    return out


@dataclass(frozen=True)
class TilePlan:
    """What ``predict_tiled`` will do: ``tiles`` of ``tile`` input pixels, ``batch_size`` per forward pass, into an
    output of ``shape``/``dtype``. ``overhead`` = computed input pixels / image pixels (the halo's extra work, ~
    (T+2h)²/T² for interior tiles); ``halo`` the context in input pixels. ``image_shape`` ``(H, W, C)``,
    ``output``, ``device`` and ``precision`` (resolved: fp32 or bf16) say what the plan was made for."""

    tiles: list[Tile]
    tile: tuple[int, int]
    batch_size: int
    shape: tuple[int, ...]
    dtype: np.dtype
    stride: int
    halo: int
    overhead: float
    image_shape: tuple[int, int, int]
    output: str
    device: torch.device
    precision: str

    @property
    def grid(self) -> tuple[list[int], list[int]]:
        """The output chunking the tiles make: rows of each tile row, columns of each tile column (row-major
        tiles, so the first row of tiles gives the columns)."""
        rows = [t.out[0][1] - t.out[0][0] for t in self.tiles if t.out[1][0] == 0]
        cols = [t.out[1][1] - t.out[1][0] for t in self.tiles if t.out[0][0] == 0]
        return rows, cols


def plan_prediction(model: Model, image: Any, *, tile: int | tuple[int, int] | None = None,
                    halo: int | None = None, output: str = "logits", batch_size: int | None = None,
                    device: str | torch.device | None = None, memory_limit: int | str | None = None,
                    allow_inexact: bool = False, precision: str | None = None, min_tiles: int = 1) -> TilePlan:
    """The plan ``predict_tiled`` with the same arguments would follow, without running it.

    Lets a caller size its output (chunks aligned to ``plan.tile``) and report the halo overhead; pass it on as
    ``predict_tiled(model, image, plan=plan, output=plan.output)`` (or to ``predict_dask``). ``min_tiles``: when the
    tile is chosen from memory, prefer tilings with at least this many tiles (workers of a cluster need work).
    """
    check_output(output)
    check_positive("min_tiles", min_tiles)
    prepared = prepare(model, device=device, precision=precision)
    image = model_input(prepared.source, image, check_range=False)
    return _plan(prepared, image, tile=tile, halo=halo, output=output, batch_size=batch_size,
                 memory_limit=memory_limit, allow_inexact=allow_inexact, min_tiles=min_tiles)


def _plan(prepared: InferenceModel, image: Any, *, tile: Any, halo: int | None, output: str,
          batch_size: int | None, memory_limit: Any, allow_inexact: bool, min_tiles: int = 1) -> TilePlan:
    height, width, channels = check_array_like(image)
    geometry = geometry_of(prepared, channels)
    check_local(geometry, allow_inexact)
    (out_h, out_w), pad_edges = sizing(prepared, geometry, height, width, channels)
    margins = margins_for(geometry, halo, pad_edges=pad_edges)
    if batch_size is not None:
        check_positive("batch_size", batch_size)
    budget = parse_memory(memory_limit) if memory_limit is not None else None
    if tile is None or batch_size is None:
        budget = budget or default_memory_limit(prepared.device)
        per_pixel = bytes_per_pixel(prepared, channels, geometry, output)
    if tile is None:
        tile_hw = choose_tile((height, width), (out_h, out_w), margins, bytes_per_pixel=per_pixel, budget=budget,
                              batch_size=batch_size or 1, min_tiles=min_tiles)
    else:
        tile_hw = tile_size(tile, margins.multiple)
    tiles = plan_axis_tiles((height, width), (out_h, out_w), margins, tile_hw)
    if batch_size is None:
        largest = max(t.padded[0] * t.padded[1] for t in tiles)
        fits = int(budget * TILE_SHARE // (largest * per_pixel))
        # On CPU one tile per pass measured fastest (oneDNN already uses every core); a GPU wants batches.
        batch_size = max(1, min(fits, 32, len(tiles))) if prepared.device.type == "cuda" else 1
    k = num_classes(prepared, channels, geometry)
    shape = (out_h, out_w) if output == "labels" else (out_h, out_w, k)
    computed = sum(t.padded[0] * t.padded[1] for t in tiles)
    halo_px = max(margins.lo, margins.hi)
    if tile is not None and len(tiles) > 1 and min(tile_hw) < halo_px and computed > HEAVY_OVERHEAD * height * width:
        warnings.warn(f"tile {tile_hw[0]}x{tile_hw[1]} with the model's halo of {halo_px} px "
                      f"computes {computed / (height * width):.1f}x the image's pixels; a larger tile (or none: "
                      f"the memory budget chooses one) is faster.", TileOverheadWarning, stacklevel=3)
    return TilePlan(tiles=tiles, tile=tile_hw, batch_size=batch_size, shape=shape, dtype=output_dtype(output, k),
                    stride=margins.stride, halo=max(margins.lo, margins.hi), overhead=computed / (height * width),
                    image_shape=(height, width, channels), output=output, device=prepared.device,
                    precision=prepared.precision)


def check_plan(plan: TilePlan, prepared: InferenceModel, image: Any, output: str) -> None:
    """A plan made for another image, output kind or precision would write the wrong regions or dtype."""
    if not isinstance(plan, TilePlan):
        raise InputError(f"plan is a {type(plan).__name__}; expected a TilePlan from fcnkit.plan_prediction.")
    shape = check_array_like(image)
    if shape != tuple(plan.image_shape):
        raise InputError(f"plan was made for an image of shape {tuple(plan.image_shape)} but this image is "
                         f"{shape}; plan this image with plan_prediction.")
    if output != plan.output:
        raise InputError(f"plan was made for output={plan.output!r} but output={output!r} was asked; pass "
                         f"output={plan.output!r} or plan again.")
    if prepared.precision != plan.precision:
        raise InputError(f"plan was made for precision={plan.precision!r} but the model runs in "
                         f"{prepared.precision!r}; pass precision={plan.precision!r} or plan again.")


def plan_tiles(shape: tuple[int, ...], geometry: Any, tile: int | tuple[int, int], *,
               halo: int | None = None) -> list[Tile]:
    """The tiles that ``predict_tiled`` computes for an image of ``shape`` ``(H, W[, C])``, row-major.

    ``geometry`` is a ``fcnkit.Geometry``; ``tile`` in input pixels (rounded up to ``input_multiple``). The output
    size is the geometry's (``ceil(H/s)`` for "same", ``(H − RF)//s + 1`` for "valid"), and edge tiles are padded
    to the multiple: without the model this cannot tell a "valid" model that runs on any size, which
    ``predict_tiled`` leaves unpadded.
    """
    margins = margins_for(geometry, halo)
    height, width = int(shape[0]), int(shape[1])
    return plan_axis_tiles((height, width), formula_size(geometry, height, width), margins,
                           tile_size(tile, margins.multiple))
