"""OME-Zarr: reading images (NGFF 0.4 and 0.5) and writing label / probability pyramids with NGFF metadata."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import zarr
from ome_check import check_ome_zarr

from fcnkit.errors import InputError
from fcnkit.io import create_output, open_image
from fcnkit.io.ome_zarr import level_shapes


def _axes(names: str) -> list[dict]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{"name": n, "type": kinds[n]} for n in names]


def _write_ome(path, data: np.ndarray, axes: str, *, version: str) -> None:
    zarr_format = 3 if version == "0.5" else 2
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("s0", data=data, chunks=tuple(min(n, 16) for n in data.shape))
    multiscale = {"axes": _axes(axes), "datasets": [{"path": "s0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * data.ndim}]}]}
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]


def test_read_ome_zarr_05_tczyx_with_singletons(tmp_path):
    image = (np.arange(2 * 40 * 30) % 250).astype(np.uint16).reshape(2, 40, 30)
    _write_ome(tmp_path / "i.ome.zarr", image[None, :, None], "tczyx", version="0.5")
    img = open_image(tmp_path / "i.ome.zarr")
    assert img.shape == (40, 30, 2) and img.dtype == np.uint16
    np.testing.assert_array_equal(img[5:33, 1:29], np.moveaxis(image, 0, 2)[5:33, 1:29])


def test_read_ome_zarr_04_cyx(tmp_path):
    image = (np.arange(3 * 20 * 25) % 250).astype(np.uint8).reshape(3, 20, 25)
    _write_ome(tmp_path / "i.zarr", image, "cyx", version="0.4")
    img = open_image(tmp_path / "i.zarr")
    assert img.shape == (20, 25, 3)
    np.testing.assert_array_equal(img[:, :], np.moveaxis(image, 0, 2))


def test_read_ome_zarr_refuses_a_real_z_stack(tmp_path):
    _write_ome(tmp_path / "z.ome.zarr", np.zeros((4, 8, 8), np.uint8), "zyx", version="0.5")
    with pytest.raises(InputError, match=r"z\.ome\.zarr/s0 has axes \(z=4, y=8, x=8\); expected a 2-D image"):
        open_image(tmp_path / "z.ome.zarr")


def test_level_shapes_stop_under_256_or_one_chunk():
    assert level_shapes((1100, 1030), (256, 256)) == [(1100, 1030), (550, 515), (275, 258), (138, 129)]
    assert level_shapes((1000, 1000), (512, 512)) == [(1000, 1000), (500, 500)]
    assert level_shapes((300, 3000), (512, 512)) == [(300, 3000), (150, 1500)]
    assert level_shapes((200, 200), (64, 64)) == [(200, 200)]


def test_label_output_pyramid_and_metadata(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(1100, 1030), dtype=np.uint8)
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    target = tmp_path / "pred.ome.zarr"
    with create_output(target, labels.shape, np.uint8, chunks=256, palette=palette,
                       metadata={"model": "unet"}) as out:
        for y in range(0, 1100, 300):  # row bands that do not align with the 256-row chunks
            out[y : y + 300, :] = labels[y : y + 300]
    meta = json.loads((target / "zarr.json").read_text())
    assert meta["node_type"] == "group" and meta["zarr_format"] == 3
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert multiscale["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2", "3"]
    assert multiscale["datasets"][2]["coordinateTransformations"] == [{"type": "scale", "scale": [4.0, 4.0]}]
    assert ome["image-label"]["colors"][1] == {"label-value": 1, "rgba": [255, 0, 0, 255]}
    assert ome["image-label"]["colors"][0] == {"label-value": 0, "rgba": [0, 0, 0, 0]}  # background transparent
    assert meta["attributes"]["fcnkit"] == {"model": "unet", "palette": palette}
    assert check_ome_zarr(target) == ome
    group = zarr.open_group(str(target), mode="r")
    for level in range(4):
        array = group[str(level)]
        assert array.metadata.dimension_names == ("y", "x")
        np.testing.assert_array_equal(array[:], labels[:: 2**level, :: 2**level])  # nearest neighbour
    assert not (tmp_path / "pred.ome.zarr.partial").exists() and not (tmp_path / "pred.ome.zarr.journal").exists()
    np.testing.assert_array_equal(open_image(target)[:, :, 0], labels)


def test_probability_output_is_stored_cyx(tmp_path):
    probs = np.random.default_rng(2).random((300, 280, 3), dtype=np.float32)
    target = tmp_path / "p.ome.zarr"
    with create_output(target, probs.shape, np.float32, kind="image", chunks=128) as out:
        out[0:300, 0:100] = probs[:, :100]
        out[0:300, 100:280] = probs[:, 100:]
    ome = zarr.open_group(str(target), mode="r").attrs["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    assert "image-label" not in ome
    assert ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["channel 0", "channel 1", "channel 2"]
    check_ome_zarr(target)
    level1 = zarr.open_array(str(target / "1"), mode="r")
    np.testing.assert_array_equal(level1[:], np.moveaxis(probs[::2, ::2], 2, 0))
    np.testing.assert_array_equal(open_image(target)[10:200, 5:6], probs[10:200, 5:6])


def test_class_names_reach_viewers(tmp_path):
    """Label images name their classes in image-label properties (napari shows them); probability channels are
    named after the classes in omero, windowed to the values they hold."""
    names, palette = ["background", "cell", "nucleus"], [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    labels = np.random.default_rng(3).integers(0, 3, size=(40, 50), dtype=np.uint8)
    with create_output(tmp_path / "l.ome.zarr", labels.shape, np.uint8, palette=palette,
                       metadata={"class_names": names}) as out:
        out[0:40, 0:50] = labels
    label = check_ome_zarr(tmp_path / "l.ome.zarr")["image-label"]
    assert label["properties"] == [{"label-value": i, "class": n} for i, n in enumerate(names)]
    assert [c["rgba"] for c in label["colors"]] == [[0, 0, 0, 0], [255, 0, 0, 255], [0, 255, 0, 255]]

    probs = np.random.default_rng(4).random((40, 50, 3), dtype=np.float32)
    with create_output(tmp_path / "p.ome.zarr", probs.shape, np.float32, kind="image",
                       metadata={"class_names": names}) as out:
        out[0:40, 0:50] = probs
    channels = check_ome_zarr(tmp_path / "p.ome.zarr")["omero"]["channels"]
    assert [c["label"] for c in channels] == names
    assert len({c["color"] for c in channels}) == 3  # without a palette, one distinct colour per channel
    assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF"]  # (so an RGB image shows as RGB)
    window = channels[1]["window"]
    assert (window["min"], window["max"]) == (float(probs[:, :, 1].min()), float(probs[:, :, 1].max()))


def test_probability_channels_take_their_class_colours_and_distinct_ones_beyond_the_palette(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 128, 0]]  # background black, as in the VOC palette
    probs = np.random.default_rng(5).random((16, 16, 4), dtype=np.float32)
    with create_output(tmp_path / "p.ome.zarr", probs.shape, np.float32, kind="image", palette=palette,
                       metadata={"class_names": ["background", "a", "b", "c"]}) as out:
        out[0:16, 0:16] = probs
    colours = [c["color"] for c in check_ome_zarr(tmp_path / "p.ome.zarr")["omero"]["channels"]]
    assert colours == ["FFFFFF", "FF0000", "008000", "8000FF"]  # black would draw nothing; the 4th: hue 3/4


def test_more_classes_than_palette_colours_still_validate(tmp_path):
    with create_output(tmp_path / "l.ome.zarr", (8, 8), np.uint8, palette=[[0, 0, 0], [9, 9, 9]],
                       metadata={"class_names": ["a", "b", "c"]}) as out:
        out[0:8, 0:8] = 2
    colours = check_ome_zarr(tmp_path / "l.ome.zarr")["image-label"]["colors"]
    assert colours[2] == {"label-value": 2, "rgba": [128, 128, 128, 255]}


def test_ome_view_pickles_as_its_root(tmp_path):
    image = (np.arange(3 * 20 * 25) % 250).astype(np.uint8).reshape(3, 20, 25)
    _write_ome(tmp_path / "i.zarr", image, "cyx", version="0.4")
    clone = pickle.loads(pickle.dumps(open_image(tmp_path / "i.zarr")))
    assert clone.shape == (20, 25, 3)
    np.testing.assert_array_equal(clone[3:9, 0:4], np.moveaxis(image, 0, 2)[3:9, 0:4])
