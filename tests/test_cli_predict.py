"""``fcnkit predict``: files in, exact results out, folders for many inputs, overlays, and resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from ome_check import check_ome_zarr
from PIL import Image

import fcnkit
from fcnkit.checkpoint import save_checkpoint
from fcnkit.cli import main
from fcnkit.reporting.legend import font_size, legend_strip
from fcnkit.io import read_image
from fcnkit.inference.tiled import predict

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, class_names=["bg", "a", "b"], palette=PALETTE)
    return path


def _png(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)
    Image.fromarray(image).save(path)
    return image


def _expected(checkpoint: Path, image: np.ndarray, output: str = "labels") -> np.ndarray:
    return predict(fcnkit.load_checkpoint(checkpoint), image, output=output)


def test_png_to_png_labels_equal_predict(checkpoint, tmp_path, capsys):
    image = _png(tmp_path / "a.png", 45, 70)
    out = tmp_path / "a-labels.png"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", str(out),
                 "--tile", "16", "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), _expected(checkpoint, image))


def test_tiff_to_ome_zarr_and_probs(checkpoint, tmp_path, capsys):
    image = np.random.default_rng(1).integers(0, 256, (80, 64, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", image, tile=(16, 16))
    out = tmp_path / "s.ome.zarr"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "s.tif"), "--out", str(out),
                 "--memory-limit", "64MB"]) == 0
    printed = capsys.readouterr()
    assert "s.ome.zarr: 80×64 labels" in printed.out and "MP/s" in printed.out
    assert "tile" in printed.err  # the progress bar
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][:], _expected(checkpoint, image))
    assert check_ome_zarr(out)["image-label"]["properties"][1] == {"label-value": 1, "class": "a"}
    probs = tmp_path / "p.zarr"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "s.tif"), "--out", str(probs),
                 "--output", "probs", "--tile", "24", "--quiet"]) == 0
    np.testing.assert_allclose(zarr.open_array(str(probs))[:], _expected(checkpoint, image, "probs"), atol=1e-4)
    ome_probs = tmp_path / "p.ome.zarr"  # its channels shown in the classes' colours (black, a background: white)
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "s.tif"), "--out", str(ome_probs),
                 "--output", "probs", "--quiet"]) == 0
    channels = check_ome_zarr(ome_probs)["omero"]["channels"]
    assert [(c["label"], c["color"]) for c in channels] == [("bg", "FFFFFF"), ("a", "FF0000"), ("b", "00FF00")]


def test_several_inputs_write_into_a_folder(checkpoint, tmp_path):
    images = {name: _png(tmp_path / f"{name}.png", 30 + i, 20 + 3 * i, seed=i) for i, name in enumerate("xyz")}
    folder = tmp_path / "results"
    argv = ["predict", "--checkpoint", str(checkpoint), *(str(tmp_path / f"{n}.png") for n in images),
            "--out", str(folder), "--format", ".zarr", "--quiet"]
    assert main(argv) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["x.zarr", "y.zarr", "z.zarr"]
    for name, image in images.items():
        np.testing.assert_array_equal(zarr.open_array(str(folder / f"{name}.zarr"))[:], _expected(checkpoint, image))
    assert main(argv) == 2  # exists: refused without --overwrite
    assert main([*argv, "--overwrite"]) == 0


def test_overlay_blends_the_palette(checkpoint, tmp_path):
    image = _png(tmp_path / "a.png", 33, 21)
    folder = tmp_path / "overlays"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", f"{folder}/",
                 "--output", "overlay", "--quiet"]) == 0
    labels = _expected(checkpoint, image)
    expected = np.where(labels[..., None] > 0, np.rint(0.5 * image + 0.5 * PALETTE[labels]), image).astype(np.uint8)
    assert 0 < (labels == 0).sum() < labels.size  # the background (class 0) is left as it is, the rest blended
    picture = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    np.testing.assert_array_equal(picture[:33], expected)
    # below it, a legend of the classes it shows: their colours and names
    present = [k for k in np.unique(labels).tolist() if k > 0]
    legend = legend_strip(21, [(["bg", "a", "b"][k], PALETTE[k]) for k in present])
    np.testing.assert_array_equal(picture[33:], legend)


def test_legend_strip_shows_each_colour_and_wraps():
    entries = [("background", (0, 0, 0)), ("cell", (200, 10, 10)), ("nucleus", (10, 200, 10))]
    wide, narrow = legend_strip(600, entries), legend_strip(60, entries)
    assert wide.shape[1] == 600 and narrow.shape[1] == 60 and narrow.shape[0] > wide.shape[0]  # wrapped rows
    for _, colour in entries:
        assert (wide == np.array(colour, np.uint8)).all(axis=2).sum() >= 12 * 12 - 4 * 12  # a swatch, outline aside
    assert font_size(6000) == 120 and font_size(100) == 12  # readable on large pictures viewed scaled down


@pytest.mark.parametrize(("argv", "message"), [
    (["--tile", "0"], "--tile: expected a positive number, found 0"),
    (["--batch-size", "-1"], "--batch-size: expected a positive number, found -1"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["--memory-limit", "lots"], "--memory-limit='lots' is not a memory size"),
])
def test_user_errors_are_one_line(checkpoint, tmp_path, capsys, argv, message):
    _png(tmp_path / "a.png", 16, 16)
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "o.png"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fcnkit: error: ") and message in err and "Traceback" not in err


def test_format_needs_a_folder(checkpoint, tmp_path, capsys):
    _png(tmp_path / "a.png", 16, 16)
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "o.png"), "--format", ".zarr"]) == 2
    assert "--format .zarr applies to an --out folder" in capsys.readouterr().err


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("name", ["y.zarr", "y.ome.zarr"])
def test_a_second_predict_into_a_zarr_store_refuses_replaces_or_resumes(checkpoint, tmp_path, capsys, name):
    first, second = _png(tmp_path / "a.png", 24, 30, seed=4), _png(tmp_path / "b.png", 24, 30, seed=5)
    out = tmp_path / name
    argv = ["predict", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet"]
    read = (lambda: zarr.open_group(str(out))["0"][:]) if name.endswith(".ome.zarr") else \
        (lambda: zarr.open_array(str(out))[:])
    assert main([*argv, str(tmp_path / "a.png")]) == 0
    before = _listing(tmp_path)
    capsys.readouterr()

    assert main([*argv, str(tmp_path / "b.png")]) == 2  # refused like PNG and TIFF, nothing nested inside
    assert capsys.readouterr().err == (f"fcnkit: error: {out} exists; pass --overwrite to replace it or --resume "
                                       "to continue\n")
    assert _listing(tmp_path) == before
    np.testing.assert_array_equal(read(), _expected(checkpoint, first))

    assert main([*argv, str(tmp_path / "a.png"), "--resume"]) == 0  # the same store, already complete
    assert _listing(tmp_path) == before
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "b.png"), "--resume"]) == 2  # complete, but from another input: not kept
    assert capsys.readouterr().err.startswith(f"fcnkit: error: --resume: {out} is complete, but from another input "
                                              f"(it records model ")
    assert _listing(tmp_path) == before
    np.testing.assert_array_equal(read(), _expected(checkpoint, first))

    assert main([*argv, str(tmp_path / "b.png"), "--overwrite"]) == 0  # really replaced, no partial left
    assert _listing(tmp_path) == before
    np.testing.assert_array_equal(read(), _expected(checkpoint, second))
    if name.endswith(".ome.zarr"):
        check_ome_zarr(out)


@pytest.mark.parametrize("out", ["two.png", "two.ome.zarr", "existing.zarr"])
def test_several_inputs_need_a_folder(checkpoint, tmp_path, capsys, out):
    _png(tmp_path / "a.png", 16, 16)
    _png(tmp_path / "b.png", 16, 16)
    if out == "existing.zarr":
        zarr.create_array(str(tmp_path / out), shape=(4, 4), dtype="uint8")
    before = _listing(tmp_path)
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--out", str(tmp_path / out)]) == 2
    found = "an existing zarr store" if out == "existing.zarr" else f"a .{out.split('.', 1)[1]} file name"
    assert capsys.readouterr().err == (f"fcnkit: error: --out {tmp_path / out}: expected a folder for 2 inputs, "
                                       f"found {found}; pass a folder such as {tmp_path / out.split('.')[0]}/ and "
                                       "each input gets its own output inside it.\n")
    assert _listing(tmp_path) == before


def test_outputs_in_a_folder_follow_their_inputs(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # --help on one line per option, so the rule reads unbroken
    png, jpg = _png(tmp_path / "a.png", 20, 24, seed=1), _png(tmp_path / "b.jpg", 20, 24, seed=2)
    jpg = np.asarray(Image.open(tmp_path / "b.jpg"))
    tif = np.random.default_rng(3).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", tif)
    inputs = [str(tmp_path / n) for n in ("a.png", "b.jpg", "c.tif")]
    assert main(["predict", "--checkpoint", str(checkpoint), *inputs, "--out", str(tmp_path / "res"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["a.png", "b.png", "c.ome.zarr"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "res" / "a.png")), _expected(checkpoint, png))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "res" / "b.png")), _expected(checkpoint, jpg))
    np.testing.assert_array_equal(check_ome_zarr(tmp_path / "res" / "c.ome.zarr") and
                                  zarr.open_group(str(tmp_path / "res" / "c.ome.zarr"))["0"][:],
                                  _expected(checkpoint, tif))
    assert main(["predict", "--checkpoint", str(checkpoint), *inputs[:2], "--out", str(tmp_path / "p"),
                 "--output", "probs", "--quiet"]) == 0  # PNG cannot hold probabilities
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a.ome.zarr", "b.ome.zarr"]
    channels = check_ome_zarr(tmp_path / "p" / "a.ome.zarr")["omero"]["channels"]
    assert [c["label"] for c in channels] == ["bg", "a", "b"]
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    help_text = capsys.readouterr().out
    assert "a PNG for overlays and for labels of PNG/JPEG inputs, an OME-Zarr for the rest" in help_text
    assert "default: cuda when available, else cpu" in help_text


def test_device_defaults_to_cuda_when_present(checkpoint, tmp_path, monkeypatch):
    import fcnkit.cli.predict as cli_predict

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli_predict, "_predict_one", lambda model, source, target, args: seen.append(args.device))
    _png(tmp_path / "a.png", 16, 16)
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o.png")]
    assert main(argv) == 0 and main([*argv, "--device", "cpu"]) == 0
    assert seen == ["cuda", "cpu"]


def test_16_bit_grey_is_converted_with_a_note(checkpoint, tmp_path, capsys):
    grey16 = np.random.default_rng(3).integers(0, 65536, (24, 20)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    out = tmp_path / "o.png"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "g16.png"), "--out", str(out),
                 "--tile", "16", "--quiet"]) == 0
    assert capsys.readouterr().err == (f"fcnkit: note: {tmp_path / 'g16.png'}: grey repeated to RGB, 16-bit values "
                                       f"scaled to 8 bits (/257), as the model expects.\n")
    np.testing.assert_array_equal(np.asarray(Image.open(out)),
                                  _expected(checkpoint, read_image(tmp_path / "g16.png", mode="rgb")))


def test_a_channel_count_that_cannot_be_converted_is_refused_naming_the_file(checkpoint, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((16, 16, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "five.tif"), "--out",
                 str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fcnkit: error: {tmp_path / 'five.tif'} has 5 channel(s) but the model expects 3")
    assert not (tmp_path / "o.png").exists()


def _run(argv: list[str], stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fcnkit", "predict", *argv], env=env,
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(checkpoint, tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (256, 192, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(64, 64))
    out = tmp_path / "big.ome.zarr"
    journal = tmp_path / "big.ome.zarr.journal"
    argv = ["--checkpoint", str(checkpoint), str(tmp_path / "big.tif"), "--out", str(out), "--tile", "8"]
    total = (256 // 8) * (192 // 8)
    proc = _run(argv)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) > 6:  # header + a few finished tiles
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(journal.read_text().splitlines()) - 1
    assert 0 < finished < total and not out.exists()

    resumed = _run([*argv, "--resume"], stdout=subprocess.PIPE)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-1000:]
    # its speed counts the tiles it computed, not those the killed run had finished
    assert f"{total} tiles of 8×8 (halo 32, 68.40× work, {finished} done by an earlier run), " in resumed.stdout.read()
    assert not journal.exists()
    labels = zarr.open_group(str(out))["0"][:]
    np.testing.assert_array_equal(labels, _expected(checkpoint, image))
    check_ome_zarr(out)

    fresh = tmp_path / "fresh.ome.zarr"
    whole = _run([*argv[:-4], "--out", str(fresh), "--tile", "64"])
    assert whole.wait(timeout=300) == 0
    np.testing.assert_array_equal(labels, zarr.open_group(str(fresh))["0"][:])
    check_ome_zarr(fresh)


def test_an_output_that_would_replace_an_input_is_refused_even_with_overwrite(checkpoint, tmp_path, capsys):
    image = _png(tmp_path / "a.png", 16, 16)
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "a.png")]
    assert main([*argv, "--overwrite"]) == 2
    assert capsys.readouterr().err == (f"fcnkit: error: --out {tmp_path / 'a.png'} is the input {tmp_path / 'a.png'}: "
                                       f"writing it would replace the image; choose another --out.\n")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), image)  # the photo is still there
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path),
                 "--format", ".png", "--overwrite"]) == 2  # the folder's a.png is the input too
    assert "is the input" in capsys.readouterr().err


def test_every_input_is_checked_before_the_first_is_written(checkpoint, tmp_path, capsys):
    _png(tmp_path / "a.png", 16, 16)
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), str(tmp_path / "missing.png"),
                 "--out", str(tmp_path / "out") + "/"]) == 2
    assert capsys.readouterr().err == (f"fcnkit: error: input {tmp_path / 'missing.png'} does not exist; check the "
                                       f"path and its spelling (nothing was written).\n")
    assert not (tmp_path / "out").exists()


def test_a_folder_named_like_a_file_and_a_window_classifier_are_refused_with_the_way_on(tmp_path, capsys, checkpoint):
    _png(tmp_path / "a.png", 40, 40)
    (tmp_path / "adir.png").mkdir()
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "adir.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fcnkit: error: --out {tmp_path / 'adir.png'}: an existing folder, named like a .png file; to write into it "
        f"end --out with a slash ({tmp_path / 'adir.png'}/), or pass another name for the output file.")
    classifier = save_checkpoint(tmp_path / "clf.pt", model=fcnkit.build_model("digit_classifier", num_classes=3,
                                                                                 width=0.25))
    assert main(["predict", "--checkpoint", str(classifier), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "o.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fcnkit: error: --checkpoint {classifier}: a window classifier (one class per 32x32 window), not a model of "
        f"images; make it a heat-map FCN with `fcnkit convert --checkpoint {classifier} --out FCN.pt` and predict "
        f"with FCN.pt, or draw its maps with `fcnkit heatmap --checkpoint {classifier} IMAGE`.")


def test_an_overlay_of_a_heat_map_grid_colours_the_centres_of_its_windows(tmp_path):
    """A convolutionalized classifier gives one class per 32x32 window: each cell colours the pixel at its window's
    centre; the 16-px band where no window is centred shows the image alone."""
    torch.manual_seed(0)
    classifier = fcnkit.build_model("digit_classifier", num_classes=3, width=0.25).eval()
    fcn = fcnkit.convolutionalize(classifier, input_size=(32, 32))
    path = save_checkpoint(tmp_path / "fcn.pt", model=fcn, palette=PALETTE)
    image = _png(tmp_path / "a.png", 72, 80)
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "a.png"), "--out", str(tmp_path / "o.png"),
                 "--output", "overlay", "--quiet"]) == 0
    picture = np.asarray(Image.open(tmp_path / "o.png"))[:72]  # the legend strip below it
    grid = predict(fcnkit.load_checkpoint(path), image, output="labels")  # (72 - 32) / 4 + 1 = 11 cells
    s, half = fcn.stride[0], (32 - fcn.stride[0]) // 2
    assert grid.shape == (11, 13) and s == 4 and (grid > 0).any() and (grid == 0).any()
    np.testing.assert_array_equal(picture[:half], image[:half])  # no window is centred in the top band
    np.testing.assert_array_equal(picture[:, :half], image[:, :half])
    for y, x in np.argwhere(grid > 0)[:5]:  # cells of classes 1 and 2 blend their colour in; class 0 leaves the image
        blend = np.rint(0.5 * image[half + s * y, half + s * x] + 0.5 * PALETTE[grid[y, x]])
        np.testing.assert_array_equal(picture[half + s * y, half + s * x], blend)
    for y, x in np.argwhere(grid == 0)[:5]:
        np.testing.assert_array_equal(picture[half + s * y, half + s * x], image[half + s * y, half + s * x])
