"""Weight surgery: the layers of a classifier's head rebuilt as their convolutional equivalents, every shape checked."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fcnkit.errors import ConversionError


def conv_from_linear(linear: nn.Linear, kernel: tuple[int, int], channels: int, where: str,
                     order: Sequence[int] | None = None) -> nn.Conv2d:
    """The Conv2d that computes ``linear`` on a flattened (channels, *kernel) map, weights checked.

    ``order`` is the permutation of the (N, C, h, w) map before it was flattened (``x.permute(0, 3, 2, 1)`` gives
    ``[0, 3, 2, 1]``: the flattened index runs over w, h, C); ``None`` for the plain C-major flatten.
    """
    expected = channels * kernel[0] * kernel[1]
    if linear.in_features != expected:
        raise ConversionError(
            f"convolutionalize: Linear '{where}' expects {linear.in_features} inputs, but the flattened feature "
            f"map is {channels}x{kernel[0]}x{kernel[1]} = {expected}; pass the input_size the classifier was "
            f"trained on."
        )
    conv = nn.Conv2d(channels, linear.out_features, kernel, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
    weight = linear.weight.detach()
    if order is None:
        weight = weight.reshape(linear.out_features, channels, *kernel)
    else:
        shape = (channels, *kernel)
        permuted = weight.reshape(linear.out_features, *(shape[axis - 1] for axis in order[1:]))
        # axis j of the (C, h, w) map is axis order.index(j) of the permuted one
        weight = permuted.permute(0, *(order.index(j) for j in (1, 2, 3)))
    assert weight.shape == conv.weight.shape, (weight.shape, conv.weight.shape)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if linear.bias is not None:
            assert linear.bias.shape == conv.bias.shape, (linear.bias.shape, conv.bias.shape)
            conv.bias.copy_(linear.bias)
    conv.train(linear.training)
    return conv


def batchnorm2d_from_1d(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
    """A BatchNorm2d over channels with ``bn``'s parameters and running statistics."""
    new = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats, device=bn.weight.device if bn.affine else None)
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    return new
