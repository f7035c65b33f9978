from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from fcnkit.data import PatchSampler, open_dataset
from fcnkit.data.folder import FolderDataset, held_out
from fcnkit.errors import DataError


def _pair(root: Path, stem: str, h: int, w: int, *, image_ext: str = ".png", value: int = 1) -> np.ndarray:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if image_ext in (".tif", ".tiff"):
        tifffile.imwrite(root / "images" / f"{stem}{image_ext}", image)
    else:
        Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    label = np.zeros((h, w), np.uint8)
    label[: h // 2] = value
    label[-1] = 255
    Image.fromarray(label).save(root / "masks" / f"{stem}.png")
    return label


def test_pairs_by_stem_across_formats(tmp_path):
    a = _pair(tmp_path, "a", 10, 14, image_ext=".png")
    b = _pair(tmp_path, "b", 9, 7, image_ext=".jpg", value=2)
    c = _pair(tmp_path, "c", 6, 5, image_ext=".tif")
    ds = open_dataset(f"folder:{tmp_path}", split="train", num_classes=3)
    val = open_dataset(f"folder:{tmp_path}", split="val", num_classes=3)
    assert isinstance(ds, FolderDataset) and len(ds) == 2 and len(val) == 1  # c is held out (see below)
    for i, (dataset, label) in enumerate(((ds, a), (ds, b), (val, c))):
        image, got = dataset[i % 2]
        assert image.dtype == np.uint8 and image.shape == (*label.shape, 3)
        np.testing.assert_array_equal(got, label)
    assert ds.num_classes == 3 and ds.class_names == ["0", "1", "2"] and ds.palette.shape == (3, 3)
    image, label = next(iter(PatchSampler(ds, 16, seed=0)))
    assert image.shape == (16, 16, 3) and (label == 255).any()


def test_without_subfolders_every_5th_stem_is_held_out_for_validation(tmp_path):
    stems = [f"img{i:02d}" for i in range(12)]
    for stem in stems:
        _pair(tmp_path, stem, 4, 4)
    train, val = (FolderDataset(tmp_path, split, num_classes=2) for split in ("train", "val"))
    assert [p.stem for p, _ in val.items] == ["img04", "img09"] == held_out(stems)
    assert [p.stem for p, _ in train.items] == [s for s in stems if s not in ("img04", "img09")]
    assert train.note == val.note == (f"folder:{tmp_path} has no train/ and val/ subfolders: 2 of 12 images (every "
                                      "5th stem: img04, img09) are held out for validation")
    # fewer than five images: still one held out; a single image: both splits read it, and the note says so
    assert held_out(["b", "a", "c"]) == ["c"] and held_out(["a"]) == []
    single = tmp_path / "single"
    _pair(single, "only", 4, 4)
    assert len(FolderDataset(single, "train", num_classes=2)) == len(FolderDataset(single, "val", num_classes=2)) == 1
    assert "holds a single image: training and validation both read it" in FolderDataset(single, num_classes=2).note


def test_train_and_val_subfolders_are_used_when_both_exist(tmp_path):
    _pair(tmp_path / "train", "a", 8, 8)
    _pair(tmp_path / "train", "b", 8, 8)
    _pair(tmp_path / "val", "c", 12, 8)
    assert len(FolderDataset(tmp_path, "train", num_classes=2)) == 2
    val = FolderDataset(tmp_path, "val", num_classes=2)
    assert len(val) == 1 and val[0][1].shape == (12, 8)


def test_num_classes_is_required(tmp_path):
    _pair(tmp_path, "a", 8, 8)
    with pytest.raises(DataError, match=r"needs the number of classes \(1-255\), got None; pass --num-classes K"):
        open_dataset(f"folder:{tmp_path}")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match=r"folder root .*nope is not a folder"):
        FolderDataset(tmp_path / "nope", num_classes=2)
    with pytest.raises(DataError, match=r"folder root .*nope is not a folder"):  # the path first, then the classes
        FolderDataset(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"masks does not exist; folder:ROOT expects ROOT/images and ROOT/masks"):
        FolderDataset(tmp_path, num_classes=2)
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"images holds no images; expected files ending in .png, .jpg"):
        FolderDataset(tmp_path, num_classes=2)


def test_unmatched_stems_are_listed(tmp_path):
    _pair(tmp_path, "a", 8, 8)
    _pair(tmp_path, "b", 8, 8)
    (tmp_path / "masks" / "b.png").rename(tmp_path / "masks" / "b_mask.png")
    with pytest.raises(DataError, match=r"images without a mask in .*masks: b.png; masks without an image in "
                                        r".*images: b_mask.png; every image needs a mask with the same file stem"):
        FolderDataset(tmp_path, num_classes=2)


def test_duplicate_stems_are_refused(tmp_path):
    _pair(tmp_path, "a", 8, 8)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(DataError, match=r"a.jpg and a.png in .*images share the stem 'a'"):
        FolderDataset(tmp_path, num_classes=2)


def test_bad_masks_name_the_file_and_the_fix(tmp_path):
    _pair(tmp_path, "a", 8, 8, value=5)
    with pytest.raises(DataError, match=r"mask .*a.png holds values \[5\], expected class indices 0-2 or 255 "
                                        r"\(ignore\); check --num-classes"):
        FolderDataset(tmp_path, num_classes=3)[0]
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match=r"mask .*a.png is 9x8 pixels but its image is 8x8"):
        FolderDataset(tmp_path, num_classes=3)[0]
