"""Datasets for training and evaluating FCNs, opened from a spec string.

Every dataset yields ``(image (H, W, 3) uint8, label (H, W) uint8)`` with 255 = ignore and has ``num_classes``,
``class_names`` and ``palette`` ((K, 3) uint8). Images keep their own size: validation runs on whole images of any
size; training crops patches with :class:`PatchSampler`.

Specs: ``scenes`` (the built-in digit scenes, optionally ``scenes:SIZE`` or ``scenes:HxW``), ``voc:ROOT`` (PASCAL
VOC 2012 layout), ``folder:ROOT`` (``images/`` + ``masks/`` with the same stems), ``nuclei`` / ``nuclei:QUADRANT``
(a real fluorescence image of nuclei, three quadrants train and one is held out; :mod:`fcnkit.data.nuclei`).

Example:
    >>> ds = open_dataset("scenes:64", split="val", count=2)
    >>> image, label = ds[0]
    >>> image.shape, label.shape, ds.num_classes
    ((64, 64, 3), (64, 64), 11)
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fcnkit.data.sampling import PatchSampler
from fcnkit.errors import DataError

__all__ = ["PatchSampler", "SegmentationDataset", "open_dataset", "voc_palette"]

SCHEMES = ("scenes", "voc:ROOT", "folder:ROOT", "nuclei")
SPLITS = ("train", "val")


class SegmentationDataset(Protocol):
    """What every fcnkit dataset provides."""

    num_classes: int
    class_names: list[str]
    palette: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


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
    from fcnkit.io import read_image

    image = read_image(image_path, mode="rgb")
    label = read_image(mask_path, mode="label")
    check_pair(image, label, mask_path, num_classes)
    return image, label


def open_dataset(spec: str, *, split: str = "train", num_classes: int | None = None, **options: Any):
    """Open the dataset that ``spec`` names, for ``split`` ("train" or "val").

    Args:
        spec: ``scenes`` / ``scenes:SIZE`` / ``scenes:HxW``, ``voc:ROOT``, ``folder:ROOT`` or ``nuclei[:QUADRANT]``.
        split: "train" or "val".
        num_classes: required for ``folder``; for ``scenes`` (11) and ``voc`` (21) it must match if given.
        **options: passed to the dataset (``scenes``: ``size``, ``count``, ``seed``).

    Raises:
        DataError: an unknown scheme (the message lists the valid ones), a bad root, or a class-count mismatch.
    """
    check_split(split)
    scheme, _, rest = str(spec).partition(":")
    if scheme == "scenes":
        from fcnkit.data.scenes import DigitScenes, parse_size

        if rest:
            options = {"size": parse_size(rest, spec), **options}
        dataset = DigitScenes(split, **options)
    elif scheme == "voc" and rest:
        from fcnkit.data.voc import VOCSegmentation

        dataset = VOCSegmentation(rest, split, **options)
    elif scheme == "folder" and rest:
        from fcnkit.data.folder import FolderDataset

        return FolderDataset(rest, split, num_classes=num_classes, **options)
    elif scheme == "nuclei":
        from fcnkit.data.nuclei import NucleiDataset

        dataset = NucleiDataset(split, **({"held_out": rest} if rest else {}), **options)
    else:
        raise DataError(
            f"unknown data spec {spec!r}; expected one of {', '.join(SCHEMES)} "
            f"(for example --data scenes or --data voc:/data/VOCdevkit/VOC2012)."
        )
    if num_classes is not None and int(num_classes) != dataset.num_classes:
        raise DataError(
            f"--num-classes {num_classes} does not match {scheme}, which has {dataset.num_classes} classes; "
            f"leave --num-classes out or set it to {dataset.num_classes}."
        )
    return dataset
