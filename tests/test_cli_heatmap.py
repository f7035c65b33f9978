"""``fcnkit heatmap`` goes through the tiled path of ``predict``: exact, memory bounded, readable on large images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fcnkit.cli.heatmap as cli_heatmap
import fcnkit.inference
from fcnkit.checkpoint import save_checkpoint
from fcnkit.cli import main
from fcnkit.models import build_model
from fcnkit.reporting import pictures
from fcnkit.reporting.pictures import BAR_REFERENCE_PX, COLORBAR_PX, class_scores

NAMES = ["background", *(f"digit {d}" for d in range(10))]


@pytest.fixture()
def classifier(tmp_path):
    torch.manual_seed(0)
    model = build_model("digit_classifier", num_classes=11, width=0.125)
    with torch.no_grad():
        for p in model.parameters():  # random, not zero-initialised, score layers: the maps then differ per class
            p.add_(0.05 * torch.randn_like(p))
    return save_checkpoint(tmp_path / "clf.pt", model=model, class_names=NAMES), model.eval()


def _scene(path, height, width, seed=0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_tiled_heatmap_equals_the_whole_image_one(classifier, tmp_path, capsys, monkeypatch):
    path, model = classifier
    pixels = _scene(tmp_path / "s.png", 120, 100)
    drawn = {}
    real = pictures.heatmap

    def spy(scores, image, **kwargs):
        drawn["scores"], drawn["image"] = np.asarray(scores), np.asarray(image)
        return real(scores, image, **kwargs)

    monkeypatch.setattr(pictures, "heatmap", spy)
    assert main(["heatmap", "--checkpoint", str(path), str(tmp_path / "s.png"), "--out", str(tmp_path / "h.png"),
                 "--tile", "32", "--device", "cpu", "--memory-limit", "64MB", "--class", "digit 3",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    logits, window, stride = class_scores(model, pixels)
    assert f"wrote {tmp_path / 'h.png'}: class 4 (digit 3)" in out
    assert f"{logits.shape[1]}x{logits.shape[2]} windows of 32x32 at stride {stride[0]}" in out
    tiles = int(out.split(" tiles of ")[0].rsplit(", ", 1)[1])
    assert tiles > 1  # really tiled, and still equal to the whole-image grid
    np.testing.assert_allclose(drawn["scores"], torch.softmax(logits, 0).numpy(), atol=1e-5)
    np.testing.assert_array_equal(drawn["image"], pixels)


def test_large_images_are_drawn_subsampled_with_a_readable_colour_bar(classifier, tmp_path, capsys, monkeypatch):
    path, _ = classifier
    monkeypatch.setattr(cli_heatmap, "MAX_PICTURE_SIDE", 1100)
    _scene(tmp_path / "big.png", 2400, 1600)
    assert main(["heatmap", "--checkpoint", str(path), str(tmp_path / "big.png"), "--out", str(tmp_path / "h.png"),
                 "--quiet"]) == 0
    assert "drawn at 1/3 scale" in capsys.readouterr().out
    with Image.open(tmp_path / "h.png") as png:
        height = 800  # ceil(2400 / 3)
        scale = max(1, round(height / BAR_REFERENCE_PX))
        assert png.size == (534 + COLORBAR_PX * scale, height)


def test_colour_bar_scales_with_tall_pictures(tmp_path):
    heat = np.zeros((8, 4, 2), np.float32)
    heat = np.moveaxis(heat, 2, 0)
    image = np.zeros((2100, 300, 3), np.uint8)
    pictures.heatmap(heat, image, class_index=1, window=(300, 300), stride=(300, 300), out=tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as png:
        assert png.size == (300 + 2 * COLORBAR_PX, 2100)  # round(2100 / 1000) = 2


@pytest.mark.parametrize(("argv", "message"), [
    (["--tile", "0"], "--tile: expected a positive number, found 0"),
    (["--memory-limit", "lots"], "--memory-limit='lots' is not a memory size"),
])
def test_tiling_flags_are_checked(classifier, tmp_path, capsys, argv, message):
    path, _ = classifier
    _scene(tmp_path / "s.png", 40, 40)
    assert main(["heatmap", "--checkpoint", str(path), str(tmp_path / "s.png"), "--out", str(tmp_path / "h.png"),
                 *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcnkit: error: ") and message in err
    assert not (tmp_path / "h.png").exists()


@pytest.mark.parametrize("choice", ["11", "-1", "cat"])
def test_a_class_the_model_lacks_is_refused_before_any_tile_runs(classifier, tmp_path, capsys, monkeypatch, choice):
    path, _ = classifier
    _scene(tmp_path / "s.png", 40, 40)

    def no_tiles(*args, **kwargs):
        raise AssertionError("tiles ran before --class was checked")

    monkeypatch.setattr(fcnkit.inference, "predict_tiled", no_tiles)
    assert main(["heatmap", "--checkpoint", str(path), str(tmp_path / "s.png"), "--out", str(tmp_path / "h.png"),
                 "--class", choice]) == 2
    assert capsys.readouterr().err == (f"fcnkit: error: --class: expected a class index 0-10 or one of "
                                       f"{', '.join(NAMES)}, found {choice!r}; pass one of those, or leave --class "
                                       f"out for the most confident class.\n")
    assert not (tmp_path / "h.png").exists()


def test_the_edge_band_without_window_centres_shows_the_image_alone(classifier, tmp_path, capsys, monkeypatch):
    path, _ = classifier
    _scene(tmp_path / "s.png", 40, 44)
    drawn = {}
    real = pictures.heatmap

    def spy(scores, image, **kwargs):
        drawn["heat"] = real(scores, image, **kwargs)
        return drawn["heat"]

    monkeypatch.setattr(pictures, "heatmap", spy)
    assert main(["heatmap", "--checkpoint", str(path), str(tmp_path / "s.png"), "--out", str(tmp_path / "h.png"),
                 "--class", "digit 3", "--quiet"]) == 0
    # 32x32 windows at stride 4: centres from 16 to 24 (rows) and to 28 (columns); more than 2 px beyond, no value
    heat = drawn["heat"]
    assert np.isnan(heat[:14]).all() and np.isnan(heat[26:]).all()
    assert np.isnan(heat[:, :14]).all() and np.isnan(heat[:, 30:]).all()
    assert not np.isnan(heat[14:26, 14:30]).any()
    assert ", 1 tile of " in capsys.readouterr().out  # one tile, not "1 tiles"


def test_help_states_the_real_defaults():
    from fcnkit.cli import build_parser
    from fcnkit.inference.plan import DEFAULT_BUDGET

    text = " ".join(build_parser()._subparsers._group_actions[0].choices["heatmap"].format_help().split())
    assert DEFAULT_BUDGET == 2**30
    assert "(default 1GB on CPU, at most half of the available memory; half of the free memory on a GPU)" in text
    assert "tile side in pixels (default: the least work within --memory-limit)" in text
