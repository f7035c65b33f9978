"""The building blocks of fully convolutional networks, as functions and thin modules.

Every op here works on NCHW tensors of any height and width. Where both are useful an op comes twice: a function
(``bed_of_nails(x, 2)``) and an ``nn.Module`` holding its arguments (``BedOfNails(2)``). Where PyTorch has the module
already, fcnkit gives a builder returning that plain ``torch.nn`` layer (``score_conv``, ``indexed_max_pool``,
``max_unpooler``, ``upsampler``, ``bilinear_deconv``) rather than a subclass: torch.fx treats only ``torch.nn``'s own
classes as leaves, and the geometry analyzer and the convolutionalizer recognise layers in the traced graph.

Input checks are skipped while torch.fx traces (the input is then a ``Proxy`` with no values to check).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from fcnkit.errors import InputError, ModelError

# ImageNet statistics (the ones torchvision's VGG16 weights expect), scaled to 0-255 input.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def is_traced(x: object) -> bool:
    """True while torch.fx traces a model (``x`` is a ``Proxy``): shape checks must not run then."""
    return isinstance(x, torch.fx.Proxy)


def check_nchw(x: torch.Tensor, channels: int | None = None, *, name: str = "input") -> None:
    """Raise ``InputError`` unless ``x`` is a floating (N, C, H, W) tensor with ``channels`` channels (if given)."""
    if is_traced(x):
        return
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor (N, C, H, W), got {type(x).__name__}; "
                         "convert it with torch.as_tensor(...).permute(0, 3, 1, 2) for (N, H, W, C) arrays.")
    if x.dim() != 4:
        raise InputError(f"{name}: expected 4-D input (N, C, H, W), got shape {tuple(x.shape)}; "
                         "add a batch axis with x[None] for a single (C, H, W) image.")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{name}: expected {channels} channels (N, {channels}, H, W), got shape {tuple(x.shape)}; "
                         "build the model with in_channels matching your images, or convert the images.")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}; use x.float().")


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{name}: expected a positive integer, got {value!r}.")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with mean/std kept as buffers (saved with the model).

    fcnkit models start with it so that they take raw 0-255 images. Defaults: the ImageNet statistics scaled to
    0-255 for 3 channels; for another channel count give ``mean``/``std`` (or use ``Normalize.for_channels``).

    Shapes: (N, C, H, W) -> (N, C, H, W).

    >>> Normalize()(torch.full((1, 3, 2, 2), 255.0)).shape
    torch.Size([1, 3, 2, 2])
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ModelError(f"Normalize: expected mean and std of the same non-zero length, "
                             f"got {len(mean)} and {len(std)} values.")
        if any(s <= 0 for s in std):
            raise ModelError(f"Normalize: expected every std > 0, got {tuple(std)}.")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def for_channels(cls, channels: int) -> Normalize:
        """ImageNet statistics for 3 channels; their channel average repeated for any other count."""
        _check_positive_int(channels, "in_channels")
        if channels == 3:
            return cls()
        mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
        return cls([mean] * channels, [std] * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.mean.shape[1], name="Normalize input")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}"


def takes_0_255(model: nn.Module) -> bool:
    """Whether ``model`` normalises raw 0-255 pixel values itself: it says so with ``fcnkit_takes_0_255`` (a
    convolutionalized classifier or a transfer FCN, whose traced graph holds the classifier's normalisation as
    plain operations; a torch.export program or an ONNX model from fcnkit's exporter), or it has a ``Normalize``
    with 0-255 statistics, as every fcnkit model starts with."""
    said = getattr(model, "fcnkit_takes_0_255", None)
    if said is not None:
        return bool(said)
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    return norm is not None and float(norm.mean.abs().max()) > 2.0


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the bottom and right of ``x`` so that H and W become multiples of ``multiple``.

    Only bottom/right: padding the top or left would shift the pooling grid and break exact tiling. Returns the
    padded tensor and the original ``(H, W)`` to crop the output back with ``y[..., :H, :W]``.

    Shapes: (N, C, H, W) -> (N, C, ceil(H/m)*m, ceil(W/m)*m).

    >>> y, (h, w) = pad_to_multiple(torch.ones(1, 3, 67, 93), 32)
    >>> tuple(y.shape), (h, w)
    ((1, 3, 96, 96), (67, 93))
    """
    check_nchw(x)
    _check_positive_int(multiple, "multiple")
    h, w = x.shape[-2:]
    # No "if already a multiple" shortcut: a branch on the size would pin the size in torch.export/ONNX graphs.
    return F.pad(x, (0, -w % multiple, 0, -h % multiple)), (h, w)


def he_init_(module: nn.Module) -> nn.Module:
    """He (Kaiming) normal initialisation, in place, of every Conv2d and Linear inside ``module``; biases to zero.

    For layers followed by ReLU (He et al. 2015). PyTorch's default initialisation shrinks the signal at every layer,
    so a deep plain stack such as VGG16's 13 convolutions starts with vanishing activations and learns very slowly
    from scratch; torchvision initialises VGG the same way. Score layers keep their own initialisation: call this on
    the trunk only. Returns ``module``.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def score_conv(in_channels: int, num_classes: int, *, zero_init: bool = False) -> nn.Conv2d:
    """A 1x1 convolution giving one score per class at every position: (N, C, H, W) -> (N, K, H, W).

    ``zero_init=True`` starts it at zero, as FCN-16s/8s do for their skip scores so that training starts from
    the coarser net's prediction.

    >>> score_conv(64, 21)(torch.zeros(1, 64, 5, 7)).shape
    torch.Size([1, 21, 5, 7])
    """
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(num_classes, "num_classes")
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    if zero_init:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


def bed_of_nails(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Upsample by putting each value at the top-left of a ``scale`` x ``scale`` block, zeros elsewhere.

    Shapes: (N, C, H, W) -> (N, C, scale*H, scale*W).

    >>> bed_of_nails(torch.tensor([[[[1.0, 2.0]]]]), 2)
    tensor([[[[1., 0., 2., 0.],
              [0., 0., 0., 0.]]]])
    """
    check_nchw(x)
    _check_positive_int(scale, "scale")
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h, scale, w, scale)
    out[:, :, :, 0, :, 0] = x
    return out.view(n, c, h * scale, w * scale)


