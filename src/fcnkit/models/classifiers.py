"""Models that answer "what", not "which pixel": image classifiers and a heat-map network.

- ``allconv_classifier``: the All-Convolutional Net (Springenberg et al., ICLR 2015 workshop, All-CNN-C): strided
  convolutions instead of pooling, 1x1 class scores, global average pooling -> (N, K) for any input size.
- ``heatmap_net``: convolutions and three poolings to a score grid at output stride 8 (64x64 -> 8x8).
- ``digit_classifier``: a classic convnet with unpadded convolutions and a fully connected head, trained on fixed
  32x32 windows; ``fcnkit.convolutionalize`` turns its head into convolutions to slide it over a whole image.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnkit.errors import InputError
from fcnkit.layers import GlobalAvgPoolHead, Normalize, check_nchw, he_init_, is_traced, pad_to_multiple, score_conv
from fcnkit.models.registry import register_model, scaled


def _conv_relu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
               padding: int = 1) -> list[nn.Module]:
    conv = he_init_(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding))
    return [conv, nn.ReLU(inplace=True)]


class AllConvClassifier(nn.Module):
    """Shapes: (N, in_channels, H, W) raw 0-255 -> (N, num_classes) logits, for any H, W >= 1."""

    output_kind = "classifier"

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c1, c2 = scaled(96, width), scaled(192, width)
        self.in_channels = in_channels
        self.normalize = Normalize.for_channels(in_channels)
        self.features = nn.Sequential(
            *_conv_relu(in_channels, c1), *_conv_relu(c1, c1),
            *_conv_relu(c1, c1, stride=2),  # a strided convolution where a classic net would pool
            *_conv_relu(c1, c2), *_conv_relu(c2, c2),
            *_conv_relu(c2, c2, stride=2),
            *_conv_relu(c2, c2), *_conv_relu(c2, c2, kernel=1, padding=0),
        )
        self.head = GlobalAvgPoolHead(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        x = self.normalize(x)
        x = self.features(x)  # (N, 192w, ceil(H/4), ceil(W/4))
        return self.head(x)  # (N, K)


class HeatmapNet(nn.Module):
    """Shapes: (N, in_channels, H, W) raw 0-255 -> (N, num_classes, ceil(H/8), ceil(W/8)) score grid.

    The input is zero-padded bottom/right to a multiple of 8, so 64x64 gives 8x8 and 640x320 gives 80x40.
    """

    output_kind = "grid"
    multiple = 8
    output_stride = 8

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c = [scaled(w, width) for w in (32, 64, 128, 256)]
        self.in_channels = in_channels
        self.normalize = Normalize.for_channels(in_channels)
        layers: list[nn.Module] = [*_conv_relu(in_channels, c[0]), *_conv_relu(c[0], c[0])]
        for i in range(3):
            layers += [nn.MaxPool2d(2, stride=2), *_conv_relu(c[i], c[i + 1]), *_conv_relu(c[i + 1], c[i + 1])]
        self.features = nn.Sequential(*layers)
        self.score = score_conv(c[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        x, _ = pad_to_multiple(x, self.multiple)  # (N, C, Hp, Wp), Hp = ceil(H/8)*8
        x = self.normalize(x)
        x = self.features(x)  # (N, 256w, Hp/8, Wp/8)
        return self.score(x)  # (N, K, Hp/8, Wp/8)


class DigitClassifier(nn.Module):
    """Shapes: (N, in_channels, W, W) raw 0-255 -> (N, num_classes) logits for its ``window`` W (32 by default);
    other sizes raise ``InputError``.

    ``features`` uses unpadded convolutions and two 2x2 poolings (total stride 4), then ``(window - 32) / 16`` more
    pairs of unpadded convolutions at stride 4, ending at (N, 64w, 5, 5) with a receptive field of ``window``;
    ``classifier`` is Flatten -> Linear -> ReLU -> Dropout -> Linear, which ``fcnkit.convolutionalize`` turns into a
    5x5 and a 1x1 convolution: one score per 4-pixel step of a big image. A wider window sees a digit's neighbours
    and, in a segmentation net built on it (``fcn8s_on``), the whole digit from any of its pixels.
    The head is kept light (64 hidden units at width 1): after convolutionalization the convolutions are shared
    between overlapping windows but the 5x5 head still runs once per window position, so a heavy head would eat
    most of the one-pass speed-up.
    """

    output_kind = "classifier"

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0, window: int = 32,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 32 or (window - 32) % 16:
            raise InputError(f"digit_classifier window: expected 32, 48, 64, ... (32 + a multiple of 16), got "
                             f"{window!r}; pass window=32 or window=48.")
        if not 0.0 <= float(dropout) < 1.0:
            raise InputError(f"digit_classifier dropout: expected a probability in [0, 1), got {dropout!r}.")
        c1, c2, hidden = scaled(32, width), scaled(64, width), scaled(64, width)
        self.in_channels = in_channels
        self.input_size = (window, window)
        self.normalize = Normalize.for_channels(in_channels)
        layers = [
            *_conv_relu(in_channels, c1, padding=0), *_conv_relu(c1, c1, padding=0),  # 32 -> 28
            nn.MaxPool2d(2, stride=2),  # 14
            *_conv_relu(c1, c2, padding=0), *_conv_relu(c2, c2, padding=0),  # 10
            nn.MaxPool2d(2, stride=2),  # 5 (window 32)
        ]
        for _ in range((window - 32) // 16):  # each pair: 4 cells fewer at stride 4, 16 px more field
            layers += [*_conv_relu(c2, c2, padding=0), *_conv_relu(c2, c2, padding=0)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), he_init_(nn.Linear(c2 * 5 * 5, hidden)), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        if not is_traced(x) and tuple(x.shape[-2:]) != self.input_size:
            h, w = self.input_size
            raise InputError(f"digit_classifier input: expected {h}x{w} windows (N, C, {h}, {w}), got "
                             f"{x.shape[-2]}x{x.shape[-1]}; crop {h}x{w} windows, or use "
                             f"fcnkit.convolutionalize(model, input_size=({h}, {w})) (`fcnkit convert` from the "
                             f"command line) to score a whole image.")
        x = self.normalize(x)
        x = self.features(x)  # (N, 64w, 5, 5)
        return self.classifier(x)  # (N, K)


@register_model
def allconv_classifier(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """All-CNN-C: convolutions, 1x1 class scores, global average pooling -> (N, K) for any input size."""
    return AllConvClassifier(num_classes, in_channels, width)


@register_model
def heatmap_net(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Score grid at output stride 8: 64x64 -> 8x8, 640x320 -> 80x40."""
    return HeatmapNet(num_classes, in_channels, width)


@register_model
def digit_classifier(*, num_classes: int = 11, in_channels: int = 3, width: float = 1.0, window: int = 32,
                     dropout: float = 0.0) -> nn.Module:
    """Window classifier, 32x32 by default (11 classes in the digit-scenes demo: background + digits 0-9)."""
    return DigitClassifier(num_classes, in_channels, width, window, dropout)
