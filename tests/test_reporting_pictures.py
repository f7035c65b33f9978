"""Pictures: heat maps (grid placement at window centres, colour overlays, the PNG, the heat where a pattern is),
palette colours, label overlays, panels with a legend; sizes, colours and refusals."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fcnkit
from fcnkit.convert import convolutionalize
from fcnkit.data import voc_palette
from fcnkit.errors import InputError
from fcnkit.reporting.pictures import (COLORBAR_PX, IGNORE_RGB, PANEL_INCHES, as_rgb, colorize, heatmap, heatmap_panels,
                                       overlay, overlay_labels, panels, upsample_grid, write_png)

NAMES = ["background", "cat", "dog"]


def _bright_square_detector() -> nn.Sequential:
    """An 8x8-window classifier: class 1 when the window's mean brightness (0-255) is above about 128."""
    conv = nn.Conv2d(1, 1, 5, bias=False)  # 8x8 -> 4x4 local means
    nn.init.constant_(conv.weight, 1.0 / 25)
    linear = nn.Linear(1, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[-0.1], [0.1]]))
        linear.bias.copy_(torch.tensor([6.4, -6.4]))
    model = nn.Sequential(conv, nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 1), nn.ReLU(), linear).eval()
    with torch.no_grad():  # the mean over the pooled 2x2 map
        model[3].weight.fill_(1.0 / 4)
        model[3].bias.zero_()
    model.input_size = (8, 8)
    return model


def _scene() -> np.ndarray:
    image = np.zeros((64, 80), dtype=np.uint8)
    image[36:52, 8:24] = 255  # the planted pattern
    return image


def test_heat_is_high_on_the_planted_pattern_and_png_has_its_size(tmp_path) -> None:
    out = tmp_path / "heat.png"
    heat = heatmap(_bright_square_detector(), _scene(), class_index=1, out=out, label="bright")
    assert heat.shape == (64, 80) and heat.dtype == np.float32
    assert heat[44, 16] > 0.95 and heat[10, 70] < 0.05 and heat[44, 60] < 0.05
    with Image.open(out) as png:
        zoom = 4  # 64 * 4 = 256, the smallest whole zoom reaching MIN_SIDE_PX
        assert png.size == (80 * zoom + COLORBAR_PX, 64 * zoom)
        pixels = np.asarray(png.convert("RGB"))
    # jet colours hot pixels red and cold ones blue: the white square turns pink, the black background navy.
    red, blue = pixels[44 * zoom, 16 * zoom], pixels[10 * zoom, 70 * zoom]
    assert int(red[0]) - int(red[2]) > 50 and int(blue[2]) - int(blue[0]) > 50


def test_same_heat_from_classifier_fcn_and_scores() -> None:
    clf = _bright_square_detector()
    fcn = convolutionalize(clf, input_size=(8, 8), in_channels=1)
    image = _scene()
    with torch.no_grad():
        scores = fcn(torch.from_numpy(image).float()[None, None])[0].numpy()
    a = heatmap(clf, image, class_index=0)
    b = heatmap(fcn, image, class_index=0)
    c = heatmap(scores, image, class_index=0, window=(8, 8), stride=(2, 2))
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_upsample_places_cells_at_window_centres() -> None:
    grid = np.array([[0.0, 1.0, 2.0]])
    heat = upsample_grid(grid, image_size=(8, 14), window=(8, 8), stride=(1, 3))
    # window j covers columns [3j, 3j + 8): centre 3j + 4, i.e. between pixels 3j + 3 and 3j + 4
    np.testing.assert_allclose(heat[0, :4], [0, 0, 0, 0])
    np.testing.assert_allclose(heat[0, 4:11], [1 / 6, 0.5, 5 / 6, 7 / 6, 1.5, 11 / 6, 2.0], rtol=1e-6)
    np.testing.assert_allclose(heat[:, 5], np.full(8, 0.5), rtol=1e-6)


def test_upsample_can_leave_the_band_without_window_centres_empty_and_overlay_shows_the_image_there() -> None:
    grid = np.array([[0.0, 1.0, 2.0]])
    heat = upsample_grid(grid, image_size=(1, 14), window=(1, 8), stride=(1, 3), outside=np.nan)
    # window centres at 4, 7 and 10: only pixels within half a stride (1.5) of that span keep a value
    assert np.isnan(heat[0, :2]).all() and np.isnan(heat[0, 12:]).all()
    assert not np.isnan(heat[0, 2:12]).any()
    np.testing.assert_allclose(heat[0, 2:12], upsample_grid(grid, image_size=(1, 14), window=(1, 8),
                                                            stride=(1, 3))[0, 2:12])
    image = np.full((1, 14, 3), 100, dtype=np.uint8)
    blended = overlay(image, heat, cmap="gray", alpha=0.5)
    np.testing.assert_array_equal(blended[:, :2], image[:, :2])  # no score: the image alone
    np.testing.assert_array_equal(blended[:, 2:12], overlay(image[:, 2:12], heat[:, 2:12], cmap="gray", alpha=0.5))


