from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.errors import InputError, ModelError
from fcnkit.reporting.inspect import default_size, format_report, inspect_model, layer_macs, layer_table


class Classifier(nn.Module):
    """A tiny fixed-window classifier: conv, global pooling, linear."""

    output_kind = "classifier"
    input_size = (12, 12)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_one_conv_macs_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    report = inspect_model(conv, size=(10, 10))
    assert report.macs == 8 * 3 * 9 * 100
    assert report.flops == 2 * 8 * 3 * 9 * 100
    assert report.flops_per_megapixel == pytest.approx(2 * 8 * 3 * 9 * 1e6)
    assert report.total_params == 8 * 3 * 9 + 8
    assert [(r.name, r.type, r.output_shape, r.params) for r in report.layers] == [
        ("", "Conv2d", (1, 8, 10, 10), 8 * 3 * 9 + 8)]


def test_grouped_strided_transposed_and_linear_macs():
    grouped = nn.Conv2d(4, 6, 3, stride=2, groups=2)
    out = grouped(torch.zeros(1, 4, 9, 9))  # (1, 6, 4, 4)
    assert layer_macs(grouped, (None,), out) == 6 * 4 * 4 * (4 // 2) * 9
    up = nn.ConvTranspose2d(5, 3, 4, stride=2)
    x = torch.zeros(1, 5, 6, 7)
    # Every input element is scattered to C_out * k * k outputs.
    assert layer_macs(up, (x,), up(x)) == 5 * 6 * 7 * 3 * 16
    fc = nn.Linear(7, 2)
    assert layer_macs(fc, (torch.zeros(3, 7),), torch.zeros(3, 2)) == 3 * 2 * 7
    assert layer_macs(nn.ReLU(), (x,), x) == 0


def test_layer_table_names_shapes_and_shared_module_counted_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU())
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.body(self.body(x)))

    rows, out_shape = layer_table(Twice(), size=(6, 4), in_channels=2)
    assert [r.name for r in rows] == ["body.0", "body.1", "body.0", "body.1", "pool"]
    assert rows[-1].output_shape == (1, 2, 3, 2)
    assert out_shape == (1, 2, 3, 2)
    assert sum(r.macs for r in rows) == 2 * (2 * 2 * 24)


def test_classifier_uses_its_input_size_and_has_no_geometry():
    model = Classifier()
    assert default_size(model) == (12, 12)
    report = inspect_model(model)
    assert report.size == (12, 12)
    assert report.output_shape == (1, 5)
    assert report.macs == 4 * 3 * 9 * 144 + 5 * 4
    assert report.geometry is None and "convolutionalize" in report.geometry_note
    text = format_report(report)
    assert "geometry:" in text and "FLOPs per megapixel" in text and "1 MAC = 2 FLOPs" in text


def test_format_report_is_aligned_and_to_dict_is_json():
    report = inspect_model(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), size=(10, 10))
    text = format_report(report)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    table = lines[header:header + 4]
    # Every column starts at the same offset on every row.
    assert table[2].index("Conv2d") == table[0].index("type") == table[3].index("ReLU")
    assert "0.0" not in lines[header + 2].split()[3]  # params printed as an integer with separators
    assert "224" in lines[header + 2]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["macs"] == 21600 and data["flops"] == 43200
    assert data["layers"][0]["output_shape"] == [1, 8, 10, 10]


def test_bad_size_and_bad_model_raise_clear_errors():
    with pytest.raises(InputError, match="size: expected positive height and width, found 0x5"):
        inspect_model(nn.Conv2d(3, 3, 1), size=(0, 5))
    with pytest.raises(InputError, match="expected a size the model can run on"):
        inspect_model(nn.Conv2d(3, 3, 5), size=(2, 2))
    with pytest.raises(ModelError, match="expected a torch.nn.Module, found str"):
        inspect_model("fcn8s")


def test_inspects_in_eval_mode_and_restores_training():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).train()
    report = inspect_model(model, size=(8, 8))
    assert report.geometry is not None and report.geometry["local"] is True
    assert model.training and model[1].training


def test_report_says_how_the_geometry_was_obtained():
    traced = format_report(inspect_model(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), size=(8, 8)))
    assert "obtained by:" in traced and "tracing the graph" in traced

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.conv(x)
            return self.conv(-x)

    probed = format_report(inspect_model(Untraceable(), size=(8, 8)))
    assert "obtained by:" in probed and "probing (" in probed


def test_a_torch_export_program_counts_the_same_flops_as_its_model(tmp_path):
    from fcnkit.export import export_program
    from fcnkit.loading import load_model
    from fcnkit.models import build_model

    model = build_model("fcn8s", num_classes=5, width=0.0625).eval()
    export_program(model, tmp_path / "m.pt2")
    report = inspect_model(load_model(tmp_path / "m.pt2"), size=(67, 93))
    reference = inspect_model(model, size=(67, 93))
    # one row for the whole program (no layers to hook), its multiply-adds counted per ATen operator
    assert [(r.name, r.type, r.output_shape) for r in report.layers] == [("", "ExportedModel", (1, 5, 67, 93))]
    assert report.flops == reference.flops > 0
    assert report.layers[0].params == sum(p.numel() for p in model.parameters())


def test_a_classifier_at_another_size_is_told_its_window_and_the_convert_command():
    model = fcnkit.build_model("digit_classifier", num_classes=11, width=0.125)
    with pytest.raises(InputError) as refused:
        inspect_model(model, size=(20, 20))
    assert str(refused.value) == (
        "size 20x20: expected 32x32, the one window size this classifier takes; leave --size out to inspect it at "
        "32x32, or convolutionalize it to run on any size of at least 32x32: `fcnkit convert --checkpoint CKPT "
        "--out fcn.pt`, then `fcnkit inspect --checkpoint fcn.pt --size H W` (from Python: "
        "inspect_model(fcnkit.convolutionalize(model, input_size=(32, 32)), size=(H, W))).")
    assert inspect_model(Classifier(), size=(20, 20)).output_shape == (1, 5)  # one that runs at any size still does


def test_an_onnx_model_counts_its_weights_and_says_its_flops_are_not_counted(tmp_path):
    """onnxruntime holds an ONNX model's weights (no parameters()) and runs its operators: the weights are counted
    from the graph's initializers, the FLOPs are n/a rather than 0."""
    import warnings

    from fcnkit.export import export_onnx
    from fcnkit.loading import load_model
    from fcnkit.models import build_model

    import numpy as np
    import onnx

    model = build_model("fcn8s", num_classes=5, width=0.0625).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, tmp_path / "m.onnx")
    report = inspect_model(load_model(tmp_path / "m.onnx"), size=(67, 93))
    assert [(r.name, r.type, r.output_shape, r.macs) for r in report.layers] == [
        ("", "OnnxModel", (1, 5, 67, 93), None)]
    # the values the file stores (the exporter keeps one copy of identical tensors, e.g. the bilinear kernels)
    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT)  # not the int64 shapes and axes
    assert 0.99 < weights / sum(p.numel() for p in model.parameters()) <= 1
    assert report.layers[0].params == report.total_params == weights and report.trainable_params == 0
    assert report.flops is None and json.loads(json.dumps(report.to_dict()))["flops_per_megapixel"] is None
    text = format_report(report)
    assert any(line.startswith("parameters:") and line.endswith(f" {weights:,} (0 trainable)")
               for line in text.splitlines())
    assert any(line.startswith("FLOPs at 67x93:") and "n/a: an ONNX model's operators run in onnxruntime, "
               "uncounted" in line for line in text.splitlines())
