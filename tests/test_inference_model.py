"""The inference copy of a model: BatchNorm folded exactly, the caller's model untouched, bf16 cast once, and what
bf16 promises (tiled = whole, labels close to fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiling_models import UNetBN, _randomize_batchnorm

import fcnkit
from fcnkit import InputError
from fcnkit.inference.model import InferenceModel, fold_batchnorm, native_bf16, prepare, resolve_precision
from fcnkit.inference.tiled import plan_prediction, predict, predict_tiled

# bf16 tiled vs bf16 whole, measured on a CPU with AMX: max |Δ logits| 0.0 for unet 0.25/1.0, encoder_decoder 0.5
# and fcn8s 0.125 (oneDNN computes each output pixel the same way whatever the tile); 0.0 as well for unet 0.25,
# encoder_decoder 0.5 and fcn8s 0.125 on an AVX2-only AMD EPYC, where bf16 is emulated and not fused. The bound
# allows a few bf16 ulps at |logits| ≲ 4, for kernels that do depend on the extent.
BF16_TILED_ATOL = 0.05


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def _unet_bn() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomize_batchnorm(UNetBN())


def test_folded_batchnorm_equals_the_model_in_fp32():
    model = _unet_bn()
    x = torch.from_numpy(_image(32, 40)).permute(2, 0, 1)[None].float()
    prepared = prepare(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.net.modules())
    with torch.inference_mode():
        want, got = model(x), prepared.net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_callers_model_is_left_alone():
    model = _unet_bn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare(model, precision="bf16")
    assert prepared.net is not model and prepared.source is model
    assert model.training and all(m.training for m in model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 5
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    assert all(p.dtype == torch.bfloat16 for p in prepared.net.parameters())
    assert not prepared.net.training


def test_an_fp32_copy_shares_the_tensors_it_does_not_change():
    model = _unet_bn()
    prepared = prepare(model)
    # the transposed convolutions and the head are neither folded nor cast: the same tensors, no extra memory
    assert prepared.net.up2.weight is model.up2.weight and prepared.net.head.weight is model.head.weight
    assert prepared.net.e1[0].conv.weight is not model.e1[0].weight  # folded (and fused with its ReLU): a new tensor


def test_fold_only_where_exact():
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert fold_batchnorm(seq.train()) == 0  # training-mode BatchNorm uses batch statistics: not foldable
    hooked = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    hooked[0].register_forward_hook(lambda *args: None)
    assert fold_batchnorm(hooked) == 0
    assert fold_batchnorm(seq.eval()) == 1 and isinstance(seq[1], torch.nn.Identity)


def test_precision_names_and_auto():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(InputError, match=r"precision: expected one of auto, fp32, bf16, found 'fp16'; pass 'auto' \(bf16 where the "
                                           r"hardware has it natively\), 'fp32' or 'bf16'\."):
        predict(_unet_bn(), _image(16, 16), precision="fp16")


def test_a_prepared_model_is_accepted_everywhere_and_checked():
    model = _unet_bn()
    prepared = prepare(model, precision="bf16")
    assert isinstance(prepared, InferenceModel)
    image = _image(40, 36)
    np.testing.assert_array_equal(predict(prepared, image), predict(model, image, precision="bf16"))
    with pytest.raises(InputError, match="prepared for bf16 on cpu"):
        predict(prepared, image, precision="fp32")


def test_bf16_outputs_are_float32_and_tiled_equals_whole():
    torch.manual_seed(0)
    model = fcnkit.build_model("unet", num_classes=4, width=0.25).eval()
    image = _image(150, 133)
    whole = predict(model, image, precision="bf16")
    tiled = predict_tiled(model, image, tile=48, precision="bf16")
    assert whole.dtype == tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=BF16_TILED_ATOL)
    assert (tiled.argmax(2) == whole.argmax(2)).mean() >= 0.9999
    fp32 = predict(model, image)
    assert 0 < np.abs(whole - fp32).max() < 0.5  # really bf16, and close


def test_a_plan_keeps_its_precision():
    model, image = _unet_bn(), _image(40, 36)
    plan = plan_prediction(model, image, tile=16, precision="bf16")
    assert plan.precision == "bf16"
    np.testing.assert_array_equal(predict_tiled(model, image, plan=plan), predict(model, image, precision="bf16"))
    with pytest.raises(InputError, match="plan was made for precision='bf16'"):
        predict_tiled(model, image, plan=plan, precision="fp32")
    with pytest.raises(InputError, match="plan= already fixes tile"):
        predict_tiled(model, image, plan=plan, tile=16)


@pytest.mark.slow
def test_bf16_labels_agree_with_fp32_on_a_trained_model(one_thread):
    from fcnkit.data.scenes import make_scene

    torch.manual_seed(0)
    model = fcnkit.build_model("unet", num_classes=11, width=0.125)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(60):  # a few seconds: enough for confident background and digit regions
        images, labels = zip(*(make_scene(64, split="train", index=4 * step + k) for k in range(4)))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(np.stack(labels)).long(),
                                                 ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    image, _ = make_scene((160, 144), split="val", index=0)
    fp32 = predict(model, image, output="labels")
    bf16 = predict(model, image, output="labels", precision="bf16")
    # measured: 99.96% of the pixels (the rest sit on class boundaries where two logits are within bf16's step)
    assert (fp32 == bf16).mean() >= 0.999


def test_cli_predict_precision_bf16(tmp_path, capsys):
    import zarr

    from fcnkit.checkpoint import save_checkpoint
    from fcnkit.cli import main
    from fcnkit.io import write_png

    torch.manual_seed(0)
    model = fcnkit.build_model("unet", num_classes=3, width=0.125).eval()
    save_checkpoint(tmp_path / "m.pt", model=model)
    image = _image(70, 52)
    write_png(tmp_path / "in.png", image)
    code = main(["predict", "--checkpoint", str(tmp_path / "m.pt"), str(tmp_path / "in.png"), "--out",
                 str(tmp_path / "out.zarr"), "--output", "logits", "--precision", "bf16", "--tile", "32", "--quiet"])
    assert code == 0, capsys.readouterr().err
    got = np.asarray(zarr.open_array(str(tmp_path / "out.zarr"), mode="r"))
    np.testing.assert_allclose(got, predict(model, image, precision="bf16"), rtol=0, atol=BF16_TILED_ATOL)


def test_conv_relu_is_fused_on_cpu_with_the_same_values():
    from fcnkit.inference.model import ConvReLU

    torch.manual_seed(0)
    model = fcnkit.build_model("unet", num_classes=3, width=0.125).eval()
    net = prepare(model).net
    assert sum(isinstance(m, ConvReLU) for m in net.modules()) == 18  # every conv → BN → ReLU of the U-Net
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    x = torch.from_numpy(_image(48, 40)).permute(2, 0, 1)[None].float().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), model(x), atol=1e-4, rtol=1e-5)


def test_bf16_is_not_fused_where_onednn_has_no_bf16_path(monkeypatch):
    """On an AVX2-only CPU oneDNN's fused convolution refuses bf16 ("bf16 path needs the cpu support ..."): such
    convolutions stay plain, which PyTorch computes there (emulated), and fp32 ones are still fused."""
    from fcnkit import hardware
    from fcnkit.inference import model as inference_model
    from fcnkit.inference.model import ConvReLU

    monkeypatch.setattr(inference_model, "onednn_bf16", lambda: False)
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)  # the warning asks fcnkit.hardware
    torch.manual_seed(0)
    model = fcnkit.build_model("unet", num_classes=3, width=0.125).eval()
    with pytest.warns(UserWarning, match=r"PyTorch emulates it, several times slower than fp32 .* precision='auto'"):
        bf16 = prepare(model, precision="bf16").net
    assert not any(isinstance(m, ConvReLU) for m in bf16.modules())
    assert sum(isinstance(m, ConvReLU) for m in prepare(model).net.modules()) == 18
    image = _image(40, 36)
    with pytest.warns(UserWarning, match="emulates"):
        got = predict(model, image, precision="bf16")
    assert 0 < np.abs(got - predict(model, image)).max() < 0.5  # computed in bf16, close to fp32