def test_heatmap_draws_the_image_alone_where_no_window_is_centred_when_outside_is_nan(tmp_path) -> None:
    scene = _scene()
    plain = heatmap(_bright_square_detector(), scene, class_index=1)
    heat = heatmap(_bright_square_detector(), scene, class_index=1, outside=np.nan, out=tmp_path / "h.png")
    # 8x8 windows at stride 2: centres from 4 to 60 (rows) and 76 (columns); beyond half a stride of them, no value
    assert np.isnan(heat[:3]).all() and np.isnan(heat[61:]).all() and np.isnan(heat[:, 77:]).all()
    assert not np.isnan(heat[3:61, 3:77]).any()
    np.testing.assert_array_equal(heat[3:61, 3:77], plain[3:61, 3:77])
    assert not np.isnan(plain).any()  # the default keeps the nearest window's value there
    with Image.open(tmp_path / "h.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    assert (pixels[0:8, 0:8] == 0).all()  # the black image itself, not navy blended over it


def test_overlay_blends_and_checks() -> None:
    image = np.full((4, 5, 3), 100, dtype=np.uint8)
    blended = overlay(image, np.ones((4, 5)), cmap="gray", alpha=0.5)
    np.testing.assert_array_equal(blended, np.full((4, 5, 3), 178, dtype=np.uint8))  # (100 + 255) / 2 -> 178
    with pytest.raises(InputError, match=r"expected a heat map of the image's size \(4, 5\), got \(4, 4\)"):
        overlay(image, np.ones((4, 4)))


def test_heatmap_errors() -> None:
    with pytest.raises(InputError, match=r"class_index: expected an integer in \[0, 1\], got 2"):
        heatmap(_bright_square_detector(), _scene(), class_index=2)
    with pytest.raises(InputError, match=r"pass both, or pass the model"):
        heatmap(np.zeros((2, 3, 3)), _scene(), class_index=0)
    with pytest.raises(InputError, match=r"got a Sequential without it"):
        heatmap(nn.Sequential(nn.Conv2d(1, 2, 3)), _scene(), class_index=0)



def _png(path) -> np.ndarray:
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB"))


def test_colorize_uses_the_voc_palette_and_cream_for_ignore() -> None:
    labels = np.array([[0, 1, 2], [15, 255, 3]], dtype=np.uint8)
    rgb = colorize(labels)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0], voc_palette(3))  # black, dark red, dark green
    np.testing.assert_array_equal(rgb[1, 0], [192, 128, 128])  # VOC's "person"
    np.testing.assert_array_equal(rgb[1, 1], IGNORE_RGB)
    short = colorize(np.array([[1, 255]]), palette=[[0, 0, 0], [10, 20, 30]])  # 255 stays cream for any palette
    np.testing.assert_array_equal(short[0], [[10, 20, 30], list(IGNORE_RGB)])


def test_colorize_refuses_bad_labels_and_palettes() -> None:
    with pytest.raises(InputError, match=r"expected class indices 0-1 \(or 255, ignore\) for a palette of 2 "
                                         r"colours, found \[2, 7\]"):
        colorize(np.array([[0, 2, 7]]), palette=voc_palette(2))
    with pytest.raises(InputError, match=r"labels: expected an \(H, W\) array of integer class indices, got shape "
                                         r"\(2, 2, 3\)"):
        colorize(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError, match=r"float64"):
        colorize(np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"palette: expected a \(K, 3\) array of 0-255 colours, got shape \(4,\)"):
        colorize(np.zeros((2, 2), np.uint8), palette=[1, 2, 3, 4])


def test_overlay_labels_tints_classes_and_keeps_background() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 0]])
    blended = overlay_labels(image, labels, alpha=0.5)
    np.testing.assert_array_equal(blended[0, 0], [100, 100, 100])  # background: the image as it is
    np.testing.assert_array_equal(blended[0, 1], [114, 50, 50])  # (100 + 128) / 2, (100 + 0) / 2
    np.testing.assert_array_equal(blended[1, 0], [50, 114, 50])
    with pytest.raises(InputError, match=r"labels: expected the image's size \(2, 2\), got \(2, 3\)"):
        overlay_labels(image, np.zeros((2, 3), np.uint8))


