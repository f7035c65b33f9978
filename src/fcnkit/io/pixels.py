"""The one rule for turning stored pixels into the values a model or a picture takes.

A conversion changes only what the model could not use anyway, and it is the same everywhere (``fcnkit.predict``,
``predict_tiled``, ``predict_dask``, ``fcnkit predict``, dataset reading and the pictures):

- channels: grey is repeated to RGB when the model takes 3 channels, an alpha channel is dropped
  (``CHANNEL_CONVERSIONS`` lists every case; any other mismatch is left for the caller to refuse);
- 16-bit unsigned values are scaled to 8 bits, ``round(v / 257)`` (65535 -> 255 exactly), for models trained on
  0-255 values; a boolean image becomes 0/255;
- every other value (uint8, other integers, floats) is kept as given.

:class:`ConvertedImage` applies a :class:`PixelConversion` window by window, so a huge lazy image stays lazy and
memory stays O(window). :func:`display_rgb` is the same rule for pictures, plus a float image in [0, 1] shown as
0-255.

>>> conversion = conversion_for(channels=4, dtype=np.uint16, wanted=3)
>>> conversion.notes()
['alpha dropped', '16-bit values scaled to 8 bits (/257)']
>>> conversion.apply(np.full((2, 2, 4), 65535, np.uint16))[0, 0]
array([255, 255, 255], dtype=uint8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fcnkit.errors import InputError

# (channels stored, channels wanted) -> what the conversion does; nothing else is converted
CHANNEL_CONVERSIONS = {
    (1, 3): "grey repeated to RGB",
    (2, 3): "alpha dropped and grey repeated to RGB",
    (4, 3): "alpha dropped",
    (2, 1): "alpha dropped",
}
SCALE_NOTE = "16-bit values scaled to 8 bits (/257)"


def native(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order (big-endian 16-bit pixels compare unequal to np.uint16 until swapped)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def is_16_bit(dtype: Any) -> bool:
    dtype = np.dtype(dtype)
    return dtype.kind == "u" and dtype.itemsize == 2


def to_8_bit(array: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as ``round(v / 257)``; bool -> 0/255; anything else unchanged."""
    array = native(array)
    if is_16_bit(array.dtype):
        return np.round(array / 257.0).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    return array


@dataclass(frozen=True)
class PixelConversion:
    """``channels_in`` -> ``channels_out`` (see ``CHANNEL_CONVERSIONS``), and 16-bit -> 8-bit when ``scale``."""

    channels_in: int
    channels_out: int
    scale: bool = False

    @property
    def identity(self) -> bool:
        return self.channels_in == self.channels_out and not self.scale

    def notes(self) -> list[str]:
        """What the conversion does, in words (empty for the identity)."""
        done = [CHANNEL_CONVERSIONS[(self.channels_in, self.channels_out)]] if not self.same_channels else []
        return done + ([SCALE_NOTE] if self.scale else [])

    @property
    def same_channels(self) -> bool:
        return self.channels_in == self.channels_out

    def dtype(self, stored: Any) -> np.dtype:
        """The dtype a window of ``stored`` dtype has after the conversion."""
        return np.dtype(np.uint8) if self.scale and (is_16_bit(stored) or stored == np.bool_) else np.dtype(stored)

    def apply(self, window: np.ndarray) -> np.ndarray:
        """``(h, w)`` or ``(h, w, channels_in)`` -> ``(h, w, channels_out)``."""
        window = np.asarray(window)
        if window.ndim == 2:
            window = window[:, :, np.newaxis]
        if self.scale:
            window = to_8_bit(window)
        have = window.shape[2]
        if have != self.channels_out:
            if have in (2, 4):
                window = window[:, :, : have - 1]  # the last of grey+alpha / RGBA is the alpha channel
            if window.shape[2] == 1 and self.channels_out > 1:
                window = np.repeat(window, self.channels_out, axis=2)
        return window


