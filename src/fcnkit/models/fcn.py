"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015), one class parametrised by the skips it fuses.

Differences from the Caffe original, on purpose: convolutions are padded by 1 (not conv1_1's padding of 100) and
the input is zero-padded bottom/right to a multiple of 32, so every feature map is exactly H/2^k and the transposed
convolutions (kernel 2s, stride s, padding s/2) give exactly s times their input: no crop offsets anywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnkit.errors import ModelError
from fcnkit.layers import Normalize, bilinear_deconv, check_nchw, pad_to_multiple, score_conv
from fcnkit.models.registry import register_model, scaled
from fcnkit.models.vgg import vgg16_fc_convs, vgg16_features, vgg16_pool_indices

# Skips in the order they are fused: pool4 (stride 16) first, then pool3 (stride 8).
_SKIP_ORDER = ("pool4", "pool3")
_SKIP_CHANNELS = {"pool4": 512, "pool3": 256}


class FCN(nn.Module):
    """VGG16 FCN fusing the class scores of ``skips`` (a prefix of ("pool4", "pool3")) with the coarse scores.

    Shapes: (N, in_channels, H, W) raw 0-255 -> (N, num_classes, H, W) logits, for any H, W >= 1.
    Layer names follow the paper's Caffe models: ``score_fr``, ``upscore2``, ``score_pool4``, ``upscore_pool4``,
    ``score_pool3`` and the final ``upscore`` (32s), ``upscore16`` or ``upscore8``.
    """

    output_kind = "dense"
    multiple = 32

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0, skips: tuple[str, ...] = (),
                 batch_norm: bool = False):
        super().__init__()
        if tuple(skips) != _SKIP_ORDER[: len(skips)]:
            raise ModelError(f"FCN skips: expected a prefix of {_SKIP_ORDER}, got {skips!r}.")
        self.skips = tuple(skips)
        self.in_channels = in_channels
        self.normalize = Normalize.for_channels(in_channels)
        self.batch_norm = bool(batch_norm)
        self.features = vgg16_features(in_channels, width, self.batch_norm)  # torchvision keys features.N.*
        self.pool_indices = vgg16_pool_indices(self.batch_norm)
        self.classifier = vgg16_fc_convs(width)  # fc6 = classifier.0, fc7 = classifier.3
        self.score_fr = score_conv(scaled(4096, width), num_classes)
        # Each skip doubles the resolution of the running scores, then adds the skip's own scores (zero-initialised,
        # so training starts from the coarser net). fusions: (skip, its upsampler's name, its score layer's name).
        self.fusions = []
        stride = 32
        for i, skip in enumerate(self.skips):
            up_name = "upscore2" if i == 0 else f"upscore_{self.skips[i - 1]}"
            setattr(self, up_name, bilinear_deconv(num_classes, 2))
            setattr(self, f"score_{skip}", score_conv(scaled(_SKIP_CHANNELS[skip], width), num_classes,
                                                      zero_init=True))
            self.fusions.append((skip, up_name, f"score_{skip}"))
            stride //= 2
        self.final_stride = stride
        self.final_name = "upscore" if not self.skips else f"upscore{stride}"
        setattr(self, self.final_name, bilinear_deconv(num_classes, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        x, (h, w) = pad_to_multiple(x, self.multiple)  # (N, C, Hp, Wp), Hp = ceil(H/32)*32
        x = self.normalize(x)
        pools = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == self.pool_indices["pool3"]:
                pools["pool3"] = x  # (N, 256w, Hp/8, Wp/8)
            elif index == self.pool_indices["pool4"]:
                pools["pool4"] = x  # (N, 512w, Hp/16, Wp/16)
        x = self.classifier(x)  # fc7: (N, 4096w, Hp/32, Wp/32)
        score = self.score_fr(x)  # (N, K, Hp/32, Wp/32)
        for skip, up_name, score_name in self.fusions:
            score = getattr(self, up_name)(score)  # (N, K, Hp/16, Wp/16), then Hp/8 for pool3
            score = score + getattr(self, score_name)(pools[skip])
        score = getattr(self, self.final_name)(score)  # (N, K, Hp, Wp)
        return score[:, :, :h, :w]  # (N, K, H, W)


@register_model
def fcn32s(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = False) -> nn.Module:
    """FCN-32s: VGG16 scores upsampled 32x in one step (``batch_norm``: the vgg16_bn backbone)."""
    return FCN(num_classes, in_channels, width, skips=(), batch_norm=batch_norm)


@register_model
def fcn16s(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = False) -> nn.Module:
    """FCN-16s: FCN-32s fused with pool4 scores, upsampled 16x (``batch_norm``: the vgg16_bn backbone)."""
    return FCN(num_classes, in_channels, width, skips=("pool4",), batch_norm=batch_norm)


@register_model
def fcn8s(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = False) -> nn.Module:
    """FCN-8s: FCN-16s fused with pool3 scores, upsampled 8x (``batch_norm``: the vgg16_bn backbone)."""
    return FCN(num_classes, in_channels, width, skips=("pool4", "pool3"), batch_norm=batch_norm)
