from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fcnkit.errors import InputError
from fcnkit.metrics import ConfusionMeter, confusion_matrix, scores


def test_confusion_matrix_counts_rows_truth_columns_prediction():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_confusion_matrix_accepts_torch_and_mixed_inputs():
    target = np.array([0, 1, 2, 2])
    pred = np.array([0, 2, 2, 1])
    expected = confusion_matrix(pred, target, 3)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 3), expected)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), target.astype(np.uint8), 3), expected)


def test_hand_computed_scores():
    # truth: 0 0 0 1 1 2 ; prediction: 0 0 1 1 1 0
    cm = confusion_matrix(np.array([0, 0, 1, 1, 1, 0]), np.array([0, 0, 0, 1, 1, 2]), 3)
    s = scores(cm)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)
    assert s["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    iu = [2 / 4, 2 / 3, 0.0]  # class 0: tp 2, t 3, predicted 3; class 1: tp 2, t 2, predicted 3; class 2: 0
    assert s["iu"] == pytest.approx(iu)
    assert s["mean_iu"] == pytest.approx(sum(iu) / 3)
    assert s["fw_iu"] == pytest.approx((3 * iu[0] + 2 * iu[1] + 1 * iu[2]) / 6)


def test_absent_class_is_nan_and_left_out_predicted_only_counts_as_zero():
    # class 2 never appears; class 3 is predicted but never true
    cm = confusion_matrix(np.array([0, 1, 3, 1]), np.array([0, 1, 1, 1]), 4)
    s = scores(cm)
    assert math.isnan(s["iu"][2])
    assert s["iu"][3] == 0.0
    assert s["iu"][:2] == pytest.approx([1.0, 2 / 3])
    assert s["mean_iu"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    # accuracy of class 3 is 0/0: left out of the mean accuracy
    assert s["mean_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["pixel_accuracy"] == pytest.approx(3 / 4)


def test_empty_matrix_gives_nan_without_warning():
    with np.errstate(all="raise"):
        s = scores(np.zeros((3, 3), dtype=np.int64))
    assert all(math.isnan(s[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"))


def test_ignore_pixels_have_no_effect_whatever_is_predicted():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (20, 20))
    pred = rng.integers(0, 4, (20, 20))
    base = confusion_matrix(pred, target, 4)
    target2 = target.copy()
    target2[::3] = 255
    pred2 = pred.copy()
    pred2[::3] = 200  # garbage predictions where the truth is ignored are fine
    cm = confusion_matrix(pred2, target2, 4)
    keep = np.ones_like(target, dtype=bool)
    keep[::3] = False
    np.testing.assert_array_equal(cm, confusion_matrix(pred[keep], target[keep], 4))
    assert cm.sum() == keep.sum() and base.sum() == target.size


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1), st.randoms(use_true_random=False))
def test_scores_are_invariant_to_a_permutation_of_the_classes(k, seed, random):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, 50)
    pred = rng.integers(0, k, 50)
    perm = list(range(k))
    random.shuffle(perm)
    perm = np.array(perm)
    a = scores(confusion_matrix(pred, target, k))
    b = scores(confusion_matrix(perm[pred], perm[target], k))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        assert a[key] == pytest.approx(b[key], nan_ok=True)
    np.testing.assert_allclose(np.array(b["iu"])[perm], a["iu"])


def test_perfect_prediction_scores_one():
    target = np.array([0, 1, 1, 2, 255])
    s = scores(confusion_matrix(np.array([0, 1, 1, 2, 7]), target, 5))
    assert s["pixel_accuracy"] == s["mean_accuracy"] == s["mean_iu"] == s["fw_iu"] == 1.0


def test_out_of_range_values_raise_with_the_values():
    with pytest.raises(InputError, match=r"target holds values \[3\] outside \[0, 3\) other than the ignore label 255"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(InputError, match=r"pred holds values \[-1, 9\] outside \[0, 3\)"):
        confusion_matrix(np.array([-1, 9, 0]), np.array([0, 1, 2]), 3)
    with pytest.raises(InputError, match=r"pred holds values \[5\]"):
        confusion_matrix(torch.tensor([5]), torch.tensor([1]), 3)


def test_bad_arguments_raise():
    with pytest.raises(InputError, match="same number of pixels"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(InputError, match="integer class indices, got dtype float"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 2)
    with pytest.raises(InputError, match=r"square \(K, K\) matrix, got shape \(2, 3\)"):
        scores(np.zeros((2, 3)))
    with pytest.raises(InputError, match="non-negative pixel counts"):
        scores(-np.ones((2, 2)))


def test_meter_accumulates_resets_and_all_reduce_is_a_noop_without_ddp():
    meter = ConfusionMeter(3)
    meter.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 255]]))
    meter.update(torch.tensor([1, 1]), torch.tensor([1, 2]))
    expected = np.array([[1, 0, 0], [0, 2, 1], [0, 1, 0]])
    np.testing.assert_array_equal(meter.value, expected)
    assert not torch.distributed.is_initialized()
    meter.all_reduce()
    np.testing.assert_array_equal(meter.value, expected)
    assert meter.scores() == scores(expected)
    meter.reset()
    assert meter.value.sum() == 0 and meter.value.shape == (3, 3)


def test_meter_all_reduce_sums_over_a_single_process_group(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        meter = ConfusionMeter(2)
        meter.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
        meter.all_reduce()
        np.testing.assert_array_equal(meter.value, [[1, 1], [0, 1]])
    finally:
        torch.distributed.destroy_process_group()
