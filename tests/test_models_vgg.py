"""load_vgg16_weights on files of random tensors laid out like torchvision's vgg16 state dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcnkit.errors import CheckpointError, ModelError
from fcnkit.models import build_model, load_vgg16_weights

# torchvision.models.vgg16().features: index of each convolution and its output channels (written out by hand
# here, independently of fcnkit.models.vgg, so the test checks the layout rather than repeating it).
TORCHVISION_CONVS = {0: 64, 2: 64, 5: 128, 7: 128, 10: 256, 12: 256, 14: 256, 17: 512, 19: 512, 21: 512,
                     24: 512, 26: 512, 28: 512}
WIDTH = 1 / 16  # 4 ... 32 channels, fc 256: the same layout as the real file at a size a test can afford


def torchvision_layout_state(width: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state, channels = {}, 3
    for index, out in TORCHVISION_CONVS.items():
        out = round(out * width)
        state[f"features.{index}.weight"] = torch.randn(out, channels, 3, 3, generator=g)
        state[f"features.{index}.bias"] = torch.randn(out, generator=g)
        channels = out
    fc = round(4096 * width)
    state["classifier.0.weight"] = torch.randn(fc, channels * 7 * 7, generator=g)  # fc6 on the flattened 7x7 pool5
    state["classifier.0.bias"] = torch.randn(fc, generator=g)
    state["classifier.3.weight"] = torch.randn(fc, fc, generator=g)
    state["classifier.3.bias"] = torch.randn(fc, generator=g)
    state["classifier.6.weight"] = torch.randn(1000, fc, generator=g)  # ImageNet scores: not used by an FCN
    state["classifier.6.bias"] = torch.randn(1000, generator=g)
    return state


@pytest.fixture
def vgg_file(tmp_path):
    path = tmp_path / "vgg16.pt"
    state = torchvision_layout_state(WIDTH)
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name", ["fcn32s", "fcn8s"])
def test_load_copies_and_reshapes_every_weight(vgg_file, name):
    path, state = vgg_file
    model = build_model(name, num_classes=3, width=WIDTH)
    load_vgg16_weights(model, path)
    model_state = model.state_dict()
    for index in TORCHVISION_CONVS:
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            assert torch.equal(model_state[key], state[key]), key
    fc6 = model.classifier[0].weight
    assert fc6.shape == (256, 32, 7, 7)
    assert torch.equal(fc6.flatten(1), state["classifier.0.weight"])
    assert torch.equal(model.classifier[3].weight[:, :, 0, 0], state["classifier.3.weight"])


def test_fc6_convolution_equals_the_fully_connected_layer(vgg_file):
    """On a 7x7 pool5 map, the centre of the 7x7 convolution (padding 3) sees exactly what fc6 saw."""
    path, state = vgg_file
    model = build_model("fcn32s", num_classes=3, width=WIDTH)
    load_vgg16_weights(model, path)
    pool5 = torch.randn(2, 32, 7, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        conv = model.classifier[0](pool5)[:, :, 3, 3]
    linear = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
    assert torch.allclose(conv, linear, atol=1e-4)


def test_shape_mismatch_names_key_and_both_shapes_and_copies_nothing(vgg_file):
    path, _ = vgg_file
    model = build_model("fcn8s", num_classes=3, width=WIDTH * 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"key 'features.0.weight' has shape \(4, 3, 3, 3\), the model "
                                              r"expects \(8, 3, 3, 3\); build the model with width=1.0"):
        load_vgg16_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_late_mismatch_copies_nothing(tmp_path):
    state = torchvision_layout_state(WIDTH)
    state["classifier.3.weight"] = state["classifier.3.weight"][:, :100]
    torch.save(state, tmp_path / "bad.pt")
    model = build_model("fcn16s", num_classes=3, width=WIDTH)
    before = model.features[0].weight.clone()
    with pytest.raises(CheckpointError, match=r"key 'classifier.3.weight' has shape \(256, 100\), the model "
                                              r"expects \(256, 256, 1, 1\)"):
        load_vgg16_weights(model, tmp_path / "bad.pt")
    assert torch.equal(model.features[0].weight, before)


def test_missing_key_and_bad_files(tmp_path):
    model = build_model("fcn32s", num_classes=3, width=WIDTH)
    state = torchvision_layout_state(WIDTH)
    del state["features.14.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing key 'features.14.bias'"):
        load_vgg16_weights(model, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"nowhere.pt'?: file not found"):
        load_vgg16_weights(model, tmp_path / "nowhere.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"expected a state dict \(a dict of tensors\), got list"):
        load_vgg16_weights(model, tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"cannot be read as a weights-only torch file"):
        load_vgg16_weights(model, tmp_path / "junk.pt")


def test_non_vgg_model_is_refused(vgg_file):
    path, _ = vgg_file
    with pytest.raises(ModelError, match=r"expected a model with VGG16 'features' .* got UNet"):
        load_vgg16_weights(build_model("unet", num_classes=2, width=WIDTH), path)
