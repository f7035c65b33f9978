"""create_output: every format, overwrite / resume / journal, atomicity, bad requests, and a real kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import zarr
from ome_check import check_ome_zarr

from fcnkit.errors import OutputError
from fcnkit.io import create_output, open_image, output_status, read_image
from fcnkit.io.outputs import Output
from fcnkit.io.reading import output_metadata

LABELS = (np.arange(90 * 70) * 7 % 11).astype(np.uint8).reshape(90, 70)
TILES = [(y, x) for y in range(0, 90, 25) for x in range(0, 70, 30)]  # 25x30 tiles, never chunk-aligned


def _fill(out: Output, data: np.ndarray, tile_ids=range(len(TILES))) -> None:
    for tile_id in tile_ids:
        y, x = TILES[tile_id]
        out[y : y + 25, x : x + 30] = data[y : y + 25, x : x + 30]
        out.mark_done(tile_id)


@pytest.mark.parametrize("name", ["o.png", "o.zarr", "o.ome.zarr", "o.tif", "o.tiff"])
def test_label_round_trip_every_format(tmp_path, name):
    with create_output(tmp_path / name, LABELS.shape, np.uint8, chunks=16) as out:
        assert out.shape == (90, 70) and out.dtype == np.uint8 and out.ndim == 2
        _fill(out, LABELS)
        np.testing.assert_array_equal(out[10:40, 60:70], LABELS[10:40, 60:70])
    np.testing.assert_array_equal(read_image(tmp_path / name, mode="label"), LABELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no partial, no journal, no temp file
    if name.endswith(".ome.zarr"):
        check_ome_zarr(tmp_path / name)


def test_rgb_png_and_int32_zarr(tmp_path):
    rgb = np.dstack([LABELS * 20, LABELS, 255 - LABELS]).astype(np.uint8)
    with create_output(tmp_path / "o.png", rgb.shape, np.uint8, kind="image") as out:
        out[0:90, 0:70] = rgb
    np.testing.assert_array_equal(open_image(tmp_path / "o.png"), rgb)
    with create_output(tmp_path / "o.zarr", (90, 70), np.int32, chunks=(32, 16)) as out:
        out[0:90, 0:70] = LABELS.astype(np.int32) * 100
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:], LABELS.astype(np.int32) * 100)


def test_tiff_output_tiles_round_to_16(tmp_path):
    with create_output(tmp_path / "o.tif", (90, 70), np.uint8, chunks=20) as out:
        assert out.chunks == (32, 32)
        out[0:90, 0:70] = LABELS
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        assert tif.is_bigtiff and (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (32, 32)


def test_existing_target_is_refused(tmp_path):
    (tmp_path / "o.png").write_bytes(b"old")
    with pytest.raises(OutputError, match=r"o\.png exists; pass --overwrite to replace it or --resume to continue"):
        create_output(tmp_path / "o.png", (4, 4), np.uint8)
    with pytest.raises(OutputError, match=r"o\.png is already complete, nothing to resume; pass --overwrite"):
        create_output(tmp_path / "o.png", (4, 4), np.uint8, resume=True)
    assert output_status(tmp_path / "o.png") == "complete"
    assert output_status(tmp_path / "none.png") == "missing"


def test_overwrite_replaces_only_on_close(tmp_path):
    target = tmp_path / "o.ome.zarr"
    with create_output(target, (90, 70), np.uint8) as out:
        out[0:90, 0:70] = LABELS
    out = create_output(target, (90, 70), np.uint8, overwrite=True)
    out[0:90, 0:70] = LABELS + 1
    np.testing.assert_array_equal(open_image(target)[:, :, 0], LABELS)  # the old output is still whole
    out.close()
    np.testing.assert_array_equal(open_image(target)[:, :, 0], LABELS + 1)
    assert not any(p.name.startswith(".o.ome.zarr.old") for p in tmp_path.iterdir())
    check_ome_zarr(target)


@pytest.mark.parametrize("name", ["o.png", "o.ome.zarr", "o.tif"])
def test_failure_before_close_leaves_old_output(tmp_path, name):
    target = tmp_path / name
    with create_output(target, (90, 70), np.uint8) as out:
        out[0:90, 0:70] = LABELS
    before = read_image(target, mode="label")
    with pytest.raises(RuntimeError, match="crash"):
        with create_output(target, (90, 70), np.uint8, overwrite=True) as out:
            _fill(out, np.zeros_like(LABELS), range(3))
            raise RuntimeError("crash")
    np.testing.assert_array_equal(read_image(target, mode="label"), before)
    assert output_status(target) == "partial"  # kept for --resume
    if name.endswith(".ome.zarr"):
        check_ome_zarr(target)  # the old output is still a valid OME-Zarr


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    target = tmp_path / "o.ome.zarr"
    out = create_output(target, (90, 70), np.uint8, chunks=16, plan_key="tile=25x30")
    _fill(out, LABELS, range(5))
    del out  # interrupted: never closed
    with pytest.raises(OutputError, match=r"an interrupted run left .*o\.ome\.zarr\.partial; pass --resume"):
        create_output(target, (90, 70), np.uint8, chunks=16, plan_key="tile=25x30")
    out = create_output(target, (90, 70), np.uint8, chunks=16, plan_key="tile=25x30", resume=True)
    assert out.done == set(range(5))
    _fill(out, LABELS, [i for i in range(len(TILES)) if i not in out.done])
    out.close()
    np.testing.assert_array_equal(open_image(target)[:, :, 0], LABELS)
    assert not (tmp_path / "o.ome.zarr.journal").exists()
    check_ome_zarr(target)


def test_resume_refuses_another_plan_shape_or_dtype(tmp_path):
    target = tmp_path / "o.zarr"
    out = create_output(target, (90, 70), np.uint8, plan_key="tile=25x30")
    _fill(out, LABELS, range(2))
    for shape, dtype, plan in [((90, 70), np.uint8, "tile=64"), ((91, 70), np.uint8, "tile=25x30"),
                               ((90, 70), np.int32, "tile=25x30")]:
        with pytest.raises(OutputError, match=r"cannot resume .*o\.zarr: the interrupted run had .*same model, input "
                                              r"and settings"):
            create_output(target, shape, dtype, plan_key=plan, resume=True)
    fresh = create_output(target, (90, 70), np.uint8, plan_key="tile=64", resume=True, overwrite=True)
    assert fresh.done == set()


@pytest.mark.parametrize("name", ["o.png", "o.tif", "o.ome.zarr", "o.zarr"])
def test_resume_refuses_another_model_or_input_and_the_result_records_them(tmp_path, name):
    target = tmp_path / name
    identity = {"model": "ab12", "input": "a.png:100:90x70x3:|u1", "output": "labels"}
    out = create_output(target, (90, 70), np.uint8, plan_key="tile=25x30", identity=identity)
    _fill(out, LABELS, range(2))
    other = {**identity, "model": "cd34"}
    with pytest.raises(OutputError, match=r"cannot resume .*: the interrupted run had model 'ab12' \(now 'cd34'\); "
                                          r"rerun with the same model, input and settings"):
        create_output(target, (90, 70), np.uint8, plan_key="tile=25x30", identity=other, resume=True)
    out = create_output(target, (90, 70), np.uint8, plan_key="tile=25x30", identity=identity, resume=True)
    assert out.done == {0, 1}
    _fill(out, LABELS, range(2, len(TILES)))
    out.close()
    assert output_metadata(target)["identity"] == identity  # the finished output says what computed it
    assert output_metadata(tmp_path / "nothing.png") is None


def test_torn_journal_line_is_ignored_and_garbage_refused(tmp_path):
    target = tmp_path / "o.png"
    out = create_output(target, (90, 70), np.uint8)
    _fill(out, LABELS, range(3))
    journal = tmp_path / "o.png.journal"
    with open(journal, "a") as f:
        f.write("1")  # a crash in the middle of appending tile 1x
    assert create_output(target, (90, 70), np.uint8, resume=True).done == {0, 1, 2}
    with open(journal, "a") as f:
        f.write("\nnot-a-number\n")
    with pytest.raises(OutputError, match=r"resume journal .*o\.png\.journal is corrupted.*pass --overwrite"):
        create_output(target, (90, 70), np.uint8, resume=True)


def test_bad_requests(tmp_path):
    with pytest.raises(OutputError, match=r"o\.jpg has an unsupported suffix; expected one of \.png, \.zarr"):
        create_output(tmp_path / "o.jpg", (4, 4), np.uint8)
    with pytest.raises(OutputError, match=r"PNG holds uint8 .* not \(4, 4, 5\) float32; write float"):
        create_output(tmp_path / "o.png", (4, 4, 5), np.float32, kind="image")
    with pytest.raises(OutputError, match=r"kind 'labels' needs a shape \(H, W\) of positive sizes, got \(4, 4, 2\)"):
        create_output(tmp_path / "o.zarr", (4, 4, 2), np.uint8)
    with pytest.raises(OutputError, match="needs an integer dtype"):
        create_output(tmp_path / "o.zarr", (4, 4), np.float32)
    out = create_output(tmp_path / "o.zarr", (8, 8), np.uint8)
    with pytest.raises(OutputError, match=r"o\.zarr\[0:4, 0:4\] must have shape \(4, 4\), got \(4, 5\)"):
        out[0:4, 0:4] = np.zeros((4, 5), np.uint8)
    with pytest.raises(OutputError, match=r"has dtype float32, the output holds uint8; convert the tile first"):
        out[0:4, 0:4] = np.zeros((4, 4), np.float32)
    out[0:4, 0:4] = np.ones((4, 4), np.int64)  # integers of another width are fine
    with pytest.raises(OutputError, match=r"write to .* as out\[y0:y1, x0:x1\] = tile"):
        out[0] = np.zeros(8, np.uint8)
    out.close()
    with pytest.raises(OutputError, match="already closed"):
        out[0:1, 0:1] = np.zeros((1, 1), np.uint8)


def test_read_only_location(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create the output folder .*file/sub"):
        create_output(tmp_path / "file" / "sub" / "o.zarr", (4, 4), np.uint8)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores permission bits, so simulate them
    with pytest.raises(OutputError, match=r"output folder .* is read-only; choose a writable output location"):
        create_output(tmp_path / "o.zarr", (4, 4), np.uint8)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_really(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    with pytest.raises(OutputError, match="is read-only"):
        create_output(folder / "o.png", (4, 4), np.uint8)


_WORKER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from fcnkit.io import create_output
    labels = (np.arange(90 * 70) * 7 % 11).astype(np.uint8).reshape(90, 70)
    tiles = [(y, x) for y in range(0, 90, 25) for x in range(0, 70, 30)]
    out = create_output(sys.argv[1], (90, 70), np.uint8, chunks=16, plan_key="p", resume=True)
    for i, (y, x) in enumerate(tiles):
        if i in out.done:
            continue
        if i == int(sys.argv[2]):
            out[y:y + 25, x:x + 30] = 99  # a tile half done when the process dies: written, not journaled
            os.kill(os.getpid(), signal.SIGKILL)
        out[y:y + 25, x:x + 30] = labels[y:y + 25, x:x + 30]
        out.mark_done(i)
    out.close()
""")


def test_kill_9_then_resume(tmp_path):
    target = str(tmp_path / "k.ome.zarr")
    run = [sys.executable, "-c", _WORKER, target]
    killed = subprocess.run([*run, "7"], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert output_status(target) == "partial"
    finished = subprocess.run([*run, "-1"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    np.testing.assert_array_equal(open_image(target)[:, :, 0], LABELS)
    check_ome_zarr(target)
