"""``fcnkit scene``: the README tour's inputs, written by a command (image + label mask, every format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_check import check_ome_zarr
from PIL import Image

from fcnkit.cli import main
from fcnkit.cli.scene import labels_path
from fcnkit.data.scenes import make_scene
from fcnkit.io import open_image, read_image


def test_labels_path_puts_labels_before_the_suffix():
    assert labels_path(Path("a/scene.png")) == Path("a/scene-labels.png")
    assert labels_path(Path("slide.ome.zarr")) == Path("slide-labels.ome.zarr")
    assert labels_path(Path("slide.tif")) == Path("slide-labels.tif")


@pytest.mark.parametrize("name", ["scene.png", "slide.tif", "slide.zarr", "slide.ome.zarr"])
def test_scene_and_mask_equal_make_scene(tmp_path, capsys, name):
    out = tmp_path / name
    assert main(["scene", "--size", "40x56", "--out", str(out), "--index", "2"]) == 0
    image, mask = make_scene((40, 56), split="val", index=2)
    labels = labels_path(out)
    assert capsys.readouterr().out.startswith(f"wrote {out} (40x56 RGB) and {labels} (labels 0 background")
    np.testing.assert_array_equal(np.asarray(open_image(out)[0:40, 0:56]), image)
    np.testing.assert_array_equal(read_image(labels, mode="label"), mask)
    if name.endswith(".ome.zarr"):
        check_ome_zarr(out)
        properties = check_ome_zarr(labels)["image-label"]["properties"]
        assert [p["class"] for p in properties] == ["background", *map(str, range(10))]
    if name == "scene.png":  # a palette PNG: viewers show the classes in colour
        assert Image.open(labels).mode == "P"


def test_existing_files_are_refused_and_nothing_is_written(tmp_path, capsys):
    (tmp_path / "scene-labels.png").write_bytes(b"keep")
    assert main(["scene", "--size", "32", "--out", str(tmp_path / "scene.png")]) == 2
    assert capsys.readouterr().err == (f"fcnkit: error: {tmp_path / 'scene-labels.png'} exists; pass --overwrite to "
                                       "replace it or choose another --out.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene-labels.png"]
    assert (tmp_path / "scene-labels.png").read_bytes() == b"keep"
    assert main(["scene", "--size", "32", "--out", str(tmp_path / "scene.png"), "--overwrite"]) == 0
    assert read_image(tmp_path / "scene-labels.png", mode="label").shape == (32, 32)


@pytest.mark.parametrize(("argv", "message"), [
    (["--out", "x.jpg"], "--out x.jpg: expected a name ending in .png, .tif, .tiff, .zarr, .ome.zarr, found .jpg"),
    (["--out", "x.png", "--size", "4"], "--size: expected N or HxW with sides of at least 8 pixels, found '4'"),
    (["--out", "x.png", "--labels", "x.png"], "--labels x.png is the --out image itself"),
    (["--out", "x.png", "--labels", "lab.jpg"],
     "--labels lab.jpg: expected a name ending in .png, .tif, .tiff, .zarr, .ome.zarr, found .jpg; name the mask "
     "like scene-labels.png or leave --labels out.\n"),
    (["--out", "x.png", "--index", "-1"], "--index: expected an integer >= 0, found -1; pass e.g. --index 0.\n"),
    (["--out", "x.png", "--seed", "-1"], "--seed: expected an integer >= 0, found -1; pass e.g. --seed 0.\n"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["scene", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fcnkit: error: {message}") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_zarr_scene_is_a_lazy_input(tmp_path):
    assert main(["scene", "--size", "64", "--out", str(tmp_path / "s.zarr")]) == 0
    assert zarr.open_array(str(tmp_path / "s.zarr")).shape == (64, 64, 3)


def test_an_unwritable_labels_path_is_refused_before_the_image_is_written(tmp_path, capsys):
    locked = tmp_path / "locked"
    (tmp_path / "locked").write_text("a file, so nothing can be created under it")
    out = tmp_path / "s.png"
    assert main(["scene", "--size", "32", "--out", str(out), "--labels", str(locked / "lab.png")]) == 2
    assert capsys.readouterr().err == (f"fcnkit: error: --labels {locked / 'lab.png'}: expected a folder to write "
                                       f"into, found that {locked} is a file, not a folder; choose another output "
                                       f"location\n")
    assert not out.exists()  # so the corrected command runs without --overwrite
    assert main(["scene", "--size", "32", "--out", str(out), "--labels", str(tmp_path / "lab.png")]) == 0


def test_an_existing_store_is_replaced_with_overwrite(tmp_path):
    out = tmp_path / "s.ome.zarr"
    assert main(["scene", "--size", "32", "--out", str(out)]) == 0
    assert main(["scene", "--size", "48", "--out", str(out), "--overwrite"]) == 0
    assert open_image(out).shape[:2] == (48, 48)
