"""A legend strip for label pictures: one colour swatch and class name per class, drawn with Pillow.

``fcnkit predict --output overlay`` appends it below the overlay, so a picture shared on its own still says which
colour is which class. Text size follows the picture's width, so the legend stays readable when a large overlay is
viewed scaled down to a screen.

>>> strip = legend_strip(640, [("background", (0, 0, 0)), ("cell", (128, 0, 0))])   # doctest: +SKIP
>>> strip.shape   # (rows, 640, 3) uint8
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BACKGROUND = (255, 255, 255)
MIN_FONT_PX = 12


def font_size(width: int) -> int:
    """Legend text height in pixels for a picture ``width`` pixels wide: 1/50 of it, at least ``MIN_FONT_PX``."""
    return max(MIN_FONT_PX, int(width) // 50)


def legend_strip(width: int, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """An ``(h, width, 3)`` uint8 strip listing ``entries`` (name, RGB colour) left to right, wrapping to new rows.

    Each entry is a square swatch (outlined, so black and white classes show) followed by its name.
    """
    from PIL import Image, ImageDraw, ImageFont

    size = font_size(width)
    font = ImageFont.load_default(size=size)
    pad, swatch = size // 2, size
    placed, x, row = [], pad, 0
    for name, colour in entries:
        text_w = int(np.ceil(font.getlength(name)))
        item_w = swatch + pad // 2 + text_w + 2 * pad
        if x > pad and x + item_w > width:
            x, row = pad, row + 1
        placed.append((x, row, name, tuple(int(c) for c in colour)))
        x += item_w
    line = size + pad
    strip = Image.new("RGB", (int(width), pad + (row + 1) * line), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for x, row, name, colour in placed:
        top = pad + row * line
        draw.rectangle((x, top, x + swatch - 1, top + swatch - 1), fill=colour, outline=(96, 96, 96))
        draw.text((x + swatch + pad // 2, top), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)
