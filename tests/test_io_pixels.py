"""The one pixel rule: channel conversions, 16-bit scaling, lazy per-window conversion, pictures and datasets agree."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnkit.errors import InputError
from fcnkit.io import open_image, read_image
from fcnkit.io.pixels import (ConvertedImage, PixelConversion, conversion_for, converted,
                              display_rgb, to_8_bit)
from tiling_models import RecordingArray


@pytest.mark.parametrize("have, want, channels, note", [
    (1, 3, 3, "grey repeated to RGB"),
    (2, 3, 3, "alpha dropped and grey repeated to RGB"),
    (4, 3, 3, "alpha dropped"),
    (2, 1, 1, "alpha dropped"),
    (3, 3, 3, None),
    (5, 3, 5, None),  # not a conversion that loses nothing: left for the model's check to refuse
    (3, None, 3, None),
])
def test_channel_conversions(have, want, channels, note):
    conversion = conversion_for(channels=have, dtype=np.uint8, wanted=want)
    assert conversion.channels_out == channels
    assert conversion.notes() == ([note] if note else [])
    window = np.arange(4 * 5 * have, dtype=np.uint8).reshape(4, 5, have)
    result = conversion.apply(window)
    assert result.shape == (4, 5, channels)
    if have in (2, 4) and channels < have:
        np.testing.assert_array_equal(result[..., 0], window[..., 0])  # the colour kept, the last channel gone
    if have == 1 or (have == 2 and channels == 3):
        assert (result == result[..., :1]).all()


def test_16_bit_is_scaled_only_for_0_255_models():
    values = np.array([[0, 128, 257, 65535]], np.uint16)
    np.testing.assert_array_equal(to_8_bit(values), [[0, 0, 1, 255]])
    assert to_8_bit(values).dtype == np.uint8
    assert to_8_bit(values.astype(">u2")).tolist() == [[0, 0, 1, 255]]  # big-endian files too
    np.testing.assert_array_equal(to_8_bit(np.array([True, False])), [255, 0])
    scaled = conversion_for(channels=1, dtype=np.uint16, wanted=1)
    assert scaled.scale and scaled.notes() == ["16-bit values scaled to 8 bits (/257)"]
    assert scaled.dtype(np.uint16) == np.uint8
    kept = conversion_for(channels=1, dtype=np.uint16, wanted=1, scale_16_bit=False)
    assert kept.identity and kept.apply(values[:, :, None]).dtype == np.uint16
    floats = conversion_for(channels=3, dtype=np.float32, wanted=3)
    assert floats.identity  # floats are never rescaled by the rule


def test_converted_image_reads_only_the_window_and_converts_like_read_image(tmp_path):
    grey16 = np.random.default_rng(2).integers(0, 65536, (30, 40)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    expected = read_image(tmp_path / "g16.png", mode="rgb")  # grey repeated, 16-bit / 257
    source = RecordingArray(open_image(tmp_path / "g16.png"))
    view = ConvertedImage(source, conversion_for(channels=1, dtype=np.uint16, wanted=3))
    assert (view.shape, view.dtype, source.reads) == ((30, 40, 3), np.uint8, [])
    np.testing.assert_array_equal(view[8:16, 4:12], expected[8:16, 4:12])
    assert source.reads == [(slice(8, 16), slice(4, 12))]
    np.testing.assert_array_equal(view[3, 5:7, 1], expected[3, 5:7, 1])  # integers drop their axis, as in numpy
    np.testing.assert_array_equal(view[-1, -1], expected[-1, -1])
    np.testing.assert_array_equal(np.asarray(view), expected)
    with pytest.raises(IndexError, match="index the image as img"):
        view[..., 0]


def test_converted_passes_the_image_through_when_nothing_changes():
    image = np.zeros((4, 4, 3), np.uint8)
    assert converted(image, PixelConversion(3, 3)) is image
    wrapped = converted(image, PixelConversion(3, 3), range_checked=True)
    assert isinstance(wrapped, ConvertedImage) and wrapped.range_checked and wrapped[0:2, 0:2].shape == (2, 2, 3)


def test_display_rgb_is_the_model_rule_plus_float_scaling():
    sixteen = np.full((2, 2), 65535, np.uint16)
    np.testing.assert_array_equal(display_rgb(sixteen), np.full((2, 2, 3), 255, np.uint8))
    assert display_rgb(np.full((2, 2), 1000, np.uint16)).max() == 4  # 1000 / 257: dark, not clipped to white
    np.testing.assert_array_equal(display_rgb(np.array([[[10, 20, 30, 0]]], np.uint8)), [[[10, 20, 30]]])
    np.testing.assert_array_equal(display_rgb(np.array([[[7, 200]]], np.uint8)), [[[7, 7, 7]]])  # grey + alpha
    np.testing.assert_array_equal(display_rgb(np.array([[[1, 2, 3, 4, 5]]], np.uint8)), [[[1, 2, 3]]])
    np.testing.assert_array_equal(display_rgb(np.array([[0.5]], np.float32)), [[[128, 128, 128]]])
    np.testing.assert_array_equal(display_rgb(np.array([[2.0, -3.0, np.nan]])), [[[2] * 3, [0] * 3, [0] * 3]])
    with pytest.raises(InputError, match=r"image: expected an \(H, W\) or \(H, W, C\) array, got shape \(2, 2, 0\)"):
        display_rgb(np.zeros((2, 2, 0)))


def test_datasets_pictures_and_models_share_the_conversion(tmp_path):
    import tifffile

    rgba16 = np.random.default_rng(0).integers(0, 65536, (6, 7, 4)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgba16.tif", rgba16, photometric="rgb", extrasamples=["unassalpha"])
    for_model = conversion_for(channels=4, dtype=np.uint16, wanted=3).apply(rgba16)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba16.tif", mode="rgb"), for_model)
    np.testing.assert_array_equal(display_rgb(rgba16), for_model)
    np.testing.assert_array_equal(for_model, np.round(rgba16[..., :3] / 257.0).astype(np.uint8))
