from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fcnkit.errors import InputError
from fcnkit.losses import pixel_cross_entropy


def test_mean_over_valid_pixels_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    valid = target != 255
    per_pixel = F.cross_entropy(logits, target.clamp(max=3), reduction="none")
    expected = per_pixel[valid].mean()
    assert pixel_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_uint8_labels_and_hand_value():
    logits = torch.zeros(1, 2, 1, 2)
    loss = pixel_cross_entropy(logits, torch.tensor([[[1, 255]]], dtype=torch.uint8))
    assert loss.item() == pytest.approx(math.log(2))


def test_class_weights_give_a_weighted_mean():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    weight = torch.tensor([1.0, 3.0])
    per_pixel = F.cross_entropy(logits[..., :2], target[..., :2], reduction="none")[0, 0]
    expected = (1.0 * per_pixel[0] + 3.0 * per_pixel[1]) / 4.0
    assert pixel_cross_entropy(logits, target, weight=weight).item() == pytest.approx(expected.item(), rel=1e-6)


def test_no_valid_pixel_gives_zero_and_finite_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = pixel_cross_entropy(logits, torch.full((2, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()
    weighted = pixel_cross_entropy(logits, torch.full((2, 4, 4), 255), weight=torch.ones(3))
    assert weighted.item() == 0.0


def test_classifier_logits_with_vector_targets():
    logits = torch.randn(5, 11)
    target = torch.tensor([0, 3, 10, 255, 2])
    keep = target != 255
    expected = F.cross_entropy(logits[keep], target[keep])
    assert pixel_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_flows_only_through_valid_pixels():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 255], [2, 255]]])
    pixel_cross_entropy(logits, target).backward()
    assert (logits.grad[0, :, :, 1] == 0).all()
    assert (logits.grad[0, :, :, 0] != 0).all()


def test_bad_inputs_raise_with_a_clear_message():
    with pytest.raises(InputError, match=r"target holds labels \[3, 7\] outside \[0, 3\) other than the ignore"):
        pixel_cross_entropy(torch.zeros(1, 3, 1, 3), torch.tensor([[[3, 7, 255]]]))
    with pytest.raises(InputError, match=r"target shape \(1, 2, 2\) does not match logits \(1, 3, 4, 4\)"):
        pixel_cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(InputError, match=r"expected logits \(N, K, H, W\) with target \(N, H, W\)"):
        pixel_cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match="integer labels, got dtype torch.float32"):
        pixel_cross_entropy(torch.zeros(1, 3), torch.zeros(1))
    with pytest.raises(InputError, match=r"weight must have shape \(3,\)"):
        pixel_cross_entropy(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), weight=torch.ones(2))
