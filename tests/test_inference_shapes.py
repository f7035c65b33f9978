"""Output sizes: the model's own, read off a shape-only run where there is one, else measured on one small image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnkit
from fcnkit.errors import InputError
from fcnkit.inference.model import prepare
from fcnkit.inference.shapes import formula_size, output_size


class NumpyCeilNet(nn.Module):
    """Unpadded convolutions around a ceil_mode pooling, computed partly in NumPy (as an ONNX runtime would): no
    shape-only (fake tensor) run exists, and on an odd side the pooling adds a partial window."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_numpy(np.ascontiguousarray(F.relu(self.conv1(x)).numpy()))  # fails on fake tensors
        return self.conv2(F.max_pool2d(y, 2, ceil_mode=True))


def _own(net: nn.Module, h: int, w: int) -> tuple[int, int]:
    with torch.no_grad():
        return tuple(net(torch.zeros(1, 3, h, w)).shape[2:])


@pytest.mark.parametrize("h, w", [(40, 40), (41, 40), (40, 57), (203, 311)])
def test_the_size_of_a_model_without_a_shape_only_run_is_its_own(h, w):
    net = NumpyCeilNet().eval()
    geometry = fcnkit.analyze(net)
    assert geometry.padding == "valid" and geometry.method == "probed"
    with torch.no_grad():
        got = output_size(prepare(net), geometry, h, w, 3)
    assert got == _own(net, h, w)
    if h % 2 or w % 2:  # the formula alone misses the partial window
        assert formula_size(geometry, h, w) != got


def test_predict_returns_that_size():
    net = NumpyCeilNet().eval()
    image = np.random.default_rng(0).integers(0, 256, (41, 57, 3)).astype(np.uint8)
    assert fcnkit.predict(net, image).shape[:2] == _own(net, 41, 57)


def test_a_valid_model_needs_its_receptive_field():
    net = NumpyCeilNet().eval()
    with pytest.raises(InputError, match=r"image is 7×40 but this valid-padding model needs at least 8×8 pixels"):
        output_size(prepare(net), fcnkit.analyze(net), 7, 40, 3)
