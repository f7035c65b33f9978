"""Every registered model, looped over automatically: forward, backward, odd sizes, batches, output-size rules."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fcnkit
from fcnkit.errors import InputError, ModelError
from fcnkit.models import build_model, list_models, model_options, register_model

MODELS = list_models()
WIDTH = 1 / 32  # tiny channel counts: the whole zoo runs in seconds on a CPU
NUM_CLASSES = 3


def _build(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=NUM_CLASSES, width=WIDTH, **options)


def _image(n: int, h: int, w: int, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, h, w, generator=torch.Generator().manual_seed(1)) * 255


def _size_for(model: torch.nn.Module, h: int, w: int) -> tuple[int, int]:
    """Classifiers trained on fixed windows only take that window; every other model takes (h, w)."""
    return tuple(getattr(model, "input_size", (h, w)))


def _expected_shape(model: torch.nn.Module, n: int, h: int, w: int) -> tuple[int, ...]:
    if model.output_kind == "dense":
        return (n, NUM_CLASSES, h, w)
    if model.output_kind == "grid":
        s = model.output_stride
        return (n, NUM_CLASSES, math.ceil(h / s), math.ceil(w / s))
    return (n, NUM_CLASSES)


def test_list_models_has_the_zoo():
    assert MODELS == ["allconv_classifier", "digit_classifier", "encoder_decoder", "fcn16s", "fcn16s_on", "fcn32s",
                      "fcn32s_on", "fcn8s", "fcn8s_on", "heatmap_net", "segnet", "unet"]
    assert fcnkit.list_models() == MODELS
    assert fcnkit.build_model is build_model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("hw", [(67, 93), (129, 40)])
def test_forward_backward_every_parameter_gets_a_gradient(name, hw):
    model = _build(name).train()
    h, w = _size_for(model, *hw)
    x = _image(2, h, w).requires_grad_()
    y = model(x)
    assert y.shape == _expected_shape(model, 2, h, w)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [0, 1, 2])
def test_batch_sizes_in_eval(name, batch):
    model = _build(name).eval()  # eval: BatchNorm needs more than one value per channel in training mode
    h, w = _size_for(model, 40, 29)
    with torch.no_grad():
        y = model(_image(batch, h, w))
    assert y.shape == _expected_shape(model, batch, h, w)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_input_gives_the_same_answer(name):
    model = _build(name).eval()
    h, w = _size_for(model, 37, 50)
    x = _image(2, h, w)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_common_surface(name):
    model = _build(name)
    assert model.output_kind in ("dense", "grid", "classifier")
    assert isinstance(model.normalize, fcnkit.layers.Normalize)
    if model.output_kind in ("dense", "grid"):
        assert isinstance(model.multiple, int) and model.multiple >= 1
    spec = model.fcnkit_spec
    assert spec == {"name": name, "num_classes": NUM_CLASSES, "in_channels": 3,
                    "options": {**model_options(name), "width": WIDTH}}
    assert json.loads(json.dumps(spec)) == spec
    rebuilt = build_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                          **spec["options"])
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("name", MODELS)
def test_single_channel_input(name):
    model = build_model(name, num_classes=2, in_channels=1, width=WIDTH).eval()
    h, w = _size_for(model, 21, 34)
    with torch.no_grad():
        assert model(_image(1, h, w, channels=1)).shape[:2] == (1, 2)
    with pytest.raises(InputError, match=r"expected 1 channels"):
        model(_image(1, h, w, channels=3))


def _output_kind(name: str) -> str:
    with torch.device("meta"):  # no memory, no initialisation: only the attribute is wanted
        return build_model(name, num_classes=2).output_kind


@pytest.mark.parametrize("name", [n for n in MODELS if _output_kind(n) == "dense"])
def test_dense_models_tiny_inputs(name):
    model = _build(name).eval()
    with torch.no_grad():
        for hw in [(1, 1), (1, 50), (33, 2)]:
            assert model(_image(1, *hw)).shape == (1, NUM_CLASSES, *hw)


def test_heatmap_net_grid_sizes():
    model = _build("heatmap_net").eval()
    assert model.output_kind == "grid"
    with torch.no_grad():
        assert model(_image(1, 64, 64)).shape == (1, NUM_CLASSES, 8, 8)
        assert model(torch.zeros(1, 3, 640, 320)).shape == (1, NUM_CLASSES, 80, 40)


def test_allconv_classifier_any_size():
    model = _build("allconv_classifier").eval()
    with torch.no_grad():
        for hw in [(28, 28), (28, 16), (1, 1), (67, 93)]:
            assert model(_image(2, *hw)).shape == (2, NUM_CLASSES)


def test_digit_classifier_window_and_head():
    model = build_model("digit_classifier", num_classes=11, width=0.25)
    assert model.output_kind == "classifier" and model.input_size == (32, 32)
    assert model(_image(2, 32, 32)).shape == (2, 11)
    # convolutionalizable: the head is Flatten -> Linear -> ReLU -> Dropout -> Linear
    assert [type(m).__name__ for m in model.classifier] == ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert all(c.padding == (0, 0) for c in model.features if isinstance(c, torch.nn.Conv2d))
    with pytest.raises(InputError, match=r"expected 32x32 windows \(N, C, 32, 32\), got 64x48; .*convolutionalize.*"
                                         r"\(`fcnkit convert` from the command line\) to score a whole image"):
        model(_image(1, 64, 48))


def test_digit_classifier_wider_windows_keep_the_head_and_stride():
    model = build_model("digit_classifier", num_classes=11, width=0.25, window=48)
    assert model.input_size == (48, 48) and model(_image(2, 48, 48)).shape == (2, 11)
    narrow = build_model("digit_classifier", num_classes=11, width=0.25)
    # the same head (5x5 features), two more unpadded convolutions at stride 4
    assert model.classifier[1].in_features == narrow.classifier[1].in_features
    assert len(model.features) == len(narrow.features) + 4
    with pytest.raises(InputError, match=r"expected 48x48 windows"):
        model(_image(1, 32, 32))
    for window in (40, 16, True):
        with pytest.raises(InputError, match=r"digit_classifier window: expected 32, 48, 64"):
            build_model("digit_classifier", num_classes=11, window=window)
    with pytest.raises(InputError, match=r"digit_classifier dropout: expected a probability in \[0, 1\), got 1.5"):
        build_model("digit_classifier", num_classes=11, dropout=1.5)


def test_fcn_with_batch_norm_taps_the_same_pools_and_refuses_plain_vgg16_weights(tmp_path):
    from fcnkit.models import load_vgg16_weights

    torch.manual_seed(0)
    plain = build_model("fcn8s", num_classes=NUM_CLASSES, width=0.125)
    model = build_model("fcn8s", num_classes=NUM_CLASSES, width=0.125, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.features) == 13
    # the skips tap the same pools (the 3rd and 4th), at indices moved by the BatchNorm layers before them
    assert model.pool_indices == {"pool3": 23, "pool4": 33, "pool5": 43}
    assert plain.pool_indices == {"pool3": 16, "pool4": 23, "pool5": 30}
    pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools[2:] == [23, 33, 43]
    assert model.eval()(_image(1, 45, 70)).shape == (1, NUM_CLASSES, 45, 70)
    torch.save({}, tmp_path / "vgg16.pt")
    with pytest.raises(ModelError, match=r"with batch_norm=True; ImageNet VGG16 weights fit batch_norm=False"):
        load_vgg16_weights(model, tmp_path / "vgg16.pt")


def test_fcn_paper_widths_and_names():
    with torch.device("meta"):  # the paper's widths: 134M parameters, checked without allocating them
        model = build_model("fcn8s", num_classes=21)
    fc6, fc7 = model.classifier[0], model.classifier[3]
    assert (fc6.in_channels, fc6.out_channels, fc6.kernel_size, fc6.padding) == (512, 4096, (7, 7), (3, 3))
    assert (fc7.in_channels, fc7.out_channels, fc7.kernel_size) == (4096, 4096, (1, 1))
    assert model.features[0].out_channels == 64 and model.features[28].out_channels == 512
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"features", "classifier", "score_fr", "upscore2", "score_pool4", "upscore_pool4",
                     "score_pool3", "upscore8"}
    small = _build("fcn8s")
    assert small.score_pool4.weight.abs().sum() == 0 and small.score_pool3.weight.abs().sum() == 0
    assert model.upscore8.kernel_size == (16, 16) and model.upscore8.stride == (8, 8)
    assert {n.split(".")[0] for n, _ in _build("fcn16s").named_parameters()} >= {"upscore2", "upscore16"}
    assert {n.split(".")[0] for n, _ in _build("fcn32s").named_parameters()} >= {"upscore"}


def test_fcn8s_starts_as_bilinear_upsampling_of_fcn32s_scores():
    """With zero-initialised skip scores, FCN-8s's output is score_fr upsampled by the bilinear transposed convs."""
    model = _build("fcn8s").eval()
    x = _image(1, 64, 96)
    with torch.no_grad():
        out = model(x)
        feats = model.features(model.normalize(x))
        coarse = model.score_fr(model.classifier(feats))  # (1, K, 2, 3)
        ref = model.upscore8(model.upscore_pool4(model.upscore2(coarse)))
    assert torch.allclose(out, ref, atol=1e-5)


