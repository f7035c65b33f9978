"""Output kinds and the label dtype, defined once: every inference path agrees with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnkit.errors import InputError
from fcnkit.inference.kinds import OUTPUTS, check_output, label_dtype, label_torch_dtype, output_dtype
from fcnkit.inference.tiled import plan_prediction, predict, predict_tiled


@pytest.mark.parametrize("classes, numpy_dtype, torch_dtype", [
    (2, np.uint8, torch.uint8), (255, np.uint8, torch.uint8), (256, np.int32, torch.int32),
])
def test_label_dtype_is_uint8_up_to_255_classes(classes, numpy_dtype, torch_dtype):
    assert label_dtype(classes) == numpy_dtype and label_torch_dtype(classes) == torch_dtype
    assert output_dtype("labels", classes) == numpy_dtype and output_dtype("probs", classes) == np.float32


def test_unknown_output_kind_names_the_valid_ones():
    assert OUTPUTS == ("logits", "probs", "labels")
    with pytest.raises(InputError, match=r"output='scores' is not known; expected one of logits, probs, labels\."):
        check_output("scores")
    with pytest.raises(InputError, match=r"output='scores' is not known"):
        predict(torch.nn.Conv2d(3, 2, 1), np.zeros((4, 4, 3), np.uint8), output="scores")


@pytest.mark.parametrize("classes", [3, 256])
def test_every_path_gives_the_same_label_dtype(classes):
    model = torch.nn.Conv2d(3, classes, 1).eval()
    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3)).astype(np.uint8)
    whole = predict(model, image, output="labels")
    tiled = predict_tiled(model, image, tile=4, output="labels")
    plan = plan_prediction(model, image, tile=4, output="labels")
    assert whole.dtype == tiled.dtype == plan.dtype == label_dtype(classes)
