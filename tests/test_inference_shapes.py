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
from fcnkit.inference.shapes import formula_size, sizing


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
        got = sizing(prepare(net), geometry, h, w, 3).size
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
        sizing(prepare(net), fcnkit.analyze(net), 7, 40, 3)


class PReLUCeilNet(nn.Module):
    """MTCNN's P-Net in small: unpadded convolutions, a PReLU (negative values), then a ceil_mode pooling, whose
    partial window on an odd side differs if the input is zero padded."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.PReLU(6), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  nn.Conv2d(6, 8, 3), nn.PReLU(8), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  nn.Conv2d(8, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x - 128.0)


class NeedsMultiple(nn.Module):
    """A valid model that refuses sizes off its multiple: inference must pad it as before."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise RuntimeError("sides must be even")
        return self.conv(F.max_pool2d(x, 2))


@pytest.mark.parametrize("h, w", [(61, 77), (60, 77), (97, 64)])
def test_a_valid_model_that_runs_on_any_size_is_not_padded(h, w):
    net = PReLUCeilNet().eval()
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3)).astype(np.uint8)
    with torch.no_grad():
        direct = net(torch.from_numpy(image).float().permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    whole = fcnkit.predict(net, image)
    assert whole.shape == direct.shape
    np.testing.assert_allclose(whole, direct, rtol=0, atol=1e-4)  # the partial windows at the edges included
    for tile in (16, 24):
        np.testing.assert_allclose(fcnkit.predict_tiled(net, image, tile=tile), whole, rtol=0, atol=1e-4)
    # padded to the input multiple (4) as inference used to do it, the last row/column of windows differs
    padded = np.zeros((-(-h // 4) * 4, -(-w // 4) * 4, 3), np.float32)
    padded[:h, :w] = image
    with torch.no_grad():
        old = net(torch.from_numpy(padded).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(old[:whole.shape[0], :whole.shape[1]] - whole).max() > 1e-3


def test_which_models_inference_pads():
    ceil = PReLUCeilNet().eval()
    assert not sizing(prepare(ceil), fcnkit.analyze(ceil), 61, 77, 3).pad_edges
    assert not sizing(prepare(NumpyCeilNet().eval()), fcnkit.analyze(NumpyCeilNet().eval()), 41, 57, 3).pad_edges
    strict = NeedsMultiple().eval()
    assert sizing(prepare(strict), fcnkit.analyze(strict), 41, 57, 3).pad_edges
    image = np.random.default_rng(0).integers(0, 256, (41, 57, 3)).astype(np.uint8)
    np.testing.assert_allclose(fcnkit.predict_tiled(strict, image, tile=16), fcnkit.predict(strict, image),
                               rtol=0, atol=1e-4)
    unet = fcnkit.build_model("unet", num_classes=2, width=0.0625).eval()
    assert sizing(prepare(unet), fcnkit.analyze(unet), 41, 57, 3).pad_edges  # "same": padded as ever
