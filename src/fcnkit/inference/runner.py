"""Running a tile plan: read ahead on one thread, compute on the caller's thread, write on another.

Reading (a TIFF or zarr decode, padding; on CUDA the float conversion and the copy to the GPU) and writing (zarr
compression, the resume journal) overlap the forward pass; both queues are bounded, so memory stays a few batches
whatever the image size, and what a batch frees is kept for the next (see ``_FreedMemory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fcnkit.inference.kinds import label_torch_dtype
from fcnkit.inference.plan import Tile
from fcnkit.errors import InputError, ModelError
from fcnkit.progress import Progress
from fcnkit.signals import safe_point

_DONE = object()  # end-of-stream marker on both queues
_QUEUE_BATCHES = 2  # batches read ahead, and results waiting to be written


def read_window(image: Any, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``image[rows, cols]`` as an ``(h, w, C)`` array of the image's own dtype (converted for the model later,
    batch by batch); NaN or Inf in it is an ``InputError``."""
    window = np.asarray(image[rows[0]:rows[1], cols[0]:cols[1]])
    if window.ndim == 2:
        window = window[:, :, None]
    if window.dtype.kind == "f" and not np.isfinite(window).all():
        raise InputError(f"image rows {rows[0]}:{rows[1]}, cols {cols[0]}:{cols[1]} contain NaN or Inf; expected "
                         f"finite values; replace them (e.g. np.nan_to_num) before predicting.")
    return window


def to_model_input(batch: np.ndarray, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """``(N, H, W, C)`` numpy -> ``(N, C, H, W)`` tensor of ``dtype`` (None: the batch's own) on ``device``.

    The permuted view of an NHWC buffer is already channels_last, which oneDNN runs ~1.8× faster for 3×3
    convolutions on CPU (a cast keeps that layout). On CUDA the copy goes through pinned memory without blocking;
    there the network gets the ordinary NCHW layout.
    """
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True).contiguous()
    return x.to(dtype) if dtype is not None and dtype != x.dtype else x


def finish(y: Any, output: str) -> torch.Tensor:
    """The model's raw output ``(N, K, h, w)`` -> ``(N, h, w, K)`` logits/probs or ``(N, h, w)`` labels."""
    if not isinstance(y, torch.Tensor) or y.ndim != 4:
        found = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelError(f"the model returned {found}; expected a dense (N, K, H, W) tensor; convolutionalize a "
                         f"classifier (fcnkit.convolutionalize) before predicting on images.")
    y = y.float()
    if output == "labels":
        return y.argmax(dim=1).to(label_torch_dtype(y.shape[1]))
    if output == "probs":
        y = torch.softmax(y, dim=1)
    return y.permute(0, 2, 3, 1)


def _batches(tiles: Sequence[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Consecutive tiles of one padded shape, ``batch_size`` at most (only equal shapes stack)."""
    batch: list[Tile] = []
    for tile in tiles:
        if batch and (len(batch) == batch_size or batch[0].padded != tile.padded):
            yield batch
            batch = []
        batch.append(tile)
    if batch:
        yield batch


class _Worker(threading.Thread):
    """A daemon thread that records its exception instead of printing it, for the caller to re-raise."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised on the caller's thread
            self.error = exc


def _put(q: queue.Queue, item: Any, go_on: Callable[[], bool]) -> bool:
    """Put while ``go_on()``; False when it turned false (the consumer is gone), so a blocked thread can leave."""
    while go_on():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


# Window dtypes that a batch keeps up to the forward pass (torch converts them); any other becomes float32 at once.
_KEPT_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float32,
                                               np.float64))


