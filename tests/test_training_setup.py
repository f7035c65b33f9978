"""The learning-rate schedules (warm-up, one-cycle, cosine, poly), the patch sampler's mirroring rule, the colour
augmentation of classifier windows and the class weights of the loss."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from fcnkit.data import PatchSampler, open_dataset
from fcnkit.errors import InputError
from fcnkit.training.config import TrainConfig
from fcnkit.training.loop import train
from fcnkit.training.setup import (Batches, TrainData, build_optimizer, class_weights, lr_factor, open_data,
                                   warmup_steps)


def test_warmup_then_decay_to_zero():
    for schedule in ("onecycle", "cosine", "poly"):
        factors = [lr_factor(k, 100, 10, schedule) for k in range(101)]
        assert factors[0] == pytest.approx(0.04) and factors[10] == pytest.approx(1.0)
        assert all(a < b for a, b in zip(factors[:10], factors[1:11]))  # warm-up rises
        assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then falls
        assert factors[100] == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "poly") == pytest.approx(0.5 ** 0.9)


def test_default_warmups_and_the_scheduler_follows_them():
    assert warmup_steps(TrainConfig(model="unet", steps=1000), 1000) == 300  # one-cycle: 30%
    assert warmup_steps(TrainConfig(model="unet", steps=1000, schedule="poly"), 1000) == 50
    assert warmup_steps(TrainConfig(model="unet", steps=1000, warmup=7), 1000) == 7
    model = torch.nn.Conv2d(1, 1, 1)
    opt, sched = build_optimizer(model, TrainConfig(model="unet", lr=0.1, schedule="cosine", warmup=2), 10)
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.004) and rates[2] == pytest.approx(0.1) and rates[-1] < 0.01
    assert isinstance(sched.state_dict()["lr_lambdas"][0], dict)  # plain data: checkpoints hold no code


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_optimizers_are_fused_on_cpu_and_step_as_the_plain_ones(optimizer):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3)
    plain = copy.deepcopy(model)
    cfg = TrainConfig(model="unet", optimizer=optimizer, lr=0.05, weight_decay=0.01)
    opt, _ = build_optimizer(model, cfg, 10)
    assert opt.defaults["fused"] is True
    lr = opt.param_groups[0]["lr"]  # the schedule's first rate
    reference = (torch.optim.SGD(plain.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=0.01)
                 if optimizer == "sgd" else torch.optim.AdamW(plain.parameters(), lr=lr, weight_decay=0.01))
    x = torch.randn(2, 3, 8, 8)
    for net, o in ((model, opt), (plain, reference)):
        for _ in range(3):
            o.zero_grad()
            net(x).square().mean().backward()
            o.step()
    for a, b in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_schedule_and_warmup_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"schedule: expected one of onecycle, cosine, poly, found 'step'"):
        train(TrainConfig(model="unet", steps=2, schedule="step", out=str(tmp_path)))
    with pytest.raises(InputError, match=r"warmup: expected a number of steps >= 0, found -1"):
        train(TrainConfig(model="unet", steps=2, warmup=-1, out=str(tmp_path)))


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_a_seed_numpy_cannot_take_is_refused_before_anything_runs(tmp_path, seed):
    # from Python as from the CLI: seeding ran before the data opened, and numpy's own error was a traceback
    with pytest.raises(InputError, match=rf"^seed: expected an integer from 0 to 2\*\*32 - 1 \(numpy's and torch's "
                                         rf"seed range\), found {seed!r}; pass e.g. --seed 0 \(seed=0 from Python\).$"):
        train(TrainConfig(model="unet", steps=1, seed=seed, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()



def test_validation_scenes_too_small_to_draw_are_refused_as_val_size():
    with pytest.raises(InputError, match=r"^val_size: expected a side of at least 8 pixels for the validation "
                                         r"scenes, found 5; pass e.g. --val-size 256, the default \(val_size=256 "
                                         r"from Python\).$"):
        open_data(TrainConfig(model="unet", steps=1, data="scenes", val_size=5))


class _Stripes:
    """Images whose left half is 10 and right half 200: a mirrored patch is easy to spot."""

    num_classes, class_names, palette = 2, ["a", "b"], np.zeros((2, 3), np.uint8)

    def __init__(self, mirror_safe: bool | None):
        if mirror_safe is not None:
            self.mirror_safe = mirror_safe

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        image = np.full((16, 16, 3), 10, np.uint8)
        image[:, 8:] = 200
        return image, (image[..., 0] > 100).astype(np.uint8)


def _mirrored(sampler: PatchSampler) -> int:
    return sum(int(sampler.sample(n)[0][0, 0, 0] == 200) for n in range(40))


def test_sampler_mirrors_only_data_that_is_mirror_safe():
    assert not open_dataset("scenes:48", count=1).mirror_safe  # handwriting is not mirror-symmetric
    args = dict(patch=16, seed=0, scale_jitter=None, focus=0.0)
    assert _mirrored(PatchSampler(_Stripes(False), **args)) == 0
    assert 5 < _mirrored(PatchSampler(_Stripes(True), **args)) < 35
    assert 5 < _mirrored(PatchSampler(_Stripes(None), **args)) < 35  # unknown data: mirrored, as photos are
    assert _mirrored(PatchSampler(_Stripes(True), flips=False, **args)) == 0
    assert 5 < _mirrored(PatchSampler(_Stripes(False), flips=True, **args)) < 35  # --mirror overrides


def _window_batches(colour_jitter: bool, step: int = 0, **kw) -> Batches:
    from fcnkit.training.ddp import Dist

    images = torch.arange(6 * 3 * 4 * 4, dtype=torch.float32).reshape(6, 3, 4, 4) % 256
    data = TrainData(train=None, val=None, num_classes=2, class_names=["a", "b"], palette=np.zeros((2, 3)),
                     train_windows=(images, torch.arange(6) % 2))
    cfg = TrainConfig(model="digit_classifier", batch_size=4, steps=1, colour_jitter=colour_jitter, **kw)
    return Batches(data, cfg, Dist(0, 1, torch.device("cpu")), start_step=step)


def test_classifier_windows_get_colour_augmentation_that_is_a_function_of_seed_and_step():
    plain, _ = _window_batches(False).next(torch.device("cpu"))
    jittered, labels = _window_batches(True).next(torch.device("cpu"))
    again, _ = _window_batches(True).next(torch.device("cpu"))
    assert torch.equal(jittered, again)  # the same seed and step: the same batch
    assert not torch.equal(plain, jittered)
    for original, seen in zip(plain, jittered):
        # each window is its own channels in some order, possibly with the colours inverted (255 - value)
        candidates = [original[list(order)] for order in itertools.permutations(range(3))]
        assert any(torch.equal(seen, c) or torch.equal(seen, 255 - c) for c in candidates)
    later, _ = _window_batches(True, step=1).next(torch.device("cpu"))
    assert not torch.equal(later, jittered)


def test_balanced_class_weights_favour_rare_classes_and_explicit_ones_are_checked():
    from fcnkit.training.ddp import Dist

    cfg = TrainConfig(model="unet", data="scenes:64", batch_size=4, steps=1, patch=32, class_weights="balanced")
    data = open_data(cfg)
    batches = Batches(data, cfg, Dist(0, 1, torch.device("cpu")), start_step=0)
    weights = class_weights(cfg, batches, data.num_classes, sample=4)
    assert weights.shape == (11,) and weights.dtype == torch.float32
    assert float(weights[0]) < min(0.5, float(weights[1:].min()))  # background is by far the most frequent class
    assert torch.equal(weights, class_weights(cfg, batches, data.num_classes, sample=4))  # deterministic
    cfg.class_weights = None
    assert class_weights(cfg, batches, data.num_classes) is None
    cfg.class_weights = [1.0, 2.0]
    with pytest.raises(InputError, match=r"class_weights: expected 11 numbers \(one per class\), found 2"):
        class_weights(cfg, batches, data.num_classes)
    cfg.class_weights = [1.0] + [3.0] * 10
    assert class_weights(cfg, batches, data.num_classes).tolist() == [1.0] + [3.0] * 10


@pytest.mark.parametrize(("weights", "message"), [
    ("median", r"class_weights: expected 'balanced', 'none' or one weight per class, found 'median'"),
    ([1.0, -1.0], r"class_weights: expected numbers >= 0, found -1.0"),
    ([0.0, 0.0], r"class_weights: expected at least one weight above 0"),
])
def test_bad_class_weights_are_refused(tmp_path, weights, message):
    with pytest.raises(InputError, match=message):
        train(TrainConfig(model="unet", steps=1, class_weights=weights, out=str(tmp_path / "run")))


def test_a_weighted_run_logs_its_weights_and_trains(tmp_path, capsys):
    result = train(TrainConfig(model="unet", data="scenes:48", patch=32, batch_size=2, width=0.0625, steps=2,
                               val_size=40, val_count=1, class_weights="balanced", out=str(tmp_path / "run"),
                               progress=False))
    assert sorted(result.losses) == [1, 2]
    assert "fcnkit: class weights " in capsys.readouterr().err
