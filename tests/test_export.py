from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from torch import nn

from fcnkit.errors import CheckpointError, ModelError, OutputError
from fcnkit.export import (
    export_onnx,
    export_program,
    export_safetensors,
    export_torchscript,
    import_safetensors,
    load_safetensors,
)
from fcnkit.layers import pad_to_multiple
from fcnkit.models import build_model

SIZES = [(64, 64), (67, 93), (129, 40)]
# Small widths keep every export under a few seconds on 2 shared cores.
ZOO = {"fcn8s": 0.125, "unet": 0.125, "segnet": 0.125, "encoder_decoder": 0.25, "heatmap_net": 0.125}


class PadNet(nn.Module):
    """A dense toy model that pads to a multiple of 8 like fcnkit's models: conv, stride-8 pool, 8x upsampling."""

    output_kind = "dense"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(8)
        self.up = nn.ConvTranspose2d(4, 2, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 8)
        return self.up(self.pool(self.conv(x)))[:, :, :h, :w]


def _zoo_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, width=ZOO[name]).eval()
    # Random (not zero-initialised) score layers, so equal outputs mean something.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model


def _onnx_matches(model: nn.Module, path, sizes=SIZES) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [d if isinstance(d, int) else d for d in session.get_inputs()[0].shape] == ["batch", 3, "height", "width"]
    generator = torch.Generator().manual_seed(1)
    for h, w in sizes:
        x = torch.rand(2, 3, h, w, generator=generator) * 255
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-3, (h, w)


def _torchscript_matches(model: nn.Module, path, sizes=SIZES) -> None:
    loaded = torch.jit.load(str(path))
    generator = torch.Generator().manual_seed(2)
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=generator) * 255
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x), atol=1e-4), (h, w)


def _program_matches(model: nn.Module, path, sizes=SIZES) -> None:
    loaded = torch.export.load(str(path)).module()  # as a user of the file runs it
    generator = torch.Generator().manual_seed(3)
    for h, w in sizes:
        x = torch.rand(2, 3, h, w, generator=generator) * 255
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=0)


def test_onnx_toy_padding_model_any_size(tmp_path):
    model = PadNet().eval()
    worst = export_onnx(model, tmp_path / "pad.onnx", sample_size=(64, 64))
    assert worst <= 1e-3
    _onnx_matches(model, tmp_path / "pad.onnx", SIZES + [(1, 1), (8, 200)])
    assert [p.name for p in tmp_path.iterdir()] == ["pad.onnx"]  # no temporary file left behind


def test_torchscript_toy_padding_model_any_size(tmp_path):
    model = PadNet().eval()
    export_torchscript(model, tmp_path / "pad.ts", sample_size=(64, 64))
    _torchscript_matches(model, tmp_path / "pad.ts", SIZES + [(1, 1), (8, 200)])


def test_pt2_toy_padding_model_any_size_and_its_metadata(tmp_path):
    import zipfile

    model = PadNet().eval()
    assert export_program(model, tmp_path / "pad.pt2", sample_size=(64, 64)) <= 1e-4
    # sizes that need no padding too: the exporter's guards would have refused them ("padded height != height")
    _program_matches(model, tmp_path / "pad.pt2", SIZES + [(1, 1), (8, 200), (16, 8)])
    assert [p.name for p in tmp_path.iterdir()] == ["pad.pt2"]  # no temporary file left behind
    extra = {"fcnkit.json": ""}
    torch.export.load(str(tmp_path / "pad.pt2"), extra_files=extra)
    meta = json.loads(extra["fcnkit.json"])
    assert meta["format"] == "fcnkit-pt2" and meta["output_kind"] == "dense" and meta["input_size"] is None
    # no Normalize in the toy: its input convention says values as trained, not 0-255
    assert meta["input"].startswith("float32 NCHW (batch, channels, height, width), values as the model was trained")
    assert meta["takes_0_255"] is False
    assert any(n.endswith("extra/fcnkit.json") for n in zipfile.ZipFile(tmp_path / "pad.pt2").namelist())


