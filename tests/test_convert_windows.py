"""Convolutionalizing classifiers laid out like MTCNN's R-Net and O-Net (random weights, a fraction of the width):
a permute of the feature map before the flatten, PReLU in the head, ceil_mode pooling with a partial last window.

The FCN equals the classifier at its input size, warns naming the pooling layer, and is exact on the larger crops
that it states (verified by sliding the classifier over crops of that size).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnkit.convert import PartialWindowWarning, convolutionalize, sliding_window, verify
from fcnkit.errors import ConversionError


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():  # scores of order 1, so 1e-5 is float32 rounding, not a loose bound
        fan_in = p[0].numel() if p.dim() > 1 else 1
        nn.init.normal_(p, std=(2.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.25)
    return model.eval()


class TinyRNet(nn.Module):
    """R-Net's layers and forward (24x24 input) with fewer channels: returns (box offsets, face probabilities)."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 2 * width, 3), nn.PReLU(2 * width)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(2 * width, 3 * width, 3), nn.PReLU(3 * width)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(3 * width, 4 * width, 2), nn.PReLU(4 * width)
        self.dense4, self.prelu4 = nn.Linear(4 * width * 3 * 3, 16), nn.PReLU(16)
        self.dense5_1, self.softmax5_1 = nn.Linear(16, 2), nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))  # (N, 6, 11, 11): pool1's last window sees 2 of 3 pixels
        x = self.pool2(self.prelu2(self.conv2(x)))  # (N, 9, 4, 4)
        x = self.prelu3(self.conv3(x))  # (N, 12, 3, 3)
        x = x.permute(0, 3, 2, 1).contiguous()  # (N, w, h, C): Caffe's flatten order
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class TinyONet(nn.Module):
    """O-Net's layers and forward (48x48 input), fewer channels: returns (boxes, landmarks, face probabilities)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(4, 6, 3), nn.PReLU(6), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3, self.pool3 = nn.Conv2d(6, 6, 3), nn.PReLU(6), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(6, 8, 2), nn.PReLU(8)
        self.dense5, self.prelu5 = nn.Linear(8 * 3 * 3, 16), nn.PReLU(16)
        self.dense6_1, self.softmax6_1 = nn.Linear(16, 2), nn.Softmax(dim=1)
        self.dense6_2, self.dense6_3 = nn.Linear(16, 4), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))  # (N, 4, 23, 23): partial last window
        x = self.pool2(self.prelu2(self.conv2(x)))  # (N, 6, 10, 10)
        x = self.pool3(self.prelu3(self.conv3(x)))  # (N, 6, 4, 4)
        x = self.prelu4(self.conv4(x))  # (N, 8, 3, 3)
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


class Scores(nn.Module):
    """The face probabilities only, as facenet-pytorch's callers use them (the last output)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("net, size, exact", [(TinyRNet, (24, 24), (25, 25)), (TinyONet, (48, 48), (49, 49))])
def test_mtcnn_layout_converts_equal_at_input_size_and_exact_on_larger_crops(net, size, exact) -> None:
    clf = Scores(_seeded(net()))
    with pytest.warns(PartialWindowWarning) as caught:
        fcn = convolutionalize(clf, input_size=size)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"convolutionalize: layer 'net.pool1' (MaxPool2d) has ceil_mode=True and at "
                              f"input_size {size[0]}x{size[1]} its last window is partial")
    assert "it sees 2 of 3 rows and 2 of 3 columns" in message
    assert f"so the FCN equals the classifier on {exact[0]}x{exact[1]} crops" in message
    assert fcn.exact_window == exact and "exact_window=" in repr(fcn)

    x = _image(*size)  # at the input size: one window, the classifier's own scores
    with torch.no_grad():
        assert torch.allclose(fcn(x)[:, :, 0, 0], clf(x), atol=1e-5, rtol=0)
    assert verify(clf, fcn, x) <= 1e-5

    image = _image(size[0] + 17, size[1] + 22)
    result = verify(clf, fcn, image)
    assert result > 1e-4  # on 24x24 crops the partial window saw less than the FCN sees
    assert result.window == size and result.exact_window == exact and result.exact_difference <= 1e-5
    assert "where the FCN is exact" in result.summary()
    # the same by hand: slide the classifier over crops of the stated size
    with torch.no_grad():
        grid = fcn(image)
    reference = sliding_window(clf, image, window=exact, stride=fcn.stride)
    rows, cols = reference.shape[2:]
    assert torch.allclose(grid[:, :, :rows, :cols], reference, atol=1e-5, rtol=0)


def test_partial_windows_of_two_layers_along_different_axes() -> None:
    clf = Scores(_seeded(TinyRNet()))
    with pytest.warns(PartialWindowWarning) as caught:
        fcn = convolutionalize(clf, input_size=(24, 23))  # rows: pool1 is partial; columns: pool2 is, pool1 is not
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "layer 'net.pool1' (MaxPool2d)" in messages[0] and "it sees 2 of 3 rows)" in messages[0]
    assert "layer 'net.pool2' (MaxPool2d)" in messages[1] and "on its 9x8 input it sees 2 of 3 columns" in messages[1]
    # pool2's missing column comes from pool1's 11th window, which reads input columns 20..24
    assert fcn.exact_window == (25, 25)
    result = verify(clf, fcn, _image(40, 41))
    assert result.exact_difference is not None and result.exact_difference <= 1e-5


class PermutedHead(nn.Module):
    """A permute/transpose/movedim of the feature map, then element-wise work, then a flatten into Linear."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 4, 3), nn.Linear(4 * 5 * 6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (N, 4, 5, 6) at 7x8
        if self.how == "permute":
            y = y.permute(0, 2, 3, 1)
        elif self.how == "transpose":
            y = torch.transpose(y, 1, 3).contiguous()
        elif self.how == "movedim":
            y = y.movedim(1, -1).relu()
        else:  # two permutes in a row
            y = y.permute(0, 3, 1, 2).transpose(2, 3) * 0.5
        return self.fc2(F.relu(self.fc1(y.reshape(x.shape[0], -1))))


@pytest.mark.parametrize("how", ["permute", "transpose", "movedim", "twice"])
def test_permuted_feature_map_equals_the_classifier_on_every_window(how: str) -> None:
    clf = _seeded(PermutedHead(how))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no padding, no partial window: exact, silently
        fcn = convolutionalize(clf, input_size=(7, 8))
    assert fcn.exact_window == (7, 8)
    result = verify(clf, fcn, _image(19, 15))
    assert result <= 1e-5 and result.exact_difference is None


def test_what_cannot_be_converted_is_still_refused() -> None:
    prelu_flat = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.PReLU(72), nn.Linear(72, 2))
    with pytest.raises(ConversionError, match=r"layer '2' \(PReLU\) has one parameter per element of the flattened "
                                              r"feature map; put it after the first Linear"):
        convolutionalize(prelu_flat, input_size=(8, 8))

    class FunctionalGroupNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(F.group_norm(self.conv(x), 2), 1))

    # equal at the training size, but not on larger images: the self-check alone could not see it
    with pytest.raises(ConversionError, match=r"'group_norm' at 'group_norm' normalizes over the whole image"):
        convolutionalize(FunctionalGroupNorm(), input_size=(8, 8))
    with pytest.raises(ConversionError, match=r"should return one \(N, K\) score tensor, found a tuple result"):
        convolutionalize(_seeded(TinyRNet()), input_size=(24, 24))
