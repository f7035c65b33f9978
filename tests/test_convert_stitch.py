"""Shift-and-stitch: a convolutionalized classifier's scores at every pixel equal the classifier slid pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnkit.convert import convolutionalize, shift_and_stitch, sliding_window
from fcnkit.data.scenes import DigitScenes
from fcnkit.errors import InputError
from fcnkit.models import build_model
from fcnkit.training.evaluate import heatmap_localization

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return build_model("digit_classifier", num_classes=11, width=0.25).eval()


@pytest.mark.parametrize("step", [1, 2, 4])
def test_stitched_scores_equal_the_classifier_slid_at_that_step(classifier, step):
    fcn = convolutionalize(classifier, input_size=(32, 32)).eval()
    image = np.random.default_rng(0).integers(0, 256, (45, 39, 3)).astype(np.float32)
    dense = shift_and_stitch(fcn, image, step=step)
    reference = sliding_window(classifier, image, window=32, stride=step)
    assert dense.shape == reference.shape == (1, 11, (45 - 32) // step + 1, (39 - 32) // step + 1)
    torch.testing.assert_close(dense, reference, atol=1e-4, rtol=1e-4)
    if step == 4:  # the stride itself: one ordinary pass
        torch.testing.assert_close(dense, fcn(torch.from_numpy(image).permute(2, 0, 1)[None]))


def test_stitching_refuses_steps_that_do_not_divide_the_stride_and_plain_models(classifier):
    fcn = convolutionalize(classifier, input_size=(32, 32))
    image = np.zeros((40, 40, 3), dtype=np.float32)
    for step in (3, 0, 8, True):
        with pytest.raises(InputError, match=r"step must be a positive integer dividing the stride \(4, 4\)"):
            shift_and_stitch(fcn, image, step=step)
    with pytest.raises(InputError, match=r"expected a convolutionalized classifier .* got a DigitClassifier"):
        shift_and_stitch(classifier, image)
    with pytest.raises(InputError, match=r"at least one full 32x32 window, got a 20x40 image"):
        shift_and_stitch(fcn, image[:20])


def test_localization_can_score_stitched_maps(classifier):
    fcn = convolutionalize(classifier, input_size=(32, 32)).eval()
    scenes = DigitScenes("val", size=96, count=1)
    coarse, fine = heatmap_localization(fcn, scenes), heatmap_localization(fcn, scenes, step=1)
    assert coarse["step"] == 4 and fine["step"] == 1
    # a finer grid puts a window centre near more digits: fewer are left out at the edge
    assert fine["border"] <= coarse["border"] and fine["centres"] >= coarse["centres"] > 0
