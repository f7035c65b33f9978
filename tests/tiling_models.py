"""Foreign models (written here, not fcnkit's) that tiled inference must handle exactly, and the exactness check,
shared by the tiling tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fcnkit.inference.tiled import predict, predict_tiled


def assert_tiled_equals_whole(model: nn.Module, image: np.ndarray, *, tile, output: str) -> None:
    """The exactness promise: tiled == whole image (labels identical, logits/probs within 1e-4)."""
    whole = predict(model, image, output=output)
    tiled = predict_tiled(model, image, tile=tile, output=output)
    assert tiled.shape == whole.shape and tiled.dtype == whole.dtype
    if output == "labels":
        np.testing.assert_array_equal(tiled, whole)
    else:
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so eval-mode BatchNorm really changes the values."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class UNetBN(nn.Module):
    """A 2-level U-Net with BatchNorm that does NOT pad itself: its input must be a multiple of 4."""

    def __init__(self, channels: int = 3, classes: int = 4, width: int = 6) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.e1, self.e2, self.e3 = block(channels, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.up2, self.d2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), block(4 * width, 2 * width)
        self.up1, self.d1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), block(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(nn.functional.max_pool2d(a, 2))
        c = self.e3(nn.functional.max_pool2d(b, 2))
        b = self.d2(torch.cat([b, self.up2(c)], 1))
        return self.head(self.d1(torch.cat([a, self.up1(b)], 1)))


def dilated_transposed(channels: int = 3, classes: int = 3) -> nn.Module:
    """Stride-2 conv, dilated convs, a 4×4 stride-2 transposed conv back to full resolution."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=4, dilation=4), nn.ReLU(),
        nn.ConvTranspose2d(8, classes, 4, stride=2, padding=1),
    ).eval()


def strided_grid(channels: int = 3, classes: int = 5) -> nn.Module:
    """Two stride-2 convolutions and no up-sampling: a heat-map grid with output stride 4."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, classes, 1),
    ).eval()


def valid_net(channels: int = 3, classes: int = 3) -> nn.Module:
    """Unpadded ("valid") convolutions: the output is smaller than the input by the receptive field minus one."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 5), nn.ReLU(), nn.Conv2d(8, classes, 3),
    ).eval()


class GroupNormNet(nn.Module):
    """Non-local: GroupNorm normalises over the whole image."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def foreign_models() -> dict[str, nn.Module]:
    """The local foreign models, freshly seeded."""
    torch.manual_seed(0)
    return {
        "unet_bn": _randomize_batchnorm(UNetBN()),
        "dilated_transposed": dilated_transposed(),
        "strided_grid": strided_grid(),
        "valid": valid_net(),
    }


class DiesOnWrite:
    """An Output wrapper that raises on write number ``die_at`` (like a process killed mid-run), or never when
    ``die_at`` is None; ``writes`` counts the tiles written, which shows what a resumed run recomputed."""

    def __init__(self, out, die_at: int | None = None):
        self.out, self.shape, self.die_at, self.writes = out, out.shape, die_at, 0

    done = property(lambda self: self.out.done)

    def mark_done(self, tile_id):
        self.out.mark_done(tile_id)

    def __setitem__(self, key, value):
        self.writes += 1
        if self.writes == self.die_at:
            raise RuntimeError("killed")
        self.out[key] = value


class RecordingArray:
    """An (H, W, C) array-like that records the windows read from it (to show that reads stay lazy)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]
