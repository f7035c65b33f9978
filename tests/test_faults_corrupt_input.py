"""A damaged input found in the middle of a run: one error naming the file and the region, the finished tiles kept
with their journal, and ``--resume`` after the file is restored equal to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

import fcnkit
from fcnkit import predict
from fcnkit.cli import main

IMAGE = np.random.default_rng(5).integers(0, 256, (256, 128, 3)).astype(np.uint8)


def _flip(path: Path, start: int, count: int) -> bytes:
    """Invert ``count`` bytes of ``path`` from ``start``; return the original contents for restoring."""
    original = path.read_bytes()
    damaged = bytearray(original)
    for i in range(start, start + count):
        damaged[i] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


def _zarr_input(tmp_path: Path) -> tuple[Path, Path, int]:
    source = tmp_path / "in.zarr"
    zarr.create_array(str(source), shape=IMAGE.shape, dtype="u1", chunks=(64, 64, 3))[:] = IMAGE
    return source, source / "c" / "2" / "1" / "0", 8  # rows 128:192, cols 64:128; past zstd's frame header


def _tiff_input(tmp_path: Path) -> tuple[Path, Path, int]:
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, IMAGE, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(source) as tif:
        offset = int(tif.pages[0].dataoffsets[5])  # tile (2, 1): rows 128:192, cols 64:128
    return source, source, offset


@pytest.mark.slow
@pytest.mark.parametrize("make", [_zarr_input, _tiff_input], ids=["zarr-chunk", "tiff-tile"])
def test_a_damaged_region_stops_the_run_naming_it_and_resume_after_restoring_is_exact(checkpoint, tmp_path, capsys,
                                                                                        make):
    source, damaged, offset = make(tmp_path)
    original = _flip(damaged, offset, 24)
    out = tmp_path / "labels.zarr"
    argv = ["predict", "--checkpoint", str(checkpoint), str(source), "--out", str(out), "--tile", "32", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fcnkit: error: {source}: rows ")
    assert "cannot be read" in err and "corrupted or truncated there; restore it" in err and "--resume" in err
    rows = err.split("rows ", 1)[1].split(",", 1)[0]
    first, last = (int(v) for v in rows.split(":"))
    assert first < 192 and last > 128  # the window read overlaps the damaged tile's rows 128:192
    journal = tmp_path / "labels.zarr.journal"
    finished = len(journal.read_text().splitlines()) - 1
    assert finished >= 1 and not out.exists() and (tmp_path / "labels.zarr.partial").is_dir()
    assert not (tmp_path / "labels.zarr.lock").exists()

    damaged.write_bytes(original)  # the user restores the file
    assert main([*argv, "--resume"]) == 0
    expected = predict(fcnkit.load_checkpoint(checkpoint), IMAGE, output="labels")
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], expected)


def test_a_jpeg_cut_short_is_refused_before_anything_is_written(checkpoint, tmp_path, capsys):
    Image.fromarray(IMAGE).save(tmp_path / "photo.jpg", quality=90)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "photo.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "photo.png"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "photo.jpg"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fcnkit: error: image file {tmp_path / 'photo.jpg'} is truncated or corrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]
