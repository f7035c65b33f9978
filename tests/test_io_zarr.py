"""zarr v3 arrays read as lazy (H, W, C) images."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from fcnkit.errors import InputError
from fcnkit.io import open_image, read_image


def _image(h: int = 50, w: int = 70, c: int = 3) -> np.ndarray:
    return (np.arange(h * w * c) % 253).astype(np.uint8).reshape(h, w, c)


def test_zarr_array_channels_last(tmp_path):
    image = _image()
    zarr.create_array(str(tmp_path / "a.zarr"), data=image, chunks=(16, 16, 3))
    img = open_image(tmp_path / "a.zarr")
    assert img.shape == (50, 70, 3) and img.dtype == np.uint8 and img.ndim == 3
    np.testing.assert_array_equal(img[7:41, 13:69], image[7:41, 13:69])
    np.testing.assert_array_equal(read_image(tmp_path / "a.zarr"), image)


def test_zarr_2d_becomes_hw1_and_label_read(tmp_path):
    labels = (np.arange(30 * 20) % 9).astype(np.int32).reshape(30, 20)
    zarr.create_array(str(tmp_path / "l.zarr"), data=labels, chunks=(8, 8))
    img = open_image(tmp_path / "l.zarr")
    assert img.shape == (30, 20, 1)
    np.testing.assert_array_equal(img[:, :, 0], labels)
    out = read_image(tmp_path / "l.zarr", mode="label")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)


def test_dimension_names_channels_first(tmp_path):
    image = _image(20, 30, 4)
    zarr.create_array(str(tmp_path / "c.zarr"), data=np.moveaxis(image, 2, 0).copy(), chunks=(4, 8, 8),
                      dimension_names=("c", "y", "x"))
    img = open_image(tmp_path / "c.zarr")
    assert img.shape == (20, 30, 4)
    np.testing.assert_array_equal(img[2:19, 3:4], image[2:19, 3:4])


def test_group_with_one_array(tmp_path):
    image = _image(10, 12)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("pixels", data=image, chunks=(5, 5, 3))
    np.testing.assert_array_equal(open_image(tmp_path / "g.zarr")[:, :], image)
    group.create_array("other", data=image, chunks=(5, 5, 3))
    message = r"g\.zarr holds 2 arrays \(other, pixels\), expected exactly one.*g\.zarr/other"
    with pytest.raises(InputError, match=message):
        open_image(tmp_path / "g.zarr")
    np.testing.assert_array_equal(open_image(tmp_path / "g.zarr" / "pixels")[:, :], image)


def test_bad_zarr_inputs(tmp_path):
    with pytest.raises(InputError, match=r"missing\.zarr does not exist"):
        open_image(tmp_path / "missing.zarr")
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(InputError, match=r"plain\.zarr is not a zarr store \(no zarr\.json"):
        open_image(tmp_path / "plain.zarr")
    zarr.create_array(str(tmp_path / "v.zarr"), shape=(2, 3, 8, 8), dtype="uint8", chunks=(1, 1, 8, 8))
    with pytest.raises(InputError, match=r"v\.zarr has shape \(2, 3, 8, 8\) and no dimension_names"):
        open_image(tmp_path / "v.zarr")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match=r"broken\.zarr cannot be opened"):
        open_image(tmp_path / "broken.zarr")
