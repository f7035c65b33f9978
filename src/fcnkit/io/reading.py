"""Opening any image fcnkit reads, by its suffix: ``open_image`` for inference, ``read_image`` for datasets, and
``output_metadata``, what an output fcnkit wrote records (which model and input computed it).

PNG/JPEG go through Pillow (:mod:`fcnkit.io.images`), TIFF/BigTIFF through tifffile (:mod:`fcnkit.io.tiff`), zarr
and OME-Zarr through zarr (:mod:`fcnkit.io.zarr_arrays`); pixel values follow :mod:`fcnkit.io.pixels`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fcnkit.errors import InputError
from fcnkit.io.images import PILLOW_SUFFIXES, check_file, label_from_array, load_pillow, pillow_to_array, \
    read_pillow, rgb_from_array
from fcnkit.io.tiff import TIFF_SUFFIXES, open_tiff
from fcnkit.io.zarr_arrays import is_zarr_path, open_zarr

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


def read_image(path: str | os.PathLike, *, mode: str = "rgb") -> np.ndarray:
    """Read a whole image for training or evaluation.

    ``mode="rgb"`` -> (H, W, 3) uint8 (grey expanded, alpha dropped, palette resolved to colours, 16-bit scaled).
    ``mode="label"`` -> (H, W) uint8 class indices (a palette PNG's indices as stored, a grey image's values;
    colour masks, lossy JPEG masks and values above 255 are refused). PNG/JPEG go through Pillow; TIFF and zarr
    inputs are read whole through ``open_image``.

    >>> read_image("masks/2007_000032.png", mode="label").shape   # doctest: +SKIP
    (281, 500)
    """
    if mode not in ("rgb", "label"):
        raise InputError(f"read_image mode must be 'rgb' or 'label', got {mode!r}; pass one of those")
    path = Path(path)
    source = str(path)
    if path.suffix.lower() in PILLOW_SUFFIXES:
        image = load_pillow(path)
        if mode == "rgb":
            return rgb_from_array(pillow_to_array(image), source)
        if image.format == "JPEG":
            raise InputError(
                f"mask {source} is a JPEG; JPEG is lossy, so the edges of its regions carry invented class values; "
                "save masks as PNG"
            )
        if image.mode in ("P", "PA"):
            indices = np.asarray(image)
            return np.ascontiguousarray(indices if indices.ndim == 2 else indices[:, :, 0], dtype=np.uint8)
        return label_from_array(pillow_to_array(image), source)
    view = open_image(path)
    array = np.asarray(view[:, :])
    if hasattr(view, "close"):
        view.close()
    return rgb_from_array(array, source) if mode == "rgb" else label_from_array(array, source)


def output_metadata(path: str | os.PathLike) -> dict | None:
    """The ``metadata`` a finished output was stored with (PNG text, TIFF description, zarr attributes), or None if
    it has none or cannot be read."""
    import json

    from fcnkit.io.outputs import output_format

    path = Path(path)
    try:
        fmt = output_format(path)
        if fmt == "png":
            from PIL import Image

            with Image.open(path) as image:
                text = image.text.get("fcnkit")  # type: ignore[attr-defined]
            stored = json.loads(text) if text else None
        elif fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                stored = tif.shaped_metadata[0] if tif.shaped_metadata else None
        else:
            import zarr

            stored = zarr.open(str(path), mode="r").attrs.get("fcnkit")
    except Exception:  # noqa: BLE001 - a file this cannot read has no metadata to compare; the caller decides
        return None
    return dict(stored) if isinstance(stored, dict) else None
