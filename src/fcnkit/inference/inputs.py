"""What an image must be to go into a model: the checks and the one pixel conversion at the API's door.

``predict``, ``predict_tiled``, ``plan_prediction``, ``predict_dask`` and ``fcnkit predict`` all call
:func:`model_input`, which applies :mod:`fcnkit.io.pixels` lazily (window by window) and says, once per call, when
the values contradict the model's convention (fcnkit models take 0-255 pixel values, like the image files).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from fcnkit.errors import InputError
from fcnkit.io.pixels import CHANNEL_CONVERSIONS, ConvertedImage, PixelConversion, conversion_for, converted
from fcnkit.layers import takes_0_255  # the rule lives beside Normalize; kept importable from here

SAMPLE = 128  # side of each window read to check the value range (top-left corner and centre)


class PixelRangeWarning(UserWarning):
    """The image's values contradict the model's input convention (e.g. floats in [0, 1] for a 0-255 model)."""


def expected_channels(model: torch.nn.Module) -> int | None:
    """The number of input channels ``model`` takes: its fcnkit spec's ``in_channels``, else its first Conv2d's;
    ``None`` when neither says."""
    spec = getattr(model, "fcnkit_spec", None)
    expected = spec.get("in_channels") if isinstance(spec, dict) else None
    if expected is None:
        first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        expected = first.in_channels if first is not None else None
    return expected


def scales_16_bit(model: torch.nn.Module) -> bool:
    """Whether a 16-bit image is divided by 257 for ``model``: it takes 0-255 values and was not trained on 16-bit
    values as stored (``fcnkit_meta["input_16_bit"] == "kept"``, e.g. the nuclei image, 8-bit data in a 16-bit
    file)."""
    meta = getattr(model, "fcnkit_meta", None) or {}
    return takes_0_255(model) and meta.get("input_16_bit", "scaled") != "kept"


def check_array_like(image: Any) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image given to the API; a tensor, a shapeless object or a non-numeric dtype is refused."""
    if isinstance(image, torch.Tensor):
        raise InputError(f"image is a torch.Tensor of shape {tuple(image.shape)}; expected a channels-last (H, W, C) "
                         f"or (H, W) array; pass x.permute(1, 2, 0).cpu().numpy() for a (C, H, W) tensor "
                         f"(x[0].permute(1, 2, 0).cpu().numpy() for one image of an NCHW batch).")
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) not in (2, 3):
        found = "no shape" if shape is None else f"shape {tuple(shape)}"
        raise InputError(f"image has {found}; expected an (H, W, C) or (H, W) array; for an NCHW tensor pass "
                         f"x[0].permute(1, 2, 0).cpu().numpy().")
    kind = np.dtype(getattr(image, "dtype", np.float32)).kind
    if kind not in "buif":
        raise InputError(f"image has dtype {image.dtype}; expected uint8, an integer or a float type; convert it "
                         f"with .astype(np.float32).")
    height, width = int(shape[0]), int(shape[1])
    channels = int(shape[2]) if len(shape) == 3 else 1
    if min(height, width, channels) == 0:
        raise InputError(f"image has shape {tuple(shape)}; expected at least one pixel and one channel.")
    return height, width, channels


def check_channels(model: torch.nn.Module, channels: int) -> None:
    """Refuse an image whose channels the model cannot take even after the pixel conversion, with a fitting fix."""
    expected = expected_channels(model)
    if expected is None or expected == channels:
        return
    if channels in (2, 4):
        fix = (f"the last channel looks like alpha: drop it (image[..., :{channels - 1}]) and convert the rest to "
               f"{expected} channel(s)")
    elif channels == 1:
        fix = f"repeat the grey channel (np.repeat(image, {expected}, axis=2))" if expected > 1 else ""
    else:
        fix = f"select {expected} of its channels (e.g. image[..., :{expected}])"
    raise InputError(f"image has {channels} channel(s) but the model expects {expected}; {fix}, or use a model "
                     f"built with in_channels={channels}.")


