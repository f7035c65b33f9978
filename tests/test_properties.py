"""Properties checked on random inputs (hypothesis, derandomized so CI is repeatable).

- metrics: renaming the classes permutes the confusion matrix and leaves every mean score unchanged; pixels labelled
  255 change nothing, whatever was predicted there.
- convolutionalization: a random unpadded classifier, turned into an FCN, equals the classifier on every window.
- tiling: fcnkit's own registered models tile exactly at random sizes and tiles (tests/test_tiling_property.py
  covers foreign models the same way).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fcnkit
from tiling_models import assert_tiled_equals_whole
from fcnkit.convert import verify
from fcnkit.metrics import confusion_matrix, scores

MEANS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@st.composite
def _labelling(draw):
    """(K, predictions, truths) as flat int arrays of one length, values in [0, K)."""
    k = draw(st.integers(1, 6))
    n = draw(st.integers(1, 60))
    values = st.lists(st.integers(0, k - 1), min_size=n, max_size=n)
    return k, np.array(draw(values)), np.array(draw(values))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=_labelling(), data=st.data())
def test_metrics_do_not_depend_on_class_names(case, data):
    k, pred, target = case
    perm = np.array(data.draw(st.permutations(range(k))))
    cm = confusion_matrix(pred, target, k)
    renamed = confusion_matrix(perm[pred], perm[target], k)
    expected = np.zeros_like(cm)
    expected[np.ix_(perm, perm)] = cm  # class i is now called perm[i]
    np.testing.assert_array_equal(renamed, expected)
    before, after = scores(cm), scores(renamed)
    for key in MEANS:
        assert _same(before[key], after[key]), key
    np.testing.assert_array_equal(np.asarray(after["iu"])[perm], np.asarray(before["iu"]))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=_labelling(), ignored=st.lists(st.integers(0, 255), max_size=30), data=st.data())
def test_ignored_pixels_change_nothing(case, ignored, data):
    k, pred, target = case
    where = data.draw(st.lists(st.integers(0, len(pred)), min_size=len(ignored), max_size=len(ignored)))
    # ignored pixels may hold any prediction, even one outside [0, K): they are never looked at
    pred2 = np.insert(pred, where, ignored)
    target2 = np.insert(target, where, 255)
    cm = confusion_matrix(pred, target, k)
    np.testing.assert_array_equal(confusion_matrix(pred2, target2, k), cm)
    assert cm.sum() == len(target)
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(target, minlength=k))
    np.testing.assert_array_equal(cm.sum(axis=0), np.bincount(pred, minlength=k))


@st.composite
def _classifier(draw):
    """A random classifier without padding: convs (kernel 1-3), optional 2x2 pools, then fully connected layers."""
    channels = draw(st.sampled_from([1, 3]))
    window = (draw(st.integers(8, 14)), draw(st.integers(8, 14)))
    layers: list[nn.Module] = []
    c, h, w = channels, *window
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 3))
        if min(h, w) - k + 1 < 1:
            break
        out = draw(st.integers(2, 5))
        layers += [nn.Conv2d(c, out, k), nn.ReLU()]
        c, h, w = out, h - k + 1, w - k + 1
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(c))
        if min(h, w) >= 2 and draw(st.booleans()):
            layers.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
            h, w = h // 2, w // 2
    hidden = draw(st.integers(3, 8))
    classes = draw(st.integers(2, 4))
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval(), channels, window


@pytest.mark.slow
@settings(max_examples=10, deadline=None, derandomize=True)
@given(case=_classifier(), extra=st.tuples(st.integers(0, 13), st.integers(0, 13)), seed=st.integers(0, 2**16))
def test_convolutionalized_classifier_equals_every_window(case, extra, seed):
    classifier, channels, window = case
    fcn = fcnkit.convolutionalize(classifier, input_size=window, in_channels=channels)
    size = (window[0] + extra[0], window[1] + extra[1])
    image = np.random.default_rng(seed).random((*size, channels)).astype(np.float32)
    assert verify(classifier, fcn, image) <= 1e-5  # also checks the grid has one score per full window
    stride = fcn.stride
    with torch.no_grad():
        grid = fcn(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert tuple(grid.shape[2:]) == tuple((s - win) // st_ + 1 for s, win, st_ in zip(size, window, stride))


def _registered_local_models() -> dict[str, nn.Module]:
    models = {}
    for name in fcnkit.list_models():
        torch.manual_seed(0)
        model = fcnkit.build_model(name, num_classes=3, width=0.0625).eval()
        if model.output_kind != "classifier" and fcnkit.analyze(model).local:
            models[name] = model
    return models


MODELS = _registered_local_models()


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(MODELS)), height=st.integers(1, 48), width=st.integers(1, 48),
       tile=st.one_of(st.integers(8, 64), st.tuples(st.integers(8, 64), st.integers(8, 64))),
       output=st.sampled_from(["logits", "labels"]), seed=st.integers(0, 2**16))
def test_registered_models_tile_exactly(name, height, width, tile, output, seed):
    model = MODELS[name]
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)
    assert_tiled_equals_whole(model, image, tile=tile, output=output)
