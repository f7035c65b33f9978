"""Image readers and streaming writers: PNG/JPEG, TIFF/BigTIFF, zarr v3 and OME-Zarr.

``open_image(path)`` gives an (H, W, C) array-like whose windows ``img[y0:y1, x0:x1]`` are numpy arrays: a numpy
array for PNG/JPEG, a lazy view for TIFF/zarr/OME-Zarr that reads only the tiles under the window.
``read_image(path, mode="rgb"|"label")`` reads a whole image for datasets. ``create_output`` streams a result to
``.png``, ``.zarr``, ``.ome.zarr`` or ``.tif`` and finalises it atomically; ``Output.mark_done`` journals tiles for
resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fcnkit.errors import InputError
from fcnkit.io.images import PILLOW_SUFFIXES, check_file, read_image, read_pillow, write_png
from fcnkit.io.outputs import Output, create_output, output_status
from fcnkit.io.tiff import TIFF_SUFFIXES, open_tiff, write_tiff
from fcnkit.io.views import ChannelsLastView
from fcnkit.io.zarr_arrays import is_zarr_path, open_zarr

__all__ = [
    "ChannelsLastView", "INPUT_SUFFIXES", "Output", "create_output", "open_image", "output_status", "read_image",
    "write_png", "write_tiff",
]

INPUT_SUFFIXES = (*PILLOW_SUFFIXES, *TIFF_SUFFIXES, ".zarr", ".ome.zarr")


def open_image(path: str | os.PathLike) -> Any:
    """Open an image for inference as an (H, W, C) array-like; a 2-D grey image becomes (H, W, 1).

    PNG/JPEG -> numpy array (palette resolved to colours, 16-bit kept as uint16); TIFF/BigTIFF (level 0 of a
    pyramid), zarr arrays and OME-Zarr images (level 0, t/z singletons dropped) -> a lazy ``ChannelsLastView`` with
    ``.shape``, ``.dtype``, ``.ndim`` and ``img[y0:y1, x0:x1] -> numpy``; memory stays O(window).

    >>> img = open_image("slide.tif")            # doctest: +SKIP
    >>> img.shape, img[0:256, 0:256].shape       # doctest: +SKIP
    ((40000, 30000, 3), (256, 256, 3))
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.name.lower().endswith(".zarr") or is_zarr_path(path):
        return open_zarr(path)
    if suffix in TIFF_SUFFIXES:
        return open_tiff(path)
    if suffix in PILLOW_SUFFIXES:
        return read_pillow(path)
    check_file(path)
    raise InputError(
        f"{path} has an unsupported suffix {suffix or '(none)'!r}; fcnkit reads {', '.join(INPUT_SUFFIXES)}; "
        "convert the image to PNG or TIFF"
    )