def model_input(model: torch.nn.Module, image: Any, *, check_range: bool = True) -> Any:
    """``image`` as ``model`` takes it: the pixel rule of :mod:`fcnkit.io.pixels`, applied lazily per window.

    Grey -> RGB and alpha dropped when the model takes 3 channels; 16-bit scaled to 0-255 for a model that takes
    0-255 values (fcnkit models; a foreign model gets its values as given); floats kept. With ``check_range``,
    a :class:`PixelRangeWarning` says when the values (read from two small windows) contradict a 0-255 model. An
    image that ``model_input`` returned already passes through unchanged.
    """
    if isinstance(image, ConvertedImage) and image.range_checked:
        return image
    _, _, channels = check_array_like(image)
    model = _module(model)
    if model is None:
        return image  # not a model: the caller's model check says so
    raw = takes_0_255(model)
    conversion = conversion_for(channels=channels, dtype=image.dtype, wanted=expected_channels(model),
                                scale_16_bit=scales_16_bit(model))
    _check_pages(image, conversion)
    if check_range and raw:
        warn_on_range(image, stacklevel=4)
    return converted(image, conversion, range_checked=True)


def conversion_of(model: torch.nn.Module, image: Any) -> PixelConversion:
    """The conversion :func:`model_input` applies to ``image`` for ``model`` (``.notes()`` says it in words)."""
    _, _, channels = check_array_like(image)
    model = _module(model)
    if model is None:
        return conversion_for(channels=channels, dtype=image.dtype, wanted=None, scale_16_bit=False)
    conversion = conversion_for(channels=channels, dtype=image.dtype, wanted=expected_channels(model),
                                scale_16_bit=scales_16_bit(model))
    _check_pages(image, conversion)
    return conversion


def _check_pages(image: Any, conversion: PixelConversion) -> None:
    """Refuse a stack of pages read as channels (a TIFF's generic 'I'/'Q' axis) when the conversion would drop one
    of them as an "alpha" channel: two pages are two images, not grey and alpha."""
    axis = getattr(image, "pages_as_channels", None)
    if axis is None or conversion.same_channels or conversion.channels_in not in (2, 4):
        return
    n = conversion.channels_in
    raise InputError(f"{getattr(image, 'source', 'image')}: expected one 2-D image, found a stack of {n} pages (axis "
                     f"{axis}={n}), which would be read as the channels of one image ({conversion.notes()[0]}, page "
                     f"{n} lost); save the page to predict as its own image, or write the channels as samples "
                     f"(axis S).")


def _module(model: Any) -> torch.nn.Module | None:
    """The ``nn.Module`` behind ``model`` (a prepared inference model keeps the caller's as ``source``)."""
    if not isinstance(model, torch.nn.Module):
        model = getattr(model, "source", None)
    return model if isinstance(model, torch.nn.Module) else None


def check_range(model: torch.nn.Module, image: Any, *, stacklevel: int = 3) -> None:
    """:func:`warn_on_range` when ``model`` takes 0-255 values (``stacklevel`` as in ``warnings.warn``, counted from
    the caller of this function)."""
    model = _module(model)
    if model is not None and takes_0_255(model):
        warn_on_range(image, stacklevel=stacklevel + 1)


def _sample(image: Any) -> np.ndarray:
    height, width = int(image.shape[0]), int(image.shape[1])
    h, w = min(height, SAMPLE), min(width, SAMPLE)
    y, x = (height - h) // 2, (width - w) // 2
    windows = [np.asarray(image[0:h, 0:w]), np.asarray(image[y:y + h, x:x + w])]
    return np.concatenate([win.reshape(-1) for win in windows])


def warn_on_range(image: Any, *, stacklevel: int = 2) -> None:
    """Warn when a float image's values look like [0, 1] or already normalised, given to a model that takes 0-255."""
    if np.dtype(image.dtype).kind != "f":
        return
    values = _sample(image)
    values = values[np.isfinite(values)]
    if not values.size:
        return
    low, high = float(values.min()), float(values.max())
    if 0.0 <= low and 0.0 < high <= 1.0:
        warnings.warn(f"image values lie in [0, 1] (max {high:.3g} in a sample) but this fcnkit model takes 0-255 "
                      f"pixel values, as stored in image files; pass image * 255 (or the uint8 image).",
                      PixelRangeWarning, stacklevel=stacklevel)
    elif low < 0.0 and high <= 10.0:
        warnings.warn(f"image values run from {low:.3g} to {high:.3g}, which looks already normalised, but this "
                      f"fcnkit model normalises 0-255 pixel values itself; pass the raw image (0-255).",
                      PixelRangeWarning, stacklevel=stacklevel)


__all__ = ["CHANNEL_CONVERSIONS", "PixelRangeWarning", "check_array_like", "check_channels", "check_range",
           "conversion_of", "expected_channels", "model_input", "takes_0_255", "warn_on_range"]