def test_width_scales_channels():
    assert build_model("unet", num_classes=2, width=0.25).down[0][0][0].out_channels == 16
    with torch.device("meta"):
        assert build_model("unet", num_classes=2, width=1.0).down[4][0][0].out_channels == 1024


def test_unknown_model_lists_valid_ones_and_suggests():
    with pytest.raises(ModelError, match=r"unknown model 'fcn8'; did you mean 'fcn8s'\? expected one of: "
                                         r"allconv_classifier, .*unet"):
        build_model("fcn8", num_classes=2)


def test_bad_options_and_arguments():
    with pytest.raises(ModelError, match=r"model 'unet': unknown option 'depth'; expected options: width"):
        build_model("unet", num_classes=2, depth=5)
    with pytest.raises(ModelError, match=r"num_classes: expected an integer >= 1, got 0"):
        build_model("unet", num_classes=0)
    with pytest.raises(ModelError, match=r"num_classes: expected an integer >= 1, got True"):
        build_model("unet", num_classes=True)
    with pytest.raises(ModelError, match=r"in_channels: expected an integer >= 1, got 2.5"):
        build_model("unet", num_classes=2, in_channels=2.5)
    with pytest.raises(ModelError, match=r"option width: expected a positive channel multiplier .* got -1"):
        build_model("unet", num_classes=2, width=-1)
    assert model_options("fcn8s") == {"width": 1.0, "batch_norm": False}


