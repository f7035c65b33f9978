"""PASCAL VOC 2012 segmentation: ``voc:ROOT`` where ROOT is the ``VOC2012`` folder.

Expected layout (the one the VOC devkit unpacks to)::

    ROOT/JPEGImages/<stem>.jpg
    ROOT/SegmentationClass/<stem>.png        palette PNGs: index = class, 255 = the ignored object border
    ROOT/ImageSets/Segmentation/train.txt    one stem per line (val.txt for split="val")
"""

from __future__ import annotations

import os
from pathlib import Path

from fcnkit.data.common import FilePairs, check_split, voc_palette
from fcnkit.errors import DataError

__all__ = ["VOC_CLASSES", "VOCSegmentation"]

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(
            f"VOC folder is missing {path} ({what}); point voc:ROOT at the VOC2012 folder that holds JPEGImages/, "
            f"SegmentationClass/ and ImageSets/Segmentation/."
        )
    return path


def read_stems(list_file: Path) -> list[str]:
    """The stems listed in ``list_file``, one per line; an entry that is not a plain file name raises DataError
    (so a list cannot make fcnkit read files outside ROOT)."""
    stems = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        stem = line.strip()
        if not stem:
            continue
        if stem in (".", "..") or "/" in stem or "\\" in stem or os.path.isabs(stem):
            raise DataError(
                f"line {number} of {list_file} is {stem!r}, which points outside the image folders; expected a "
                f"file stem such as 2007_000032 — remove path separators and '..' from the list."
            )
        stems.append(stem)
    if not stems:
        raise DataError(f"{list_file} lists no images; expected one image stem per line such as 2007_000032.")
    return stems


class VOCSegmentation(FilePairs):
    """The ``split`` images of a PASCAL VOC 2012 tree: ``(H, W, 3)`` uint8 photo, ``(H, W)`` uint8 label (0–20,
    255 = border, ignored). Every listed image and mask is checked to exist when the dataset is opened."""

    num_classes = len(VOC_CLASSES)
    mirror_safe = True  # photos: a mirrored scene is still a scene, so training patches may be flipped

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        self.split = check_split(split)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"VOC root {self.root} is not a folder; expected voc:ROOT with ROOT the VOC2012 folder "
                f"(the one that holds JPEGImages/ and SegmentationClass/)."
            )
        images = _require(self.root / "JPEGImages", "the photos, <stem>.jpg")
        masks = _require(self.root / "SegmentationClass", "the palette PNG labels, <stem>.png")
        list_file = _require(
            self.root / "ImageSets" / "Segmentation" / f"{split}.txt", f"the list of {split} image stems"
        )
        self.stems = read_stems(list_file)
        self.items = [(images / f"{stem}.jpg", masks / f"{stem}.png") for stem in self.stems]
        missing = [str(p) for pair in self.items for p in pair if not p.is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(
                f"{list_file} lists files that do not exist: {shown}; restore them or remove their stems from the list."
            )
        self.class_names = list(VOC_CLASSES)
        self.palette = voc_palette(self.num_classes)
