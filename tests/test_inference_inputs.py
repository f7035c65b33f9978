"""Images at the API's door (#15.6): tensors refused with the fix, the one pixel rule applied lazily, a warning for
values that contradict a 0-255 model, and channel hints that fit the image."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.errors import InputError
from fcnkit.inference.inputs import PixelRangeWarning, check_channels, model_input, takes_0_255
from fcnkit.inference.tiled import TileOverheadWarning, predict, predict_tiled
from fcnkit.io.pixels import ConvertedImage
from tiling_models import RecordingArray


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    return fcnkit.build_model("unet", num_classes=3, width=0.125).eval()


def _foreign() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


def test_a_tensor_is_refused_with_how_to_pass_it(unet):
    for call in (lambda x: predict(unet, x), lambda x: predict_tiled(unet, x, tile=16)):
        with pytest.raises(InputError, match=r"image is a torch.Tensor of shape \(3, 16, 16\); expected a "
                                             r"channels-last .* pass x.permute\(1, 2, 0\).cpu\(\).numpy\(\)"):
            call(torch.zeros(3, 16, 16))


def test_fcnkit_models_take_0_255_and_foreign_models_their_own_values(unet):
    assert takes_0_255(unet) and not takes_0_255(_foreign())


def test_grey_rgba_and_16_bit_are_converted_as_the_cli_converts(unet):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 20, 3)).astype(np.uint8)
    reference = predict(unet, rgb, output="logits")
    rgba = np.dstack([rgb, np.full((24, 20, 1), 7, np.uint8)])
    np.testing.assert_array_equal(predict(unet, rgba, output="logits"), reference)
    sixteen = rgb.astype(np.uint16) * 257  # the same picture in 16 bits
    np.testing.assert_array_equal(predict(unet, sixteen, output="logits"), reference)
    np.testing.assert_array_equal(predict_tiled(unet, sixteen, tile=16, output="labels"),
                                  predict(unet, rgb, output="labels"))
    grey = rgb[:, :, :1]
    np.testing.assert_array_equal(predict(unet, grey), predict(unet, np.repeat(grey, 3, axis=2)))
    np.testing.assert_array_equal(predict(unet, grey[:, :, 0]), predict(unet, np.repeat(grey, 3, axis=2)))


def test_a_foreign_model_gets_16_bit_values_as_given():
    model = _foreign()
    sixteen = np.random.default_rng(1).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    assert model_input(model, sixteen).dtype == np.uint16
    np.testing.assert_allclose(predict(model, sixteen), predict(model, sixteen.astype(np.float32)), rtol=1e-6)


def test_conversion_is_lazy_per_window(unet):
    source = RecordingArray(np.zeros((40, 40, 1), np.uint16))
    image = model_input(unet, source, check_range=False)
    assert isinstance(image, ConvertedImage) and image.shape == (40, 40, 3) and image.dtype == np.uint8
    assert source.reads == []
    assert image[0:8, 8:16].shape == (8, 8, 3) and source.reads == [(slice(0, 8), slice(8, 16))]
    assert model_input(unet, image) is image  # converted once, checked once


def test_floats_in_0_1_warn_once_and_0_255_floats_do_not(unet):
    image = np.random.default_rng(2).random((20, 20, 3)).astype(np.float32)
    with pytest.warns(PixelRangeWarning, match=r"image values lie in \[0, 1\] .* this fcnkit model takes 0-255 "
                                               r"pixel values.*pass image \* 255"):
        predict(unet, image)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        predict_tiled(unet, image, tile=16)
    seen = [w for w in seen if w.category is not TileOverheadWarning]  # tile 16 is small next to U-Net's halo
    assert [w.category for w in seen] == [PixelRangeWarning]  # one warning per call, not one per tile
    assert seen[0].filename == __file__  # it points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(unet, image * 255)
        predict(unet, np.zeros((20, 20, 3), np.float32))  # an all-black image says nothing about the range
        predict(_foreign(), image)  # a foreign model's convention is its own


def test_already_normalised_input_warns(unet):
    image = np.random.default_rng(3).standard_normal((16, 16, 3)).astype(np.float32)
    with pytest.warns(PixelRangeWarning, match="looks already normalised.*pass the raw image"):
        predict(unet, image)


def test_range_check_reads_only_small_windows(unet):
    source = RecordingArray(np.full((1000, 900, 3), 0.5, np.float32))
    with pytest.warns(PixelRangeWarning):
        model_input(unet, source)
    assert source.reads == [(slice(0, 128), slice(0, 128)), (slice(436, 564), slice(386, 514))]


@pytest.mark.parametrize("channels, expected, hint", [
    (4, 1, r"the last channel looks like alpha: drop it \(image\[\.\.\., :3\]\) and convert the rest to 1 "
           r"channel\(s\)"),
    (2, 4, r"the last channel looks like alpha: drop it \(image\[\.\.\., :1\]\) and convert the rest to 4 "
           r"channel\(s\)"),
    (1, 4, r"repeat the grey channel \(np.repeat\(image, 4, axis=2\)\)"),
    (5, 3, r"select 3 of its channels \(e.g. image\[\.\.\., :3\]\)"),
])
def test_channel_hints_fit_the_image(channels, expected, hint):
    model = nn.Conv2d(expected, 2, 1)
    with pytest.raises(InputError, match=rf"image has {channels} channel\(s\) but the model expects {expected}; "
                                         rf"{hint}, or use a model built with in_channels={channels}\."):
        check_channels(model, channels)


def test_rgba_is_not_called_grey(unet):
    with pytest.raises(InputError) as info:
        predict(nn.Conv2d(1, 2, 1), np.zeros((4, 4, 4), np.uint8))
    assert "alpha" in str(info.value) and "grey" not in str(info.value)


def test_a_stack_of_pages_is_not_read_as_grey_and_alpha(tmp_path):
    import tifffile

    from fcnkit.io import open_image
    from fcnkit.models import build_model

    model = build_model("encoder_decoder", num_classes=2, width=0.125).eval()
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((2, 20, 30), np.uint8))  # tifffile: axes QYX, two pages
    with pytest.raises(InputError, match=r"two\.tif: expected one 2-D image, found a stack of 2 pages \(axis Q=2\), "
                                         r"which would be read as the channels of one image \(alpha dropped and grey "
                                         r"repeated to RGB, page 2 lost\); save the page to predict as its own image"):
        model_input(model, open_image(tmp_path / "two.tif"))
    tifffile.imwrite(tmp_path / "three.tif", np.zeros((3, 20, 30), np.uint8), photometric="minisblack")
    assert model_input(model, open_image(tmp_path / "three.tif")).shape == (20, 30, 3)  # three pages: the channels
