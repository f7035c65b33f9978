"""Joint image/label transforms for patch training: padded crops, flips, scale jitter.

The image and its label always move together; the label is resized with nearest neighbour (never blending two
classes into a third) and padded with 255 so padding is ignored by the loss and the metrics.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from fcnkit.errors import DataError

__all__ = ["crop_padded", "hflip_pair", "random_patch", "resize_pair"]

IGNORE = 255


def crop_padded(array: np.ndarray, top: int, left: int, height: int, width: int, fill: int) -> np.ndarray:
    """``array[top:top+height, left:left+width]`` where rows/columns outside the array read as ``fill``.

    ``top``/``left`` may be negative and the window may extend past the far edge. Works on ``(H, W)`` and
    ``(H, W, C)`` arrays; the result is ``(height, width)`` or ``(height, width, C)`` and a new array.
    """
    out = np.full((height, width, *array.shape[2:]), fill, dtype=array.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, array.shape[0]), min(left + width, array.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``(H, W, 3)`` uint8 image (bilinear) and ``(H, W)`` uint8 label (nearest) to ``size = (h, w)``."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, label
    resized = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))  # np.array: a writable copy
    return resized, np.array(Image.fromarray(label).resize((w, h), Image.NEAREST))


def hflip_pair(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image and label left-right."""
    return image[:, ::-1], label[:, ::-1]


def random_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch: tuple[int, int],
    rng: np.random.Generator,
    *,
    flips: bool = True,
    scale_jitter: tuple[float, float] | None = (0.75, 1.25),
    focus: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``patch = (h, w)`` crop of a scaled, maybe mirrored copy of ``(image, label)``.

    With probability ``focus`` the crop is centred on a random foreground pixel (label neither 0 = background nor
    255 = ignore), when the label has one: in scenes that are mostly background, uniform crops teach a network to
    answer "background" everywhere long before it learns the objects.

    Scale factor ``f`` is drawn uniformly from ``scale_jitter`` (None: no scaling); rather than resizing the
    whole image, the crop is taken over ``patch / f`` source pixels and only that window is resized, so large
    images cost no more than small ones. A source smaller than the window is placed at a random offset and padded
    (image 0, label 255). The random draws are always the same four, in the same order, so a generator seeded
    alike gives the same patch.

    Returns:
        ``(h, w, 3)`` uint8 image and ``(h, w)`` uint8 label, contiguous.
    """
    if image.ndim != 3 or label.shape != image.shape[:2]:
        raise DataError(
            f"expected an (H, W, 3) image with an (H, W) label, got {image.shape} and {label.shape}; "
            f"the dataset must return matching image and label sizes."
        )
    ph, pw = patch
    low, high = scale_jitter if scale_jitter is not None else (1.0, 1.0)
    factor = rng.uniform(low, high)
    ch, cw = max(1, int(round(ph / factor))), max(1, int(round(pw / factor)))
    oy, ox = rng.random(2)
    flip = rng.random() < 0.5
    h, w = label.shape
    # Offsets range over [0, H - ch] when the source is larger, over [H - ch, 0] (the source inside padding) if not.
    top = int(round(min(0, h - ch) + oy * abs(h - ch)))
    left = int(round(min(0, w - cw) + ox * abs(w - cw)))
    if focus > 0 and rng.random() < focus:
        ys, xs = np.nonzero((label != 0) & (label != IGNORE))
        if len(ys):
            pick = rng.integers(len(ys))
            top = int(np.clip(ys[pick] - ch // 2, min(0, h - ch), max(0, h - ch)))
            left = int(np.clip(xs[pick] - cw // 2, min(0, w - cw), max(0, w - cw)))
    crop_image = crop_padded(image, top, left, ch, cw, 0)
    crop_label = crop_padded(label, top, left, ch, cw, IGNORE)
    crop_image, crop_label = resize_pair(crop_image, crop_label, (ph, pw))
    if flips and flip:
        crop_image, crop_label = hflip_pair(crop_image, crop_label)
    return np.ascontiguousarray(crop_image), np.ascontiguousarray(crop_label)
