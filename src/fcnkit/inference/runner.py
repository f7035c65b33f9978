"""Running a tile plan: read ahead on one thread, compute on the caller's thread, write on another.

Reading (a TIFF or zarr decode, padding, the float conversion) and writing (zarr compression, the resume journal)
overlap the forward pass; both queues are bounded, so memory stays a few batches whatever the image size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
from fcnkit.signals import safe_point

_DONE = object()  # end-of-stream marker on both queues
_QUEUE_BATCHES = 2  # batches read ahead, and results waiting to be written


def read_window(image: Any, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``image[rows, cols]`` as a float32 ``(h, w, C)`` array; NaN or Inf in it is an ``InputError``."""
    window = np.asarray(image[rows[0]:rows[1], cols[0]:cols[1]])
    if window.ndim == 2:
        window = window[:, :, None]
    if window.dtype.kind == "f" and not np.isfinite(window).all():
        raise InputError(f"image rows {rows[0]}:{rows[1]}, cols {cols[0]}:{cols[1]} contain NaN or Inf; expected "
                         f"finite values; replace them (e.g. np.nan_to_num) before predicting.")
    return window.astype(np.float32, copy=False)


def to_model_input(batch: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(N, H, W, C)`` float32 numpy -> ``(N, C, H, W)`` tensor on ``device``.

    The permuted view of an NHWC buffer is already channels_last, which oneDNN runs ~1.8× faster for 3×3
    convolutions on CPU. On CUDA the copy goes through pinned memory without blocking; there the network gets the
    ordinary NCHW layout.
    """
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True).contiguous()
    return x.to(dtype) if dtype != x.dtype else x


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


def read_batch(image: Any, batch: Sequence[Tile], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The input windows of ``batch`` (tiles of one padded shape), zero padded bottom/right to the model's multiple
    as in the whole-image run: an ``(N, C, h, w)`` tensor on ``device``."""
    h, w = batch[0].padded
    first = read_window(image, *batch[0].read)
    data = np.zeros((len(batch), h, w, first.shape[2]), np.float32)
    for k, tile in enumerate(batch):
        window = first if k == 0 else read_window(image, *tile.read)
        data[k, :window.shape[0], :window.shape[1]] = window
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
             batch_size: int, device: torch.device, dtype: torch.dtype, journal: bool, progress: bool, stride: int,
             skipped: int = 0) -> None:
    """Compute every tile of ``tiles`` and write its ``out`` region into ``out``; mark it done when ``journal``.

    ``skipped``: tiles done by an earlier run, counted in the progress bar only.
    """
    if batch_size > 1:  # group the tiles of one shape (interior tiles) so that they stack into full batches
        tiles = sorted(tiles, key=lambda t: t.padded)
    stop = threading.Event()

    def running() -> bool:
        return not stop.is_set()
    inbox: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
    outbox: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES * batch_size)

    def read() -> None:
        for batch in _batches(tiles, batch_size):
            if not _put(inbox, (batch, read_batch(image, batch, device, dtype)), running):
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
    bar = _progress_bar(len(tiles) + skipped, skipped) if progress else None
    started, pixels = time.perf_counter(), 0
    reader.start()
    writer.start()
    try:
        while True:
            safe_point()  # after SIGINT/SIGTERM: stop here; the finally below writes and journals the tiles in flight
            item = _get(inbox, reader)
            if item is _DONE:
                break
            batch, x = item
            for tile, values in zip(batch, forward_batch(model, x, batch, output)):
                if not _put(outbox, (tile, values), writer.is_alive):
                    raise writer.error  # type: ignore[misc]
                pixels += values.shape[0] * values.shape[1] * stride * stride
            del x
            _trim_heap()
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix_str(f"{pixels / 1e6 / (time.perf_counter() - started):.3g} MP/s", refresh=False)
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


def _load_trim() -> Callable[[], Any] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to trim
        return None


_MALLOC_TRIM = _load_trim()


def _trim_heap() -> None:
    """Give the freed activations of the last batch back to the OS (glibc keeps them in per-thread arenas).

    Without it the reader's, writer's and compute threads' arenas each keep their own high-water mark: a BigTIFF to
    OME-Zarr run under --memory-limit 1GB peaked at 1.31 / 1.38 / 1.50 GiB at 8k² / 16k² / 32k², and at 1.24 /
    1.32 / 1.39 GiB with it, in the same time (benchmarks/results/tiling.json).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tile", desc="fcnkit predict", dynamic_ncols=True)
