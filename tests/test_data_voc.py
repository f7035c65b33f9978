from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnkit.data import open_dataset, voc_palette
from fcnkit.data.voc import VOC_CLASSES, VOCSegmentation
from fcnkit.errors import DataError


def _write_mask(path: Path, label: np.ndarray) -> None:
    mask = Image.fromarray(label, mode="P")
    mask.putpalette(voc_palette().tobytes())
    mask.save(path)


def _voc_tree(root: Path, sizes: dict[str, tuple[int, int]], train: list[str], val: list[str]) -> dict:
    """A tiny VOC2012-shaped tree: a flat-coloured photo and a palette mask with a 255 border per stem."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    labels = {}
    for i, (stem, (h, w)) in enumerate(sizes.items()):
        Image.fromarray(np.full((h, w, 3), 40 * i + 20, np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        label = np.zeros((h, w), np.uint8)
        label[2:-2, 2:-2] = 255
        label[3:-3, 3:-3] = i + 1 if i < 20 else 20
        _write_mask(root / "SegmentationClass" / f"{stem}.png", label)
        labels[stem] = label
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n\n")
    return labels


@pytest.fixture()
def voc(tmp_path):
    sizes = {"2007_000032": (20, 30), "2007_000039": (17, 11), "2008_000001": (12, 12)}
    labels = _voc_tree(tmp_path, sizes, ["2007_000032", "2008_000001"], ["2007_000039"])
    return tmp_path, labels


def test_reads_photos_and_palette_indices_with_the_border_kept_as_255(voc):
    root, labels = voc
    train = open_dataset(f"voc:{root}", split="train")
    assert isinstance(train, VOCSegmentation) and len(train) == 2
    image, label = train[0]
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - 20).max() <= 3  # JPEG is lossy
    np.testing.assert_array_equal(label, labels["2007_000032"])
    assert set(np.unique(label)) == {0, 1, 255}
    val = open_dataset(f"voc:{root}", split="val", num_classes=21)
    assert len(val) == 1 and val[0][1].shape == (17, 11)


def test_class_names_and_palette(voc):
    ds = VOCSegmentation(voc[0], "val")
    assert ds.num_classes == 21 and ds.class_names == VOC_CLASSES
    assert ds.class_names[15] == "person" and ds.class_names[-1] == "tvmonitor"
    assert ds.palette.shape == (21, 3) and ds.palette[15].tolist() == [192, 128, 128]


def test_missing_parts_are_named(tmp_path):
    with pytest.raises(DataError, match=r"VOC root .*nowhere is not a folder"):
        open_dataset(f"voc:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match=r"VOC folder is missing .*JPEGImages \(the photos, <stem>.jpg\)"):
        open_dataset(f"voc:{tmp_path}")
    _voc_tree(tmp_path, {"a": (8, 8)}, ["a"], ["a"])
    (tmp_path / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match=r"missing .*val.txt \(the list of val image stems\)"):
        open_dataset(f"voc:{tmp_path}", split="val")
    (tmp_path / "SegmentationClass/a.png").unlink()
    with pytest.raises(DataError, match=r"train.txt lists files that do not exist: .*a.png; restore them"):
        open_dataset(f"voc:{tmp_path}")


@pytest.mark.parametrize("entry", ["../secret", "/etc/passwd", "..", "sub/../../x"])
def test_list_entries_cannot_escape_the_root(tmp_path, entry):
    _voc_tree(tmp_path, {"a": (8, 8)}, ["a", entry], ["a"])
    with pytest.raises(DataError, match=r"line 2 of .*train.txt is .*points outside the image folders"):
        open_dataset(f"voc:{tmp_path}")


def test_empty_list_and_wrong_class_count(voc):
    root, _ = voc
    with pytest.raises(DataError, match="--num-classes 3 does not match voc, which has 21 classes"):
        open_dataset(f"voc:{root}", num_classes=3)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="lists no images"):
        open_dataset(f"voc:{root}")


def test_bad_masks_are_reported_with_the_file(voc):
    root, _ = voc
    label = np.zeros((20, 30), np.uint8)
    label[0, 0] = 40
    _write_mask(root / "SegmentationClass/2007_000032.png", label)
    with pytest.raises(DataError, match=r"2007_000032.png holds values \[40\], expected class indices 0-20 or 255"):
        VOCSegmentation(root, "train")[0]
    _write_mask(root / "SegmentationClass/2007_000032.png", np.zeros((20, 29), np.uint8))
    with pytest.raises(DataError, match=r"2007_000032.png is 29x20 pixels but its image is 30x20"):
        VOCSegmentation(root, "train")[0]
