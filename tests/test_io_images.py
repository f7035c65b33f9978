"""PNG/JPEG reading, read_image modes, bad inputs and atomic write_png."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnkit.errors import InputError, OutputError
from fcnkit.io import open_image, read_image, write_png


def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_png_round_trip_rgb_grey_rgba(tmp_path):
    rgb = _rgb()
    write_png(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(open_image(tmp_path / "rgb.png"), rgb)
    grey = rgb[:, :, 0]
    write_png(tmp_path / "grey.png", grey)
    opened = open_image(tmp_path / "grey.png")
    assert opened.shape == (20, 30, 1) and opened.ndim == 3
    np.testing.assert_array_equal(opened[:, :, 0], grey)
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    write_png(tmp_path / "rgba.png", rgba)
    assert open_image(tmp_path / "rgba.png").shape == (20, 30, 4)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped


def test_window_of_numpy_image(tmp_path):
    rgb = _rgb(40, 50)
    write_png(tmp_path / "a.png", rgb)
    img = open_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img[5:17, 20:33], rgb[5:17, 20:33])


def test_jpeg_shape_and_rgb(tmp_path):
    Image.fromarray(_rgb(24, 36)).save(tmp_path / "a.jpg", quality=95)
    assert open_image(tmp_path / "a.jpg").shape == (24, 36, 3)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (24, 36, 3) and out.dtype == np.uint8
    Image.fromarray(_rgb(8, 9)[:, :, 0]).save(tmp_path / "g.jpeg")
    assert read_image(tmp_path / "g.jpeg").shape == (8, 9, 3)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_so_pixels_come_upright(tmp_path, suffix):
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0] = 255  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display" (a phone held upright)
    quality = {"quality": 100} if suffix == ".jpg" else {}
    Image.fromarray(stored).save(tmp_path / f"phone{suffix}", exif=exif, **quality)
    upright = open_image(tmp_path / f"phone{suffix}")
    assert upright.shape == (6, 4, 3)  # as a viewer shows it
    assert upright[0, -1].min() > 200 and upright[0, 0].max() < 60  # the stored top-left is now top-right
    assert read_image(tmp_path / f"phone{suffix}").shape == (6, 4, 3)
    Image.fromarray(stored).save(tmp_path / f"plain{suffix}")  # no orientation: as stored
    assert open_image(tmp_path / f"plain{suffix}").shape == (4, 6, 3)


def test_read_image_rgb_palette_resolved_and_grey_expanded(tmp_path):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    palette = [[10, 20, 30], [200, 0, 0], [0, 0, 255]]
    write_png(tmp_path / "p.png", indices, palette=palette)
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.array(palette, np.uint8)[indices])
    write_png(tmp_path / "g.png", indices * 100)
    out = read_image(tmp_path / "g.png")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[:, :, 2], indices * 100)


def test_read_image_16bit_scaled(tmp_path):
    values = np.array([[0, 257 * 10], [65535, 257 * 128]], np.uint16)
    write_png(tmp_path / "d.png", values)
    out = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[:, :, 0], [[0, 10], [255, 128]])
    assert open_image(tmp_path / "d.png").dtype == np.uint16


def test_read_image_label_modes(tmp_path):
    labels = np.array([[0, 5], [255, 20]], np.uint8)
    write_png(tmp_path / "pal.png", labels, palette=[[0, 0, 0], [128, 0, 0]])
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png", mode="label"), labels)  # indices as they are
    write_png(tmp_path / "grey.png", labels)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", mode="label"), labels)
    write_png(tmp_path / "l16.png", labels.astype(np.uint16))
    out = read_image(tmp_path / "l16.png", mode="label")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    write_png(tmp_path / "greyrgb.png", np.repeat(labels[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(read_image(tmp_path / "greyrgb.png", mode="label"), labels)


def test_label_refusals(tmp_path):
    write_png(tmp_path / "rgb.png", _rgb(4, 4))
    with pytest.raises(InputError, match=r"rgb\.png is a colour \(RGB\) image, expected class indices"):
        read_image(tmp_path / "rgb.png", mode="label")
    write_png(tmp_path / "big.png", np.array([[0, 1000]], np.uint16))
    with pytest.raises(InputError, match=r"big\.png holds values from 0 to 1000.*renumber"):
        read_image(tmp_path / "big.png", mode="label")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.jpg")
    with pytest.raises(InputError, match=r"m\.jpg is a JPEG; JPEG is lossy.*save masks as PNG"):
        read_image(tmp_path / "m.jpg", mode="label")
    with pytest.raises(InputError, match="mode must be 'rgb' or 'label', got 'bgr'"):
        read_image(tmp_path / "rgb.png", mode="bgr")


def test_missing_empty_truncated_and_not_images(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png does not exist; check the path"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    write_png(tmp_path / "full.png", _rgb(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png is truncated or corrupted"):
        open_image(tmp_path / "cut.png")
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(InputError, match=r"notes\.png is not an image Pillow can read"):
        read_image(tmp_path / "notes.png")
    (tmp_path / "a.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match=r"a\.bmp has an unsupported suffix '\.bmp'; fcnkit reads \.png"):
        open_image(tmp_path / "a.bmp")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match=r"dir\.png is a folder, expected an image file"):
        open_image(tmp_path / "dir.png")


def test_decompression_bomb_limit_is_stated(tmp_path, monkeypatch):
    write_png(tmp_path / "big.png", np.zeros((50, 40), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match=r"big\.png has more pixels than Pillow's decompression-bomb limit of 1,000"):
        read_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 2,000 pixels: Pillow only warns below 2x; we refuse
    with pytest.raises(InputError, match="limit of 1,500"):
        open_image(tmp_path / "big.png")


def test_write_png_refuses_unwritable_arrays(tmp_path):
    with pytest.raises(OutputError, match=r"PNG holds .* got shape \(4, 4, 5\) float32; write float"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 5), np.float32))
    with pytest.raises(OutputError, match="with a palette: expected .* uint8 labels"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), palette=[[0, 0, 0]])
    assert not list(tmp_path.iterdir())


def test_write_png_failure_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    write_png(target, np.full((4, 4), 9, np.uint8))
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(target, np.zeros((4, 4), np.uint8))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]  # the temp file was removed


def test_write_png_metadata_text_chunk(tmp_path):
    write_png(tmp_path / "m.png", np.zeros((2, 2), np.uint8), metadata={"model": "unet"})
    assert Image.open(tmp_path / "m.png").text["fcnkit"] == '{"model": "unet"}'
