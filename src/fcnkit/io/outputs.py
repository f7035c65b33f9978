"""Streaming outputs for tiled prediction: ``create_output`` by suffix, windowed writes, resume, atomic finish.

Every output is first written into a temporary sibling ``<target>.partial`` (a zarr store) and only moved into place
by ``close()``, so nothing half-written ever replaces a good output. ``.png`` and ``.tif`` targets are converted
from that store on close; ``.ome.zarr`` gets its pyramid and NGFF metadata; ``.zarr`` is renamed as it is.

Tiles that are not chunk-aligned are correct: zarr reads, modifies and rewrites a partly covered chunk. That
read-modify-write is not safe if two writers touch the same chunk at the same time; fcnkit's tiler writes from a
single thread, so it never happens in our use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from fcnkit.errors import DiskFullError, OutputError
from fcnkit.io.atomic import (NO_SPACE, fsync_dir, fsync_files, fsync_tree, remove_path, replace_dir, unwritable_reason,
                              writing)
from fcnkit.io.images import write_png
from fcnkit.io.journal import Journal
from fcnkit.io.lock import WriterLock, lock_path
from fcnkit.io.ome_zarr import build_pyramid, ome_metadata
from fcnkit.io.tiff import write_tiff

OUTPUT_SUFFIXES = (".png", ".zarr", ".ome.zarr", ".tif", ".tiff")
DEFAULT_CHUNK = 512


def output_format(path: Path) -> str:
    """'png', 'zarr', 'ome-zarr' or 'tiff' from the target's suffix; anything else is refused."""
    name = path.name.lower()
    for suffix, fmt in ((".ome.zarr", "ome-zarr"), (".zarr", "zarr"), (".png", "png"), (".tif", "tiff"),
                        (".tiff", "tiff")):
        if name.endswith(suffix):
            return fmt
    raise OutputError(
        f"output {path} has an unsupported suffix; expected one of {', '.join(OUTPUT_SUFFIXES)}; "
        "rename the output (e.g. result.ome.zarr for large images)"
    )


def partial_path(path: Path) -> Path:
    """Where an unfinished output is written: ``<target>.partial``."""
    return path.with_name(path.name + ".partial")


def journal_path(path: Path) -> Path:
    """The resume journal next to the output: ``<target>.journal``."""
    return path.with_name(path.name + ".journal")


def output_status(path: str | os.PathLike) -> str:
    """'partial' if an interrupted run can be resumed, 'complete' if the target is finished, else 'missing'.

    Lets a caller with many inputs skip finished ones under ``--resume`` instead of failing on them.
    """
    path = Path(path)
    if partial_path(path).exists():
        return "partial"
    return "complete" if path.exists() else "missing"


