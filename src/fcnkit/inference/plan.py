"""Where the tiles go and how big they are: the exact-tiling rule of docs/design.md, and the memory model.

Exact tiling, per axis: output rows ``[a, b)`` read input rows ``[a·s − lo, b·s + hi)`` clipped to the image, with
tile origins ``a·s`` multiples of D (= ``input_multiple``) and ``lo``/``hi`` multiples of D. A "same" network has
``lo = hi = halo``; a "valid" network sees ``[i·s, i·s + RF)`` for output ``i``, so ``lo = 0`` and
``hi = RF − s`` (rounded up to D). The window is then zero padded bottom/right to a multiple of D, exactly as the
whole-image run pads the image, and row ``j`` of the tile's output is global output row ``read_start/s + j``. A
"valid" network that runs on any size is not padded (``Margins.pad_edges`` False): only a window that the image's
edge clips can have a side off the multiple, and it then sees what the network run on the image sees there (a
``ceil_mode`` pooling's partial window at an odd side included), not zeros.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fcnkit.errors import InputError
from fcnkit.inference.model import InferenceModel

# Largest number of tiles per axis the planner considers: beyond that, tiles are so small that halo dominates.
_MAX_SPLITS = 4096
# The CPU budget when none is given (see default_memory_limit): tiles stay moderate, peak RSS below ~2 GiB.
DEFAULT_BUDGET = 1 << 30
# Fraction of the memory budget the tiles may take; the rest covers the read-ahead queue, the writer and numpy copies.
TILE_SHARE = 0.7


@dataclass(frozen=True)
class Tile:
    """One tile of a plan. Rows/cols are ``(start, stop)`` pairs.

    ``out``: the output region it produces (output pixels); ``read``: the input window it reads (input pixels,
    clipped to the image); ``keep``: the part of the tile's own output that is ``out``; ``padded``: the tensor's
    (H, W) after zero padding the window to a multiple of D (a window at the image's edge stays as it is for a
    "valid" model that runs on any size). ``id`` is stable for a given layout (see ``tile_id``).
    """

    id: int
    out: tuple[tuple[int, int], tuple[int, int]]
    read: tuple[tuple[int, int], tuple[int, int]]
    keep: tuple[tuple[int, int], tuple[int, int]]
    padded: tuple[int, int]


@dataclass(frozen=True)
class Margins:
    """The tiling geometry reduced to what the planner needs (input pixels; ``lo``/``hi`` already multiples of D).
    ``pad_edges``: whether a window clipped by the image's edge is zero padded to a multiple of D."""

    multiple: int
    stride: int
    lo: int
    hi: int
    pad_edges: bool = True


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _axis(n_in: int, n_out: int, t_out: int, m: Margins) -> list[tuple[tuple[int, int], tuple[int, int],
                                                                    tuple[int, int], int]]:
    """Per axis: ``(out, read, keep, padded_len)`` for each tile of ``t_out`` output pixels."""
    s = m.stride
    spans = []
    for a in range(0, n_out, t_out):
        b = min(a + t_out, n_out)
        r0 = max(0, a * s - m.lo)
        r1 = min(n_in, b * s + m.hi)
        padded = round_up(r1 - r0, m.multiple) if m.pad_edges or r1 < n_in else r1 - r0
        spans.append(((a, b), (r0, r1), (a - r0 // s, b - r0 // s), padded))
    return spans


def tile_id(index: int, t_out: tuple[int, int]) -> int:
    """A tile's id: its index in the plan, folded with the tile size.

    A resumed run that picked another tile size then finds none of its ids in the journal and recomputes
    everything, instead of skipping the wrong regions. Fits in 62 bits (tile sides < 2^20, < 2^22 tiles).
    """
    return ((index * (1 << 20)) + t_out[0]) * (1 << 20) + t_out[1]


def plan_axis_tiles(in_shape: tuple[int, int], out_shape: tuple[int, int], margins: Margins,
                    tile: tuple[int, int]) -> list[Tile]:
    """All tiles, row-major. ``tile`` is in input pixels, each side a multiple of ``margins.multiple``."""
    t_out = (tile[0] // margins.stride, tile[1] // margins.stride)
    rows = _axis(in_shape[0], out_shape[0], t_out[0], margins)
    cols = _axis(in_shape[1], out_shape[1], t_out[1], margins)
    tiles = []
    for i, (oy, ry, ky, py) in enumerate(rows):
        for j, (ox, rx, kx, px) in enumerate(cols):
            index = i * len(cols) + j
            tiles.append(Tile(tile_id(index, t_out), (oy, ox), (ry, rx), (ky, kx), (py, px)))
    return tiles


# ---- memory model -------------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_memory(value: int | float | str, name: str = "memory_limit") -> int:
    """``4GB``, ``512MiB``, ``1.5g`` or a number of bytes -> bytes. Binary units (a GB is 2^30 bytes)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise InputError(f"{name}={value!r} is not a memory size; expected bytes or a number with a unit such as "
                             f"'4GB' or '512MB'.")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise InputError(f"{name}={value!r} must be a positive memory size such as '4GB'.")
    return size


def format_bytes(size: float) -> str:
    """A memory size as a person reads it, in the binary units :func:`parse_memory` takes: ``512 bytes``,
    ``12 KiB``, ``3.5 MiB``, ``2 GiB`` (never "0 MiB" for a small one)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 10 and round(value, 1) != round(value) else f"{value:.0f} {unit}"
    return f"{size:.0f} bytes"


def default_memory_limit(device: torch.device) -> int:
    """The budget when none is given: ``DEFAULT_BUDGET`` on CPU (half of the memory available now if that is less);
    half of the free GPU memory on CUDA.

    Larger tiles cut the halo's extra work ((T+2h)/T per split axis), but on CPU they stop paying well before memory
    runs out: multi-GiB activation buffers are faulted in and handed back to the kernel on every tile. Measured
    (README, Benchmarks: benchmarks/tile_sweep.py; the issue's 20k² BigTIFF and 6000² JPEG runs): half of the
    available memory gave 7.9 GiB peak RSS with as much kernel as user time and no speed gain, a 1 GiB budget the
    same or better speed at 1.1-1.6 GiB (1.5 GiB on the 20k² run since the runner keeps freed batch memory for the
    next batch in plans of 8 batches or more). ``--memory-limit`` still trades memory for fewer, larger tiles.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    import psutil

    return int(min(DEFAULT_BUDGET, psutil.virtual_memory().available * 0.5))


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensors alive during a forward pass and keeps the peak.

    Every aten op's outputs are seen here; a new storage is added when created and subtracted when its tensor is
    freed. This measures what the forward pass itself allocates, on any device, without a device-specific profiler.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in tree_leaves(result):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key and key not in self.live:
                    self.live[key] = t.untyped_storage().nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._free, key)
        return result


_COST_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def activation_bytes_per_pixel(prepared: InferenceModel, channels: int, multiple: int) -> float:
    """Peak bytes the forward pass holds, per input pixel, measured once on a small input and cached per model
    (the caller's, for each device and precision)."""
    key = (channels, str(prepared.device), prepared.precision)
    cached = _COST_CACHE.setdefault(prepared.source, {})
    if key not in cached:
        side = round_up(max(128, 4 * multiple), multiple)
        x = torch.zeros(1, channels, side, side, device=prepared.device, dtype=prepared.dtype)
        meter = _LiveBytes()
        with torch.inference_mode(), meter:
            y = prepared.net(x.contiguous(memory_format=prepared.memory_format))
            del y
        cached[key] = meter.peak / (side * side)
    return cached[key]


def _axis_options(n_in: int, n_out: int, margins: Margins) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct tile side along one axis: ``(side, largest padded extent, total padded extent, tile count)``.

    Side ``t`` (input pixels, a multiple of D) for 1, 2, ... tiles per axis, down to one multiple of D; extents
    count the halo that each tile reads (clipped at the image edge) and its zero padding to D.
    """
    s, d = margins.stride, margins.multiple
    most = min(_MAX_SPLITS, max(1, -(-n_out * s // d)))
    sides = np.unique([round_up(-(-n_out // k) * s, d) for k in range(1, most + 1)])[::-1]
    largest, total, count = (np.empty(len(sides), np.int64) for _ in range(3))
    for i, side in enumerate(sides):
        t_out = int(side) // s
        a = np.arange(0, n_out, t_out, dtype=np.int64)
        b = np.minimum(a + t_out, n_out)
        extent = np.minimum(n_in, b * s + margins.hi) - np.maximum(0, a * s - margins.lo)
        padded = -(-extent // d) * d
        largest[i], total[i], count[i] = padded.max(), padded.sum(), len(a)
    return sides.astype(np.int64), largest, total, count


def choose_tile(in_shape: tuple[int, int], out_shape: tuple[int, int], margins: Margins, *, bytes_per_pixel: float,
                budget: int, batch_size: int, min_tiles: int = 1) -> tuple[int, int]:
    """The tile ``(th, tw)`` (input pixels, multiples of D) that needs the least computation within ``budget``.

    ``bytes_per_pixel`` is the cost of one padded input pixel in flight (activations, input, output). The work of a
    tiling is the sum of its tiles' padded areas, halo included; a halo is only read on the sides of a tile that
    have a neighbour, so tiles need not be square: full-width strips of a 4096² image cost (4096 + 2h)/4096 where
    2×2 squares cost ((2048 + 2h)/2048)². Every pair of per-axis tile counts is scored (tiles balanced so that no
    thin strip is left at the edge); ties go to the fewest tiles. ``min_tiles``: only tilings with at least that
    many tiles, when the image has any (a cluster's workers each need a tile).
    """
    per_tile = budget * TILE_SHARE / (batch_size * bytes_per_pixel)  # padded pixels one tile may have
    sy, ey, wy, ny = _axis_options(in_shape[0], out_shape[0], margins)
    sx, ex, wx, nx = _axis_options(in_shape[1], out_shape[1], margins)
    if ny[-1] * nx[-1] < min_tiles:
        min_tiles = 1  # the image is too small to share out: the least work, as for one worker
    best, best_key = None, None
    for i in range(len(sy)):  # one row of (y, x) pairs at a time: thousands of options per axis on a slide
        fits = np.flatnonzero((ey[i] * ex <= per_tile) & (ny[i] * nx >= min_tiles))
        if not len(fits):
            continue
        work = wy[i] * wx[fits]
        # least work, then the fewest tiles, then rows before columns (contiguous reads and writes in row-major
        # arrays): a smaller key is better
        j = fits[np.lexsort((-sx[fits], -sx[fits] * sy[i], work))[0]]
        key = (wy[i] * wx[j], -sy[i] * sx[j], -sx[j])
        if best_key is None or key < best_key:
            best, best_key = (int(sy[i]), int(sx[j])), key
    if best is None:
        smallest = ey[-1] * ex[-1] * batch_size * bytes_per_pixel / TILE_SHARE
        raise InputError(f"memory_limit={budget} bytes is too small for even the smallest tile of this model "
                         f"(about {format_bytes(smallest)}); raise it (--memory-limit, memory_limit= from "
                         f"Python) or give the tile (--tile, tile=).")
    return best
