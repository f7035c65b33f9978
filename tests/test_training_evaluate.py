"""Evaluation on its own: whole images through the reference predict, classifier windows, the summary, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fcnkit
import fcnkit.cli
from fcnkit.checkpoint import save_checkpoint
from fcnkit.errors import DataError, ModelError
from fcnkit.training.evaluate import (METRICS, check_kind, evaluate_checkpoint, evaluate_dense, evaluate_windows,
                                      heatmap_localization, summary)


def _red_rule(*tail: nn.Module) -> nn.Module:
    """Class 1 where the red value exceeds 128, else class 0 (logits 128 - r and r - 128)."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[1, 0] = -1.0, 1.0
        conv.bias.copy_(torch.tensor([128.0, -128.0]))
    return nn.Sequential(conv, *tail).eval()


def _image(red: np.ndarray) -> np.ndarray:
    return np.dstack([red, np.zeros_like(red), np.zeros_like(red)]).astype(np.uint8)


def test_evaluate_dense_counts_every_pixel_of_whole_images_of_any_size():
    model = _red_rule()
    first = _image(np.array([[200, 10, 10], [200, 200, 10]]))          # predicted [[1, 0, 0], [1, 1, 0]]
    second = _image(np.full((5, 7), 250))                                # predicted all 1
    dataset = [(first, np.array([[1, 0, 1], [255, 1, 0]])), (second, np.ones((5, 7), np.int64))]
    meter = evaluate_dense(model, dataset, num_classes=2)
    # rows = truth: first image has truth 0 at 2 pixels (both predicted 0), truth 1 at 3 (one predicted 0), one ignored
    np.testing.assert_array_equal(meter.value, [[2, 0], [1, 2 + 35]])
    scores = summary(meter)
    assert scores["pixel_accuracy"] == round(39 / 40, 6) and scores["iu"] == [round(2 / 3, 6), round(37 / 38, 6)]
    assert set(scores) == {*METRICS, "iu"}


def test_evaluate_windows_scores_window_labels_and_restores_training_mode():
    model = _red_rule(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.train()
    reds = torch.tensor([250.0, 5.0, 250.0, 5.0, 140.0])
    images = torch.zeros(5, 3, 4, 4)
    images[:, 0] = reds[:, None, None]
    labels = torch.tensor([1, 0, 0, 0, 1])
    meter = evaluate_windows(model, images, labels, num_classes=2, batch_size=2)
    np.testing.assert_array_equal(meter.value, [[2, 1], [0, 2]])
    assert summary(meter)["pixel_accuracy"] == 0.8 and model.training


def test_summary_turns_nan_into_none():
    meter = evaluate_dense(_red_rule(), [(_image(np.full((2, 2), 250)), np.ones((2, 2), np.int64))], num_classes=3)
    scores = summary(meter)
    assert scores["iu"] == [None, 1.0, None] and scores["mean_iu"] == 1.0


def test_check_kind_refuses_heat_map_grids():
    model = nn.Conv2d(3, 2, 1)
    assert check_kind(model, "here") == "dense"
    model.output_kind = "grid"
    with pytest.raises(ModelError, match="here: expected a dense segmentation model or a window classifier, found "
                                         "output_kind 'grid'; train the classifier itself"):
        check_kind(model, "here")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = fcnkit.build_model("encoder_decoder", num_classes=11, width=0.125)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, class_names=[f"c{i}" for i in range(11)])
    return path


def test_evaluate_checkpoint_on_scenes(checkpoint):
    result = evaluate_checkpoint(str(checkpoint), "scenes:48", count=2, device="cpu")
    assert result["images"] == 2 and result["class_names"] == [f"c{i}" for i in range(11)]
    assert result["checkpoint"] == str(checkpoint) and result["split"] == "val"
    assert 0.0 <= result["pixel_accuracy"] <= 1.0 and len(result["iu"]) == 11
    with pytest.raises(DataError, match=r"--num-classes 3 does not match checkpoint '.*model.pt', which predicts 11 "
                                        r"classes; leave --num-classes out or set it to 11\."):
        evaluate_checkpoint(str(checkpoint), "scenes:48", num_classes=3, count=1, device="cpu")