def test_panels_size_colours_and_legend(tmp_path) -> None:
    image = np.full((32, 48, 3), 200, np.uint8)
    truth = np.zeros((32, 48), np.uint8)
    truth[8:24, 8:24] = 1
    pred = truth.copy()
    pred[8:24, 30:46] = 2
    out = panels(tmp_path / "p.png", [(image, truth, pred), (image, None, pred)], class_names=NAMES,
                 titles=["first", "second"])
    pixels = _png(out)
    assert pixels.shape[:2] == (round(100 * (2 * PANEL_INCHES + 0.9)), round(100 * 4 * PANEL_INCHES))
    palette = voc_palette(3)
    # A 16x16 square of a class drawn about 5.8x enlarged is ~8,700 pixels; a legend patch is a few hundred.
    # Class 1 is in the truth and prediction of row 1 and the prediction of row 2; class 2 in both predictions.
    for k, squares in ((1, 3), (2, 2)):
        count = int((pixels == palette[k]).all(axis=2).sum())
        assert squares * 7000 < count < squares * 10000 + 1000, (k, count)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed into place


def test_panels_refuse_mismatches(tmp_path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match=r"samples\[0\]: expected the truth at the image's size \(8, 8\), got "
                                         r"\(8, 9\)"):
        panels(tmp_path / "p.png", [(image, np.zeros((8, 9), np.uint8), np.zeros((8, 8), np.uint8))],
               class_names=NAMES)
    with pytest.raises(InputError, match=r"the prediction holds class 5 but only 3 class names were given"):
        panels(tmp_path / "p.png", [(image, None, np.full((8, 8), 5, np.uint8))], class_names=NAMES)
    with pytest.raises(InputError, match=r"samples: expected at least one"):
        panels(tmp_path / "p.png", [], class_names=NAMES)
    with pytest.raises(InputError, match=r"out: expected a path ending in .png, got '.*p.jpg'"):
        panels(tmp_path / "p.jpg", [(image, None, np.zeros((8, 8), np.uint8))], class_names=NAMES)
    assert not list(tmp_path.iterdir())


def test_heatmap_panels_grid(tmp_path) -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    probs = np.full((3, 3, 3), 1 / 3)
    out = heatmap_panels(tmp_path / "h.png", image, probs, window=(8, 8), stride=(16, 16), class_names=NAMES,
                         columns=3)
    assert _png(out).shape[:2] == (round(100 * (PANEL_INCHES + 0.3)), round(100 * (3 * PANEL_INCHES + 0.8)))
    with pytest.raises(InputError, match=r"probs: expected a \(K, H', W'\) grid with K = 3 .*got shape \(2, 3, 3\)"):
        heatmap_panels(tmp_path / "h.png", image, probs[:2], window=(8, 8), stride=(16, 16), class_names=NAMES)
    with pytest.raises(InputError, match=r"classes: expected class indices in \[0, 2\], got \[3\]"):
        heatmap_panels(tmp_path / "h.png", image, probs, window=(8, 8), stride=(16, 16), class_names=NAMES,
                       classes=[3])


def test_write_png_is_atomic_on_failure(tmp_path) -> None:
    class Broken:
        def savefig(self, f, **kw):
            f.write(b"half")
            raise RuntimeError("disk full")

    (tmp_path / "x.png").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        write_png(Broken(), tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_write_png_goes_through_the_fsyncing_atomic_writer(tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    out = write_png(Figure(figsize=(1, 1)), tmp_path / "new" / "f.png")
    assert out == tmp_path / "new" / "f.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(synced) >= 2  # the file before its rename, the folder after it (docs/robustness.md)
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]


def test_as_rgb_follows_the_one_pixel_rule() -> None:
    sixteen = np.array([[0, 257, 65535]], np.uint16)
    np.testing.assert_array_equal(as_rgb(sixteen)[0, :, 0], [0, 1, 255])  # scaled by 1/257, not clipped to white
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(as_rgb(rgba), np.zeros((1, 2, 3), np.uint8))  # alpha dropped
    np.testing.assert_array_equal(as_rgb(np.array([[0.0, 0.5, 1.0]])), [[[0] * 3, [128] * 3, [255] * 3]])
    np.testing.assert_array_equal(as_rgb(np.array([[0.0, 300.0]], np.float32))[0, :, 1], [0, 255])
    with pytest.raises(InputError, match=r"expected an \(H, W\) or \(H, W, C\) array, got shape \(4,\)"):
        as_rgb(np.zeros(4))


def test_class_scores_take_16_bit_and_rgba_images_by_the_pixel_rule() -> None:
    from fcnkit.reporting.pictures import class_scores

    torch.manual_seed(0)
    classifier = fcnkit.build_model("digit_classifier", num_classes=11, width=0.25).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 44, 3)).astype(np.uint8)
    reference, window, stride = class_scores(classifier, rgb)
    rgba16 = np.dstack([rgb.astype(np.uint16) * 257, np.full((40, 44, 1), 65535, np.uint16)])
    logits, window16, stride16 = class_scores(classifier, rgba16)
    torch.testing.assert_close(logits, reference)
    assert (window16, stride16) == (window, stride)
