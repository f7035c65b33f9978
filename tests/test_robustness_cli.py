"""The catalogue of bad input, through the command line: one line ``fcnkit: error: …`` on stderr, exit status 2.

Each case runs ``fcnkit.cli.main`` in-process (a subprocess costs seconds of torch import); a few real subprocess
runs at the end prove that nothing prints a traceback. docs/robustness.md lists every case with its test id.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import fcnkit
from fcnkit.checkpoint import save_checkpoint
from fcnkit.cli import main

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _folder(root: Path, *, image=(20, 24), mask=(20, 24), value=1, masks=True, stem="a") -> Path:
    """A folder:ROOT dataset with one image and (optionally) one mask filled with ``value``."""
    rgb = np.random.default_rng(0).integers(0, 256, (*image, 3)).astype(np.uint8)
    _png(root / "images" / f"{stem}.png", rgb)
    if masks:
        (root / "masks").mkdir(parents=True, exist_ok=True)
        if mask is not None:
            _png(root / "masks" / "a.png", np.full(mask, value, np.uint8))
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Every bad (and a few good) inputs the catalogue needs, made once."""
    ws = tmp_path_factory.mktemp("ws")
    torch.manual_seed(0)
    save_checkpoint(ws / "seg.pt", model=fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125),
                    class_names=["bg", "a", "b"], palette=PALETTE)
    classifier = fcnkit.build_model("digit_classifier", num_classes=11, width=0.125).eval()
    save_checkpoint(ws / "clf.pt", model=classifier)
    save_checkpoint(ws / "fcn.pt", model=fcnkit.convolutionalize(classifier, input_size=(32, 32)))
    good = np.random.default_rng(1).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    _png(ws / "good.png", good)
    _png(ws / "small.png", good[:6, :7])
    (ws / "empty.png").write_bytes(b"")
    (ws / "truncated.png").write_bytes((ws / "good.png").read_bytes()[:150])
    (ws / "text.png").write_text("not an image at all\n")
    (ws / "array.npy").write_bytes(b"\x93NUMPY")
    (ws / "a_file").write_text("a regular file where a folder is expected\n")
    tifffile.imwrite(ws / "whole.tif", good, tile=(16, 16))
    (ws / "truncated.tif").write_bytes((ws / "whole.tif").read_bytes()[:-200])
    floats = good.astype(np.float32)
    floats[30, 40, 1] = np.nan
    tifffile.imwrite(ws / "nan.tif", floats)
    floats[30, 40, 1] = np.inf
    tifffile.imwrite(ws / "inf.tif", floats)
    (ws / "not.zarr").mkdir()
    # checkpoints that must be refused
    (ws / "truncated.pt").write_bytes((ws / "seg.pt").read_bytes()[:2000])
    torch.save({"weights": torch.zeros(3)}, ws / "foreign.pt")
    data = torch.load(ws / "seg.pt", weights_only=True)
    data["model"]["name"] = "unet"  # the weights of one model under another's name
    torch.save(data, ws / "other_model.pt")
    data["model"] = {**data["model"], "name": "encoder_decoder", "num_classes": 5}
    torch.save(data, ws / "other_classes.pt")
    # datasets
    _folder(ws / "ds_nomasks", masks=False)
    _folder(ws / "ds_unmatched", mask=None)
    _png(ws / "ds_unmatched" / "masks" / "b.png", np.zeros((20, 24), np.uint8))
    (ws / "ds_empty" / "images").mkdir(parents=True)
    (ws / "ds_empty" / "masks").mkdir(parents=True)
    _folder(ws / "ds_size", mask=(20, 25))
    _folder(ws / "ds_label", value=7)
    _folder(ws / "ds_ignore", value=255)
    _folder(ws / "ds_colour", mask=None)
    _png(ws / "ds_colour" / "masks" / "a.png", np.dstack([np.zeros((20, 24), np.uint8), np.ones((20, 24), np.uint8),
                                                          np.zeros((20, 24), np.uint8)]))
    _folder(ws / "ds_jpeg", mask=None)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(ws / "ds_jpeg" / "masks" / "a.jpg")
    _folder(ws / "ds_tiny", image=(6, 6), mask=(6, 6))
    voc = ws / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("../../../etc/passwd\n")
    return ws