class BedOfNails(nn.Module):
    """Module form of :func:`bed_of_nails`: (N, C, H, W) -> (N, C, scale*H, scale*W)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        _check_positive_int(scale, "scale")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bed_of_nails(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def max_pool_with_indices(x: torch.Tensor, kernel_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping max pooling that also returns where each maximum was, for :func:`max_unpool`.

    Shapes: (N, C, H, W) -> values and indices, both (N, C, H//k, W//k).

    >>> y, idx = max_pool_with_indices(torch.arange(16.0).view(1, 1, 4, 4))
    >>> y.flatten().tolist(), idx.flatten().tolist()
    ([5.0, 7.0, 13.0, 15.0], [5, 7, 13, 15])
    """
    check_nchw(x)
    _check_positive_int(kernel_size, "kernel_size")
    return F.max_pool2d(x, kernel_size, kernel_size, return_indices=True)


def max_unpool(
    x: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int], kernel_size: int = 2
) -> torch.Tensor:
    """Put each value back where :func:`max_pool_with_indices` found it, zeros elsewhere (SegNet's decoder).

    ``output_size`` is the (H, W) of the tensor that was pooled, ``kernel_size`` the pooling's.
    Shapes: (N, C, h, w) -> (N, C, H, W).

    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> max_unpool(*max_pool_with_indices(x), (4, 4))[0, 0, 1]
    tensor([0., 5., 0., 7.])
    """
    check_nchw(x)
    if not is_traced(x) and indices.shape != x.shape:
        raise InputError(f"max_unpool: expected indices of the values' shape {tuple(x.shape)}, "
                         f"got {tuple(indices.shape)}; pass the indices returned with these pooled values.")
    _check_positive_int(kernel_size, "kernel_size")
    return F.max_unpool2d(x, indices, kernel_size, kernel_size, output_size=tuple(output_size[-2:]))


def indexed_max_pool(kernel_size: int = 2) -> nn.MaxPool2d:
    """Module form of :func:`max_pool_with_indices`: ``nn.MaxPool2d(k, stride=k, return_indices=True)``.

    Called as ``y, indices = pool(x)``: (N, C, H, W) -> two (N, C, H//k, W//k) tensors.
    """
    _check_positive_int(kernel_size, "kernel_size")
    return nn.MaxPool2d(kernel_size, stride=kernel_size, return_indices=True)


