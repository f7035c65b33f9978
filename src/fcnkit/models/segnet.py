"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017): a VGG16 encoder with BatchNorm whose decoder upsamples
by max-unpooling with the encoder's saved pooling indices, so boundaries come back where the maxima were.

Five poolings: the input is zero-padded bottom/right to a multiple of 32 and the output cropped back.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnkit.layers import Normalize, check_nchw, indexed_max_pool, max_unpooler, pad_to_multiple, score_conv
from fcnkit.models.registry import register_model, scaled
from fcnkit.models.unet import conv_bn_relu

# Channels of the convolutions of each encoder block (VGG16); the decoder mirrors them.
_ENCODER = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


def _block(in_channels: int, widths: tuple[int, ...], width: float) -> nn.Sequential:
    layers = []
    for w in widths:
        layers.append(conv_bn_relu(in_channels, scaled(w, width)))
        in_channels = scaled(w, width)
    return nn.Sequential(*layers)


class SegNet(nn.Module):
    """Shapes: (N, in_channels, H, W) raw 0-255 -> (N, num_classes, H, W) logits, for any H, W >= 1."""

    output_kind = "dense"
    multiple = 32

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.normalize = Normalize.for_channels(in_channels)
        ins = [in_channels] + [scaled(b[-1], width) for b in _ENCODER[:-1]]
        self.encoder = nn.ModuleList([_block(c, b, width) for c, b in zip(ins, _ENCODER)])
        self.pool = indexed_max_pool(2)
        self.unpool = max_unpooler(2)
        ins = [scaled(512, width)] + [scaled(b[-1], width) for b in _DECODER[:-1]]
        self.decoder = nn.ModuleList([_block(c, b, width) for c, b in zip(ins, _DECODER)])
        self.score = score_conv(scaled(_DECODER[-1][-1], width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        x, (h, w) = pad_to_multiple(x, self.multiple)  # (N, C, Hp, Wp), Hp = ceil(H/32)*32
        x = self.normalize(x)
        saved = []
        for block in self.encoder:
            x = block(x)
            x, indices = self.pool(x)  # halves H and W; indices remember each maximum's position
            saved.append(indices)
        # x: (N, 512w, Hp/32, Wp/32)
        for block in self.decoder:
            # doubles H and W, values back at the maxima, zeros elsewhere; the padded sizes are multiples of 32, so
            # twice the pooled size is exactly the size before pooling and no output_size is needed
            x = self.unpool(x, saved.pop())
            x = block(x)
        x = self.score(x)  # (N, K, Hp, Wp)
        return x[:, :, :h, :w]  # (N, K, H, W)


@register_model
def segnet(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """SegNet: VGG16-BN encoder, decoder by max-unpooling with the saved indices."""
    return SegNet(num_classes, in_channels, width)