# (case id, argv with {ws} for the workspace, fragments the one-line error must contain)
CASES = [
    ("image-missing", "predict --checkpoint {ws}/seg.pt {ws}/nope.png --out {out}/o.png",
     ["nope.png does not exist", "check the path"]),
    ("image-empty", "predict --checkpoint {ws}/seg.pt {ws}/empty.png --out {out}/o.png",
     ["empty.png is empty (0 bytes)", "re-export"]),
    ("image-truncated", "predict --checkpoint {ws}/seg.pt {ws}/truncated.png --out {out}/o.png",
     ["truncated.png is truncated or corrupted", "re-export"]),
    ("image-not-an-image", "predict --checkpoint {ws}/seg.pt {ws}/text.png --out {out}/o.png",
     ["text.png is not an image Pillow can read", "re-export"]),
    ("image-unknown-suffix", "predict --checkpoint {ws}/seg.pt {ws}/array.npy --out {out}/o.png",
     ["array.npy has an unsupported suffix '.npy'", "convert the image to PNG or TIFF"]),
    ("tiff-truncated", "predict --checkpoint {ws}/seg.pt {ws}/truncated.tif --out {out}/o.png",
     ["truncated.tif is truncated", "copy or download the file again"]),
    ("zarr-not-a-store", "predict --checkpoint {ws}/seg.pt {ws}/not.zarr --out {out}/o.png",
     ["not.zarr is not a zarr store", "give the path of a zarr array"]),
    ("image-nan", "predict --checkpoint {ws}/seg.pt {ws}/nan.tif --out {out}/o.png --tile 16",
     ["contain NaN or Inf", "np.nan_to_num"]),
    ("image-inf", "predict --checkpoint {ws}/seg.pt {ws}/inf.tif --out {out}/o.png",
     ["contain NaN or Inf", "expected finite values"]),
    ("image-below-model-minimum", "predict --checkpoint {ws}/fcn.pt {ws}/small.png --out {out}/o.png",
     ["is 6×7 but this valid-padding model needs at least 32×32", "use a larger image"]),
    ("heatmap-image-below-window", "heatmap --checkpoint {ws}/clf.pt {ws}/small.png --out {out}/h.png",
     ["small.png is 6x7 pixels, expected at least the classifier's 32x32 window"]),
    ("mask-other-size", "eval --checkpoint {ws}/seg.pt --data folder:{ws}/ds_size --num-classes 3",
     ["a.png is 25x20 pixels but its image is 24x20", "save each mask at its image's size"]),
    ("mask-label-above-classes", "eval --checkpoint {ws}/seg.pt --data folder:{ws}/ds_label --num-classes 3",
     ["holds values [7], expected class indices 0-2 or 255 (ignore)", "check --num-classes"]),
    ("mask-colour", "eval --checkpoint {ws}/seg.pt --data folder:{ws}/ds_colour --num-classes 3",
     ["is a colour (RGB) image, expected class indices", "palette or greyscale PNG"]),
    ("mask-jpeg", "eval --checkpoint {ws}/seg.pt --data folder:{ws}/ds_jpeg --num-classes 3",
     ["a.jpg is a JPEG", "save masks as PNG"]),
    ("masks-folder-missing", "eval --checkpoint {ws}/seg.pt --data folder:{ws}/ds_nomasks --num-classes 3",
     ["ds_nomasks/masks does not exist", "ROOT/images and ROOT/masks"]),
    ("stems-unmatched", "eval --checkpoint {ws}/seg.pt --data folder:{ws}/ds_unmatched --num-classes 3",
     ["images without a mask", "a.png", "masks without an image", "b.png", "same file stem"]),
    ("dataset-empty", "eval --checkpoint {ws}/seg.pt --data folder:{ws}/ds_empty --num-classes 3",
     ["ds_empty/images holds no images", "add images"]),
    ("voc-list-escapes-root", "eval --checkpoint {ws}/seg.pt --data voc:{ws}/voc",
     ["line 1 of", "'../../../etc/passwd', which points outside the image folders", "remove path separators"]),
    ("model-unknown", "train --model fcn9s --data scenes --steps 1 --out {out}/run",
     ["unknown model 'fcn9s'; did you mean 'fcn8s'?", "expected one of: allconv_classifier"]),
    ("data-spec-unknown", "train --model unet --data coco:/data --steps 1 --out {out}/run",
     ["unknown data spec 'coco:/data'", "expected one of scenes, voc:ROOT, folder:ROOT"]),
    ("num-classes-missing", "train --model unet --data folder:{ws}/ds_size --steps 1 --out {out}/run",
     ["needs the number of classes (1-255), got None", "pass --num-classes K"]),
    ("steps-zero", "train --model unet --data scenes --steps 0 --out {out}/run",
     ["steps: expected a positive integer, found 0"]),
    ("steps-negative", "train --model unet --data scenes --steps -5 --out {out}/run",
     ["steps: expected a positive integer, found -5"]),
    ("batch-size-zero", "train --model unet --data scenes --batch-size 0 --out {out}/run",
     ["batch_size: expected a positive integer, found 0"]),
    ("patch-larger-than-every-image",
     "train --model unet --width 0.125 --data folder:{ws}/ds_tiny --num-classes 3 --patch 64 --steps 1 "
     "--out {out}/run", ["--patch 64 larger than every training image (largest 6x6)", "pass --patch 6 or smaller"]),
    ("tile-zero", "predict --checkpoint {ws}/seg.pt {ws}/good.png --out {out}/o.png --tile 0",
     ["--tile: expected a positive number, found 0"]),
    ("tile-negative", "predict --checkpoint {ws}/seg.pt {ws}/good.png --out {out}/o.png --tile -64",
     ["--tile: expected a positive number, found -64"]),
    ("memory-limit-garbage", "predict --checkpoint {ws}/seg.pt {ws}/good.png --out {out}/o.png --memory-limit lots",
     ["--memory-limit='lots' is not a memory size", "'4GB'"]),
    ("heatmap-memory-limit-garbage", "heatmap --checkpoint {ws}/seg.pt {ws}/good.png --out {out}/h.png --class 1 "
     "--memory-limit 12XB", ["--memory-limit='12XB' is not a memory size", "'4GB'"]),
    ("eval-count-zero", "eval --checkpoint {ws}/seg.pt --data scenes --count 0",
     ["--count: expected a positive number of images, found 0"]),
    ("size-zero", "inspect unet --size 0 16", ["--size: expected a positive height and width, found 0 16"]),
    ("resume-and-overwrite", "predict --checkpoint {ws}/seg.pt {ws}/good.png --out {out}/o.png --resume --overwrite",
     ["--resume and --overwrite contradict each other"]),
    ("output-suffix-unknown", "predict --checkpoint {ws}/seg.pt {ws}/good.png --out {out}/o.jpg",
     ["o.jpg has an unsupported suffix", "expected one of .png, .zarr, .ome.zarr, .tif"]),
    ("checkpoint-missing", "predict --checkpoint {ws}/nope.pt {ws}/good.png --out {out}/o.png",
     ["nope.pt': expected a .pt file written by `fcnkit train`, found nothing"]),
    ("checkpoint-truncated", "predict --checkpoint {ws}/truncated.pt {ws}/good.png --out {out}/o.png",
     ["truncated.pt': expected a complete torch checkpoint, found a truncated or corrupted file"]),
    ("checkpoint-not-fcnkit", "eval --checkpoint {ws}/foreign.pt --data scenes",
     ["foreign.pt': expected an fcnkit checkpoint (format 'fcnkit-checkpoint'), found format None"]),
    ("checkpoint-other-model", "predict --checkpoint {ws}/other_model.pt {ws}/good.png --out {out}/o.png",
     ["other_model.pt': expected weights that fit the model it describes", "missing:", "unexpected:"]),
    ("checkpoint-other-class-count", "predict --checkpoint {ws}/other_classes.pt {ws}/good.png --out {out}/o.png",
     ["expected weights that fit the model", "wrong shape: score.bias, score.weight"]),
    ("checkpoint-classes-differ-from-data", "eval --checkpoint {ws}/seg.pt --data scenes",
     ["has 11 classes, checkpoint", "predicts 3"]),
    ("checkpoint-not-a-classifier", "convert --checkpoint {ws}/seg.pt --out {out}/c.pt",
     ["expected a classifier checkpoint (N, K output), found a 'dense' model"]),
    ("convert-wrong-window", "convert --checkpoint {ws}/clf.pt --input-size 7 7 --out {out}/c.pt",
     ["--input-size 7 7: the classifier in", "takes 32x32 windows", "leave --input-size out"]),
    ("out-under-a-file-predict", "predict --checkpoint {ws}/seg.pt {ws}/good.png --out {ws}/a_file/o.png",
     ["a_file is a file, not a folder", "choose another output location"]),
    ("out-under-a-file-export", "export --checkpoint {ws}/seg.pt --format safetensors --out {ws}/a_file/m.safetensors",
     ["a_file is a file, not a folder"]),
    ("out-under-a-file-convert", "convert --checkpoint {ws}/clf.pt --out {ws}/a_file/sub/c.pt",
     ["a_file is a file, not a folder"]),
    ("out-under-a-file-heatmap", "heatmap --checkpoint {ws}/clf.pt {ws}/good.png --out {ws}/a_file/h.png",
     ["a_file is a file, not a folder"]),
    ("out-exists-predict", "predict --checkpoint {ws}/seg.pt {ws}/good.png --out {ws}/small.png",
     ["small.png exists; pass --overwrite to replace it or --resume"]),
    ("out-exists-export", "export --checkpoint {ws}/seg.pt --format safetensors --out {ws}/good.png",
     ["expected a new file, found an existing file", "pass --overwrite"]),
    ("out-exists-convert", "convert --checkpoint {ws}/clf.pt --out {ws}/seg.pt",
     ["seg.pt: expected a new file, found an existing one; pass --overwrite"]),
    ("out-exists-heatmap", "heatmap --checkpoint {ws}/clf.pt {ws}/good.png --out {ws}/good.png",
     ["good.png: expected a new file, found an existing one; pass --overwrite"]),
    ("heatmap-out-not-png", "heatmap --checkpoint {ws}/clf.pt {ws}/good.png --out {out}/h.jpg",
     ["expected a path ending in .png"]),
    ("heatmap-class-out-of-range", "heatmap --checkpoint {ws}/clf.pt {ws}/good.png --out {out}/h.png --class 11",
     ["--class: expected a class index 0-10", "found '11'"]),
    ("export-suffix-of-another-format", "export --checkpoint {ws}/seg.pt --format onnx --out {out}/d.pt2",
     ["--format onnx expects a name ending in .onnx, found .pt2", "d.onnx", "--format pt2"]),
    ("scene-index-negative", "scene --size 50 --out {out}/s.png --index -1",
     ["--index: expected an integer >= 0, found -1"]),
    ("scene-labels-unwritable", "scene --size 50 --out {out}/s.png --labels {ws}/a_file/lab.png",
     ["--labels", "a_file is a file, not a folder"]),
    ("train-seed-negative", "train --model unet --width 0.125 --data scenes --steps 1 --seed -1 --out {out}/run",
     ["--seed: expected an integer from 0 to 4294967295", "found -1"]),
    ("train-seed-too-large", "train --model unet --width 0.125 --data scenes --steps 1 --seed 4294967296 "
     "--out {out}/run", ["--seed: expected an integer from 0 to 4294967295", "found 4294967296"]),
    ("train-val-size-too-small", "train --model unet --width 0.125 --data scenes --steps 1 --val-size 5 "
     "--out {out}/run", ["--val-size: expected a side of at least 8 pixels", "found 5"]),
    ("eval-convolutionalized-classifier", "eval --checkpoint {ws}/fcn.pt --data scenes",
     ["found output_kind 'grid'", "evaluate the window classifier it was converted from"]),
    ("inspect-classifier-other-size", "inspect digit_classifier --size 20 20",
     ["expected 32x32, the one window size this classifier takes", "fcnkit convert --checkpoint CKPT"]),
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("fcnkit: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_catalogue(ws, tmp_path, capsys, argv, fragments):
    before = sorted(p.name for p in ws.iterdir())
    assert main(argv.format(ws=ws, out=tmp_path).split()) == 2
    line = _error_line(capsys)
    for fragment in fragments:
        assert fragment in line, line
    assert "; " in line  # what was expected and found, then the fix
    assert sorted(p.name for p in ws.iterdir()) == before  # no input or existing output was touched
    # nothing is written in place of an output; a prediction that failed midway keeps only its resume state
    written = {p.name for p in tmp_path.iterdir() if not (p.is_dir() and not any(p.iterdir()))}  # empty run folders
    assert written <= {"o.png.partial", "o.png.journal"}


def test_decompression_bomb_limit(ws, capsys, monkeypatch):
    # the real limit is Pillow's 89,478,485 pixels (a real bomb is refused in test_robustness_api.py); a lower
    # limit exercises the same path through the CLI without building a huge file
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert main(["predict", "--checkpoint", str(ws / "seg.pt"), str(ws / "good.png"), "--out", str(ws / "o.png")]) == 2
    line = _error_line(capsys)
    assert "good.png has more pixels than Pillow's decompression-bomb limit of 1,000" in line
    assert "convert it to a tiled TIFF or OME-Zarr" in line


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs sysfs, which even root cannot create files in")
def test_unwritable_location_even_for_root(ws, capsys):
    # Tests run as root, which ignores permission bits; sysfs refuses new files to everyone (EACCES), so it is an
    # honest read-only location. Where it turns out writable the test has nothing to show and is skipped.
    try:
        Path("/sys/fcnkit-probe").touch()
    except OSError:
        pass
    else:
        Path("/sys/fcnkit-probe").unlink()
        pytest.skip("/sys is writable here")
    for argv in (["predict", "--checkpoint", str(ws / "seg.pt"), str(ws / "good.png"), "--out", "/sys/o.png"],
                 ["convert", "--checkpoint", str(ws / "clf.pt"), "--out", "/sys/c.pt"],
                 ["export", "--checkpoint", str(ws / "seg.pt"), "--format", "safetensors", "--out",
                  "/sys/m.safetensors"]):
        assert main(argv) == 2
        assert "/sys is not writable" in _error_line(capsys)


def test_conversions_that_are_sensible_happen(ws, tmp_path, capsys):
    """Palette PNGs resolve to their colours for predict; grey, grey+alpha and 16-bit images become RGB for heatmap."""
    indices = np.random.default_rng(2).integers(0, 3, (40, 48)).astype(np.uint8)
    palette_png = Image.fromarray(indices, mode="L")
    palette_png.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    palette_png.save(tmp_path / "pal.png")
    assert main(["predict", "--checkpoint", str(ws / "seg.pt"), str(tmp_path / "pal.png"), "--out",
                 str(tmp_path / "pal-labels.png"), "--quiet"]) == 0
    colours = np.asarray(Image.open(tmp_path / "pal.png").convert("RGB"))
    expected = fcnkit.predict(fcnkit.load_checkpoint(ws / "seg.pt"), colours, output="labels")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pal-labels.png")), expected)
    grey = np.random.default_rng(3).integers(0, 256, (40, 48)).astype(np.uint8)
    _png(tmp_path / "grey.png", grey)
    _png(tmp_path / "la.png", np.dstack([grey, np.full_like(grey, 128)]))
    _png(tmp_path / "grey16.png", grey.astype(np.uint16) * 257)
    for name in ("grey.png", "la.png", "grey16.png"):
        assert main(["heatmap", "--checkpoint", str(ws / "clf.pt"), str(tmp_path / name), "--out",
                     str(tmp_path / f"{name}.heat.png")]) == 0, name
    capsys.readouterr()


def test_overwrite_is_the_explicit_way_to_replace(ws, tmp_path, capsys):
    target = tmp_path / "c.pt"
    target.write_bytes(b"old")
    assert main(["convert", "--checkpoint", str(ws / "clf.pt"), "--out", str(target)]) == 2
    assert target.read_bytes() == b"old"
    assert main(["convert", "--checkpoint", str(ws / "clf.pt"), "--out", str(target), "--overwrite"]) == 0
    assert fcnkit.load_checkpoint(target).output_kind == "grid"
    capsys.readouterr()


def test_predict_converts_grey_and_alpha_images(ws, tmp_path):
    grey = np.random.default_rng(4).integers(0, 256, (40, 48)).astype(np.uint8)
    _png(tmp_path / "grey.png", grey)
    _png(tmp_path / "rgba.png", np.dstack([grey, grey, grey, np.full_like(grey, 255)]))
    expected = fcnkit.predict(fcnkit.load_checkpoint(ws / "seg.pt"), np.dstack([grey] * 3), output="labels")
    for name in ("grey.png", "rgba.png"):
        out = tmp_path / f"{name}.labels.png"
        assert main(["predict", "--checkpoint", str(ws / "seg.pt"), str(tmp_path / name), "--out", str(out),
                     "--quiet"]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)


def test_predict_handles_16_bit_rgb(ws, tmp_path, capsys):
    rgb8 = np.random.default_rng(5).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb8.astype(np.uint16) * 257)
    out = tmp_path / "labels.png"
    code = main(["predict", "--checkpoint", str(ws / "seg.pt"), str(tmp_path / "rgb16.tif"), "--out", str(out),
                 "--quiet"])
    if code == 2:  # refusing with a reason is also acceptable
        assert "16-bit" in _error_line(capsys)
        return
    expected = fcnkit.predict(fcnkit.load_checkpoint(ws / "seg.pt"), rgb8, output="labels")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)


