"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) with padded convolutions and batch normalisation.

Four 2x2 poolings, so the input is zero-padded bottom/right to a multiple of 16; padded 3x3 convolutions keep every
skip the same size as the decoder map it is concatenated with (the paper's unpadded version needed crops).
BatchNorm is local (exact under tiling) in eval mode only; the geometry analyzer says so for training mode.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnkit.layers import Normalize, check_nchw, pad_to_multiple, score_conv
from fcnkit.models.registry import register_model, scaled

_WIDTHS = (64, 128, 256, 512, 1024)  # the paper's channels per level, top to bottom


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 padded convolution, BatchNorm, ReLU: (N, C_in, H, W) -> (N, C_out, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # BatchNorm's shift makes a bias redundant
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two :func:`conv_bn_relu`, U-Net's unit at every level: (N, C_in, H, W) -> (N, C_out, H, W)."""
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class UNet(nn.Module):
    """Shapes: (N, in_channels, H, W) raw 0-255 -> (N, num_classes, H, W) logits, for any H, W >= 1."""

    output_kind = "dense"
    multiple = 16

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c = [scaled(w, width) for w in _WIDTHS]
        self.in_channels = in_channels
        self.normalize = Normalize.for_channels(in_channels)
        self.down = nn.ModuleList([double_conv(in_channels, c[0])] +
                                  [double_conv(c[i], c[i + 1]) for i in range(4)])
        self.pool = nn.MaxPool2d(2, stride=2)
        # The paper's "up-conv 2x2": a stride-2 transposed convolution halving the channels.
        self.up = nn.ModuleList([nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in reversed(range(4))])
        self.up_convs = nn.ModuleList([double_conv(2 * c[i], c[i]) for i in reversed(range(4))])
        self.score = score_conv(c[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        x, (h, w) = pad_to_multiple(x, self.multiple)  # (N, C, Hp, Wp), Hp = ceil(H/16)*16
        x = self.normalize(x)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)  # (N, c[level], Hp/2^level, Wp/2^level)
            skips.append(x)
        skips.pop()  # the bottom (N, c[4], Hp/16, Wp/16) is x itself
        for up, block in zip(self.up, self.up_convs):
            x = up(x)  # (N, c[i], 2h, 2w): back to the size of the matching encoder level
            x = block(torch.cat([skips.pop(), x], dim=1))  # (N, c[i], 2h, 2w)
        x = self.score(x)  # (N, K, Hp, Wp)
        return x[:, :, :h, :w]  # (N, K, H, W)


@register_model
def unet(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """U-Net with 4 poolings (input multiple 16), skip concatenation and BatchNorm."""
    return UNet(num_classes, in_channels, width)
