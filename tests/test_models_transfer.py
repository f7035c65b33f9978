"""Transfer models (fcn_on, fcn32s_on/fcn16s_on/fcn8s_on): geometry-aligned, exactly tileable, rebuilt from checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.checkpoint import load_checkpoint, save_checkpoint
from fcnkit.errors import ModelError
from fcnkit.models import build_model, fcn_on

pytestmark = pytest.mark.usefixtures("one_thread")


def _classifier(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return build_model("digit_classifier", num_classes=num_classes, width=0.25).eval()


def _image(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("skips", [0, 1, 2])
def test_any_size_in_matching_size_out_and_exactly_tileable(skips):
    model = fcn_on(_classifier(), num_classes=5, skips=skips).eval()
    with torch.no_grad():
        for h, w in [(1, 1), (1, 50), (33, 2), (37, 50), (67, 93)]:
            assert model(torch.rand(2, 3, h, w) * 255).shape == (2, 5, h, w)
    geometry = fcnkit.analyze(model)
    assert geometry.local and geometry.output_stride == 1 and geometry.input_multiple == 4
    image = _image(100, 90)
    whole = fcnkit.predict(model, image)
    tiled = fcnkit.predict_tiled(model, image, tile=48)  # 2x2 tiles: seams in both directions
    assert np.abs(whole - tiled).max() < 1e-4


def test_a_wider_window_classifier_gives_a_tileable_transfer_net():
    torch.manual_seed(0)
    classifier = build_model("digit_classifier", num_classes=5, width=0.25, window=48).eval()
    model = fcn_on(classifier, num_classes=5, skips=2).eval()
    assert model.window == (48, 48)
    image = _image(90, 100)
    assert fcnkit.predict(model, image).shape == (90, 100, 5)
    assert np.abs(fcnkit.predict(model, image) - fcnkit.predict_tiled(model, image, tile=48)).max() < 1e-4


def test_scores_start_as_the_classifier_windows_centred_on_each_pixel():
    """FCN-32s style, untrained past the classifier: each pixel's scores interpolate the scores of the classifier
    windows whose centres surround it (so the trunk, score layer and final crop are in register)."""
    classifier = _classifier()
    model = fcn_on(classifier, num_classes=5, skips=0).eval()
    image = _image(96, 96, seed=3)
    scores = fcnkit.predict(model, image)  # (96, 96, 5)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    padded = torch.nn.functional.pad(x, (model.before, 40, model.before, 40))
    for py, px in [(40, 41), (50, 62), (57, 45)]:
        # window with top-left 4i (padded coordinates) is centred at 4i + 15.5, image pixel 4i + 15.5 - before
        iy, ix = int((py + model.before - 15.5) // 4), int((px + model.before - 15.5) // 4)
        windows = torch.cat([padded[:, :, 4 * a:4 * a + 32, 4 * b:4 * b + 32]
                             for a in (iy, iy + 1) for b in (ix, ix + 1)])
        with torch.no_grad():
            reference = classifier(windows).numpy()  # (4, 5)
        assert np.all(scores[py, px] >= reference.min(0) - 1e-4), (py, px)
        assert np.all(scores[py, px] <= reference.max(0) + 1e-4), (py, px)


def test_classifier_head_becomes_the_score_layer_only_when_the_classes_match():
    classifier = _classifier(num_classes=5)
    head = classifier.classifier[-1]
    same = fcn_on(classifier, num_classes=5, skips=2)
    assert torch.equal(same.score_fr.weight.flatten(), head.weight.flatten())
    other = fcn_on(classifier, num_classes=3, skips=2)
    assert other.score_fr.weight.shape == (3, head.in_features, 1, 1)
    assert all(not s.weight.detach().any() for s in same.score_skips)  # skips start at zero, as in the paper


def test_checkpoint_rebuilds_it_without_the_backbone_file(tmp_path):
    model = fcn_on(_classifier(), num_classes=5, skips=2)
    assert model.fcnkit_spec["name"] == "fcn8s_on"
    assert model.fcnkit_spec["options"]["backbone"]["name"] == "digit_classifier"
    with torch.no_grad():
        model.score_skips[0].weight.add_(0.5)  # a trained-looking change the rebuilt model must carry
    path = save_checkpoint(tmp_path / "seg.pt", model=model)
    loaded = load_checkpoint(path)
    x = torch.rand(1, 3, 45, 61) * 255
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_a_convolutionalized_classifier_and_a_foreign_one_work():
    classifier = _classifier()
    fcn = fcnkit.convolutionalize(classifier, input_size=(32, 32))
    a = fcn_on(fcn, num_classes=5, skips=1).eval()
    b = fcn_on(classifier, num_classes=5, skips=1).eval()
    x = torch.rand(1, 3, 40, 40) * 255
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    foreign = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                            nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 2))
    seg = fcn_on(foreign, num_classes=2, skips=1, input_size=(14, 14), in_channels=1)
    assert seg(torch.rand(1, 1, 23, 19)).shape == (1, 2, 23, 19)
    assert not hasattr(seg, "fcnkit_spec")  # no spec to rebuild a foreign net from


def test_errors_name_the_problem():
    classifier = _classifier()
    with pytest.raises(ModelError, match=r"skips 0, 1 or 2"):
        fcn_on(classifier, num_classes=5, skips=3)
    with pytest.raises(ModelError, match=r"output_kind 'dense'.*train a classifier first"):
        fcn_on(build_model("unet", num_classes=2, width=0.125), num_classes=2)
    with pytest.raises(ModelError, match=r"training window .* unknown; pass input_size"):
        fcn_on(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2, 2)), num_classes=2)
    one_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ModelError, match=r"found a \(6, 6\) convolution \(a single Linear layer.*hidden Linear"):
        fcn_on(one_linear, num_classes=2, input_size=(8, 8))
    one_stage = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.Linear(3, 2))
    with pytest.raises(ModelError, match=r"skips=1 needs 1 feature maps finer than the final stride 1"):
        fcn_on(one_stage, num_classes=2, skips=1, input_size=(8, 8))
    with pytest.raises(ModelError, match=r"width comes from the backbone spec"):
        build_model("fcn8s_on", num_classes=5, width=0.5, backbone=classifier.fcnkit_spec)
    with pytest.raises(ModelError, match=r"backbone must be a model name or an fcnkit_spec dict"):
        build_model("fcn8s_on", num_classes=5, backbone=3)


def test_registry_builders_record_the_backbone():
    model = build_model("fcn16s_on", num_classes=11, width=0.25)
    assert model.fcnkit_spec["options"] == {"backbone": "digit_classifier", "width": 0.25, "input_size": None}
    rebuilt = build_model("fcn16s_on", num_classes=11, **model.fcnkit_spec["options"])
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_it_takes_0_255_values_as_its_classifier_did_so_16_bit_images_are_scaled(tmp_path):
    """Its traced trunk holds the classifier's Normalize as plain operations: the model says what it takes, so a
    16-bit image is scaled to 0-255 and a float image in [0, 1] is warned about, also after a checkpoint."""
    from fcnkit.inference.inputs import PixelRangeWarning, takes_0_255

    model = fcn_on(_classifier(), num_classes=5, skips=1).eval()
    rebuilt = load_checkpoint(save_checkpoint(tmp_path / "t.pt", model=model))
    foreign = fcn_on(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 8),
                                   nn.ReLU(), nn.Linear(8, 5)), num_classes=5, input_size=(32, 32), skips=0).eval()
    assert takes_0_255(model) and takes_0_255(rebuilt) and not takes_0_255(foreign)
    image = _image(40, 36).astype(np.uint8)
    as_16_bit = fcnkit.predict(rebuilt, image.astype(np.uint16) * 257)
    np.testing.assert_array_equal(as_16_bit, fcnkit.predict(rebuilt, image))
    with pytest.warns(PixelRangeWarning, match=r"image values lie in \[0, 1\]"):
        fcnkit.predict(model, image / 255.0)