def test_predict_errors_name_the_input_file(ws, tmp_path, capsys):
    for checkpoint, name in (("seg.pt", "nan.tif"), ("fcn.pt", "small.png")):
        out = tmp_path / f"{name}.png"
        assert main(["predict", "--checkpoint", str(ws / checkpoint), str(ws / name), "--out", str(out)]) == 2
        assert name in _error_line(capsys)


def test_train_out_under_a_file(ws, capsys):
    code = main(["train", "--model", "unet", "--width", "0.125", "--data", f"folder:{ws}/ds_ignore",
                 "--num-classes", "3", "--patch", "16", "--steps", "1", "--out", str(ws / "a_file" / "run")])
    assert code == 2 and "a_file" in _error_line(capsys)


def test_image_given_as_checkpoint(ws, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(ws / "good.png"), str(ws / "good.png"), "--out",
                 str(tmp_path / "o.png")]) == 2
    line = _error_line(capsys)
    assert "would run code" not in line and "not a" in line


def _subprocess(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "fcnkit", *argv], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.slow
def test_real_processes_print_no_traceback(ws):
    """Two real runs of ``python -m fcnkit``: a damaged checkpoint and a too-small image for heatmap."""
    for argv, fragment in (
        (["predict", "--checkpoint", str(ws / "truncated.pt"), str(ws / "good.png"), "--out", str(ws / "o.png")],
         "truncated or corrupted file"),
        (["heatmap", "--checkpoint", str(ws / "clf.pt"), str(ws / "small.png"), "--out", str(ws / "h.png")],
         "expected at least the classifier's 32x32 window"),
    ):
        done = _subprocess(*argv)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
        errors = [line for line in done.stderr.splitlines() if line.startswith("fcnkit: error: ")]
        assert len(errors) == 1 and fragment in errors[0], done.stderr