class MaxUnpool(nn.MaxUnpool2d):
    """``nn.MaxUnpool2d`` with kernel = stride that ``torch.jit.trace`` can record for any input size.

    torch's ``max_unpool2d`` needs its output size as numbers, which a trace freezes to the traced input's (and its
    Python-side check fails outright on traced sizes). While tracing, with no ``output_size`` given, this one writes
    the values into a zero tensor k times the input's size, built from the input itself (``zeros_like(x).repeat``),
    at the saved indices: the same result (pooling windows do not overlap, so no two indices meet), with every size
    taken from the tensors at run time. Outside tracing it is ``nn.MaxUnpool2d`` itself, checks included.
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        k = _pair(self.kernel_size)
        if (output_size is None and torch.jit.is_tracing() and _pair(self.stride) == k
                and _pair(self.padding) == (0, 0)):
            grid = torch.zeros_like(x).repeat(1, 1, k[0], k[1])  # (N, C, k·h, k·w)
            return grid.flatten(2).scatter(2, indices.flatten(2), x.flatten(2)).view_as(grid)
        return super().forward(x, indices, output_size)


def max_unpooler(kernel_size: int = 2) -> MaxUnpool:
    """Module form of :func:`max_unpool`, paired with :func:`indexed_max_pool` of the same ``kernel_size``.

    Called as ``unpool(y, indices)`` (or with ``output_size=(H, W)`` after pooling an odd size): (N, C, h, w) ->
    (N, C, H, W), H = k·h by default. It traces for any input size (TorchScript export; see :class:`MaxUnpool`).
    """
    _check_positive_int(kernel_size, "kernel_size")
    return MaxUnpool(kernel_size, stride=kernel_size)


_UPSAMPLE_MODES = ("nearest", "bilinear")


def upsample(x: torch.Tensor, scale: int, mode: str = "nearest") -> torch.Tensor:
    """Upsample by an integer factor, ``"nearest"`` or ``"bilinear"`` (half-pixel centres, align_corners=False).

    Shapes: (N, C, H, W) -> (N, C, scale*H, scale*W).

    >>> upsample(torch.ones(1, 2, 3, 5), 2, "bilinear").shape
    torch.Size([1, 2, 6, 10])
    """
    check_nchw(x)
    _check_positive_int(scale, "scale")
    if mode not in _UPSAMPLE_MODES:
        raise ModelError(f"upsample: expected mode in {_UPSAMPLE_MODES}, got {mode!r}.")
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scale, mode="nearest")
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def upsampler(scale: int, mode: str = "nearest") -> nn.Upsample:
    """Module form of :func:`upsample`: a fixed (parameter-free) ``nn.Upsample`` by an integer factor."""
    _check_positive_int(scale, "scale")
    if mode not in _UPSAMPLE_MODES:
        raise ModelError(f"upsampler: expected mode in {_UPSAMPLE_MODES}, got {mode!r}.")
    return nn.Upsample(scale_factor=scale, mode=mode, align_corners=False if mode == "bilinear" else None)


def bilinear_kernel(in_channels: int, out_channels: int | None = None, kernel_size: int = 4) -> torch.Tensor:
    """Weight of shape (in_channels, out_channels, k, k) that makes ``ConvTranspose2d`` bilinear upsampling.

    Channel i maps to channel i only (a diagonal of bilinear filters); ``out_channels`` defaults to
    ``in_channels``. With ``kernel_size = 2s - s % 2``, ``stride = s`` and ``padding = (kernel_size - s) // 2``
    (see :func:`bilinear_deconv`) it equals ``F.interpolate(mode="bilinear", align_corners=False)`` away from
    the border, and the output is exactly s times the input.

    >>> bilinear_kernel(1, kernel_size=4)[0, 0, 0]
    tensor([0.0625, 0.1875, 0.1875, 0.0625])
    """
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(kernel_size, "kernel_size")
    out_channels = in_channels if out_channels is None else out_channels
    _check_positive_int(out_channels, "out_channels")
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float64) - centre).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size, dtype=torch.float64)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = taps[:, None] * taps[None, :]
    return weight.float()


def bilinear_deconv(channels: int, scale: int, *, bias: bool = False) -> nn.ConvTranspose2d:
    """A learnable ``ConvTranspose2d`` that starts as exact bilinear upsampling by ``scale``.

    Kernel ``2s - s % 2``, stride ``s``, padding ``(kernel - s) // 2``, so the output is exactly s times the input
    (no crop offsets). Shapes: (N, C, H, W) -> (N, C, s*H, s*W).

    >>> bilinear_deconv(21, 32)(torch.zeros(1, 21, 3, 2)).shape
    torch.Size([1, 21, 96, 64])
    """
    _check_positive_int(channels, "channels")
    _check_positive_int(scale, "scale")
    kernel = 2 * scale - scale % 2
    up = nn.ConvTranspose2d(channels, channels, kernel, stride=scale, padding=(kernel - scale) // 2, bias=bias)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, channels, kernel))
        if bias:
            up.bias.zero_()
    return up


class GlobalAvgPoolHead(nn.Module):
    """Classification head: 1x1 class scores, then the average over all positions.

    Shapes: (N, C, H, W) -> (N, K) for any H, W >= 1. Global pooling sees the whole image, so a model ending with
    it is a classifier, not a dense predictor (the geometry analyzer reports the ``pool`` layer as non-local).

    >>> GlobalAvgPoolHead(64, 10)(torch.zeros(2, 64, 7, 3)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.score = score_conv(in_channels, num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.score(x)  # (N, K, H, W)
        return self.flatten(self.pool(x))  # (N, K)