def conversion_for(*, channels: int, dtype: Any, wanted: int | None, scale_16_bit: bool = True) -> PixelConversion:
    """The conversion that gives a model taking ``wanted`` channels (``None``: whatever it gets) an image of
    ``channels`` channels and ``dtype``. A channel mismatch outside ``CHANNEL_CONVERSIONS`` is kept as it is (the
    model's own check then names it). ``scale_16_bit``: whether the model takes 0-255 values (fcnkit models do)."""
    out = channels if wanted is None or (channels, wanted) not in CHANNEL_CONVERSIONS else wanted
    scale = scale_16_bit and (is_16_bit(dtype) or np.dtype(dtype) == np.bool_)
    return PixelConversion(channels, out, scale=bool(scale))


def _as_slice(index: Any) -> Any:
    if isinstance(index, (int, np.integer)):
        return slice(index, index + 1) if index != -1 else slice(-1, None)
    return index


class ConvertedImage:
    """A lazy ``(H, W, channels_out)`` view of an ``(H, W[, C])`` array-like that converts each window as it is read.

    ``view[y0:y1, x0:x1]`` reads ``image[y0:y1, x0:x1]`` only, then applies ``conversion``; a third index selects
    channels of the converted window; integers drop their axis as numpy does. ``range_checked`` records that the
    value range was already checked against the model (see :func:`fcnkit.inference.inputs.model_input`).
    """

    def __init__(self, image: Any, conversion: PixelConversion, *, range_checked: bool = False) -> None:
        self.image = image
        self.conversion = conversion
        self.range_checked = range_checked
        self.shape = (int(image.shape[0]), int(image.shape[1]), conversion.channels_out)
        self.dtype = conversion.dtype(np.dtype(image.dtype))
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ConvertedImage({type(self.image).__name__}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3 or any(k is Ellipsis for k in key):
            raise IndexError(f"index the image as img[y0:y1, x0:x1] or img[y0:y1, x0:x1, c]; got {key!r}")
        rows, cols, chans = key + (slice(None),) * (3 - len(key))
        # integers read a one-pixel slice (the source keeps its axes), dropped again at the end as numpy would
        window = self.conversion.apply(np.asarray(self.image[_as_slice(rows), _as_slice(cols)]))
        drop = tuple(0 if isinstance(k, (int, np.integer)) else slice(None) for k in (rows, cols))
        return window[drop + (chans,)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:, :]
        return data if dtype is None else data.astype(dtype)


def converted(image: Any, conversion: PixelConversion, *, range_checked: bool = False) -> Any:
    """``image`` itself when ``conversion`` changes nothing and no check needs recording, else a ConvertedImage."""
    if conversion.identity and not range_checked:
        return image
    return ConvertedImage(image, conversion, range_checked=range_checked)


def display_rgb(image: Any) -> np.ndarray:
    """Any ``(H, W)`` or ``(H, W, C)`` image as ``(H, W, 3)`` uint8 for a picture.

    The model rule (grey repeated, alpha dropped, 16-bit scaled, bool to 0/255) with three more steps for a
    picture: more than 4 channels show their first three, a float image whose values lie in [0, 1] is scaled to
    0-255, and everything is rounded and clipped to 0-255.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3 or array.shape[2] == 0:
        raise InputError(f"image: expected an (H, W) or (H, W, C) array, got shape {array.shape}; pass one image "
                         f"with channels last.")
    is_float = array.dtype.kind == "f"
    array = conversion_for(channels=array.shape[2], dtype=array.dtype, wanted=3).apply(array)
    array = array[:, :, :3] if array.shape[2] >= 3 else np.repeat(array[:, :, :1], 3, axis=2)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    array = array.astype(np.float64)
    if is_float and array.size and np.nanmax(array) <= 1.0:
        array = array * 255.0
    return np.clip(np.rint(np.nan_to_num(array)), 0, 255).astype(np.uint8)
