from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fcnkit.checkpoint import load_checkpoint, save_checkpoint
from fcnkit.cli import main
from fcnkit.export import load_safetensors
from fcnkit.models import build_model


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("fcn32s", num_classes=3, width=0.0625)
    return save_checkpoint(tmp_path / "m.pt", model=model, class_names=["bg", "a", "b"],
                           palette=np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0]], np.uint8))


def test_torchscript(tmp_path, checkpoint, capsys):
    out = tmp_path / "m.ts"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out),
                 "--size", "40", "40"]) == 0
    assert f"wrote {out} (torchscript; checked against PyTorch at three sizes" in capsys.readouterr().out
    model = load_checkpoint(checkpoint)
    x = torch.rand(1, 3, 67, 93) * 255
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(x), model(x), atol=1e-4)


@pytest.mark.slow
def test_onnx(tmp_path, checkpoint, capsys):
    import onnxruntime

    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert "(onnx; checked against PyTorch" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # what a user of the file needs travels with it
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["fcnkit.class_names"]) == ["bg", "a", "b"]
    assert json.loads(props["fcnkit.palette"]) == [[0, 0, 0], [200, 0, 0], [0, 200, 0]]
    assert props["fcnkit.input"].startswith("float32 NCHW (batch, channels, height, width), raw pixel values 0-255")
    assert json.loads(props["fcnkit.model"])["name"] == "fcn32s"
    assert session.get_outputs()[0].shape == ["batch", 3, "height", "width"]  # tied to the input's names
    model = load_checkpoint(checkpoint)
    x = torch.rand(2, 3, 129, 40) * 255
    with torch.no_grad():
        assert np.abs(session.run(None, {"image": x.numpy()})[0] - model(x).numpy()).max() <= 1e-3


def test_pt2_then_predict_with_it(tmp_path, checkpoint, capsys):
    from PIL import Image

    out = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "pt2", "--out", str(out)]) == 0
    assert f"wrote {out} (pt2; checked against PyTorch at three sizes" in capsys.readouterr().out
    model = load_checkpoint(checkpoint)
    x = torch.rand(2, 3, 67, 93) * 255
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), model(x), atol=1e-4, rtol=0)
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "photo.png"), "--out",
                 str(tmp_path / "labels.png"), "--quiet"]) == 0
    with torch.no_grad():
        expected = model(torch.from_numpy(image).permute(2, 0, 1)[None].float()).argmax(1)[0].numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "labels.png")), expected)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(out), "--format", "safetensors", "--out",
                 str(tmp_path / "m.safetensors")]) == 2
    assert "it is exported already, use the .pt2 file itself" in capsys.readouterr().err


def test_safetensors_round_trip_and_back_through_export(tmp_path, checkpoint, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 0
    loaded = load_safetensors(out)
    assert loaded.fcnkit_meta["class_names"] == ["bg", "a", "b"]
    original = load_checkpoint(checkpoint)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # A safetensors export is itself accepted as --checkpoint.
    again = tmp_path / "again.ts"
    assert main(["export", "--checkpoint", str(out), "--format", "torchscript", "--out", str(again)]) == 0
    assert again.is_file()


def test_existing_out_refused_without_overwrite(tmp_path, checkpoint, capsys):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fcnkit: error: --out '{out}': expected a new file, found an existing file; ")
    assert "--overwrite" in err and out.read_bytes() == b"old"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() != b"old"


@pytest.mark.parametrize("extra, message", [
    (["--format", "onnx", "--out", "x.onnx", "--checkpoint", "missing.pt"], "checkpoint 'missing.pt'"),
    (["--format", "onnx", "--out", "x.onnx", "--checkpoint", "missing.safetensors"],
     "safetensors file 'missing.safetensors': expected a file"),
])
def test_bad_checkpoint(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_bad_format_and_size(tmp_path, checkpoint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", str(checkpoint), "--format", "pickle", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "fcnkit: error: export: argument --format: invalid choice: 'pickle'" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "x"),
                 "--size", "-1", "5"]) == 2
    assert "--size: expected a positive height and width, found -1 5" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_exports_follow_the_umask(tmp_path, checkpoint, fmt):
    out = tmp_path / f"m.{fmt}"
    old = os.umask(0o022)
    try:
        assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out),
                     "--size", "40", "40"]) == 0
        os.umask(0o027)
        assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(tmp_path / f"g.{fmt}"),
                     "--size", "40", "40"]) == 0
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777, (tmp_path / f"g.{fmt}").stat().st_mode & 0o777) == (0o644, 0o640)


@pytest.mark.parametrize(("fmt", "name", "message"), [
    ("onnx", "d.pt2", "--format onnx expects a name ending in .onnx, found .pt2; name it {dir}/d.onnx (or pass "
                      "--format pt2 to write a .pt2 file)."),
    ("pt2", "d", "--format pt2 expects a name ending in .pt2, found no suffix; name it {dir}/d.pt2."),
    ("safetensors", "d.st", "--format safetensors expects a name ending in .safetensors, found .st; name it "
                            "{dir}/d.safetensors."),
    ("torchscript", "d.onnx", "--format torchscript expects a name not ending in .onnx, .pt2, .safetensors, which "
                              "name the other formats, found .onnx; name it {dir}/d.ts (or pass --format onnx to "
                              "write a .onnx file)."),
])
def test_an_out_named_for_another_format_is_refused(tmp_path, checkpoint, capsys, fmt, name, message):
    out = tmp_path / name
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"fcnkit: error: --out {out}: {message.format(dir=tmp_path)}\n"
    assert sorted(tmp_path.iterdir()) == [checkpoint]  # nothing written
