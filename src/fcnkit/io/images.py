"""PNG and JPEG through Pillow: reading as (H, W, C) arrays, converting for datasets, and atomic ``write_png``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from fcnkit.errors import InputError, OutputError
from fcnkit.io.atomic import atomic_file
from fcnkit.io.pixels import conversion_for, native

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_file(path: Path) -> None:
    """Refuse a path that is missing, a folder, or an empty file, naming it and the fix."""
    if not path.exists():
        raise InputError(f"image file {path} does not exist; check the path and its spelling")
    if path.is_dir():
        raise InputError(f"{path} is a folder, expected an image file; give the path of the image inside it")
    if path.stat().st_size == 0:
        raise InputError(f"image file {path} is empty (0 bytes); re-export or re-download it")


def load_pillow(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image with Pillow, turning every failure into an ``InputError`` naming the file.

    A JPEG's (or PNG's) EXIF orientation is applied, so the pixels come upright as image viewers show them (a phone
    photo held in portrait is stored landscape with orientation 6) and outputs line up with what the user sees.
    Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is enforced strictly: an image above it is
    refused rather than merely warned about, because decoding it whole could exhaust memory.
    """
    path = Path(path)
    check_file(path)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"image file {path} has more pixels than Pillow's decompression-bomb limit of {limit:,} "
            f"(PIL.Image.MAX_IMAGE_PIXELS) ({exc}); convert it to a tiled TIFF or OME-Zarr, which fcnkit reads in "
            "windows, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"{path} is not an image Pillow can read (its contents are not PNG or JPEG data); "
            "check that the file is really an image and re-export it"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"image file {path} is truncated or corrupted ({exc}); re-export or re-download it"
        ) from exc
    return image


def pillow_to_array(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image as an (H, W, C) array with its stored values (palettes resolved to colours).

    16-bit grey stays uint16; ``"1"`` becomes uint8 0/255; CMYK and YCbCr become RGB.
    """
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("L" if image.mode == "1" else "RGB")
    array = np.asarray(image)
    if image.mode == "I" and array.size and 0 <= array.min() and array.max() <= 65535:
        array = array.astype(np.uint16)  # older Pillow opens 16-bit grey PNGs as 32-bit "I"
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return array


def read_pillow(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG or JPEG file as an (H, W, C) numpy array (grey -> (H, W, 1))."""
    return pillow_to_array(load_pillow(path))


def rgb_from_array(array: np.ndarray, source: str) -> np.ndarray:
    """(H, W, C) array -> (H, W, 3) uint8 by the one pixel rule (:mod:`fcnkit.io.pixels`): grey repeated, alpha
    dropped, 16-bit scaled to 8-bit; other pixel types are refused (datasets hold 8- or 16-bit images)."""
    array = native(array)
    channels = array.shape[2]
    if channels not in (1, 2, 3, 4):
        raise InputError(
            f"{source} has {channels} channels; read_image(mode='rgb') expects grey, grey+alpha, RGB or RGBA; "
            "save a 3-channel version of the image"
        )
    if array.dtype not in (np.uint8, np.uint16, np.bool_):
        raise InputError(
            f"{source} has pixel type {array.dtype}; read_image(mode='rgb') expects 8- or 16-bit unsigned pixels; "
            "convert the image to 8-bit (uint8) first"
        )
    array = conversion_for(channels=channels, dtype=array.dtype, wanted=3).apply(array)
    return np.ascontiguousarray(array)


def label_from_array(array: np.ndarray, source: str) -> np.ndarray:
    """(H, W, C) array of class indices -> (H, W) uint8; colour masks are refused, values above 255 too."""
    array = native(array)
    if array.shape[2] > 1:
        colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
        if not (colour == colour[:, :, :1]).all():
            raise InputError(
                f"mask {source} is a colour (RGB) image, expected class indices (a palette PNG or 8-bit grey "
                "image where each pixel value is a class, 255 = ignore); map each colour to its class index and "
                "save the mask as a palette or greyscale PNG"
            )
    array = array[:, :, 0]  # grey saved as RGB(A): every colour channel is equal
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"mask {source} has pixel type {array.dtype}, expected integer class indices; "
            "save the mask as an 8-bit palette or greyscale PNG"
        )
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(
            f"mask {source} holds values from {array.min()} to {array.max()}, expected class indices 0-255 "
            "(255 = ignore); renumber the classes into 0-254"
        )
    return array.astype(np.uint8)


def _png_image(array: np.ndarray, palette: Any, path: Path) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    dtype_ok = array.dtype == np.uint8 or (array.dtype == np.uint16 and array.ndim == 2)
    if not (shape_ok and dtype_ok):
        raise OutputError(
            f"cannot write {path}: PNG holds (H, W) uint8/uint16 or (H, W, 3|4) uint8 arrays, got shape "
            f"{array.shape} {array.dtype}; write float or many-channel results to .zarr, .ome.zarr or .tif instead"
        )
    if palette is None:
        return Image.fromarray(np.ascontiguousarray(array))
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if array.ndim != 2 or array.dtype != np.uint8 or len(colours) > 256:
        raise OutputError(
            f"cannot write {path} with a palette: expected (H, W) uint8 labels and at most 256 colours, got "
            f"{array.shape} {array.dtype} and {len(colours)} colours; drop the palette or write labels"
        )
    image = Image.fromarray(np.ascontiguousarray(array))  # putpalette turns "L" into "P", values kept as indices
    # a full 256-entry palette keeps PNG at 8 bits per pixel; with a short palette Pillow packs the pixels into
    # fewer bits and truncates indices beyond the palette
    full = np.zeros((256, 3), dtype=np.uint8)
    full[: len(colours)] = colours
    image.putpalette(full.flatten().tolist())
    return image


def write_png(path: str | os.PathLike, array: np.ndarray, *, palette: Any = None, metadata: dict | None = None) -> None:
    """Write ``array`` ((H, W), (H, W, 1|3|4) uint8, or (H, W) uint16) to a PNG file atomically.

    ``palette`` ((K, 3) uint8) makes a palette PNG of (H, W) uint8 labels, as VOC masks are; ``metadata`` is stored
    as JSON in a text chunk named ``fcnkit``. The file appears complete or not at all (temp file, fsync, rename).
    """
    path = Path(path)
    image = _png_image(np.asarray(array), palette, path)
    info = PngImagePlugin.PngInfo()
    if metadata:
        info.add_text("fcnkit", json.dumps(metadata))
    with atomic_file(path) as f:
        image.save(f, format="PNG", pnginfo=info)
