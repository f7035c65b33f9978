from __future__ import annotations

import numpy as np
import pytest

import fcnkit.data.scenes as scenes_module
from fcnkit.data import open_dataset, voc_palette
from fcnkit.data.scenes import (CLASS_NAMES, JITTER, MISS, DigitScenes, _digits, _ink_centres, _place, _render,
                                _rng, _window_corners, classification_windows, make_scene)
from fcnkit.errors import DataError


def test_scene_shapes_types_and_label_values():
    image, label = make_scene((67, 93), split="train", seed=1, index=5)
    assert image.shape == (67, 93, 3) and image.dtype == np.uint8
    assert label.shape == (67, 93) and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(11)) | {255}


def test_scenes_are_deterministic_and_differ_by_index_seed_and_split():
    a = make_scene(64, split="val", seed=0, index=2)
    b = make_scene(64, split="val", seed=0, index=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for other in (make_scene(64, split="val", seed=0, index=3), make_scene(64, split="val", seed=1, index=2),
                  make_scene(64, split="train", seed=0, index=2)):
        assert not np.array_equal(a[0], other[0])


def test_scenes_contain_digits_of_every_class_and_an_ignore_band():
    labels = np.stack([make_scene(128, split="val", index=i)[1] for i in range(12)])
    counts = np.bincount(labels.ravel(), minlength=256)
    assert (counts[:11] > 0).all()
    assert 0 < counts[255] < counts[1:11].sum()  # a thin band, not the digits themselves
    assert counts[0] > labels.size // 2  # mostly background


def test_digit_pixels_stand_out_from_the_background():
    image, label = make_scene(256, split="train", index=0)
    digit = image[(label > 0) & (label < 255)].astype(float).mean(0)
    near = image[label == 0].astype(float).mean(0)
    assert np.abs(digit - near).sum() > 30


def test_train_and_val_use_disjoint_digit_images():
    train_images, train_targets = _digits("train")
    val_images, val_targets = _digits("val")
    assert len(train_images) + len(val_images) == 1797
    assert len(val_images) == pytest.approx(0.2 * 1797, abs=2)
    train_set = {im.tobytes() for im in train_images}
    assert not any(im.tobytes() in train_set for im in val_images)
    assert set(train_targets) == set(val_targets) == set(range(10))


def test_dataset_via_open_dataset():
    ds = open_dataset("scenes:48x80", split="val", count=3, seed=2)
    assert isinstance(ds, DigitScenes) and len(ds) == 3
    image, label = ds[2]
    assert image.shape == (48, 80, 3) and label.shape == (48, 80)
    np.testing.assert_array_equal(image, make_scene((48, 80), split="val", seed=2, index=2)[0])
    assert ds.num_classes == 11 and ds.class_names == CLASS_NAMES == ["background", *"0123456789"]
    np.testing.assert_array_equal(ds.palette, voc_palette(11))
    assert ds[-1][0].shape == image.shape
    with pytest.raises(IndexError):
        ds[3]
    assert len(open_dataset("scenes", split="train", size=32)) == 1000
    assert len(open_dataset("scenes", split="val", size=32)) == 32


def test_bad_scene_arguments_raise():
    with pytest.raises(DataError, match=r"scene size in 'scenes:big' must be SIZE or HxW.*scenes:256"):
        open_dataset("scenes:big")
    with pytest.raises(DataError, match=r"--num-classes 5 does not match scenes, which has 11 classes"):
        open_dataset("scenes", num_classes=5)
    with pytest.raises(DataError, match=r"split must be one of train, val, got 'test'"):
        open_dataset("scenes", split="test")
    with pytest.raises(DataError, match="seed must be a non-negative integer, got -1"):
        DigitScenes(seed=-1)
    with pytest.raises(DataError, match=r"index must be a non-negative integer, got -1; pass index=0"):
        make_scene(32, index=-1)
    with pytest.raises(DataError, match="scene count must be at least 1"):
        DigitScenes(count=0)


def test_unknown_scheme_lists_the_valid_ones():
    expected = r"unknown data spec 'imagenet:/x'; expected one of scenes, voc:ROOT, folder:ROOT"
    with pytest.raises(DataError, match=expected):
        open_dataset("imagenet:/x")
    with pytest.raises(DataError, match="unknown data spec 'voc'"):
        open_dataset("voc")


def test_voc_palette_matches_the_known_colours():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[20].tolist() == [0, 64, 128]  # tv/monitor
    assert len({tuple(c) for c in palette}) == 256


def test_classification_windows_are_balanced_deterministic_and_centred():
    images, labels = classification_windows("val", 44, seed=3)
    assert images.shape == (44, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [4] * 11
    again, labels_again = classification_windows("val", 44, seed=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    other, _ = classification_windows("train", 44, seed=3)
    assert not np.array_equal(images, other)
    wide, _ = classification_windows("val", 22, seed=3, size=48)
    assert wide.shape == (22, 48, 48, 3)
    with pytest.raises(DataError, match="count >= 1 and size >= 16"):
        classification_windows("val", 0, seed=0)


def test_window_corners_centre_digits_and_keep_background_windows_off_every_digit_centre():
    rng = _rng(5)
    boxes = _place(rng, 192, 192, _digits("train")[1])
    _, label = _render(rng, 192, 192, boxes, "train")
    digits = _ink_centres(label, boxes, _digits("train")[1])
    assert len(digits) > 10
    for cy, cx, cls in digits:  # each centre lies on inked pixels' bounding box of its own class
        assert cls in label[max(0, int(cy) - 16):int(cy) + 17, max(0, int(cx) - 16):int(cx) + 17]
    corners = _window_corners(rng, digits, 192, 32)
    assert {c for *_, c in corners} >= {0} and any(c > 0 for *_, c in corners)
    for top, left, cls in corners:
        assert 0 <= top <= 160 and 0 <= left <= 160
        centre = np.array([top + 15.5, left + 15.5])
        offsets = np.abs(digits[:, :2] - centre)
        if cls:  # a digit of this class is centred within JITTER (+ half a pixel of rounding) on each axis
            assert ((offsets.max(axis=1) <= JITTER + 0.5) & (digits[:, 2] == cls)).any()
        else:  # no digit centre within MISS px
            assert np.hypot(*offsets.T).min() >= MISS
    near_misses = [np.hypot(*(digits[:, :2] - (t + 15.5, left + 15.5)).T).min() for t, left, c in corners if c == 0]
    assert sum(d < 2 * MISS for d in near_misses) >= len(near_misses) / 4  # many background windows are near misses


def test_scenes_are_kept_once_rendered_for_the_whole_process_up_to_a_byte_budget_and_handed_out_as_copies(
        monkeypatch):
    monkeypatch.setattr(scenes_module, "_RENDERED", {})  # this test's own, empty cache
    monkeypatch.setattr(scenes_module, "_rendered_bytes", 0)
    scenes = DigitScenes("train", size=64, count=3, seed=2)
    image, label = scenes[1]
    image[:] = 0  # a caller writing into its copy changes nothing for the next one
    again, label_again = scenes[1]
    fresh, fresh_label = make_scene(64, split="train", seed=2, index=1)
    np.testing.assert_array_equal(again, fresh)
    np.testing.assert_array_equal(label_again, fresh_label)
    assert ("train", (64, 64), 2, 1) in scenes_module._RENDERED
    np.testing.assert_array_equal(scenes[-2][0], fresh)  # negative indices share the entry
    calls = []
    monkeypatch.setattr(scenes_module, "make_scene", lambda *a, **k: calls.append(k) or make_scene(*a, **k))
    other = DigitScenes("train", size=64, count=3, seed=2)  # another instance finds what the first rendered
    np.testing.assert_array_equal(other[1][0], fresh)
    assert calls == []
    assert other.render_all() == 3 and len(calls) == 2  # scenes 0 and 2 rendered now, 1 was kept
    other[0], other[2]
    assert len(calls) == 2
    monkeypatch.setattr(DigitScenes, "CACHE_BYTES", 0)  # a full budget: rendered, handed out, not kept
    uncached = DigitScenes("train", size=64, count=3, seed=3)
    np.testing.assert_array_equal(uncached[1][0], make_scene(64, split="train", seed=3, index=1)[0])
    assert uncached.render_all() == 0 and ("train", (64, 64), 3, 1) not in scenes_module._RENDERED


def test_digits_of_a_scene_are_its_placed_digits_one_centre_each():
    from scipy import ndimage

    scenes = DigitScenes("val", size=256, count=3, seed=0)
    pieces = 0
    for index in range(3):
        image, label = scenes[index]
        digits = scenes.digits(index)
        assert digits.shape[1] == 3 and len(digits) > 20
        assert (scenes.digits(index - 3) == digits).all()  # negative indices, as for the scenes themselves
        for cy, cx, cls in digits:  # the centre of a digit's ink lies within its class's pixels' reach
            near = label[max(0, int(cy) - 16):int(cy) + 17, max(0, int(cx) - 16):int(cx) + 17]
            assert (near == cls).any()
        # every fully inked pixel belongs to one listed digit's class; a stroke broken in the label is still one digit
        assert set(np.unique(label)) - {0, 255} <= set(digits[:, 2].astype(int))
        pieces += sum(ndimage.label(label == cls)[1] for cls in range(1, 11))
    assert pieces > sum(len(scenes.digits(i)) for i in range(3))  # the label alone would count more "digits"
