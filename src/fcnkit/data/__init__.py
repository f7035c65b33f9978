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

from fcnkit.data.common import check_split, voc_palette
from fcnkit.data.sampling import PatchSampler
from fcnkit.errors import DataError

__all__ = ["PatchSampler", "SegmentationDataset", "open_dataset", "voc_palette"]

SCHEMES = ("scenes", "voc:ROOT", "folder:ROOT", "nuclei")


class SegmentationDataset(Protocol):
    """What every fcnkit dataset provides."""

    num_classes: int
    class_names: list[str]
    palette: np.ndarray
    mirror_safe: bool  # whether a left-right mirrored item is still a valid item (training may flip patches)
    # Optional: how stored 16-bit pixels became the values the items hold: "scaled" (/257, fcnkit.io.pixels' rule;
    # assumed when absent) or "kept" (as stored). Training records it in the checkpoint and inference follows it.
    # sixteen_bit: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


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
