"""TIFF and BigTIFF: lazy windowed reading through tifffile's zarr interface, tiled BigTIFF writing tile by tile.

Reading opens level 0 of the first series (the full-resolution image of a pyramid) as a zarr array backed by the
file's own tiles or strips, so ``img[y0:y1, x0:x1]`` decodes only the tiles under the window.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from fcnkit.errors import InputError
from fcnkit.io.atomic import atomic_file
from fcnkit.io.images import check_file
from fcnkit.io.views import ChannelsLastView

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


def _check_not_truncated(level: Any, path: Path) -> None:
    # tifffile opens a truncated file happily and fails only when a missing tile is read; the tile offsets are in
    # the header, so compare them with the file size up front.
    size = path.stat().st_size
    for page in level.pages:
        if page is None:
            continue
        ends = np.asarray(page.dataoffsets, dtype=np.int64) + np.asarray(page.databytecounts, dtype=np.int64)
        if ends.size and int(ends.max()) > size:
            raise InputError(
                f"TIFF file {path} is truncated: its tiles reach byte {int(ends.max()):,} but the file has "
                f"{size:,} bytes; copy or download the file again"
            )


def open_tiff(path: str | os.PathLike) -> ChannelsLastView:
    """Open a TIFF/BigTIFF (tiled, striped or pyramidal) lazily as an (H, W, C) view of level 0 of series 0.

    Call ``close()`` (or use it as a context manager) to release the file; it is also closed when garbage-collected.
    """
    path = Path(path)
    check_file(path)
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"{path} is not a readable TIFF file ({exc}); check that the file is really a TIFF and re-export it"
        ) from exc
    try:
        if not tif.series:
            raise InputError(f"TIFF file {path} holds no image; re-export it with its image data")
        level = tif.series[0].levels[0]
        _check_not_truncated(level, path)
        store = tif.aszarr(series=0, level=0)
        array = zarr.open_array(store, mode="r")
    except InputError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise InputError(
            f"TIFF file {path} cannot be read ({type(exc).__name__}: {exc}); re-export it as a plain tiled TIFF"
        ) from exc

    def close() -> None:
        store.close()
        tif.close()

    try:
        return ChannelsLastView(array, level.axes, str(path), closer=close,
                                reopen=functools.partial(open_tiff, str(path)))
    except InputError:
        close()
        raise


def _tiles(source: Any, tile: tuple[int, int]) -> Iterator[np.ndarray]:
    # row-major over the image, as TIFF stores tiles; each read is one chunk of the source when chunks == tile
    height, width = source.shape[:2]
    for y in range(0, height, tile[0]):
        for x in range(0, width, tile[1]):
            yield np.asarray(source[y : y + tile[0], x : x + tile[1]])


def write_tiff(
    path: str | os.PathLike,
    source: Any,
    *,
    tile: tuple[int, int] = (256, 256),
    palette: Any = None,
    metadata: dict | None = None,
) -> None:
    """Write ``source`` ((H, W) or (H, W, C) array-like, sliceable) as a tiled, zlib-compressed BigTIFF, atomically.

    Tiles are read from ``source`` and written one at a time, so memory stays O(tile) for any image size. Tile
    sides must be multiples of 16 (a TIFF rule). (H, W, 3) uint8 is written as RGB, (H, W) uint8 with a
    ``palette`` ((K, 3) uint8) as a palette image, anything else as grey samples.
    """
    if tile[0] % 16 or tile[1] % 16:
        raise ValueError(f"TIFF tile sides must be multiples of 16, got {tile}")
    shape, dtype = tuple(source.shape), np.dtype(source.dtype)
    options: dict[str, Any] = {"photometric": "minisblack"}
    if len(shape) == 3 and shape[2] == 3 and dtype == np.uint8:
        options = {"photometric": "rgb"}
    elif len(shape) == 2 and palette is not None and dtype == np.uint8:
        colours = np.zeros((256, 3), dtype=np.uint16)
        given = np.asarray(palette, dtype=np.uint16).reshape(-1, 3)[:256]
        colours[: len(given)] = given * 257  # TIFF colour maps are 16-bit
        options = {"photometric": "palette", "colormap": colours.T}
    if len(shape) == 3:
        options["planarconfig"] = "contig"
    with atomic_file(path) as f, tifffile.TiffWriter(f, bigtiff=True) as writer:
        writer.write(
            _tiles(source, tile),
            shape=shape,
            dtype=dtype,
            tile=tile,
            compression="zlib",
            metadata=dict(metadata or {}),
            **options,
        )
