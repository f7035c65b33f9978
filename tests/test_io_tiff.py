"""Lazy TIFF/BigTIFF reading (tiled, striped, pyramidal, planar) and tiled BigTIFF writing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from fcnkit.errors import InputError
from fcnkit.io import open_image, read_image, write_tiff
from fcnkit.io.views import ChannelsLastView


def _rgb(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 251, x % 241, (x + y) % 239], axis=2).astype(np.uint8)


def test_tiled_tiff_windows(tmp_path):
    image = _rgb(300, 260)
    tifffile.imwrite(tmp_path / "t.tif", image, tile=(64, 64), photometric="rgb")
    with open_image(tmp_path / "t.tif") as img:
        assert isinstance(img, ChannelsLastView)
        assert img.shape == (300, 260, 3) and img.dtype == np.uint8 and img.ndim == 3
        np.testing.assert_array_equal(img[70:133, 5:250], image[70:133, 5:250])
        np.testing.assert_array_equal(img[299, 259], image[299, 259])
        np.testing.assert_array_equal(img[:, :, 1], image[:, :, 1])
        np.testing.assert_array_equal(np.asarray(img), image)


def test_striped_grey_tiff_becomes_hw1(tmp_path):
    grey = _rgb(120, 90)[:, :, 0]
    tifffile.imwrite(tmp_path / "s.tiff", grey, rowsperstrip=16)
    img = open_image(tmp_path / "s.tiff")
    assert img.shape == (120, 90, 1)
    np.testing.assert_array_equal(img[30:61, 10:20], grey[30:61, 10:20, None])
    np.testing.assert_array_equal(img[30:61, 10:20, 0], grey[30:61, 10:20])
    img.close()


def test_pyramidal_tiff_reads_level0(tmp_path):
    image = _rgb(256, 192)
    with tifffile.TiffWriter(tmp_path / "p.tif", bigtiff=True) as writer:
        writer.write(image, tile=(64, 64), photometric="rgb", subifds=2)
        writer.write(image[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
        writer.write(image[::4, ::4], tile=(64, 64), photometric="rgb", subfiletype=1)
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert len(tif.series[0].levels) == 3
    img = open_image(tmp_path / "p.tif")
    assert img.shape == (256, 192, 3)
    np.testing.assert_array_equal(img[100:200, 50:150], image[100:200, 50:150])


def test_planar_channels_first_tiff(tmp_path):
    planes = np.stack([_rgb(40, 30)[:, :, 0], _rgb(40, 30)[:, :, 1]]).astype(np.uint16)  # (2, H, W)
    tifffile.imwrite(tmp_path / "c.tif", planes, metadata={"axes": "CYX"}, tile=(16, 16))
    img = open_image(tmp_path / "c.tif")
    assert img.shape == (40, 30, 2) and img.dtype == np.uint16
    np.testing.assert_array_equal(img[3:17, 4:29], np.moveaxis(planes, 0, 2)[3:17, 4:29])


def test_window_of_4096_bigtiff(tmp_path):
    side, tile = 4096, 256

    def tiles():
        for ty in range(0, side, tile):
            for tx in range(0, side, tile):
                y, x = np.mgrid[ty : ty + tile, tx : tx + tile]
                yield ((y * 7 + x * 3) % 256).astype(np.uint8)

    tifffile.imwrite(tmp_path / "big.tif", tiles(), shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     bigtiff=True)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
    with open_image(tmp_path / "big.tif") as img:
        assert img.shape == (side, side, 1)
        window = img[3000:3300, 1000:1517]
    y, x = np.mgrid[3000:3300, 1000:1517]
    np.testing.assert_array_equal(window[:, :, 0], ((y * 7 + x * 3) % 256).astype(np.uint8))


def test_write_tiff_is_tiled_bigtiff_with_edge_tiles(tmp_path):
    image = _rgb(70, 50)
    write_tiff(tmp_path / "w.tif", image, tile=(32, 32), metadata={"model": "unet"})
    with tifffile.TiffFile(tmp_path / "w.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (32, 32)
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert tif.shaped_metadata[0]["model"] == "unet"
    np.testing.assert_array_equal(open_image(tmp_path / "w.tif")[:, :], image)
    np.testing.assert_array_equal(read_image(tmp_path / "w.tif"), image)


def test_palette_label_tiff(tmp_path):
    labels = (np.arange(48 * 40) % 5).astype(np.uint8).reshape(48, 40)
    write_tiff(tmp_path / "l.tif", labels, tile=(16, 16), palette=[[0, 0, 0], [255, 0, 0]])
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        assert tif.pages[0].colormap[0, 1] == 255 * 257
    np.testing.assert_array_equal(read_image(tmp_path / "l.tif", mode="label"), labels)


def test_view_pickles_as_its_path(tmp_path):
    image = _rgb(40, 40)
    tifffile.imwrite(tmp_path / "t.tif", image, tile=(16, 16), photometric="rgb")
    clone = pickle.loads(pickle.dumps(open_image(tmp_path / "t.tif")))
    np.testing.assert_array_equal(clone[10:20, 0:5], image[10:20, 0:5])


def test_bad_tiffs(tmp_path):
    (tmp_path / "text.tif").write_text("hello, not a tiff")
    with pytest.raises(InputError, match=r"text\.tif is not a readable TIFF file"):
        open_image(tmp_path / "text.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tif is empty \(0 bytes\)"):
        open_image(tmp_path / "empty.tif")
    with pytest.raises(InputError, match=r"missing\.tiff does not exist"):
        open_image(tmp_path / "missing.tiff")
    tifffile.imwrite(tmp_path / "full.tif", _rgb(128, 128), tile=(32, 32), photometric="rgb")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"cut\.tif is truncated: its tiles reach byte .*copy or download"):
        open_image(tmp_path / "cut.tif")


def test_volume_is_refused_with_its_axes(tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((3, 2, 16, 16), np.uint8), metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match=r"v\.tif has axes \(Z=3, C=2, Y=16, X=16\); expected a 2-D image"):
        open_image(tmp_path / "v.tif")


def test_big_endian_16bit_tiff_scaled(tmp_path):
    values = np.array([[0, 257 * 3], [65535, 257 * 200]], np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", values, byteorder=">")
    np.testing.assert_array_equal(read_image(tmp_path / "be.tif")[:, :, 0], [[0, 3], [255, 200]])
    with pytest.raises(InputError, match=r"be\.tif holds values from 0 to 65535, expected class indices 0-255"):
        read_image(tmp_path / "be.tif", mode="label")