class Output:
    """An output being written window by window; ``close()`` finalises it into ``path``.

    ``out[y0:y1, x0:x1] = tile`` with tile (h, w) for 2-D outputs or (h, w, C) for (H, W, C) outputs;
    ``out.mark_done(tile_id)`` after a tile is written; ``out.done`` the ids finished so far (also those of an
    interrupted run when resumed). As a context manager it finalises on success and, on an exception, keeps the
    partial output and journal for ``resume=True``.
    """

    def __init__(self, path: Path, fmt: str, array: zarr.Array, journal: Journal, *, shape: tuple[int, ...],
                 kind: str, palette: Any, metadata: dict | None, lock: WriterLock | None = None) -> None:
        self.path = path
        self.format = fmt
        self.shape = shape
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(shape)
        self.kind = kind
        self._array = array
        self._channels_first = fmt == "ome-zarr" and len(shape) == 3
        self.chunks = tuple(array.chunks[1:3] if self._channels_first else array.chunks[:2])
        self._journal = journal
        self._palette = palette
        self._metadata = metadata
        self._unsynced: set[Path] = set()
        self._closed = False
        self._lock = lock  # held from create_output until close() or an error ends the writing

    @property
    def done(self) -> set[int]:
        """Ids of the tiles recorded as finished."""
        return set(self._journal.done)

    def __repr__(self) -> str:
        return f"Output({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, done={len(self._journal.done)})"

    def _window(self, key: Any) -> tuple[slice, slice]:
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)):
            raise OutputError(f"write to {self.path} as out[y0:y1, x0:x1] = tile; got the index {key!r}")
        ys, xs = (slice(*k.indices(n)) for k, n in zip(key, self.shape[:2]))
        if ys.step != 1 or xs.step != 1:
            raise OutputError(f"write to {self.path} with contiguous slices (step 1); got the index {key!r}")
        return ys, xs

    def __setitem__(self, key: Any, value: Any) -> None:
        self._check_open()
        ys, xs = self._window(key)
        expected = (ys.stop - ys.start, xs.stop - xs.start) + tuple(self.shape[2:])
        value = np.asarray(value)
        if value.ndim == 0:  # a constant fills the window
            value = np.broadcast_to(value, expected)
        if value.shape != expected:
            raise OutputError(
                f"tile for {self.path}[{ys.start}:{ys.stop}, {xs.start}:{xs.stop}] must have shape {expected}, "
                f"got {value.shape}; pass the tile cropped to its window"
            )
        integers = value.dtype.kind in "biu" and self.dtype.kind in "iu"
        if not (integers or np.can_cast(value.dtype, self.dtype, casting="same_kind")):
            raise OutputError(
                f"tile for {self.path} has dtype {value.dtype}, the output holds {self.dtype}; "
                f"convert the tile first (e.g. argmax for labels) instead of letting it be truncated"
            )
        with writing(partial_path(self.path), f" (output rows {ys.start}:{ys.stop}, cols {xs.start}:{xs.stop})"):
            if self._channels_first:
                self._array[:, ys, xs] = np.moveaxis(value, 2, 0)
            else:
                self._array[ys, xs] = value
        self._unsynced.update(self._chunk_files(ys, xs))

    def __getitem__(self, key: Any) -> np.ndarray:
        ys, xs = self._window(key)
        if self._channels_first:
            return np.moveaxis(np.asarray(self._array[:, ys, xs]), 0, 2)
        return np.asarray(self._array[ys, xs])

    def _chunk_files(self, ys: slice, xs: slice) -> list[Path]:
        # zarr v3's default chunk keys: <array>/c/<i>/<j> (with a leading channel index 0 for (c, y, x) and a
        # trailing one for (y, x, c) since channels are never split)
        root = Path(self._array.store.root) / self._array.path / "c"
        cy, cx = self.chunks
        files = []
        for i in range(ys.start // cy, math.ceil(ys.stop / cy)):
            for j in range(xs.start // cx, math.ceil(xs.stop / cx)):
                parts = ["0", str(i), str(j)] if self._channels_first else [str(i), str(j)]
                if self.ndim == 3 and not self._channels_first:
                    parts.append("0")
                files.append(root.joinpath(*parts))
        return files

    def mark_done(self, tile_id: int) -> None:
        """Record that tile ``tile_id`` is written: its chunks are fsynced first, then the id is journaled."""
        self._check_open()
        with writing(partial_path(self.path)):
            fsync_files(self._unsynced)
        self._unsynced.clear()
        self._journal.append(tile_id)

    def _check_open(self) -> None:
        if self._closed:
            raise OutputError(f"output {self.path} is already closed; create it again with resume=True to add tiles")

    def close(self) -> None:
        """Finalise: build the pyramid or convert, move into place atomically, delete the journal. Idempotent."""
        if self._closed:
            return
        partial = partial_path(self.path)
        extra = {} if self._metadata is None else dict(self._metadata)
        if self._palette is not None:
            extra["palette"] = np.asarray(self._palette, dtype=np.uint8).reshape(-1, 3).tolist()
        if self.format == "png":
            write_png(self.path, self[:, :], palette=self._palette, metadata=self._metadata)
            remove_path(partial)
        elif self.format == "tiff":
            write_tiff(self.path, self._array, tile=self.chunks, palette=self._palette, metadata=self._metadata)
            remove_path(partial)
        else:
            if self.format == "ome-zarr":
                group = zarr.open_group(str(partial), mode="r+")
                channels = self.shape[2] if self._channels_first else None
                with writing(partial, " (its pyramid levels and metadata)"):
                    levels = build_pyramid(group, channels=channels)
                    names = (self._metadata or {}).get("class_names")
                    ome = ome_metadata(levels=levels, channels=channels, name=self.path.name.split(".")[0],
                                       palette=self._palette, labels=self.kind == "labels", class_names=names,
                                       channel_windows=_channel_windows(group[str(levels - 1)], channels))
                    group.attrs.update({"ome": ome, **({"fcnkit": extra} if extra else {})})
            elif extra:
                with writing(partial, " (its metadata)"):
                    self._array.attrs.update({"fcnkit": extra})
            with writing(partial):  # every level, chunk and folder durable before the rename publishes them
                fsync_tree(partial)
            replace_dir(partial, self.path)
        self._journal.remove()
        fsync_dir(self.path.parent)
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        try:
            if exc_type is None:
                self.close()
        finally:
            if not self._closed:  # an error (or a failed close): keep the partial output and journal for resume
                self._journal.close()
                self._closed = True
            self._release()


def _channel_windows(smallest: zarr.Array, channels: int | None) -> list[tuple[float, float]] | None:
    """(min, max) of each channel of the pyramid's smallest level: a display range read at O(chunk) cost."""
    if channels is None:
        return None
    data = np.asarray(smallest[:]).reshape(channels, -1)
    return [(float(np.nanmin(row)), float(np.nanmax(row))) for row in data]


def _check_request(path: Path, fmt: str, shape: Any, dtype: np.dtype, kind: str) -> tuple[int, ...]:
    if kind not in ("labels", "image"):
        raise OutputError(f"output kind must be 'labels' or 'image', got {kind!r}; pass one of those")
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1 or (kind == "labels" and len(shape) != 2):
        wanted = "(H, W)" if kind == "labels" else "(H, W) or (H, W, C)"
        raise OutputError(f"output {path} of kind {kind!r} needs a shape {wanted} of positive sizes, got {shape}")
    if kind == "labels" and not np.issubdtype(dtype, np.integer):
        raise OutputError(f"label output {path} needs an integer dtype (uint8 or int32), got {dtype}")
    if fmt == "png":
        channels = shape[2] if len(shape) == 3 else 1
        if not (dtype == np.uint8 and channels in (1, 3, 4) or dtype == np.uint16 and channels == 1):
            raise OutputError(
                f"output {path}: PNG holds uint8 images with 1, 3 or 4 channels or 16-bit grey, not {shape} {dtype}; "
                "write float or many-channel results to .zarr, .ome.zarr or .tif instead"
            )
    return shape


def _chunk_shape(chunks: Any, shape: tuple[int, ...], fmt: str) -> tuple[int, int]:
    if chunks is None:
        chunks = DEFAULT_CHUNK
    cy, cx = (int(chunks), int(chunks)) if np.isscalar(chunks) else (int(chunks[0]), int(chunks[1]))
    if cy < 1 or cx < 1:
        raise OutputError(f"output chunks must be positive, got {chunks!r}; pass e.g. chunks=(512, 512)")
    if fmt == "tiff":  # TIFF tiles are multiples of 16, and the buffer's chunks are the tiles
        return 16 * math.ceil(cy / 16), 16 * math.ceil(cx / 16)
    return min(cy, shape[0]), min(cx, shape[1])


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the output folder {folder}: {unwritable_reason(folder, exc)}; choose another output "
            "location"
        ) from exc
    if not os.access(folder, os.W_OK):
        raise OutputError(
            f"output folder {folder} is read-only; choose a writable output location or fix its permissions"
        )


def _create_storage(partial: Path, fmt: str, shape: tuple[int, ...], dtype: np.dtype,
                    chunks: tuple[int, int]) -> zarr.Array:
    spatial = ("y", "x")
    try:
        if fmt == "ome-zarr":
            group = zarr.open_group(str(partial), mode="w", zarr_format=3)
            if len(shape) == 3:  # NGFF wants the channel axis before the spatial ones
                return group.create_array("0", shape=(shape[2], *shape[:2]), dtype=dtype,
                                          chunks=(shape[2], *chunks), fill_value=0, dimension_names=("c", *spatial))
            return group.create_array("0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                                      dimension_names=spatial)
        return zarr.create_array(str(partial), shape=shape, dtype=dtype, chunks=chunks + tuple(shape[2:]),
                                 fill_value=0, dimension_names=spatial + (("c",) if len(shape) == 3 else ()))
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise DiskFullError(partial) from exc
        raise OutputError(
            f"cannot write the output {partial.name[: -len('.partial')]}: {unwritable_reason(partial.parent, exc)}; "
            "choose a writable output location"
        ) from exc


def _open_storage(partial: Path, fmt: str) -> zarr.Array:
    if fmt == "ome-zarr":
        return zarr.open_group(str(partial), mode="r+")["0"]
    return zarr.open_array(str(partial), mode="r+")


def create_output(
    path: str | os.PathLike,
    shape: Any,
    dtype: Any,
    *,
    chunks: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    kind: str = "labels",
    palette: Any = None,
    metadata: dict | None = None,
    plan_key: str = "",
    identity: dict | None = None,
) -> Output:
    """Create (or with ``resume=True`` reopen) an output to fill window by window, its format chosen by suffix.

    ``shape`` is (H, W) for labels or (H, W[, C]) for ``kind="image"`` (probabilities, logits); ``chunks`` the
    (rows, columns) of a storage chunk (default 512; TIFF tiles round up to a multiple of 16); ``palette`` (K, 3)
    uint8 colours for label PNG/TIFF/OME-Zarr; ``metadata`` JSON-able extras stored with the result; ``plan_key``
    describes the tile plan, and a resumed output must have the same plan, shape and dtype; ``identity`` (JSON-able,
    e.g. which model and which input) must match too, and is stored with the finished output as
    ``metadata["identity"]`` (:func:`fcnkit.io.reading.output_metadata` reads it back).

    An existing target (or a partial one left by an interrupted run) is refused unless ``overwrite`` (start again;
    the old target is replaced only by ``close()``) or ``resume`` (continue; tiles in ``out.done`` are finished).
    While the output is open it holds ``<target>.lock`` (:mod:`fcnkit.io.lock`): another process creating the same
    output is refused, naming this one, until ``close()`` or an error releases it.

    >>> with create_output("slide.ome.zarr", (40000, 30000), "uint8", palette=pal) as out:   # doctest: +SKIP
    ...     out[0:512, 0:512] = labels_tile
    ...     out.mark_done(0)
    """
    path = Path(path)
    fmt = output_format(path)
    dtype = np.dtype(dtype)
    shape = _check_request(path, fmt, shape, dtype, kind)
    fingerprint = {"shape": list(shape), "dtype": dtype.str, "kind": kind, "output_format": fmt, "plan": plan_key,
                   **(identity or {})}
    if identity:
        metadata = {**(metadata or {}), "identity": identity}
    _prepare_folder(path.parent)
    lock = WriterLock.acquire(lock_path(path), target=f"output {path}")  # refuses a second run writing it
    options = {"shape": shape, "kind": kind, "palette": palette, "metadata": metadata, "lock": lock}
    try:
        return _open(path, fmt, dtype, fingerprint, chunks, overwrite=overwrite, resume=resume, options=options)
    except BaseException:
        lock.release()
        raise


def _open(path: Path, fmt: str, dtype: np.dtype, fingerprint: dict, chunks: Any, *, overwrite: bool, resume: bool,
          options: dict) -> Output:
    """create_output's work once the output is locked: resume, refuse, or start a new partial output."""
    partial, journal = partial_path(path), journal_path(path)
    status = output_status(path)
    shape = options["shape"]
    if resume and status == "partial" and journal.exists():
        previous = Journal.open(journal)
        if previous.fingerprint == fingerprint:
            return Output(path, fmt, _open_storage(partial, fmt), previous, **options)
        previous.close()
        if not overwrite:
            keys = [k for k in {**previous.fingerprint, **fingerprint}
                    if previous.fingerprint.get(k) != fingerprint.get(k)]
            differs = ", ".join(f"{k} {previous.fingerprint.get(k)!r} (now {fingerprint.get(k)!r})" for k in keys)
            raise OutputError(
                f"cannot resume {path}: the interrupted run had {differs}; rerun with the same model, input and "
                "settings to resume, or pass --overwrite to start again"
            )
    elif not overwrite and status == "partial" and not resume:
        raise OutputError(
            f"an interrupted run left {partial}; pass --resume to continue it or --overwrite to start again"
        )
    elif not overwrite and status == "complete":
        if resume:
            raise OutputError(f"{path} is already complete, nothing to resume; pass --overwrite to compute it again")
        raise OutputError(f"{path} exists; pass --overwrite to replace it or --resume to continue")
    remove_path(partial)
    remove_path(journal)
    array = _create_storage(partial, fmt, shape, dtype, _chunk_shape(chunks, shape, fmt))
    return Output(path, fmt, array, Journal.create(journal, fingerprint), **options)
