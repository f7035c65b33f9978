"""A real segmentation set: fluorescence nuclei, ``nuclei`` or ``nuclei:QUADRANT``.

One 512 × 512 fluorescence image of cell nuclei with its hand-drawn instance mask (125 nuclei), from the 2018 Data
Science Bowl as shipped inside the ``stardist`` 0.9.2 package (BSD-3): ``stardist/data/images/img2d.tif`` and
``mask2d.tif``. The files are read with tifffile; stardist itself is never imported (it needs TensorFlow), only
located, so ``pip install --no-deps stardist==0.9.2`` is all it takes.

Classes: 0 = background, 1 = nucleus (every instance label > 0). The image is split into four 256 × 256 quadrants:
three are the training images, the held-out one (``br``, bottom right, unless the spec names ``tl``, ``tr``, ``bl``
or ``br``) is the validation image, so evaluation never sees a pixel that training saw, not even as context.
Microscopy has no up or down, so mirrored patches are as real as the originals. The grey image is returned as
(H, W, 3) uint8 like every fcnkit dataset.

Example:
    >>> ds = NucleiDataset("val")  # doctest: +SKIP
    >>> image, label = ds[0]; image.shape, label.shape, ds.num_classes  # doctest: +SKIP
    ((256, 256, 3), (256, 256), 2)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fcnkit.data.common import check_split
from fcnkit.errors import DataError
from fcnkit.io.pixels import to_8_bit

__all__ = ["QUADRANTS", "NucleiDataset", "nuclei_files", "otsu_threshold", "read_nuclei"]

# quadrant name -> (row half, column half)
QUADRANTS = {"tl": (0, 0), "tr": (0, 1), "bl": (1, 0), "br": (1, 1)}
INSTALL = "pip install --no-deps stardist==0.9.2"


def nuclei_files() -> tuple[Path, Path]:
    """The image and mask files inside the installed stardist package (located without importing it)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"--data nuclei reads the nuclei image that the stardist package ships, found stardist not "
                        f"installed; install it with `{INSTALL}` (no TensorFlow needed).")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    image, mask = folder / "img2d.tif", folder / "mask2d.tif"
    for path in (image, mask):
        if not path.is_file():
            raise DataError(f"--data nuclei: expected {path.name} in {folder}, found it missing; reinstall stardist "
                            f"0.9.2 with `{INSTALL} --force-reinstall`.")
    return image, mask


def read_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The whole image as (512, 512) uint8 and the binary mask as (512, 512) uint8 (0 background, 1 nucleus).

    The stored image is uint16 with values up to 235, 8-bit data in a 16-bit file: kept as stored, and a model
    trained on it records so (``NucleiDataset.sixteen_bit``), so that inference gives it a 16-bit image as stored
    too, not divided by 257 as fcnkit's pixel rule does for full-range 16-bit data. A copy with values past 255 is
    scaled by that rule (/257) instead."""
    image, mask, _ = _read()
    return image, mask


def _read() -> tuple[np.ndarray, np.ndarray, str]:
    """``read_nuclei``'s image and mask, and how the image's 16-bit values became 8-bit: "kept" or "scaled"."""
    import tifffile

    image_path, mask_path = nuclei_files()
    image, instances = tifffile.imread(image_path), tifffile.imread(mask_path)
    if image.ndim != 2 or instances.shape != image.shape:
        raise DataError(f"--data nuclei: expected a 2-D image and a mask of the same size in {image_path.parent}, "
                        f"found shapes {image.shape} and {instances.shape}; reinstall stardist 0.9.2.")
    rule = "kept" if float(image.max()) <= 255 else "scaled"
    grey = image.astype(np.uint8) if rule == "kept" else to_8_bit(image)
    return grey, (instances > 0).astype(np.uint8), rule


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of integer grey values: the cut that maximizes the between-class variance.

    Pixels ``> threshold`` are foreground. Equal to ``skimage.filters.threshold_otsu`` on uint8 images.
    """
    counts = np.bincount(np.asarray(values, dtype=np.int64).ravel())
    levels = np.arange(len(counts), dtype=np.float64)
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # pixels <= t, for t = 0 .. max-1
    w1 = counts.sum() - w0
    s0 = np.cumsum(counts * levels)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.dot(counts, levels) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(np.argmax(between))


class NucleiDataset:
    """Three quadrants of the nuclei image for ``split="train"``, the held-out one for ``"val"``."""

    num_classes = 2
    class_names = ["background", "nucleus"]
    palette = np.array([[0, 0, 0], [255, 200, 0]], dtype=np.uint8)

    def __init__(self, split: str = "train", *, held_out: str = "br") -> None:
        self.split = check_split(split)
        if held_out not in QUADRANTS:
            raise DataError(f"nuclei:{held_out}: expected the held-out quadrant to be one of "
                            f"{', '.join(QUADRANTS)}, found {held_out!r}; pass e.g. --data nuclei:br.")
        self.held_out = held_out
        image, label, self.sixteen_bit = _read()  # "kept": training records it, inference follows it
        half_h, half_w = image.shape[0] // 2, image.shape[1] // 2
        names = [held_out] if split == "val" else [q for q in QUADRANTS if q != held_out]
        self.names = names
        self.items = []
        for name in names:
            r, c = QUADRANTS[name]
            rows, cols = slice(r * half_h, (r + 1) * half_h), slice(c * half_w, (c + 1) * half_w)
            self.items.append((np.repeat(image[rows, cols, None], 3, axis=2), label[rows, cols].copy()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.items[index]
        return image.copy(), label.copy()

    def __repr__(self) -> str:
        return f"NucleiDataset(split={self.split!r}, quadrants={self.names})"
