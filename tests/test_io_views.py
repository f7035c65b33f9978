"""ChannelsLastView on its own: axis orders, singleton axes, indexing like numpy, pickling by reopening, closing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
import zarr
from ome_check import check_ome_zarr

from fcnkit.errors import InputError
from fcnkit.io import open_image
from fcnkit.io.views import ChannelsLastView, axes_to_yxc


@pytest.mark.parametrize("axes, shape, expected", [
    ("yx", (4, 5), (0, 1, None)),
    ("cyx", (3, 4, 5), (1, 2, 0)),
    ("yxs", (4, 5, 3), (0, 1, 2)),
    ("tczyx", (1, 2, 1, 4, 5), (3, 4, 1)),
    ("IYX", (3, 4, 5), (1, 2, 0)),  # a page stack of 3 is taken as the channels
])
def test_axes_to_yxc(axes, shape, expected):
    assert axes_to_yxc(axes, shape, "img") == expected


@pytest.mark.parametrize("axes, shape", [("zyx", (3, 4, 5)), ("tcyx", (2, 3, 4, 5)), ("cx", (3, 5))])
def test_axes_that_are_not_one_plane_are_refused(axes, shape):
    with pytest.raises(InputError, match=r"img has axes \(.*\); expected a 2-D image with an optional channel axis "
                                         r".*select one plane and save it as its own image"):
        axes_to_yxc(axes, shape, "img")


def test_view_reorders_axes_and_indexes_like_numpy():
    cyx = np.arange(2 * 6 * 7).reshape(2, 6, 7)
    hwc = cyx.transpose(1, 2, 0)
    view = ChannelsLastView(cyx, "cyx", "mem")
    assert view.shape == (6, 7, 2) and view.ndim == 3 and view.dtype == cyx.dtype and len(view) == 6
    np.testing.assert_array_equal(view[1:4, 2:6], hwc[1:4, 2:6])
    np.testing.assert_array_equal(view[3, 2:5], hwc[3, 2:5])
    np.testing.assert_array_equal(view[1:3, 4, 1], hwc[1:3, 4, 1])
    np.testing.assert_array_equal(np.asarray(view), hwc)
    grey = ChannelsLastView(np.ones((1, 4, 5)), "zyx", "mem")  # z of size 1 dropped, one channel added
    assert grey.shape == (4, 5, 1) and grey[0:2, 0:2].shape == (2, 2, 1) and grey[0:2, 0:2, 0].shape == (2, 2)
    with pytest.raises(IndexError, match=r"index the image as img\[y0:y1, x0:x1\]"):
        view[..., 0]
    with pytest.raises(TypeError, match="was not opened from a file, so it cannot be pickled"):
        pickle.dumps(view)


def test_a_file_view_pickles_as_its_opener_and_closes(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (3, 20, 16)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image, photometric="rgb", planarconfig="separate")
    zarr.create_array(str(tmp_path / "b.zarr"), data=image.transpose(1, 2, 0))
    for name in ("a.tif", "b.zarr"):
        view = open_image(tmp_path / name)
        data = pickle.dumps(view)
        assert len(data) < 2000  # the path, not the pixels or an open handle
        again = pickle.loads(data)
        assert isinstance(again, ChannelsLastView) and again.shape == (20, 16, 3)
        np.testing.assert_array_equal(again[5:9, 2:4], image.transpose(1, 2, 0)[5:9, 2:4])
        with again:
            pass
        view.close()
        view.close()  # closing twice is harmless


def test_an_ome_zarr_view_pickles_as_its_opener(tmp_path):
    from fcnkit.io import create_output

    image = np.arange(20 * 16 * 3).reshape(20, 16, 3).astype(np.uint8)
    with create_output(tmp_path / "x.ome.zarr", image.shape, np.uint8, kind="image") as out:
        out[0:20, 0:16] = image
    check_ome_zarr(tmp_path / "x.ome.zarr")
    again = pickle.loads(pickle.dumps(open_image(tmp_path / "x.ome.zarr")))
    assert again.source.endswith("x.ome.zarr/0")
    np.testing.assert_array_equal(again[:, :], image)
