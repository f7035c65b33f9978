"""The real nuclei data set (``--data nuclei``): stardist's image and mask, split by quadrant, Otsu's baseline."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fcnkit.data import open_dataset
from fcnkit.data import nuclei
from fcnkit.errors import DataError
from fcnkit.metrics import confusion_matrix, scores

pytest.importorskip("tifffile")
if importlib.util.find_spec("stardist") is None:
    pytest.skip("stardist 0.9.2 is not installed (make install adds it with --no-deps)", allow_module_level=True)


def test_reads_the_real_image_and_a_binary_mask():
    image, label = nuclei.read_nuclei()
    assert image.shape == label.shape == (512, 512)
    assert image.dtype == label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    assert 0.15 < label.mean() < 0.25  # about a fifth of the image is nucleus


@pytest.mark.parametrize("held_out", sorted(nuclei.QUADRANTS))
def test_the_held_out_quadrant_is_never_in_training(held_out):
    image, label = nuclei.read_nuclei()
    train = open_dataset(f"nuclei:{held_out}", split="train")
    val = open_dataset(f"nuclei:{held_out}", split="val")
    assert (len(train), len(val), train.num_classes) == (3, 1, 2)
    # Put the four quadrants back together: each one exactly once, the held-out one only in val.
    seen = np.zeros((512, 512), np.int64)
    for name, (img, lab) in [*zip(train.names, (train[i] for i in range(3))), (held_out, val[0])]:
        r, c = nuclei.QUADRANTS[name]
        rows, cols = slice(256 * r, 256 * (r + 1)), slice(256 * c, 256 * (c + 1))
        assert img.shape == (256, 256, 3) and np.array_equal(img[..., 0], image[rows, cols])
        assert np.array_equal(img[..., 0], img[..., 2])
        assert np.array_equal(lab, label[rows, cols])
        seen[rows, cols] += 1
    assert held_out not in train.names and (seen == 1).all()


def test_default_spec_holds_out_one_quadrant_and_checks_the_class_count():
    assert open_dataset("nuclei", split="val").names == ["br"]
    with pytest.raises(DataError, match="--num-classes 3 does not match nuclei, which has 2 classes"):
        open_dataset("nuclei", num_classes=3)


def test_unknown_quadrant_is_refused_with_the_choices():
    with pytest.raises(DataError, match=r"nuclei:middle: expected the held-out quadrant to be one of tl, tr, bl, br"):
        open_dataset("nuclei:middle")


def test_missing_stardist_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "stardist" else real(name, *a))
    with pytest.raises(DataError, match=r"stardist not installed; install it with `pip install --no-deps "
                                        r"stardist==0\.9\.2`"):
        open_dataset("nuclei")


def test_otsu_threshold_matches_scikit_image_and_the_quoted_baseline():
    filters = pytest.importorskip("skimage.filters")
    image, label = nuclei.read_nuclei()
    t = nuclei.otsu_threshold(image)
    assert t == filters.threshold_otsu(image)
    for part in (image[:256, :256], image[100:300, 200:512]):
        assert nuclei.otsu_threshold(part) == filters.threshold_otsu(part)
    mean_iu = scores(confusion_matrix((image > t).astype(np.uint8), label, 2))["mean_iu"]
    assert mean_iu == pytest.approx(0.821, abs=5e-4)  # the figure the issue quotes for the whole image


def test_otsu_threshold_splits_two_levels_between_them():
    values = np.array([10] * 50 + [200] * 50, np.uint8)
    t = nuclei.otsu_threshold(values)
    assert 10 <= t < 200
    assert ((values > t) == (values == 200)).all()


def test_a_model_trained_on_it_sees_the_tiff_as_it_was_trained(tmp_path, capsys):
    """The stored image is 8-bit data in a 16-bit file (values up to 235): the data keeps the values, training
    records it in the checkpoint, and `fcnkit predict` of the file itself gives the model the same values, not
    the /257 of full-range 16-bit data (which turned every pixel into 0 or 1 and the prediction all background)."""
    import tifffile
    from PIL import Image

    import fcnkit
    from fcnkit.cli import main

    stored = tifffile.imread(nuclei.nuclei_files()[0])
    assert stored.dtype == np.uint16 and stored.max() <= 255
    assert open_dataset("nuclei", split="train").sixteen_bit == "kept"
    run = tmp_path / "run"
    assert main(["train", "--model", "encoder_decoder", "--data", "nuclei", "--width", "0.125", "--steps", "2",
                 "--batch-size", "2", "--patch", "32", "--out", str(run), "--quiet"]) == 0
    model = fcnkit.load_checkpoint(run / "best.pt")
    assert model.fcnkit_meta["input_16_bit"] == "kept"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(nuclei.nuclei_files()[0]), "--out",
                 str(tmp_path / "labels.png"), "--quiet"]) == 0
    assert "scaled to 8 bits" not in capsys.readouterr().err
    expected = fcnkit.predict(model, stored.astype(np.uint8), output="labels")  # the values training saw
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "labels.png")), expected)
    # a model trained on 8-bit data gets a 16-bit image divided by 257, as before
    model.fcnkit_meta["input_16_bit"] = "scaled"
    full = (stored.astype(np.uint32) * 257).astype(np.uint16)[:64, :64]
    np.testing.assert_array_equal(fcnkit.predict(model, full), fcnkit.predict(model, stored[:64, :64].astype(np.uint8)))