def test_a_convolutionalized_classifier_is_sent_back_to_the_classifier_it_came_from(tmp_path):
    torch.manual_seed(0)
    classifier = fcnkit.build_model("digit_classifier", num_classes=11, width=0.125).eval()
    path = save_checkpoint(tmp_path / "digits.pt", model=classifier, class_names=[f"c{i}" for i in range(11)])
    fcn = tmp_path / "digits-fcn.pt"
    assert fcnkit.cli.main(["convert", "--checkpoint", str(path), "--out", str(fcn)]) == 0
    with pytest.raises(ModelError) as refused:
        evaluate_checkpoint(str(fcn), "scenes:48", count=1, device="cpu")
    assert str(refused.value) == (
        f"checkpoint '{fcn}': expected a dense segmentation model or a window classifier, found output_kind 'grid'; "
        f"a grid of window scores is not scored by eval: evaluate the window classifier it was converted from "
        f"instead (the checkpoint given to `fcnkit convert`, e.g. its run's best.pt).")

class _FixedMaps(nn.Module):
    """A stand-in for a convolutionalized classifier: 12x12 windows at stride 4, fixed score maps."""

    window, stride = (12, 12), (4, 4)

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape == (1, 3, 40, 40)
        return self.logits[None]


def test_heatmap_localization_counts_peaks_near_centres_and_skips_digits_no_window_reaches():
    label = np.zeros((40, 40), dtype=np.uint8)
    label[10:20, 14:24] = 1  # centre (14.5, 18.5): window (2, 3) is centred at (13.5, 17.5)
    label[20:30, 0:2] = 2  # centre (24.5, 0.5): the nearest window centre is 5 px away, no map can hit it
    label[26:34, 26:34] = 3  # centre (29.5, 29.5): window (6, 6)
    logits = torch.zeros(4, 8, 8)
    logits[1, 0, 0], logits[1, 2, 3] = 50.0, 60.0  # both 1.0 after a float32 softmax; the second is higher
    logits[3, 6, 3] = 30.0  # 12 px left of digit 3's centre: a miss
    scenes = [(np.zeros((40, 40, 3), dtype=np.uint8), label)]
    result = heatmap_localization(_FixedMaps(logits), scenes)
    assert result == {"centres": 2, "hits": 1, "fraction": 0.5, "border": 1, "step": 4}
    logits[3, 6, 6] = 40.0
    assert heatmap_localization(_FixedMaps(logits), scenes)["hits"] == 2
    assert heatmap_localization(_FixedMaps(logits), scenes, radius=1.0)["border"] == 2  # digit 1: 1.41 px > radius


class _KnownDigits(list):
    """Scenes that know their digits, as DigitScenes does: one digit, its stroke broken in two in the label."""

    def digits(self, index: int) -> np.ndarray:
        return np.array([[14.5, 18.5, 1.0]])


def test_heatmap_localization_uses_the_known_digits_rather_than_pieces_of_the_label():
    label = np.zeros((40, 40), dtype=np.uint8)
    label[10:20, 10:16] = 1  # the two halves of one digit centred at (14.5, 18.5)
    label[10:20, 21:27] = 1
    logits = torch.zeros(2, 8, 8)
    logits[1, 2, 3] = 60.0  # the window centred at (13.5, 17.5): on the digit's centre
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    pieces = heatmap_localization(_FixedMaps(logits), [(image, label)], min_pixels=20)
    assert (pieces["centres"], pieces["hits"]) == (2, 0)  # each half's centre is 5 px from the peak: two misses
    known = heatmap_localization(_FixedMaps(logits), _KnownDigits([(image, label)]))
    assert known == {"centres": 1, "hits": 1, "fraction": 1.0, "border": 0, "step": 4}