def read_batch(image: Any, batch: Sequence[Tile], device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """The input windows of ``batch`` (tiles of one padded shape), zero padded bottom/right to the model's multiple
    as in the whole-image run: an ``(N, C, h, w)`` tensor on ``device``, of ``dtype`` (None: the image's own where
    torch has it, else float32)."""
    h, w = batch[0].padded
    first = read_window(image, *batch[0].read)
    kind = first.dtype if first.dtype in _KEPT_DTYPES else np.dtype(np.float32)
    data = np.empty((len(batch), h, w, first.shape[2]), kind)
    for k, tile in enumerate(batch):
        window = first if k == 0 else read_window(image, *tile.read)
        wh, ww = window.shape[:2]
        data[k, :wh, :ww] = window
        data[k, wh:] = 0
        data[k, :wh, ww:] = 0
    return to_model_input(data, device, dtype)


def forward_batch(model: Callable[[torch.Tensor], Any], x: torch.Tensor, batch: Sequence[Tile],
                  output: str) -> list[np.ndarray]:
    """Run ``model`` on ``x`` (from :func:`read_batch`) and keep each tile's own output region, on the CPU."""
    with torch.inference_mode():
        y = finish(model(x), output).cpu()
    kept = []
    for k, tile in enumerate(batch):
        (ky0, ky1), (kx0, kx1) = tile.keep
        if y.shape[1] < ky1 or y.shape[2] < kx1:
            raise ModelError(f"the model returned a {tuple(y.shape[1:3])} output for a {tile.padded} tile; "
                             f"expected at least {(ky1, kx1)} from its geometry; check fcnkit.analyze(model).")
        kept.append(y[k, ky0:ky1, kx0:kx1].numpy())
    return kept


def run_plan(model: Callable[[torch.Tensor], Any], image: Any, tiles: Sequence[Tile], *, output: str, out: Any,
             batch_size: int, device: torch.device, dtype: torch.dtype, journal: bool, progress: bool | str,
             stride: int, skipped: int = 0) -> None:
    """Compute every tile of ``tiles`` and write its ``out`` region into ``out``; mark it done when ``journal``.

    ``skipped``: tiles done by an earlier run, counted in the progress bar only.
    """
    # tiles of one shape in a row: they stack into full batches, and batch after batch allocates the same buffers,
    # which the heap then hands out again (alternating interior and edge tiles grew a 20k² run from 1.5 to 2.3 GiB)
    tiles = sorted(tiles, key=lambda t: t.padded)
    batches = list(_batches(tiles, batch_size))
    stop = threading.Event()

    def running() -> bool:
        return not stop.is_set()
    inbox: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
    outbox: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES * batch_size)

    # On CPU the reader hands over the image's own values (a uint8 batch is a quarter of a float32 one) and the
    # cast to the model's dtype happens on this thread, into memory that the batch before freed.
    read_dtype = dtype if device.type == "cuda" else None

    def read() -> None:
        for batch in batches:
            if not _put(inbox, (batch, read_batch(image, batch, device, read_dtype)), running):
                return
        _put(inbox, _DONE, running)

    def write() -> None:
        while True:
            item = outbox.get()
            if item is _DONE:
                return
            tile, values = item
            (y0, y1), (x0, x1) = tile.out
            out[y0:y1, x0:x1] = values
            if journal:
                out.mark_done(tile.id)  # only after its data is written: a kill before this redoes the tile

    reader, writer = _Worker(read, "fcnkit-read"), _Worker(write, "fcnkit-write")
    # progress: True, or the label to count tiles under (fcnkit heatmap runs this too)
    label = progress if isinstance(progress, str) else "fcnkit predict"
    bar = Progress(label, total=len(tiles) + skipped, initial=skipped, unit="tile") if progress else None
    done = skipped
    started, pixels = time.perf_counter(), 0
    with _FreedMemory(batches=len(batches)) as heap:
        reader.start()
        writer.start()
        try:
            while True:
                safe_point()  # after SIGINT/SIGTERM: stop here; the finally below writes and journals what is in flight
                item = _get(inbox, reader)
                if item is _DONE:
                    break
                batch, x = item
                for tile, values in zip(batch, forward_batch(model, x.to(dtype), batch, output)):
                    if not _put(outbox, (tile, values), writer.is_alive):
                        raise writer.error  # type: ignore[misc]
                    pixels += values.shape[0] * values.shape[1] * stride * stride
                del x, item
                heap.after_batch()
                done += len(batch)
                if bar is not None:
                    bar.update(done, **{"MP/s": f"{pixels / 1e6 / (time.perf_counter() - started):.3g}"})
            outbox.put(_DONE)
            writer.join()
            if writer.error is not None:
                raise writer.error
        finally:
            stop.set()
            if writer.is_alive():
                outbox.put(_DONE)
            reader.join()
            writer.join()
            if bar is not None:
                bar.close()


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # glibc's
        return libc
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): its allocator is left as it is
        return None


_LIBC = _load_libc()
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # their defaults
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class _FreedMemory:
    """Keep what one batch frees for the next while a long plan runs, within bounds; give it back at the end.

    glibc serves every buffer above its mmap threshold (32 MiB at most) with a fresh mapping and unmaps it on free,
    and ``malloc_trim`` hands freed heap pages back: either way the next batch faults the same memory in again and
    the kernel zeroes every page (a 20,480² BigTIFF -> OME-Zarr run of 60 batches spent 22 s in the kernel against
    42 s of user CPU that way). With ``keep``, large buffers come from the heap and the heap is not trimmed, so
    batches of one shape reuse the same memory. Reuse fragments the heap, though: when the resident memory grows past
    ``GROWTH`` times what it was after the first batch, :meth:`after_batch` trims once and lets it settle again. On
    the way out glibc's defaults are set back (its sliding mmap threshold stays where it is, as after any
    ``mallopt``).

    Without ``keep`` (a short plan: :data:`KEEP_FROM_BATCHES`), glibc's own behaviour stands and the heap is trimmed
    after every batch, which keeps the threads' arenas from holding their peaks: a heap that serves one forward pass
    fragments without any later batch to reuse it (the default unet on a 1024² image as one 2 GiB tile peaked at
    2.70 GiB that way, at 2.00 GiB with mmap).
    """

    GROWTH = 1.25
    KEEP_FROM_BATCHES = 8

    def __init__(self, batches: int) -> None:
        self.keep = _LIBC is not None and batches >= self.KEEP_FROM_BATCHES
        self.ceiling: float | None = None
        self.trims = 0

    def __enter__(self) -> _FreedMemory:
        if self.keep:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        return self

    def after_batch(self) -> None:
        if _LIBC is None:
            return
        if not self.keep:
            _LIBC.malloc_trim(0)
            return
        rss = _rss()
        if rss is None:
            return
        if self.ceiling is None:
            self.ceiling = self.GROWTH * rss
        elif rss > self.ceiling:
            _LIBC.malloc_trim(0)
            self.trims += 1

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            _LIBC.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
            _LIBC.malloc_trim(0)


def _get(inbox: queue.Queue, reader: _Worker) -> Any:
    """The next batch; the reader's exception if it failed."""
    while True:
        try:
            return inbox.get(timeout=0.1)
        except queue.Empty:
            if not reader.is_alive():
                if reader.error is not None:
                    raise reader.error
                return inbox.get_nowait() if not inbox.empty() else _DONE