def test_duplicate_registration_raises():
    def unet(*, num_classes, in_channels=3):  # same name as the registered U-Net
        raise AssertionError("never built")

    with pytest.raises(ModelError, match=r"a model named 'unet' is registered already"):
        register_model(unet)
    assert list_models() == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_every_model_traces_with_torch_fx(name):
    """The geometry analyzer and the convolutionalizer read models through torch.fx (pad_to_multiple as a leaf)."""
    model = _build(name).eval()
    tracer = torch.fx.Tracer(autowrap_functions=(fcnkit.layers.pad_to_multiple,))
    traced = torch.fx.GraphModule(model, tracer.trace(model))
    h, w = _size_for(model, 45, 70)
    x = _image(1, h, w)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)


# built once for the property test below (hypothesis calls it many times); eval mode, never trained
_DENSE = _build("encoder_decoder").eval()
_GRID = _build("heatmap_net").eval()


@settings(max_examples=12, deadline=None, derandomize=True)
@given(h=st.integers(1, 70), w=st.integers(1, 70))
def test_any_size_in_matching_size_out(h, w):
    x = _image(1, h, w)
    with torch.no_grad():
        assert _DENSE(x).shape == (1, NUM_CLASSES, h, w)
        assert _GRID(x).shape == (1, NUM_CLASSES, -(-h // 8), -(-w // 8))

