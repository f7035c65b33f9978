"""Heat maps: grid placement at window centres, colour overlays, the PNG, and the heat where a pattern is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnkit.convert import convolutionalize
from fcnkit.errors import InputError
from fcnkit.viz import COLORBAR_PX, heatmap, overlay, upsample_grid


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
