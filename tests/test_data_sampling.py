from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fcnkit.data import PatchSampler, open_dataset
from fcnkit.errors import DataError


class Numbered:
    """Images of different sizes whose every pixel holds the item's number."""

    def __init__(self, n: int = 5) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        h, w = 20 + 3 * i, 30 - 2 * i
        return np.full((h, w, 3), 10 + i, np.uint8), np.full((h, w), i, np.uint8)


def test_batches_have_the_training_layout():
    sampler = PatchSampler(open_dataset("scenes:48", count=3), 24, seed=0)
    images, labels = next(sampler.batches(4))
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
    assert labels.shape == (4, 24, 24) and labels.dtype == torch.int64
    assert images.is_contiguous() and 0 <= images.min() and images.max() <= 255
    assert set(labels.unique().tolist()) <= set(range(11)) | {255}


def test_each_epoch_visits_every_item_once_in_a_seeded_order():
    sampler = PatchSampler(Numbered(5), 8, seed=1, scale_jitter=None)
    seen = [int(label[0, 0]) for label in (pair[1] for pair in itertools.islice(sampler, 15))]
    assert sorted(seen[:5]) == sorted(seen[5:10]) == sorted(seen[10:]) == [0, 1, 2, 3, 4]
    assert seen[:5] != seen[5:10] or seen[5:10] != seen[10:]
    other = PatchSampler(Numbered(5), 8, seed=2, scale_jitter=None)
    assert [int(p[1][0, 0]) for p in itertools.islice(other, 15)] != seen


def test_stream_is_deterministic_and_resumable_from_any_step():
    ds = open_dataset("scenes:40", count=4)
    run = PatchSampler(ds, 16, seed=7)
    uninterrupted = list(itertools.islice(run.batches(3), 5))
    resumed = list(itertools.islice(PatchSampler(ds, 16, seed=7).batches(3, start_step=3), 2))
    for (a_img, a_lab), (b_img, b_lab) in zip(uninterrupted[3:], resumed):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert not torch.equal(uninterrupted[0][0], uninterrupted[1][0])
    different = next(PatchSampler(ds, 16, seed=8).batches(3))
    assert not torch.equal(different[0], uninterrupted[0][0])


def test_iteration_and_batches_are_the_same_stream():
    sampler = PatchSampler(Numbered(3), 12, seed=4)
    pairs = list(itertools.islice(sampler, 6))
    images, labels = sampler.batch(3, 1)
    for j in range(3):
        assert torch.equal(images[j], torch.from_numpy(pairs[3 + j][0]).permute(2, 0, 1).float())
        assert torch.equal(labels[j], torch.from_numpy(pairs[3 + j][1]).long())


def test_ranks_split_the_global_batch():
    sampler = PatchSampler(Numbered(4), 8, seed=0)
    whole_images, whole_labels = sampler.batch(4, 2)
    parts = [sampler.batch(2, 2, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_images)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_labels)


def test_padding_of_small_items_is_ignored():
    sampler = PatchSampler(Numbered(2), 40, seed=0, scale_jitter=None)
    image, label = sampler.sample(0)
    item = int(label[label != 255][0])
    assert (image[label == 255] == 0).all() and (image[label == item] == 10 + item).all()
    assert (label != 255).sum() == np.prod(Numbered(2)[item][1].shape)


def test_bad_arguments_raise():
    ds = Numbered(2)
    with pytest.raises(DataError, match=r"patch must be a positive size N or \(H, W\), got 0"):
        PatchSampler(ds, 0)
    with pytest.raises(DataError, match=r"scale_jitter must be \(low, high\) with 0 < low <= high, got \(2, 1\)"):
        PatchSampler(ds, 8, scale_jitter=(2, 1))
    with pytest.raises(DataError, match="dataset to sample patches from is empty"):
        PatchSampler(Numbered(0), 8)
    with pytest.raises(DataError, match="seed must be a non-negative integer"):
        PatchSampler(ds, 8, seed=-3)
    with pytest.raises(DataError, match="0 <= rank < world_size"):
        PatchSampler(ds, 8).batch(2, 0, rank=2, world_size=2)
    assert PatchSampler(ds, (8, 12)).sample(0)[0].shape == (8, 12, 3)
