"""The shared operator table: a module and its functional form are the same Op, permutations and reductions are
read the same way for geometry and conversion, and both name a non-local layer with the table's reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fcnkit.convert import convolutionalize
from fcnkit.errors import ConversionError
from fcnkit.geometry.analysis import analyze
from fcnkit.geometry.ops import Op, Window, classify, module_op, permutation, trace


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 3, 5, 3))

    def forward(self, x):
        x = F.conv2d(x, self.weight, stride=2, padding=(2, 1), dilation=1)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = x.permute(0, 3, 2, 1).transpose(1, 2).movedim(1, 3)
        return x.mean(dim=(1, 2), keepdim=True)


def _ops(model: nn.Module) -> dict[str, Op]:
    gm = trace(model)
    return {n.name: classify(n, gm) for n in gm.graph.nodes if n.op in ("call_module", "call_function",
                                                                        "call_method")}


def test_module_and_function_are_the_same_window():
    ops = _ops(Functional())
    assert ops["conv2d"].window == module_op(nn.Conv2d(3, 4, (5, 3), stride=2, padding=(2, 1))).window == Window(
        (5, 3), (2, 2), (2, 1), (1, 1))
    pool = ops["max_pool2d"].window
    assert pool == module_op(nn.MaxPool2d(3, 2, ceil_mode=True)).window and pool.ceil_mode and pool.span(0) == 3
    assert ops["mean"].kind == "reduction" and ops["mean"].args == {"dim": (1, 2), "keepdim": True}


def test_permutations():
    ops = _ops(Functional())
    assert permutation(ops["permute"], 4) == [0, 3, 2, 1]
    assert permutation(ops["transpose"], 4) == [0, 2, 1, 3]
    assert permutation(ops["movedim"], 4) == [0, 2, 3, 1]  # dim 1 moved to the end


@pytest.mark.parametrize("layer, reason", [
    (nn.GroupNorm(2, 4), "normalizes over the whole image"),
    (nn.InstanceNorm2d(4), "normalizes each channel over the whole image"),
])
def test_geometry_and_conversion_give_the_same_reason(layer: nn.Module, reason: str):
    assert module_op(layer).reason == reason
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    assert f"at '1' {reason}" in analyze(classifier).nonlocal_reason
    with pytest.raises(ConversionError, match=f"layer '1' \\({type(layer).__name__}\\) {reason}"):
        convolutionalize(classifier, input_size=(8, 8))


def test_eval_mode_normalisations_are_channelwise():
    assert module_op(nn.BatchNorm2d(4).eval()).kind == "channelwise"
    assert module_op(nn.InstanceNorm2d(4, track_running_stats=True).eval()).kind == "channelwise"
    op = module_op(nn.BatchNorm2d(4).train())
    assert op.kind == "nonlocal" and op.fix == "call model.eval() first"
    assert module_op(nn.PReLU(4)).args == {"per_channel": True}
    assert module_op(nn.Module()).kind == "unknown"
