"""Tests for fcnkit.layers: shapes, values, error messages, gradcheck, function == module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from fcnkit.errors import InputError, ModelError
from fcnkit.layers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BedOfNails,
    GlobalAvgPoolHead,
    Normalize,
    bed_of_nails,
    bilinear_deconv,
    bilinear_kernel,
    check_nchw,
    indexed_max_pool,
    is_traced,
    max_pool_with_indices,
    max_unpool,
    max_unpooler,
    pad_to_multiple,
    score_conv,
    upsample,
    upsampler,
)


def _rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_checks_are_skipped_while_fx_traces():
    traced = torch.fx.symbolic_trace(Normalize())
    assert torch.equal(traced(torch.zeros(1, 3, 2, 2)), Normalize()(torch.zeros(1, 3, 2, 2)))
    assert not is_traced(torch.zeros(1))


def test_check_nchw_messages():
    with pytest.raises(InputError, match=r"expected 4-D input \(N, C, H, W\), got shape \(3, 64, 64\)"):
        check_nchw(torch.zeros(3, 64, 64))
    with pytest.raises(InputError, match=r"expected 3 channels .* got shape \(1, 1, 4, 4\)"):
        check_nchw(torch.zeros(1, 1, 4, 4), 3)
    with pytest.raises(InputError, match=r"floating-point tensor, got dtype torch.uint8; use x.float\(\)"):
        check_nchw(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match="expected a torch.Tensor"):
        check_nchw([[1.0]])


def test_normalize_defaults_take_0_255_input():
    norm = Normalize()
    x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    assert torch.allclose(norm(x), torch.zeros(2, 3, 4, 5), atol=1e-5)
    white = norm(torch.full((1, 3, 1, 1), 255.0)).flatten()
    expected = [(255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(white, torch.tensor(expected))
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    assert "mean" in norm.state_dict()


def test_normalize_custom_and_for_channels():
    norm = Normalize([10.0], [2.0])
    assert norm(torch.full((1, 1, 2, 2), 14.0)).unique().tolist() == [2.0]
    one = Normalize.for_channels(1)
    assert one.mean.shape == (1, 1, 1, 1) and one(torch.zeros(1, 1, 3, 3)).shape == (1, 1, 3, 3)
    assert torch.equal(Normalize.for_channels(3).mean, Normalize().mean)
    with pytest.raises(InputError, match=r"expected 1 channels .* got shape \(1, 3, 2, 2\)"):
        one(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ModelError, match="same non-zero length, got 2 and 3 values"):
        Normalize([0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ModelError, match="every std > 0"):
        Normalize([0.0], [0.0])


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    x = _rand(2, 3, 67, 93) + 1
    y, size = pad_to_multiple(x, 32)
    assert y.shape == (2, 3, 96, 96) and size == (67, 93)
    assert torch.equal(y[:, :, :67, :93], x)
    assert y[:, :, 67:].abs().sum() == 0 and y[:, :, :, 93:].abs().sum() == 0
    same, size = pad_to_multiple(x[:, :, :64, :32], 32)
    assert same.shape == (2, 3, 64, 32) and size == (64, 32)
    with pytest.raises(ModelError, match="multiple: expected a positive integer, got 0"):
        pad_to_multiple(x, 0)


def test_score_conv():
    conv = score_conv(8, 5)
    assert conv.kernel_size == (1, 1) and conv(_rand(1, 8, 3, 7)).shape == (1, 5, 3, 7)
    zero = score_conv(8, 5, zero_init=True)
    assert zero.weight.abs().sum() == 0 and zero.bias.abs().sum() == 0
    with pytest.raises(ModelError, match="num_classes: expected a positive integer, got 0"):
        score_conv(8, 0)


def test_bed_of_nails_values_and_module():
    x = _rand(2, 3, 4, 5)
    y = bed_of_nails(x, 3)
    assert y.shape == (2, 3, 12, 15)
    assert torch.equal(y[:, :, ::3, ::3], x)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[:, :, ::3, ::3] = False
    assert y[mask].abs().sum() == 0
    assert torch.equal(BedOfNails(3)(x), y)
    assert torch.equal(bed_of_nails(x, 1), x)
    with pytest.raises(ModelError, match="scale: expected a positive integer, got 0"):
        BedOfNails(0)


def test_bed_of_nails_gradcheck():
    x = _rand(1, 2, 3, 2, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda t: bed_of_nails(t, 2), (x,))


def test_max_pool_unpool_roundtrip_on_odd_size():
    x = _rand(2, 3, 9, 7)
    y, idx = max_pool_with_indices(x)
    assert y.shape == idx.shape == (2, 3, 4, 3)
    z = max_unpool(y, idx, x.shape[-2:])
    assert z.shape == x.shape
    # every kept value is a block maximum, back at its place; everything else is zero
    assert torch.equal(z[z != 0], x[z != 0]) and int((z != 0).sum()) == y.numel()
    pool, unpool = indexed_max_pool(2), max_unpooler(2)
    # fx leaves for fcnkit's geometry tracer (it keeps subclasses of torch's spatial modules whole)
    assert type(pool) is torch.nn.MaxPool2d and isinstance(unpool, torch.nn.MaxUnpool2d)
    y2, idx2 = pool(x)
    assert torch.equal(y2, y) and torch.equal(idx2, idx)
    assert torch.equal(unpool(y2, idx2, x.shape[-2:]), z)
    with pytest.raises(InputError, match=r"expected indices of the values' shape \(2, 3, 4, 3\), got \(2, 3, 2, 3\)"):
        max_unpool(y, idx[:, :, :2], x.shape)


def test_max_pool_unpool_gradcheck():
    x = torch.randperm(24, generator=torch.Generator().manual_seed(1)).double().view(1, 1, 4, 6).requires_grad_()
    assert gradcheck(lambda t: max_unpool(*max_pool_with_indices(t), (4, 6)), (x,))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample(mode):
    x = _rand(1, 2, 3, 5)
    y = upsample(x, 2, mode)
    assert y.shape == (1, 2, 6, 10)
    assert torch.equal(upsampler(2, mode)(x), y)
    if mode == "nearest":
        assert torch.equal(y[:, :, 1::2, 1::2], x)
    with pytest.raises(ModelError, match=r"expected mode in \('nearest', 'bilinear'\), got 'cubic'"):
        upsample(x, 2, "cubic")


def test_bilinear_kernel_shape_and_diagonal():
    w = bilinear_kernel(3, kernel_size=4)
    assert w.shape == (3, 3, 4, 4)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(w[1, 1], taps[:, None] * taps[None, :])
    assert w[0, 1].abs().sum() == 0
    assert bilinear_kernel(2, 5, 4).shape == (2, 5, 4, 4)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_bilinear_deconv_equals_interpolate_in_the_interior(scale):
    x = _rand(1, 3, 6, 7)
    up = bilinear_deconv(3, scale)
    y = up(x)
    assert y.shape == (1, 3, 6 * scale, 7 * scale)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    inner = slice(scale, -scale)  # the border differs: zero padding vs. edge replication
    assert torch.allclose(y[:, :, inner, inner], ref[:, :, inner, inner], atol=1e-6)
    assert not torch.allclose(y, ref, atol=1e-6)  # (so the interior check above is not vacuous)


def test_bilinear_deconv_gradcheck():
    up = bilinear_deconv(2, 2).double()
    x = _rand(1, 2, 3, 3, dtype=torch.float64).requires_grad_()
    assert gradcheck(up, (x,))


def test_global_avg_pool_head_any_size():
    head = GlobalAvgPoolHead(4, 3)
    for size in [(1, 1), (7, 3), (28, 16)]:
        x = _rand(2, 4, *size)
        y = head(x)
        assert y.shape == (2, 3)
        assert torch.allclose(y, head.score(x).mean(dim=(2, 3)), atol=1e-6)


def test_docstring_examples_run():
    import doctest

    import fcnkit.layers
    import fcnkit.models.registry

    for module in (fcnkit.layers, fcnkit.models.registry):
        result = doctest.testmod(module, extraglobs={"torch": torch})
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_normalize_and_pad_gradcheck():
    x = _rand(1, 3, 3, 2, dtype=torch.float64).requires_grad_()
    assert gradcheck(Normalize().double(), (x,))
    assert gradcheck(lambda t: pad_to_multiple(t, 4)[0], (x,))


def test_he_init_scales_weights_for_relu_and_zeroes_biases():
    from fcnkit.layers import he_init_

    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(16, 64, 3), nn.ReLU(), nn.Linear(10, 300))
    assert he_init_(block) is block
    conv, linear = block[0], block[2]
    # fan_out mode: std = sqrt(2 / (out_channels * kernel area))
    assert abs(conv.weight.std().item() - (2 / (64 * 9)) ** 0.5) < 0.005
    assert abs(linear.weight.std().item() - (2 / 300) ** 0.5) < 0.01
    assert conv.bias.abs().sum() == 0 and linear.bias.abs().sum() == 0


def test_max_unpooler_traces_for_any_size():
    """A trace of torch's max_unpool2d freezes its output size; fcnkit's MaxUnpool records it from the tensors."""
    from fcnkit.layers import MaxUnpool, indexed_max_pool, max_unpooler

    pool, unpool = indexed_max_pool(2), max_unpooler(2)
    assert isinstance(unpool, MaxUnpool) and isinstance(unpool, torch.nn.MaxUnpool2d)  # a leaf for the geometry

    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        return unpool(*pool(x))

    traced = torch.jit.trace(roundtrip, (torch.randn(1, 3, 8, 12),))
    for shape in [(1, 3, 8, 12), (2, 4, 6, 10), (1, 1, 2, 2)]:
        x = torch.randn(*shape)
        want = torch.nn.MaxUnpool2d(2, stride=2)(*pool(x))
        assert torch.equal(roundtrip(x), want) and torch.equal(traced(x), want)
