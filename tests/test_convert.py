"""Convolutionalization: the FCN equals the classifier on every full window, the seeds' worked examples, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnkit.convert import ConvolutionalizedNet, PaddingWarning, convolutionalize, sliding_window, verify
from fcnkit.errors import ConversionError, InputError


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():  # scores of order 1, so 1e-5 is float32 rounding, not a loose bound
        fan_in = p[0].numel() if p.dim() > 1 else 1
        nn.init.normal_(p, std=(2.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.1)
    return model.eval()


def _small_classifier(**extra) -> nn.Sequential:
    """Unpadded convs, stride 4, 32x32 windows, BatchNorm1d and Dropout in the head."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),  # 32 -> 30 -> 15
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.MaxPool2d(2),  # 15 -> 13 -> 6
        nn.Flatten(), nn.Linear(6 * 6 * 6, 12), nn.ReLU(), nn.Dropout(0.5), nn.BatchNorm1d(12),
        nn.Linear(12, 5),
    )
    _seeded(model)
    model[10].running_mean.uniform_(-1, 1)
    model[10].running_var.uniform_(0.5, 2)
    return model


class LeNet(nn.Module):
    """Functional code: F.relu, F.max_pool2d, x.view(x.size(0), -1), F.log_softmax(dim=-1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 5), nn.Conv2d(4, 8, 5)
        self.fc1, self.fc2 = nn.Linear(8 * 5 * 5, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 4, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 8, 5, 5)
        x = x.view(x.size(0), -1)  # (N, 200)
        x = F.dropout(F.relu(self.fc1(x)), 0.2, training=self.training)
        return F.log_softmax(self.fc2(x), dim=-1)


class FlattenReshape(nn.Module):
    """torch.flatten and x.reshape in one functional head, with a residual add after the first Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc1, self.fc2, self.fc3 = nn.Linear(3 * 8 * 6, 7), nn.Linear(7, 7), nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        y = self.fc1(torch.flatten(x, 1) * 0.5)
        y = y + torch.tanh(self.fc2(y))
        return self.fc3(y.reshape(y.shape[0], -1))


