"""fcnkit.geometry.aten: the geometry of a torch.export program read from its ATen graph, equal to the eager model's,
for training-IR and core-ATen programs; non-local operators named where they are; a missing rule falls back to the
probe and says which operator."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnkit
from fcnkit.export import _exported_program, export_program
from fcnkit.geometry.aten import aten_op
from fcnkit.geometry.propagate import analyze_graph
from fcnkit.loading import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _numbers(g) -> tuple:
    return g.receptive_field, g.output_stride, g.input_multiple, g.halo, g.padding, g.local


def _program(model: nn.Module, *, decompose: bool = False) -> torch.fx.GraphModule:
    """The ATen graph torch.export makes of ``model`` (dynamic batch, height and width), as a .pt2 file holds it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = _exported_program(model.eval(), 3, (64, 64), True)
        return (program.run_decompositions() if decompose else program).module()


class Skip(nn.Module):
    """A stride-2 branch brought back to its skip's size (the size read from the skip tensor) and concatenated."""

    def __init__(self, mode: str = "bilinear", align_corners: bool | None = None, norm: nn.Module | None = None,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, padding_mode=padding_mode)
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.norm = norm or nn.Identity()
        self.c = nn.Conv2d(8, 5, 1)
        self.mode, self.align_corners = mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = F.interpolate(self.norm(self.b(y)), size=y.shape[2:], mode=self.mode, align_corners=self.align_corners)
        return self.c(torch.cat([y, z], 1))


class Valid(nn.Module):
    """MTCNN-like: unpadded convolutions, a ceil-mode pooling, softmax over the classes."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(4, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.f(x), 1)


class Rolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.conv(x), 1, 3)


@pytest.mark.parametrize("name", ["unet", "segnet", "fcn8s", "fcn16s_on", "encoder_decoder", "heatmap_net"])
def test_a_zoo_models_program_has_the_eager_models_geometry(name):
    torch.manual_seed(0)
    model = fcnkit.build_model(name, num_classes=3, width=0.125).eval()
    graph = analyze_graph(_program(model))
    expected = fcnkit.analyze(model)
    assert graph.unknown is None and graph.nonlocal_reason is None
    assert (graph.receptive_field, graph.output_stride, graph.input_multiple, graph.padding) == (
        expected.receptive_field, expected.output_stride, expected.input_multiple, expected.padding)


def test_a_core_aten_program_is_read_too():
    """After run_decompositions: aten.convolution, _native_batch_norm_legit_no_training (three outputs taken apart
    by getitem), constant_pad_nd."""
    model = fcnkit.build_model("unet", num_classes=3, width=0.125).eval()
    graph = analyze_graph(_program(model, decompose=True))
    expected = fcnkit.analyze(model)
    assert graph.unknown is None
    assert (graph.receptive_field, graph.input_multiple) == (expected.receptive_field, expected.input_multiple)


@pytest.mark.parametrize("model", [Skip(), Skip("nearest"), Skip(padding_mode="reflect"), Valid()],
                         ids=["bilinear-to-a-size", "nearest-to-a-size", "reflect-padding", "valid"])
def test_foreign_programs_read_as_their_eager_models(model):
    graph = analyze_graph(_program(model))
    expected = fcnkit.analyze(model.eval())
    assert graph.unknown is None and expected.method == "traced"
    assert (graph.receptive_field, graph.output_stride, graph.input_multiple, graph.padding) == (
        expected.receptive_field, expected.output_stride, expected.input_multiple, expected.padding)


@pytest.mark.parametrize(("model", "reason"), [
    (Skip(align_corners=True), "interpolation with align_corners=True at 'upsample_bilinear2d' scales by"),
    (Skip(norm=nn.GroupNorm(2, 4)), "group_norm at 'norm.group_norm' normalizes over the whole image"),
    (fcnkit.build_model("digit_classifier", num_classes=3, width=0.25),
     "linear at 'classifier.1.linear' mixes every position of the flattened feature map"),
], ids=["align-corners", "group-norm", "flattening-classifier"])
def test_a_programs_nonlocal_operator_is_named_where_it_is(model, reason):
    if isinstance(model, Skip):
        graph = analyze_graph(_program(model))
    else:  # a window classifier exports at its own fixed size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = analyze_graph(_exported_program(model.eval(), 3, (32, 32), False).module())
    assert graph.unknown is None
    assert graph.nonlocal_reason.startswith(reason)


def test_an_operator_without_a_rule_is_probed_and_named(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_program(Rolled().eval(), tmp_path / "rolled.pt2")
    geometry = fcnkit.analyze(load_model(tmp_path / "rolled.pt2"))
    assert geometry.method == "probed"
    assert geometry.probe_reason == "ExportedModel: no geometry rule for aten.roll at 'roll'"
    assert geometry.halo == 2  # what the probe measured


def test_an_unpooling_needs_the_indices_of_a_pooling():
    graph = torch.fx.Graph()
    x, indices = graph.placeholder("x"), graph.placeholder("indices")
    node = graph.call_function(torch.ops.aten.max_unpool2d.default, (x, indices, [8, 8]))
    op = aten_op(node, torch.fx.GraphModule(nn.Module(), graph))
    assert (op.kind, op.name) == ("unknown", "aten.max_unpool2d with indices of no max_pool2d_with_indices")


def test_mtcnn_pnets_program_reads_as_the_trained_network(mtcnn):
    """A real network from elsewhere (facenet-pytorch's trained P-Net: unpadded convolutions, PReLU, a ceil-mode
    pooling, two heads): its torch.export program reads as the eager network does."""
    net = mtcnn("pnet")
    graph = analyze_graph(_program(net))
    expected = fcnkit.analyze(net)
    assert graph.unknown is None and expected.method == "traced"
    read = (graph.receptive_field, graph.output_stride, graph.input_multiple, graph.padding)
    assert read == (expected.receptive_field, expected.output_stride, expected.input_multiple, expected.padding)
    assert read == (12, 2, 2, "valid")


class RolledGlobal(Rolled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y - y.mean((2, 3), keepdim=True)


def test_a_probed_program_still_names_the_nonlocal_operator_its_graph_shows(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_program(RolledGlobal().eval(), tmp_path / "global.pt2")
    geometry = fcnkit.analyze(load_model(tmp_path / "global.pt2"))
    assert geometry.method == "probed" and not geometry.local
    assert geometry.nonlocal_reason.startswith("mean at 'mean' reduces over the spatial dimensions")