def test_export_refuses_a_model_that_freezes_its_size(tmp_path):
    class Frozen(nn.Module):
        def forward(self, x):
            # Python int() of a size: tracing records a constant, so other sizes give the wrong shape.
            return x[:, :, : int(x.shape[2]) // 2 * 2]

    with pytest.raises(ModelError, match="TorchScript export: expected output shape .* found"):
        export_torchscript(Frozen(), tmp_path / "f.ts", sample_size=(8, 8))
    with pytest.raises(ModelError, match=r"pt2 export: expected (output shape .* found|the exported model "
                                         r"to run at .* found an error)"):
        export_program(Frozen(), tmp_path / "f.pt2", sample_size=(8, 8))
    assert not (tmp_path / "f.ts").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_forward_that_branches_on_values_is_refused_by_name(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow: no single graph

    with pytest.raises(ModelError, match=r"torch\.export of Branchy: expected a model torch\.export can trace with "
                                         r"dynamic batch, height and width, found .*; keep the forward free of "
                                         r"data-dependent Python control flow"):
        export_program(Branchy(), tmp_path / "b.pt2", sample_size=(8, 8))
    assert list(tmp_path.iterdir()) == []


def test_an_opset_the_exporter_cannot_write_is_refused(tmp_path, capfd):
    with pytest.raises(ModelError, match=r"ONNX export: expected opset 3, found the exporter wrote opset \d+ .*; "
                                         r"leave --opset out or pass --opset \d+"):
        export_onnx(PadNet().eval(), tmp_path / "old.onnx", opset=3)
    assert list(tmp_path.iterdir()) == []
    assert "Traceback" not in capfd.readouterr().err  # the converter's own traceback is not shown


def test_existing_output_refused_without_overwrite(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputError, match=r"output '.*m.onnx': expected a new file, found an existing file; .*--overwrite"):
        export_onnx(PadNet(), target, overwrite=False)
    assert target.read_bytes() == b"keep me"


def test_classifier_exports_with_fixed_window(tmp_path):
    model = build_model("digit_classifier", num_classes=4).eval()
    export_torchscript(model, tmp_path / "c.ts", sample_size=(99, 99))
    export_program(model, tmp_path / "c.pt2", sample_size=(99, 99))
    x = torch.rand(3, 3, *model.input_size) * 255
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "c.ts"))(x), model(x), atol=1e-5)
        assert torch.allclose(torch.export.load(str(tmp_path / "c.pt2")).module()(x), model(x), atol=1e-5)
    from fcnkit.loading import load_model

    loaded = load_model(tmp_path / "c.pt2")
    assert loaded.output_kind == "classifier" and loaded.input_size == model.input_size
    with pytest.raises(Exception, match=r"the program takes only 32x32 inputs, got 40x32; convolutionalize"):
        loaded(torch.rand(1, 3, 40, 32))


def test_onnx_file_mode_follows_the_umask_and_grid_outputs_name_their_size(tmp_path):
    import onnx

    old = os.umask(0o022)
    try:
        export_onnx(_zoo_model("heatmap_net"), tmp_path / "h.onnx", sample_size=(32, 32))
    finally:
        os.umask(old)
    assert (tmp_path / "h.onnx").stat().st_mode & 0o777 == 0o644
    dims = [d.dim_param for d in onnx.load(str(tmp_path / "h.onnx")).graph.output[0].type.tensor_type.shape.dim]
    assert "height" in dims[2] and "width" in dims[3]  # the grid side is a function of the input's side


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_onnx_zoo_any_size(tmp_path, name):
    model = _zoo_model(name)
    export_onnx(model, tmp_path / f"{name}.onnx")
    _onnx_matches(model, tmp_path / f"{name}.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))  # segnet too: fcnkit's MaxUnpool traces for any size
def test_torchscript_zoo_any_size(tmp_path, name):
    model = _zoo_model(name)
    export_torchscript(model, tmp_path / f"{name}.ts")
    _torchscript_matches(model, tmp_path / f"{name}.ts")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_pt2_zoo_any_size(tmp_path, name):
    model = _zoo_model(name)
    export_program(model, tmp_path / f"{name}.pt2")
    _program_matches(model, tmp_path / f"{name}.pt2", SIZES + [(1, 1), (128, 64)])


def test_safetensors_round_trip(tmp_path):
    model = build_model("unet", num_classes=3, width=0.125).eval()
    model.fcnkit_meta = {"class_names": ["bg", "a", "b"], "palette": np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]])}
    path = export_safetensors(model, tmp_path / "u.safetensors")
    data = import_safetensors(path)
    assert data["model"] == model.fcnkit_spec
    assert data["class_names"] == ["bg", "a", "b"]
    assert data["palette"][1] == [255, 0, 0]
    assert set(data["state_dict"]) == set(model.state_dict())
    loaded = load_safetensors(path)
    assert loaded.fcnkit_spec == model.fcnkit_spec and not loaded.training
    assert loaded.fcnkit_meta["palette"].dtype == np.uint8
    x = torch.rand(1, 3, 37, 41) * 255
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_safetensors_header_is_json_metadata_not_pickle(tmp_path):
    model = build_model("fcn32s", num_classes=2, width=0.0625)
    path = export_safetensors(model, tmp_path / "w.safetensors")
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert header["__metadata__"]["format"] == "fcnkit-safetensors"
    assert json.loads(header["__metadata__"]["model"])["name"] == "fcn32s"


def test_safetensors_errors(tmp_path):
    with pytest.raises(ModelError, match="expected an fcnkit model with `fcnkit_spec`, found a plain Conv2d"):
        export_safetensors(nn.Conv2d(1, 1, 1), tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match=r"'.*missing.safetensors': expected a file .* found nothing"):
        load_safetensors(tmp_path / "missing.safetensors")
    good = export_safetensors(build_model("fcn32s", num_classes=2, width=0.0625), tmp_path / "g.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="expected a complete safetensors file, found one that cannot be read"):
        load_safetensors(truncated)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="expected fcnkit metadata .* found format None"):
        load_safetensors(tmp_path / "plain.safetensors")