def test_unpadded_classifier_equals_every_window() -> None:
    clf = _small_classifier()
    fcn = convolutionalize(clf, input_size=(32, 32))
    assert isinstance(fcn, ConvolutionalizedNet) and fcn.output_kind == "grid"
    assert fcn.window == (32, 32) and fcn.stride == (4, 4)
    assert fcn.crop  # 13 -> 6 pooling drops a row: 34x34 gives 2 body rows but only one full window
    assert fcn(torch.rand(1, 3, 34, 34)).shape == (1, 5, 1, 1)
    image = torch.rand(2, 3, 61, 50, generator=torch.Generator().manual_seed(1))
    assert fcn(image).shape == (2, 5, (61 - 32) // 4 + 1, (50 - 32) // 4 + 1)
    assert verify(clf, fcn, image) <= 1e-5
    # BatchNorm1d became a BatchNorm2d with the same statistics.
    bn = fcn.body.get_submodule("10")
    assert isinstance(bn, nn.BatchNorm2d)
    assert torch.equal(bn.running_mean, clf[10].running_mean) and torch.equal(bn.running_var, clf[10].running_var)


def test_fcn_agrees_with_sliding_window_on_channels_last_array() -> None:
    clf = _small_classifier()
    fcn = convolutionalize(clf, input_size=(32, 32))
    image = np.random.default_rng(0).random((40, 44, 3), dtype=np.float32)
    reference = sliding_window(clf, image, window=32, stride=4)
    assert reference.shape == (1, 5, 3, 4)
    with torch.no_grad():
        assert (fcn(torch.from_numpy(image).permute(2, 0, 1)[None]) - reference).abs().max() <= 1e-5


def test_classifier_is_not_changed_and_mode_is_kept() -> None:
    clf = _small_classifier()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    fcn = convolutionalize(clf.train(), input_size=(32, 32))
    assert fcn.training and isinstance(clf[7], nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


@pytest.mark.parametrize("model, channels, size", [(LeNet, 1, (32, 32)), (FlattenReshape, 2, (10, 8))])
def test_functional_classifiers(model: type[nn.Module], channels: int, size: tuple[int, int]) -> None:
    clf = _seeded(model())
    fcn = convolutionalize(clf, input_size=size, in_channels=channels)
    image = torch.rand(1, channels, size[0] + 13, size[1] + 9, generator=torch.Generator().manual_seed(2))
    assert verify(clf, fcn, image) <= 1e-5


def test_seed_5x5_kernel_of_twos_gives_164() -> None:
    """Seed: a Linear over a 5x5 input whose weights are all 2 is a 5x5 convolution with a kernel of 2s.

    The input sums to 82, so both give 2 * 82 = 164.
    """
    linear = nn.Linear(25, 1, bias=False)
    nn.init.constant_(linear.weight, 2.0)
    clf = nn.Sequential(nn.Flatten(), linear).eval()
    image = torch.tensor([[3.0, 1, 4, 1, 5], [9, 2, 6, 5, 3], [5, 8, 9, 7, 9], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]])
    assert image.sum() == 82
    fcn = convolutionalize(clf, input_size=(5, 5), in_channels=1)
    conv = fcn.body.get_submodule("1")
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (5, 5) and torch.all(conv.weight == 2)
    assert clf(image[None, None]).item() == 164.0
    assert fcn(image[None, None]).item() == 164.0


class _VGGShaped(nn.Module):
    """VGG16 at 1/16 width: padded 3x3 convs, 5 max pools, AdaptiveAvgPool2d(7), Linear 32*7*7 -> 64 -> 64 -> 3."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width, convs in ((4, 2), (8, 2), (16, 3), (32, 3), (32, 3)):
            for _ in range(convs):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(32 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.mark.slow
def test_seed_vgg16_at_224_on_384_gives_6x6_grid() -> None:
    """Seed: VGG16 trained at 224x224 run on 384x384 gives a 6x6 grid, the 36 windows at stride 32.

    VGG's convolutions pad with zeros, so inside the FCN a window's border pixels see real neighbours where the
    lone window saw zeros, at every one of the 13 padded layers; pool5's 7x7 cells all lie within the receptive
    field (212 px) of some window border, so every cell is touched. Measured with these random weights (seed 0,
    He-normal weights, biases N(0, 0.1), input uniform in [0, 1)): max |FCN - windows| = 0.37, mean 0.13, on scores
    of mean magnitude 0.35 (max 0.99); the class argmax agrees in 36 of 36 windows. At exactly 224x224 the FCN
    equals the classifier (1e-5), and unpadded classifiers agree everywhere (the tests above).
    """
    clf = _seeded(_VGGShaped())
    with pytest.warns(UserWarning, match=r"layer 'features.0' \(Conv2d\) pads its input with zeros"):
        fcn = convolutionalize(clf, input_size=(224, 224))
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in fcn.modules())  # the identity at 224: removed
    assert fcn.body.get_submodule("classifier.0").kernel_size == (7, 7)
    assert fcn.stride == (32, 32)
    image = torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grid = fcn(image)
        assert (fcn(image[:, :, :224, :224])[:, :, 0, 0] - clf(image[:, :, :224, :224])).abs().max() <= 1e-5
    assert grid.shape == (1, 3, 6, 6)
    reference = sliding_window(clf, image, window=224, stride=32)
    diff = (grid - reference).abs()
    assert 0.3 < diff.max() < 0.45 and 0.1 < diff.mean() < 0.16  # the padding effect documented above
    assert torch.equal(grid.argmax(1), reference.argmax(1))
    assert verify(clf, fcn, image) == pytest.approx(diff.max().item(), abs=1e-6)


def _fastai_mnist() -> nn.Sequential:
    """fast.ai style: stride-2 convs, global average pooling, then a Linear to 10 classes."""
    return _seeded(nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(),  # 28 -> 13
        nn.Conv2d(4, 8, 3, stride=2), nn.ReLU(),  # 13 -> 6
        nn.Conv2d(8, 8, 3), nn.ReLU(),  # 6 -> 4
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ))


def test_seed_fastai_mnist_28x28_on_28x16() -> None:
    """Seed: an MNIST classifier trained on 28x28 ending in global average pooling, given a 28x16 image.

    The classifier itself accepts 28x16 (global pooling averages whatever map it gets) and returns (N, 10), but
    that is not the score of any 28x28 window. The FCN scores full windows only: none fits in 16 columns, so the
    grid is (N, 10, 1, 0). On 28x44 it is (N, 10, 1, 5) at stride 4, equal to the five windows.
    """
    clf = _fastai_mnist()
    fcn = convolutionalize(clf, input_size=(28, 28), in_channels=1)
    assert isinstance(fcn.body.get_submodule("6"), nn.AvgPool2d) and fcn.stride == (4, 4)
    narrow = torch.rand(3, 1, 28, 16, generator=torch.Generator().manual_seed(0))
    assert clf(narrow).shape == (3, 10)
    assert fcn(narrow).shape == (3, 10, 1, 0)
    wide = torch.rand(3, 1, 28, 44, generator=torch.Generator().manual_seed(0))
    assert fcn(wide).shape == (3, 10, 1, 5)
    assert verify(clf, fcn, wide) <= 1e-5


class _MeanHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 5, 3), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.fc(F.relu(self.conv(x)).mean(dim=(2, 3))), dim=1)


def test_functional_global_mean_becomes_sliding_average() -> None:
    clf = _seeded(_MeanHead())
    fcn = convolutionalize(clf, input_size=(9, 9))
    assert any(isinstance(m, nn.AvgPool2d) and m.kernel_size == (7, 7) for m in fcn.modules())
    assert verify(clf, fcn, torch.rand(2, 3, 15, 20)) <= 1e-6


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.rnn, self.fc = nn.Conv2d(3, 4, 3), nn.LSTM(4, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.conv(x).flatten(2).transpose(1, 2)  # (N, h*w, 4)
        return self.fc(self.rnn(seq)[0][:, -1])


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.attn, self.fc = nn.Conv2d(3, 4, 3), nn.MultiheadAttention(4, 1, batch_first=True), \
            nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc(self.attn(seq, seq, seq)[0].mean(1))


class _WidthLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.fc = nn.Conv2d(3, 2, 3), nn.Linear(6, 6), nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.mix(self.conv(x)), 1))


class _FlatSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 2, 3), nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.softmax(torch.flatten(self.conv(x), 1), dim=1))


class _BatchPermute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 2, 3), nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).permute(1, 0, 2, 3).reshape(x.shape[0], -1))


class _PartialFlatten(nn.Module):
    """Flattens only (h, w) of the permuted map, then mixes the rest: no convolution computes that."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 2, 3), nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).permute(0, 2, 3, 1).flatten(2).flatten(1))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return x


@pytest.mark.parametrize("model, message", [
    (_Recurrent, r"layer 'rnn' \(LSTM\) is recurrent"),
    (_Attention, r"layer 'attn' \(MultiheadAttention\) attends over all positions of the image, so the FCN's score"),
    (_WidthLinear, r"layer 'mix' \(Linear\) is applied to the last axis of a \(N, C, H, W\) feature map"),
    (_FlatSoftmax, r"'softmax' at 'softmax' takes a softmax over the flattened feature map"),
    (_BatchPermute, r"'.permute\(\)' at 'permute' moves the batch axis of the feature map \(2, 2, 6, 6\) \(to "
                    r"position 1\), mixing windows of different images; keep the batch axis first"),
    (_PartialFlatten, r"'.flatten\(\)' at 'flatten' works on the feature map permuted to \(2, 6, 6, 2\) in a way "
                      r"convolutionalize cannot follow"),
    (_Branchy, r"torch.fx cannot trace _Branchy"),
])
def test_unconvertible_layers_are_named(model: type[nn.Module], message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convolutionalize(model(), input_size=(8, 8))


def test_other_errors() -> None:
    with pytest.raises(ConversionError, match=r"layer '1' \(GroupNorm\) normalizes over the whole image, so the FCN's "
                                              r"score for a window would depend on the rest of the image"):
        convolutionalize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(144, 2)),
                         input_size=(8, 8))
    with pytest.raises(ConversionError, match=r"layer '3' \(BatchNorm1d\) normalises every position"):
        convolutionalize(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(72),
                                       nn.Linear(72, 2)), input_size=(8, 8))
    with pytest.raises(ConversionError, match=r"layer '1' \(AdaptiveAvgPool2d\) maps the 6x6 feature map to 3x3"):
        convolutionalize(nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                                       nn.Linear(18, 2)), input_size=(8, 8))
    with pytest.raises(ConversionError, match=r"fails on a \(2, 3, 9, 9\) input .*pass the input_size"):
        convolutionalize(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(72, 2)), input_size=(9, 9))
    with pytest.raises(ConversionError, match=r"return only the class scores"):
        convolutionalize(nn.Sequential(nn.Conv2d(3, 2, 3)), input_size=(8, 8))
    with pytest.raises(InputError, match=r"input_size=...\): expected \(H, W\), two positive integers"):
        convolutionalize(_small_classifier(), input_size=32)
    fcn = convolutionalize(_small_classifier(), input_size=(32, 32))
    with pytest.raises(InputError, match=r"expected a \(N, 3, H, W\) tensor, got shape \(3, 40, 40\)"):
        fcn(torch.zeros(3, 40, 40))
    with pytest.raises(InputError, match=r"expected at least one full 32x32 window, got a 20x40 image"):
        sliding_window(_small_classifier(), np.zeros((20, 40, 3)), window=32, stride=4)


