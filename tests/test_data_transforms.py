from __future__ import annotations

import numpy as np
import pytest

from fcnkit.data.transforms import crop_padded, hflip_pair, random_patch, resize_pair
from fcnkit.errors import DataError


def _pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose pixels encode their position, and a label of vertical stripes of classes 0..3."""
    ys, xs = np.mgrid[:h, :w]
    image = np.stack([ys % 256, xs % 256, (ys + xs) % 256], axis=-1).astype(np.uint8)
    label = (xs // max(1, w // 4)).clip(0, 3).astype(np.uint8)
    return image, label


def test_crop_padded_inside_and_outside():
    image, label = _pair(5, 6)
    np.testing.assert_array_equal(crop_padded(image, 1, 2, 3, 3, 0), image[1:4, 2:5])
    out = crop_padded(label, -1, 4, 3, 4, 255)
    assert out.shape == (3, 4)
    assert (out[0] == 255).all() and (out[:, 2:] == 255).all()
    np.testing.assert_array_equal(out[1:, :2], label[0:2, 4:6])
    assert (crop_padded(image, 10, 10, 2, 2, 0) == 0).all()


def test_resize_pair_uses_nearest_for_labels():
    image, label = _pair(8, 8)
    big_image, big_label = resize_pair(image, label, (13, 21))
    assert big_image.shape == (13, 21, 3) and big_label.shape == (13, 21)
    assert set(np.unique(big_label)) <= set(np.unique(label))


def test_hflip_pair_mirrors_both():
    image, label = _pair(4, 8)
    fi, fl = hflip_pair(image, label)
    np.testing.assert_array_equal(fi[:, 0], image[:, -1])
    np.testing.assert_array_equal(fl[:, 0], label[:, -1])


def test_random_patch_without_scaling_is_an_exact_crop_of_image_and_label():
    image, label = _pair(40, 50)
    for seed in range(10):
        pi, pl = random_patch(image, label, (16, 12), np.random.default_rng(seed), flips=True, scale_jitter=None)
        assert pi.shape == (16, 12, 3) and pl.shape == (16, 12)
        if pi[0, 0, 1] > pi[0, -1, 1]:  # mirrored: undo it
            pi, pl = pi[:, ::-1], pl[:, ::-1]
        top, left = int(pi[0, 0, 0]), int(pi[0, 0, 1])
        np.testing.assert_array_equal(pi, image[top : top + 16, left : left + 12])
        np.testing.assert_array_equal(pl, label[top : top + 16, left : left + 12])


def test_flips_happen_about_half_the_time_and_move_image_and_label_together():
    image, label = _pair(20, 20)
    flipped = 0
    for seed in range(40):
        pi, pl = random_patch(image, label, (20, 20), np.random.default_rng(seed), scale_jitter=None)
        if pi[0, 0, 1] == 19:
            flipped += 1
            np.testing.assert_array_equal(pl, label[:, ::-1])
        else:
            np.testing.assert_array_equal(pl, label)
    assert 10 <= flipped <= 30
    for seed in range(10):
        pi, _ = random_patch(image, label, (20, 20), np.random.default_rng(seed), flips=False, scale_jitter=None)
        np.testing.assert_array_equal(pi, image)


def test_small_images_are_padded_with_zero_and_ignore():
    image = np.full((10, 6, 3), 200, np.uint8)
    label = np.full((10, 6), 3, np.uint8)
    pi, pl = random_patch(image, label, (16, 16), np.random.default_rng(0), scale_jitter=None)
    assert pi.shape == (16, 16, 3)
    assert (pl == 3).sum() == 60 and (pl == 255).sum() == 256 - 60
    np.testing.assert_array_equal(pi[..., 0] == 200, pl == 3)
    assert (pi[pl == 255] == 0).all()


def test_scale_jitter_zooms_image_and_label_alike():
    # a white square with its own class: after any zoom, label and image must still agree pixel for pixel
    image = np.zeros((64, 64, 3), np.uint8)
    label = np.zeros((64, 64), np.uint8)
    image[16:48, 16:48] = 255
    label[16:48, 16:48] = 1
    areas = set()
    for seed in range(8):
        pi, pl = random_patch(image, label, (64, 64), np.random.default_rng(seed), scale_jitter=(0.5, 2.0))
        assert pl.shape == (64, 64) and set(np.unique(pl)) <= {0, 1, 255}
        agree = (pi[..., 0] > 127) == (pl == 1)
        assert agree[pl != 255].mean() > 0.97
        areas.add(int((pl == 1).sum()))
    assert len(areas) > 4  # the zoom really changes


def test_mismatched_pair_raises():
    expected = r"expected an \(H, W, 3\) image with an \(H, W\) label, got \(4, 4, 3\) and \(4, 5\)"
    with pytest.raises(DataError, match=expected):
        random_patch(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), (2, 2), np.random.default_rng(0))


def test_focus_centres_the_crop_on_a_foreground_pixel():
    from fcnkit.data.transforms import random_patch

    label = np.zeros((100, 120), np.uint8)
    label[70:74, 10:14] = 3  # one small object in a corner
    image = np.zeros((100, 120, 3), np.uint8)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        _, patch = random_patch(image, label, (32, 32), rng, flips=False, scale_jitter=None, focus=1.0)
        assert (patch == 3).any()
    # without focus, most uniform crops of this label miss the object
    misses = sum(
        not (random_patch(image, label, (32, 32), np.random.default_rng(s), scale_jitter=None)[1] == 3).any()
        for s in range(20)
    )
    assert misses > 10


def test_focus_must_be_a_probability():
    from fcnkit.data import PatchSampler, open_dataset

    with pytest.raises(DataError, match="focus must be a probability"):
        PatchSampler(open_dataset("scenes:64", count=2), 32, focus=1.5)
