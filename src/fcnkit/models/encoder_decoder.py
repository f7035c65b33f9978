"""The simplest dense FCN: convolutions and max-pooling down, nearest-neighbour upsampling and convolutions up.

No skips, no normalisation layers: every layer is local, so it tiles exactly in training and eval mode alike.
Three poolings: the input is zero-padded bottom/right to a multiple of 8 and the output cropped back.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnkit.layers import Normalize, check_nchw, he_init_, pad_to_multiple, score_conv, upsampler
from fcnkit.models.registry import register_model, scaled

_WIDTHS = (32, 64, 128, 256)  # channels at strides 1, 2, 4, 8


def _conv_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [he_init_(nn.Conv2d(in_channels, out_channels, 3, padding=1)), nn.ReLU(inplace=True)]


class EncoderDecoder(nn.Module):
    """Shapes: (N, in_channels, H, W) raw 0-255 -> (N, num_classes, H, W) logits, for any H, W >= 1."""

    output_kind = "dense"
    multiple = 8

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c = [scaled(w, width) for w in _WIDTHS]
        self.in_channels = in_channels
        self.normalize = Normalize.for_channels(in_channels)
        down: list[nn.Module] = _conv_relu(in_channels, c[0])
        for i in range(3):
            down += [nn.MaxPool2d(2, stride=2), *_conv_relu(c[i], c[i + 1])]
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = []
        for i in reversed(range(3)):
            up += [upsampler(2, "nearest"), *_conv_relu(c[i + 1], c[i])]
        self.decoder = nn.Sequential(*up)
        self.score = score_conv(c[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        x, (h, w) = pad_to_multiple(x, self.multiple)  # (N, C, Hp, Wp), Hp = ceil(H/8)*8
        x = self.normalize(x)
        x = self.encoder(x)  # (N, 256w, Hp/8, Wp/8)
        x = self.decoder(x)  # (N, 32w, Hp, Wp)
        x = self.score(x)  # (N, K, Hp, Wp)
        return x[:, :, :h, :w]  # (N, K, H, W)


@register_model
def encoder_decoder(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Pooling down, nearest-neighbour upsampling up, no skips (input multiple 8)."""
    return EncoderDecoder(num_classes, in_channels, width)
