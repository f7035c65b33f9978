"""What every dataset shares: the split names, the VOC colour map, reading and checking an image/mask pair, and the
base of the datasets backed by such pairs of files.

Kept apart from the package ``__init__`` (which opens datasets by spec) so that each dataset module can use it
without importing the package that imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fcnkit.errors import DataError
from fcnkit.io.reading import read_image

SPLITS = ("train", "val")


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, ``(n, 3)`` uint8: class ``c``'s bits are spread over the high bits of R, G, B.

    Bit ``3k`` of ``c`` goes to bit ``7 - k`` of red, bit ``3k + 1`` to green, bit ``3k + 2`` to blue, so the first
    classes get well separated colours (1 = dark red, 2 = dark green, 15 = pinkish person).
    """
    c = np.arange(n, dtype=np.int64)
    palette = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):
        for channel in range(3):
            palette[:, channel] |= ((c >> (3 * k + channel)) & 1) << (7 - k)
    return palette.astype(np.uint8)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}; pass split='train' or 'val'.")
    return split


def check_pair(image: np.ndarray, label: np.ndarray, mask_path: Any, num_classes: int) -> None:
    """Raise DataError unless ``label`` has ``image``'s size and holds only ``0..num_classes-1`` and 255."""
    if label.shape != image.shape[:2]:
        raise DataError(
            f"mask {mask_path} is {label.shape[1]}x{label.shape[0]} pixels but its image is "
            f"{image.shape[1]}x{image.shape[0]}; save each mask at its image's size."
        )
    bad = (label >= num_classes) & (label != 255)
    if bad.any():
        values = np.unique(label[bad]).tolist()[:5]
        raise DataError(
            f"mask {mask_path} holds values {values}, expected class indices 0-{num_classes - 1} or 255 (ignore); "
            f"check --num-classes or map those values to classes or to 255."
        )


def read_pair(image_path: Any, mask_path: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An image file as (H, W, 3) uint8 and its mask file as (H, W) uint8 class indices, checked by
    :func:`check_pair`: the item of every file-backed dataset (VOC, folder)."""
    image = read_image(image_path, mode="rgb")
    label = read_image(mask_path, mode="label")
    check_pair(image, label, mask_path, num_classes)
    return image, label


class FilePairs:
    """A dataset of ``items``, (image file, mask file) pairs found when it is opened; ``dataset[i]`` reads pair ``i``
    (:func:`read_pair`). The base of the VOC and folder datasets: each sets ``root``, ``split``, ``items``,
    ``num_classes``, ``class_names`` and ``palette``."""

    root: Path
    split: str
    items: list[tuple[Path, Path]]
    num_classes: int

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_pair(*self.items[index], self.num_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"
