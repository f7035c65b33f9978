"""The catalogue of bad input through the Python API (a ``FcnkitError`` subclass, which is a ``ValueError``), and
"nothing lost": a failed run never leaves a half-written file in place of a good one.

The kill -9 tests live beside the code they test: tests/test_train_resume.py (training), tests/test_cli_predict.py
and tests/test_io_outputs.py (tiled prediction and streamed outputs).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

import fcnkit
from fcnkit import export
from fcnkit.checkpoint import load_checkpoint, save_checkpoint
from fcnkit.cli import main
from fcnkit.data import open_dataset
from fcnkit.errors import (
    CheckpointError,
    ConversionError,
    DataError,
    FcnkitError,
    InputError,
    ModelError,
    NotExactError,
    OutputError,
)
from fcnkit.io import create_output, open_image, read_image
from fcnkit.losses import pixel_cross_entropy
from fcnkit.metrics import confusion_matrix
from fcnkit.inference.tiled import predict, predict_tiled


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    return fcnkit.build_model("unet", num_classes=3, width=0.125).eval()


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _raises(error: type[FcnkitError], match: str):
    assert issubclass(error, ValueError)
    return pytest.raises(error, match=match)


def test_files(tmp_path):
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:400])
    (tmp_path / "text.jpg").write_text("hello")
    with _raises(InputError, "missing.png does not exist"):
        read_image(tmp_path / "missing.png")
    with _raises(InputError, r"empty.png is empty \(0 bytes\)"):
        open_image(tmp_path / "empty.png")
    with _raises(InputError, "cut.png is truncated or corrupted"):
        read_image(tmp_path / "cut.png")
    with _raises(InputError, "text.jpg is not an image Pillow can read"):
        open_image(tmp_path / "text.jpg")
    with _raises(InputError, "is a folder, expected an image file"):
        read_image(tmp_path)


def test_a_real_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 9500 x 9500 one-bit pixels: an 11 kB PNG that would decode to 90 M pixels, above Pillow's 89,478,485 limit
    Image.new("1", (9500, 9500)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 50_000
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    with _raises(InputError, "bomb.png has more pixels than Pillow's decompression-bomb limit of 89,478,485"):
        read_image(tmp_path / "bomb.png")


def test_pixel_formats_are_converted_where_sensible(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    expected = np.dstack([grey] * 3)
    _png(tmp_path / "grey.png", grey)
    _png(tmp_path / "rgba.png", np.dstack([grey, grey, grey, np.full_like(grey, 7)]))
    _png(tmp_path / "la.png", np.dstack([grey, np.full_like(grey, 7)]))
    _png(tmp_path / "g16.png", grey.astype(np.uint16) * 257)
    for name in ("grey.png", "rgba.png", "la.png", "g16.png"):
        np.testing.assert_array_equal(read_image(tmp_path / name), expected, err_msg=name)
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((5, 6, 6), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    with _raises(InputError, "five.tif has 6 channels; read_image.* expects grey, grey\\+alpha, RGB or RGBA"):
        read_image(tmp_path / "five.tif")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((5, 6), np.float32))
    with _raises(InputError, "float.tif has pixel type float32.*convert the image to 8-bit"):
        read_image(tmp_path / "float.tif")


def test_datasets(tmp_path):
    with _raises(DataError, "unknown data spec 'coco:x'"):
        open_dataset("coco:x")
    with _raises(DataError, "folder root .* is not a folder"):
        open_dataset(f"folder:{tmp_path}/nope", num_classes=2)
    root = tmp_path / "ds"
    _png(root / "images" / "a.png", np.zeros((6, 8, 3), np.uint8))
    with _raises(DataError, "masks does not exist"):
        open_dataset(f"folder:{root}", num_classes=2)
    _png(root / "masks" / "b.png", np.zeros((6, 8), np.uint8))
    with _raises(DataError, "images without a mask .*a.png; masks without an image .*b.png"):
        open_dataset(f"folder:{root}", num_classes=2)
    (root / "masks" / "b.png").rename(root / "masks" / "a.png")
    _png(root / "masks" / "a.png", np.zeros((6, 9), np.uint8))
    with _raises(DataError, "a.png is 9x6 pixels but its image is 8x6"):
        open_dataset(f"folder:{root}", num_classes=2)[0]
    _png(root / "masks" / "a.png", np.full((6, 8), 2, np.uint8))
    with _raises(DataError, r"holds values \[2\], expected class indices 0-1 or 255"):
        open_dataset(f"folder:{root}", num_classes=2)[0]
    _png(root / "masks" / "a.png", np.full((6, 8), 255, np.uint8))
    assert (open_dataset(f"folder:{root}", num_classes=2)[0][1] == 255).all()  # 255 is "ignore", never refused


@pytest.mark.parametrize("entry", ["/etc/passwd", "..", "../JPEGImages/x", "sub\\x"])
def test_voc_list_entries_stay_inside_the_root(tmp_path, entry):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text(f"{entry}\n")
    with _raises(DataError, "points outside the image folders"):
        open_dataset(f"voc:{tmp_path}")


def test_models_and_numbers(unet):
    with _raises(ModelError, "unknown model 'fcn9s'"):
        fcnkit.build_model("fcn9s", num_classes=2)
    with _raises(ModelError, "num_classes: expected an integer >= 1, got 0"):
        fcnkit.build_model("unet", num_classes=0)
    image = np.zeros((20, 20, 3), np.uint8)
    for tile in (0, -4, (8, 0)):
        with _raises(InputError, "must be a positive integer"):
            predict_tiled(unet, image, tile=tile)
    with _raises(InputError, "memory_limit='lots' is not a memory size"):
        predict_tiled(unet, image, memory_limit="lots")
    with _raises(InputError, r"image has 5 channel\(s\) but the model expects 3; select 3 of its channels"):
        predict(unet, np.zeros((8, 8, 5), np.uint8))  # grey, grey+alpha and RGBA are converted (fcnkit.io.pixels)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_inputs(unet, bad):
    image = np.zeros((24, 24, 3), np.float32)
    image[20, 3, 0] = bad
    with _raises(InputError, "contain NaN or Inf; expected finite values"):
        predict_tiled(unet, image, tile=8)
    with _raises(InputError, "contain NaN or Inf"):
        predict(unet, image)


def test_images_below_a_models_minimum_and_non_local_models():
    classifier = fcnkit.build_model("digit_classifier", num_classes=11, width=0.125).eval()
    fcn = fcnkit.convolutionalize(classifier, input_size=(32, 32))
    with _raises(InputError, "image is 5×6 but this valid-padding model needs at least 32×32"):
        predict(fcn, np.zeros((5, 6, 3), np.uint8))
    norm = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.InstanceNorm2d(2))
    with _raises(NotExactError, "InstanceNorm2d at '1'"):
        predict_tiled(norm, np.zeros((16, 16, 3), np.float32), tile=8)


def test_conversion_failure_names_the_layer_error_without_printing_a_traceback(capfd):
    classifier = fcnkit.build_model("digit_classifier", num_classes=11, width=0.125).eval()
    with _raises(ConversionError, r"fails on a \(2, 3, 7, 7\) input \(RuntimeError: Calculated padded input"):
        fcnkit.convolutionalize(classifier, input_size=(7, 7))
    assert "Traceback" not in capfd.readouterr().err


def test_checkpoints(tmp_path, unet):
    good = save_checkpoint(tmp_path / "good.pt", model=unet)
    with _raises(CheckpointError, "expected a .pt file written by `fcnkit train`, found nothing"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:3000])
    with _raises(CheckpointError, "found a truncated or corrupted file"):
        load_checkpoint(tmp_path / "cut.pt")
    data = torch.load(good, weights_only=True)
    data["model"]["num_classes"] = 4
    torch.save(data, tmp_path / "k4.pt")
    with _raises(CheckpointError, "wrong shape: score.bias, score.weight"):
        load_checkpoint(tmp_path / "k4.pt")
    data["model"] = {**data["model"], "num_classes": 3, "name": "segnet"}
    torch.save(data, tmp_path / "segnet.pt")
    with _raises(CheckpointError, "missing: .*unexpected: "):
        load_checkpoint(tmp_path / "segnet.pt")


def test_outputs(tmp_path):
    (tmp_path / "old.png").write_bytes(b"x")
    with _raises(OutputError, "old.png exists; pass --overwrite"):
        create_output(tmp_path / "old.png", (4, 4), np.uint8)
    (tmp_path / "file").write_text("x")
    with _raises(OutputError, "file is a file, not a folder"):
        create_output(tmp_path / "file" / "o.zarr", (4, 4), np.uint8)
    with _raises(OutputError, "file is a file, not a folder"):
        export.export_safetensors(fcnkit.build_model("unet", num_classes=2, width=0.125), tmp_path / "file" / "m.st")


def test_metrics_and_losses():
    with _raises(InputError, r"target holds values \[5\] outside \[0, 3\) other than the ignore label 255"):
        confusion_matrix(np.array([0, 1]), np.array([5, 255]), 3)
    with _raises(InputError, r"target holds labels \[3\] outside \[0, 3\)"):
        pixel_cross_entropy(torch.zeros(1, 3, 1, 2), torch.tensor([[[3, 255]]]))


# --- nothing lost -------------------------------------------------------------------------------------------------

def test_failed_overwrite_of_a_prediction_keeps_the_old_result(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "m.pt", model=fcnkit.build_model("unet", num_classes=3, width=0.125))
    good = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32) * 255
    tifffile.imwrite(tmp_path / "good.tif", good, photometric="rgb")
    bad = good.copy()
    bad[30, 30, 0] = np.nan  # found only in the last tile, after the first tiles were written
    tifffile.imwrite(tmp_path / "bad.tif", bad, photometric="rgb")
    out = tmp_path / "labels.png"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "good.tif"), "--out", str(out),
                 "--quiet"]) == 0
    before = out.read_bytes()
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "bad.tif"), "--out", str(out),
                 "--overwrite", "--tile", "16", "--quiet"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert out.read_bytes() == before  # the old result, whole


def test_failed_export_keeps_the_old_file_and_no_temporaries(tmp_path, monkeypatch):
    model = fcnkit.build_model("encoder_decoder", num_classes=2, width=0.125)
    target = tmp_path / "m.pt"
    target.write_bytes(b"the good old export")

    def refuse(*args, **kwargs):
        raise ModelError("export check failed (simulated)")

    monkeypatch.setattr(export, "_check_close", refuse)
    with pytest.raises(ModelError, match="simulated"):
        export.export_torchscript(model, target, sample_size=(16, 16), overwrite=True)
    assert target.read_bytes() == b"the good old export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_failed_report_keeps_the_old_report(tmp_path, monkeypatch):
    from fcnkit.reporting.html import Report

    target = tmp_path / "report.html"
    Report("first").write(target)
    before = target.read_bytes()

    def broken(self):
        raise RuntimeError("rendering failed (simulated)")

    monkeypatch.setattr(Report, "render", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        Report("second").write(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_failed_overwrite_of_a_run_keeps_its_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"the previous run")
    code = main(["train", "--model", "unet", "--data", f"folder:{tmp_path}/typo", "--num-classes", "2", "--steps",
                 "1", "--out", str(run), "--overwrite"])
    assert code == 2 and "typo" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == b"the previous run"


def test_save_checkpoint_to_an_impossible_location(tmp_path, unet):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FcnkitError, match="file"):
        save_checkpoint(tmp_path / "file" / "run" / "last.pt", model=unet)
