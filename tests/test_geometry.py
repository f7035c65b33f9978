"""Tests for fcnkit.geometry.analysis: textbook cases, the model zoo against the NaN probe, non-local layers, fallbacks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fcnkit
from fcnkit.errors import ModelError
from fcnkit.geometry.analysis import Geometry, analyze, probe_radius


def conv(k: int, *, s: int = 1, p: int | None = None, d: int = 1, c: int = 4, cin: int = 4) -> nn.Conv2d:
    return nn.Conv2d(cin, c, k, stride=s, padding=d * (k - 1) // 2 if p is None else p, dilation=d)


def seq(*layers: nn.Module) -> nn.Sequential:
    first = layers[0]
    if isinstance(first, nn.Conv2d):  # take 3-channel images
        layers = (nn.Conv2d(3, first.out_channels, first.kernel_size, first.stride, first.padding, first.dilation),
                  *layers[1:])
    return nn.Sequential(*layers).eval()


# (model, receptive_field, output_stride, input_multiple, halo, padding)
TEXTBOOK = {
    "one 3x3": (lambda: seq(conv(3)), 3, 1, 1, 1, "same"),
    "three 3x3": (lambda: seq(conv(3), nn.ReLU(), conv(3), nn.ReLU(), conv(3)), 7, 1, 1, 3, "same"),
    "5x5 then 3x3": (lambda: seq(conv(5), conv(3)), 7, 1, 1, 3, "same"),
    "conv-pool-conv": (lambda: seq(conv(3), nn.MaxPool2d(2), conv(3)), 8, 2, 2, 4, "same"),
    "dilated 3x3 d=4": (lambda: seq(conv(3, d=4)), 9, 1, 1, 4, "same"),
    "two stride-2 convs": (lambda: seq(conv(3, s=2), conv(3, s=2)), 7, 4, 4, 4, "same"),
    "valid convs": (lambda: seq(conv(3, p=0), conv(3, p=0)), 5, 1, 1, 4, "valid"),
    "non-square kernel": (lambda: seq(nn.Conv2d(4, 4, (1, 7), padding=(0, 3))), 7, 1, 1, 3, "same"),
    "pool-transposed": (lambda: seq(conv(3), nn.MaxPool2d(2), nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)),
                        6, 1, 2, 4, "same"),
    "avgpool-nearest": (lambda: seq(nn.AvgPool2d(4), conv(1, cin=3), nn.Upsample(scale_factor=4)), 4, 1, 4, 4,
                        "same"),
}


@pytest.mark.parametrize("name", list(TEXTBOOK))
def test_textbook_cases(name):
    build, rf, stride, multiple, halo, padding = TEXTBOOK[name]
    g = analyze(build())
    assert (g.receptive_field, g.output_stride, g.input_multiple, g.halo, g.padding) == (
        rf, stride, multiple, halo, padding)
    assert g.local and g.nonlocal_reason is None


@pytest.mark.parametrize("name", ["one 3x3", "three 3x3", "conv-pool-conv", "dilated 3x3 d=4", "pool-transposed",
                                  "avgpool-nearest"])
def test_textbook_halo_matches_probe(name):
    build, *_ = TEXTBOOK[name]
    g = analyze(build())
    r = probe_radius(build())
    assert math.ceil(r / g.input_multiple) * g.input_multiple == g.halo


def test_geometry_is_frozen_and_serializable():
    g = analyze(seq(conv(3)))
    assert g.to_dict() == {"receptive_field": 3, "output_stride": 1, "input_multiple": 1, "halo": 1,
                           "padding": "same", "local": True, "nonlocal_reason": None, "method": "traced",
                           "probe_reason": None}
    with pytest.raises(AttributeError):
        g.halo = 0  # type: ignore[misc]
    assert isinstance(fcnkit.analyze(seq(conv(3))), fcnkit.Geometry) and Geometry is fcnkit.Geometry


def test_vgg16_receptive_field_adds_fc6():
    """VGG16 up to pool5 sees 212 pixels; fc6 as a 7x7 convolution at stride 32 adds 6*32 = 404."""
    cfg = [2, 2, 3, 3, 3]
    layers: list[nn.Module] = []
    for n in cfg:
        layers += [m for _ in range(n) for m in (conv(3), nn.ReLU())] + [nn.MaxPool2d(2)]
    pool5 = seq(*layers)
    assert analyze(pool5).receptive_field == 212
    fc6 = seq(*layers, nn.Conv2d(4, 4, 7, padding=3))
    g = analyze(fc6)
    assert (g.receptive_field, g.output_stride, g.input_multiple) == (404, 32, 32)


# ---- the model zoo ----------------------------------------------------------------------------------------------
ZOO_WIDTH = 0.0625


def zoo_model(name: str) -> nn.Module:
    return fcnkit.build_model(name, num_classes=3, width=ZOO_WIDTH).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", fcnkit.list_models())
def test_zoo_halo_is_tight_against_probe(name):
    g = analyze(zoo_model(name))
    if not g.local:
        assert getattr(zoo_model(name), "output_kind", "") != "dense"
        return
    # probe on an image just large enough: the centre pixel's window must fit inside it
    size = 2 * (g.halo + g.output_stride + g.input_multiple)
    r = probe_radius(zoo_model(name), size=size)
    d = g.input_multiple
    assert r is not None and r <= g.halo <= math.ceil(r / d) * d + d, (name, g, r)


def test_zoo_classifiers_are_reported_nonlocal():
    g = analyze(zoo_model("allconv_classifier"))
    assert not g.local and g.nonlocal_reason.startswith("AdaptiveAvgPool2d at 'head.pool'")
    g = analyze(zoo_model("digit_classifier"))
    assert not g.local and "Linear at 'classifier.1'" in g.nonlocal_reason
    assert g.nonlocal_reason.endswith("convolutionalize it first")


def test_fcn8s_full_width_analyzes_from_the_graph_alone():
    with torch.device("meta"):  # 134M parameters, no memory, never run
        model = fcnkit.build_model("fcn8s", num_classes=21)
    g = analyze(model)
    assert g == analyze(zoo_model("fcn8s"))
    assert (g.output_stride, g.input_multiple, g.padding, g.local) == (1, 32, "same", True)


def test_segnet_in_training_mode_names_its_batchnorm():
    model = fcnkit.build_model("segnet", num_classes=3, width=ZOO_WIDTH)  # train mode, as built
    reason = analyze(model).nonlocal_reason
    assert reason.startswith("BatchNorm2d at 'encoder.0.0.1'") and "model.eval()" in reason
    assert analyze(model.eval()).local


# ---- non-local layers, foreign and untraceable models, errors ---------------------------------------------------
class Block(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = norm

    def forward(self, x):
        return self.norm(self.conv(x))


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        seq_ = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        out, _ = self.attn(seq_, seq_, seq_)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("norm, name, why", [
    (nn.GroupNorm(2, 4), "GroupNorm at 'decoder.1.norm'", "normalizes over the whole image"),
    (nn.InstanceNorm2d(4), "InstanceNorm2d at 'decoder.1.norm'", "normalizes each channel over the whole image"),
    (nn.AdaptiveAvgPool2d(1), "AdaptiveAvgPool2d at 'decoder.1.norm'", "pools the whole image to a fixed size"),
    (nn.BatchNorm2d(4).train(), "BatchNorm2d at 'decoder.1.norm'", "call model.eval() first"),
])
def test_nonlocal_layer_is_named(norm, name, why):
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("decoder", nn.Sequential(nn.ReLU(), Block(norm)))
    g = analyze(model)
    assert not g.local and g.nonlocal_reason.startswith(name) and why in g.nonlocal_reason
    assert g.receptive_field == 5  # the local part is still described


def test_attention_and_spatial_mean_are_nonlocal():
    g = analyze(WithAttention().eval())
    assert g.nonlocal_reason.startswith("MultiheadAttention at 'attn'") and "attends over all positions" in \
        g.nonlocal_reason

    class SpatialMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y - y.mean(dim=(2, 3), keepdim=True)

    assert analyze(SpatialMean()).nonlocal_reason.startswith("mean at 'mean' reduces over the spatial dimensions")
    # eval-mode BatchNorm, InstanceNorm with running statistics and channel-wise reductions stay local
    local = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                          nn.InstanceNorm2d(4, track_running_stats=True), nn.Softmax(dim=1)).eval()
    assert analyze(local).local


class Foreign(nn.Module):
    """Not fcnkit's: stride-2 conv, residual, bilinear up-sampling to a skip's size, concatenation, crop by slicing."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU())
        self.skip = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(12, 2, 3, padding=1)

    def forward(self, x):
        y = self.down(x)
        y = y + self.body(y)
        y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        out = self.head(torch.cat([self.skip(x), y], dim=1))
        return out[:, :, : x.shape[2], : x.shape[3]]


