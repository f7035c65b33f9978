"""The empirical probe on its own: stride, padding, radius and input multiple measured on known networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fcnkit.errors import ModelError
from fcnkit.geometry.probe import (NoSpatialOutput, cpu_copy, measure_multiple, measure_stride, probe_radius,
                                   radius_of)


def _net(*layers: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("layers, radius", [
    ((nn.Conv2d(3, 4, 3, padding=1),), 1),
    ((nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)), 3),
    ((nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 2, 1)), 2),
    ((nn.Conv2d(3, 2, 1),), 0),
])
def test_radius_of_dense_networks(layers, radius):
    assert probe_radius(_net(*layers)) == radius


def test_stride_and_padding_of_strided_and_valid_networks():
    strided = cpu_copy(_net(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                            nn.MaxPool2d(2), nn.Conv2d(4, 2, 1)))
    assert measure_stride(strided, 3) == (4, "same")
    valid = cpu_copy(_net(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Conv2d(4, 2, 3)))
    assert measure_stride(valid, 3) == (1, "valid")


def test_input_multiple_of_pooling_networks():
    one_pool = cpu_copy(_net(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Upsample(scale_factor=2)))
    assert measure_multiple(one_pool, 3, stride=1, radius=radius_of(one_pool, 3)) == 2
    two_pools = cpu_copy(_net(nn.MaxPool2d(2), nn.Conv2d(3, 2, 3, padding=1), nn.MaxPool2d(2),
                              nn.Upsample(scale_factor=4)))
    assert measure_multiple(two_pools, 3, stride=1, radius=radius_of(two_pools, 3)) == 4
    plain = cpu_copy(_net(nn.Conv2d(3, 2, 3, padding=1)))
    assert measure_multiple(plain, 3, stride=1, radius=1) == 1


def test_a_global_pool_has_no_measurable_radius():
    class GlobalContext(nn.Module):
        def forward(self, x):
            return x + x.mean(dim=(2, 3), keepdim=True)

    assert probe_radius(_net(nn.Conv2d(3, 2, 1), GlobalContext()), max_size=128) is None


def test_the_probe_leaves_the_callers_model_as_it_is():
    model = _net(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert probe_radius(model) == 1
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_failures_are_one_sentence():
    with pytest.raises(ModelError, match=r"analyze: the model raised RuntimeError \(.*\) on a probe input of shape "
                                         r"\(1, 3, 128, 64\); it must accept \(N, C, H, W\) images of any size"):
        measure_stride(cpu_copy(_net(nn.Conv2d(5, 2, 1))), 3)
    with pytest.raises(NoSpatialOutput, match=r"an output of shape \(1, 2\)"):
        measure_stride(cpu_copy(_net(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())), 3)
    constant = _net(nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        constant[0].bias.fill_(float("nan"))
    with pytest.raises(ModelError, match="the model returns NaN for a finite probe image"):
        probe_radius(constant)


def test_reach_is_measured_on_each_side_of_the_block():
    import torch.nn as nn

    from fcnkit.geometry.probe import reach_of

    same = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    assert reach_of(same, 3, stride=1) == (3, 3)
    valid = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 2, 3)).eval()  # field 8 at stride 2
    assert reach_of(valid, 3, stride=2) == (0, 6)
