"""`fcnkit convert` and `fcnkit heatmap` on checkpoints written by fcnkit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fcnkit.checkpoint import load_checkpoint, save_checkpoint
from fcnkit.cli import main
from fcnkit.convert import ConvolutionalizedNet, verify
from fcnkit.models import build_model
from fcnkit.reporting.pictures import COLORBAR_PX

NAMES = ["background", *(f"digit {d}" for d in range(10))]


@pytest.fixture()
def classifier_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("digit_classifier", num_classes=11, width=0.125)
    return save_checkpoint(tmp_path / "clf.pt", model=model, class_names=NAMES), model.eval()


@pytest.fixture()
def scene(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (48, 56, 3), dtype=np.uint8)
    path = tmp_path / "scene.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_convert_writes_an_fcn_checkpoint(classifier_checkpoint, scene, tmp_path, capsys) -> None:
    path, classifier = classifier_checkpoint
    assert main(["convert", "--checkpoint", str(path), "--input-size", "32", "32", "--out",
                 str(tmp_path / "fcn.pt")]) == 0
    assert "window 32x32, stride 4x4, 11 classes" in capsys.readouterr().out
    fcn = load_checkpoint(tmp_path / "fcn.pt")
    assert isinstance(fcn, ConvolutionalizedNet) and fcn.fcnkit_meta["class_names"] == NAMES
    image = torch.from_numpy(scene[1]).permute(2, 0, 1)[None].float()
    assert fcn(image).shape == (1, 11, 5, 7)
    assert verify(classifier, fcn, image) <= 1e-4


def test_heatmap_from_classifier_and_from_fcn(classifier_checkpoint, scene, tmp_path, capsys) -> None:
    path, _ = classifier_checkpoint
    assert main(["heatmap", "--checkpoint", str(path), str(scene[0]), "--out", str(tmp_path / "a.png"),
                 "--class", "digit 3"]) == 0
    assert "class 4 (digit 3)" in capsys.readouterr().out
    with Image.open(tmp_path / "a.png") as png:
        assert png.size == (56 * 6 + COLORBAR_PX, 48 * 6)  # zoom 6: 48 * 6 >= 256
    main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "fcn.pt")])  # input_size from the model
    assert main(["heatmap", "--checkpoint", str(tmp_path / "fcn.pt"), str(scene[0]), "--out",
                 str(tmp_path / "b.png")]) == 0
    assert "class" in capsys.readouterr().out and (tmp_path / "b.png").is_file()


def test_cli_errors(classifier_checkpoint, scene, tmp_path, capsys) -> None:
    path, _ = classifier_checkpoint
    main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "fcn.pt")])
    capsys.readouterr()
    assert main(["convert", "--checkpoint", str(tmp_path / "fcn.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "expected a classifier checkpoint (N, K output), found a 'grid' model" in capsys.readouterr().err
    assert main(["heatmap", "--checkpoint", str(path), str(scene[0]), "--out", str(tmp_path / "c.png"),
                 "--class", "11"]) == 2
    assert "--class: expected a class index 0-10 or one of background" in capsys.readouterr().err
    assert main(["convert", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_convert_refuses_another_suffix_and_another_window_before_any_work(classifier_checkpoint, tmp_path,
                                                                            capsys) -> None:
    path, _ = classifier_checkpoint
    assert main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "c.onnx")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fcnkit: error: --out {tmp_path / 'c.onnx'}: fcnkit convert writes a .pt checkpoint; name it with .pt (e.g. "
        f"fcn.pt), then `fcnkit export` makes ONNX, .pt2 or safetensors files of it.")
    argv = ["convert", "--checkpoint", str(path), "--input-size", "33", "33", "--out", str(tmp_path / "c.pt")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"fcnkit: error: --input-size 33 33: the classifier in {path} takes 32x32 windows; leave --input-size out (or "
        f"pass 32 32).")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.pt"]  # nothing written
