"""How a Geometry was obtained is recorded, and only the known reasons fall back to the probe: an error inside
fcnkit's own rules is raised, never hidden behind a quietly different (probed) halo."""

from __future__ import annotations

import pytest
import torch.nn as nn
import torch.nn.functional as F

from fcnkit.geometry import rules
from fcnkit.geometry.analysis import analyze
from fcnkit.geometry.state import Unreadable


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 2, 3, padding=1)).eval()


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x):
        if x.shape[-1] % 2:  # data-dependent control flow: torch.fx cannot trace this
            x = F.pad(x, (0, 1, 0, 1))
        return self.net(x)


class WithoutRule(nn.Module):
    """``hardshrink`` is point-wise, but the operator table has no entry for it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return F.hardshrink(self.net(x))


def test_traced_geometry_says_so():
    g = analyze(_net())
    assert (g.method, g.probe_reason) == ("traced", None)
    assert repr(g).startswith("Geometry(receptive_field=8, output_stride=2, input_multiple=2, halo=4, ")
    assert "method='traced'" in repr(g)


def test_untraceable_model_is_probed_with_the_reason():
    traced, probed = analyze(_net()), analyze(Untraceable().eval())
    assert probed.method == "probed"
    assert probed.probe_reason.startswith("torch.fx cannot trace Untraceable (TraceError: ")
    assert probed == traced  # the numbers agree; how they were obtained is not part of ==
    assert probed.to_dict()["method"] == "probed" and traced.to_dict()["probe_reason"] is None


def test_operation_without_a_rule_is_probed_and_named():
    g = analyze(WithoutRule().eval())
    assert g.method == "probed" and g.probe_reason == "no geometry rule for hardshrink at 'hardshrink'"
    assert (g.output_stride, g.input_multiple, g.halo) == (2, 2, 4)


def test_an_error_in_fcnkits_own_rules_is_raised(monkeypatch):
    def broken(prop, node, op):
        raise ZeroDivisionError("a bug in a rule")

    monkeypatch.setitem(rules.RULES, "window", broken)
    with pytest.raises(ZeroDivisionError, match="a bug in a rule"):
        analyze(_net())


def test_an_unreadable_graph_is_probed(monkeypatch):
    def unreadable(prop, node, op):
        raise Unreadable("the model's output does not depend on its input")

    monkeypatch.setitem(rules.RULES, "window", unreadable)
    g = analyze(_net())
    assert (g.method, g.probe_reason) == ("probed", "the model's output does not depend on its input")
    assert (g.output_stride, g.input_multiple, g.halo) == (2, 2, 4)


def test_recurrent_layer_is_named_by_the_shared_table():
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.rnn = nn.Conv2d(3, 4, 3, padding=1), nn.GRU(4, 4, batch_first=True)

        def forward(self, x):
            y = self.conv(x)
            n, c, h, w = y.shape
            out = self.rnn(y.flatten(2).transpose(1, 2))[0]  # (N, HW, C)
            return out.transpose(1, 2).reshape(n, c, h, w)

    g = analyze(Recurrent().eval())
    assert g.nonlocal_reason == ("GRU at 'rnn' is recurrent: its output depends on the whole sequence of positions; "
                                 "tiles cannot equal the whole-image run")
    assert g.method == "traced"  # the graph was read, not probed


VALID = {
    "conv-pool-conv": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 2, 3)),
    "p-net-like (ceil-mode pool)": lambda: nn.Sequential(
        nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True), nn.Conv2d(10, 16, 3), nn.PReLU(16),
        nn.Conv2d(16, 32, 3), nn.PReLU(32), nn.Conv2d(32, 2, 1)),
    "two pools, receptive field 28": lambda: nn.Sequential(
        nn.Conv2d(3, 4, 5), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 2, 5)),
}


class Opaque(nn.Module):
    """``net`` behind data-dependent control flow, so that analyze must probe it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        if x.shape[-1] > 10**6:
            x = x * 2
        return self.net(x)


@pytest.mark.parametrize("name", list(VALID))
def test_a_probed_valid_padding_model_has_its_traced_geometry(name):
    """A valid model's output pixel reads only after its own block of input pixels: the probe measures both sides,
    so the receptive field is not over-estimated (P-Net's was measured as 22 for 12, the third model's halo as 12
    for 24) and tiles carry the context they need, no more."""
    net = VALID[name]().eval()
    traced, probed = analyze(net), analyze(Opaque(net).eval())
    assert (traced.method, probed.method, traced.padding) == ("traced", "probed", "valid")
    assert probed == traced