def test_unpadded_net_does_not_warn_and_padding_does() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convolutionalize(_small_classifier(), input_size=(32, 32))
    padded = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 7 * 7, 2))
    with pytest.warns(PaddingWarning, match=r"layer '0' \(Conv2d\) pads its input with zeros \(padding=\(1, 1\)\), so "
                                            r"the FCN sees real neighbours where each window saw padding"):
        fcn = convolutionalize(padded, input_size=(7, 7))
    assert fcn.exact_window is None and issubclass(PaddingWarning, UserWarning)
    # ceil_mode without a partial window at the training size changes nothing: no warning (5x5 -> pool 3/2 -> 2x2)
    whole = nn.Sequential(nn.Conv2d(3, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(), nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convolutionalize(whole, input_size=(7, 7)).exact_window == (7, 7)


def test_spec_and_state_dict_round_trip() -> None:
    clf = _small_classifier()
    clf.fcnkit_spec = {"name": "tiny", "num_classes": 5, "in_channels": 3, "options": {}}
    fcn = convolutionalize(clf, input_size=(32, 32))
    assert fcn.fcnkit_spec == {**clf.fcnkit_spec, "convolutionalized": {"input_size": [32, 32]}}
    again = convolutionalize(_small_classifier(), input_size=(32, 32))
    again.load_state_dict(fcn.state_dict())
    x = torch.rand(1, 3, 40, 40)
    assert torch.equal(fcn.eval()(x), again.eval()(x))
    assert "window=(32, 32), stride=(4, 4)" in repr(fcn)


def test_digit_classifier_checkpoint_round_trip(tmp_path) -> None:
    from fcnkit.checkpoint import load_checkpoint, save_checkpoint
    from fcnkit.models import build_model

    torch.manual_seed(0)
    clf = build_model("digit_classifier", num_classes=11, width=0.25).eval()
    fcn = convolutionalize(clf, input_size=(32, 32))
    assert not fcn.crop and fcn.stride == (4, 4)
    image = torch.rand(1, 3, 45, 52, generator=torch.Generator().manual_seed(0)) * 255
    assert verify(clf, fcn, image) <= 1e-5 * (1 + clf(image[:, :, :32, :32]).abs().max().item())
    save_checkpoint(tmp_path / "fcn.pt", model=fcn)
    again = load_checkpoint(tmp_path / "fcn.pt")
    assert isinstance(again, ConvolutionalizedNet) and again.fcnkit_spec["convolutionalized"] == {"input_size": [32, 32]}
    assert torch.equal(again(image), fcn(image))


def test_wider_digit_classifier_converts_exactly_at_stride_4() -> None:
    from fcnkit.models import build_model

    torch.manual_seed(0)
    clf = build_model("digit_classifier", num_classes=11, width=0.25, window=48).eval()
    fcn = convolutionalize(clf, input_size=clf.input_size)
    assert fcn.stride == (4, 4) and fcn.window == (48, 48)
    image = torch.rand(1, 3, 61, 70, generator=torch.Generator().manual_seed(1)) * 255
    assert verify(clf, fcn, image) <= 1e-5 * (1 + clf(image[:, :, :48, :48]).abs().max().item())
    assert fcn(image).shape[-2:] == ((61 - 48) // 4 + 1, (70 - 48) // 4 + 1)


def test_meta_device_classifier_converts_on_shapes_alone() -> None:
    with torch.device("meta"):  # e.g. a registry building the paper's widths without allocating them
        fcn = convolutionalize(_small_classifier(), input_size=(32, 32))
    assert next(fcn.parameters()).is_meta and (fcn.stride, fcn.num_classes) == ((4, 4), 5)


def test_an_exported_classifier_is_refused_naming_its_file(tmp_path):
    from fcnkit.export import export_program
    from fcnkit.loading import load_model
    from fcnkit.models import build_model

    export_program(build_model("digit_classifier", num_classes=4, width=0.25).eval(), tmp_path / "c.pt2")
    with pytest.raises(ConversionError, match=r"expected a PyTorch classifier made of layers, found a torch\.export "
                                              r"program \(from '.*c\.pt2'\), whose layers are gone; convolutionalize "
                                              r"the \.pt checkpoint it was exported from"):
        convolutionalize(load_model(tmp_path / "c.pt2"), input_size=(32, 32))


def test_it_takes_0_255_values_when_its_classifier_did(tmp_path) -> None:
    """The traced body keeps the classifier's Normalize as plain operations; the FCN says what it takes, so
    16-bit images are scaled for it as for the classifier (the CLI's heat maps of 16-bit photos)."""
    import fcnkit
    from fcnkit.inference.inputs import takes_0_255

    torch.manual_seed(0)
    classifier = fcnkit.build_model("digit_classifier", num_classes=4, width=0.25).eval()
    fcn = convolutionalize(classifier, input_size=(32, 32))
    assert takes_0_255(fcn) and not takes_0_255(convolutionalize(LeNet().eval(), input_size=(32, 32), in_channels=1))
    image = np.random.default_rng(0).integers(0, 256, (40, 44, 3)).astype(np.uint8)
    np.testing.assert_array_equal(fcnkit.predict(fcn, image.astype(np.uint16) * 257), fcnkit.predict(fcn, image))
