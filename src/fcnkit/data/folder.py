"""Your own images and masks: ``folder:ROOT``.

Layout::

    ROOT/images/<stem>.png|.jpg|.jpeg|.tif|.tiff     the photos (any size, grey or colour)
    ROOT/masks/<stem>.png|.tif|.tiff                  class indices 0..K-1, 255 = ignore, same size as the image

or, to choose the validation images yourself, the same two folders under ``ROOT/train/`` and ``ROOT/val/``. When
``ROOT/train`` and ``ROOT/val`` both exist each split reads its own. Otherwise fcnkit holds out a deterministic
validation split of ``ROOT/images``: every 5th stem in sorted order (the 5th, 10th, ...; at least one), which
training never sees; ``dataset.note`` says which. With a single image both splits read it (``note`` says so).
The number of classes cannot be read from the masks reliably, so it is given (``--num-classes``).
"""

from __future__ import annotations

import os
from pathlib import Path

from fcnkit.data.common import FilePairs, check_split, voc_palette
from fcnkit.errors import DataError

__all__ = ["FolderDataset", "HOLD_OUT_EVERY", "IMAGE_SUFFIXES", "held_out"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
HOLD_OUT_EVERY = 5  # without ROOT/train and ROOT/val, every 5th stem validates (20 %)


def held_out(stems: list[str]) -> list[str]:
    """The validation stems of a folder without train/val subfolders: every ``HOLD_OUT_EVERY``-th of the sorted
    stems, at least one (the last) when there are two or more, none when there is only one.

    >>> held_out([f"{i:02d}" for i in range(12)])
    ['04', '09']
    >>> held_out(["a", "b", "c"])
    ['c']
    """
    ordered = sorted(stems)
    if len(ordered) < 2:
        return []
    return ordered[HOLD_OUT_EVERY - 1 :: HOLD_OUT_EVERY] or ordered[-1:]


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DataError(
                f"{files[path.stem].name} and {path.name} in {folder} share the stem {path.stem!r}; keep one file "
                f"per stem so each image pairs with exactly one mask."
            )
        files[path.stem] = path
    return files


def _names(stems: list[str]) -> str:
    return ", ".join(stems[:5]) + (f" and {len(stems) - 5} more" if len(stems) > 5 else "")


class FolderDataset(FilePairs):
    """Pairs ``images/<stem>.*`` with ``masks/<stem>.*`` (see the module docstring for the layout and splits)."""

    mirror_safe = True  # assumed photos; PatchSampler(flips=False) or --no-mirror for data that is not

    def __init__(self, root: str | os.PathLike, split: str = "train", *, num_classes: int | None = None) -> None:
        self.split = check_split(split)
        self.root = Path(root)
        if not self.root.is_dir():  # first: a mistyped path is what to fix before anything else
            raise DataError(
                f"folder root {self.root} is not a folder; expected folder:ROOT with ROOT/images and ROOT/masks."
            )
        if num_classes is None or int(num_classes) < 1 or int(num_classes) > 255:
            raise DataError(
                f"folder:{root} needs the number of classes (1-255), got {num_classes!r}; pass --num-classes K "
                f"(num_classes=K), K = the largest class index in the masks + 1."
            )
        self.num_classes = int(num_classes)
        own_splits = (self.root / "train").is_dir() and (self.root / "val").is_dir()
        split_root = self.root / split if own_splits else self.root
        image_dir, mask_dir = split_root / "images", split_root / "masks"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DataError(
                    f"{folder} does not exist; folder:ROOT expects ROOT/images and ROOT/masks (or both under "
                    f"ROOT/train and ROOT/val) with one mask per image, same file stem."
                )
        images, masks = _by_stem(image_dir), _by_stem(mask_dir)
        if not images:
            raise DataError(
                f"{image_dir} holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)} — add images "
                f"or point folder:ROOT at the right folder."
            )
        lonely_images = sorted(set(images) - set(masks))
        lonely_masks = sorted(set(masks) - set(images))
        if lonely_images or lonely_masks:
            parts = []
            if lonely_images:
                parts.append(f"images without a mask in {mask_dir}: {_names([images[s].name for s in lonely_images])}")
            if lonely_masks:
                parts.append(f"masks without an image in {image_dir}: {_names([masks[s].name for s in lonely_masks])}")
            raise DataError(f"{'; '.join(parts)}; every image needs a mask with the same file stem, and vice versa.")
        stems = sorted(images)
        self.note = ""
        if not own_splits:
            val = held_out(stems)
            if val:
                stems = val if split == "val" else [s for s in stems if s not in set(val)]
                self.note = (f"folder:{self.root} has no train/ and val/ subfolders: {len(val)} of {len(images)} "
                             f"images (every {HOLD_OUT_EVERY}th stem: {_names(val)}) are held out for validation")
            else:
                self.note = (f"folder:{self.root} holds a single image: training and validation both read it, so "
                             f"validation scores say nothing about unseen images")
        self.items = [(images[stem], masks[stem]) for stem in stems]
        self.class_names = [str(k) for k in range(self.num_classes)]
        self.palette = voc_palette(self.num_classes)