class Untraceable(Foreign):
    def forward(self, x):
        if x.shape[-1] % 2:  # data-dependent control flow: torch.fx cannot trace this
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


def test_foreign_model_analyzes_and_matches_probe():
    g = analyze(Foreign())
    r = probe_radius(Foreign())
    assert (g.output_stride, g.input_multiple, g.padding, g.local) == (1, 2, "same", True)
    assert r <= g.halo <= math.ceil(r / 2) * 2 + 2


def test_untraceable_model_falls_back_to_the_probe():
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(Untraceable())
    traced, probed = analyze(Foreign()), analyze(Untraceable())
    assert (probed.output_stride, probed.input_multiple, probed.halo, probed.padding, probed.local) == (
        traced.output_stride, traced.input_multiple, traced.halo, traced.padding, traced.local)


def test_errors_are_clear():
    with pytest.raises(ModelError, match="expected a convolutional model, got Sequential with no spatial layers"):
        analyze(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(ModelError, match="expected a torch.nn.Module, got str"):
        analyze("fcn8s")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="expected in_channels to be a positive integer, got 0"):
        analyze(seq(conv(3)), in_channels=0)

    class Raises(Untraceable):
        def forward(self, x):
            if x.shape[-1] > 8:
                raise RuntimeError("too big")
            return super().forward(x)

    with pytest.raises(ModelError, match=r"the model raised RuntimeError \(too big\) on a probe input of shape"):
        analyze(Raises())
