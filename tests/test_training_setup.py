"""The learning-rate schedules (warm-up, one-cycle, cosine, poly) and the patch sampler's mirroring rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnkit.data import PatchSampler, open_dataset
from fcnkit.errors import InputError
from fcnkit.training.config import TrainConfig
from fcnkit.training.loop import train
from fcnkit.training.setup import build_optimizer, lr_factor, warmup_steps


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


def test_bad_schedule_and_warmup_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"schedule: expected one of onecycle, cosine, poly, found 'step'"):
        train(TrainConfig(model="unet", steps=2, schedule="step", out=str(tmp_path)))
    with pytest.raises(InputError, match=r"warmup: expected a number of steps >= 0, found -1"):
        train(TrainConfig(model="unet", steps=2, warmup=-1, out=str(tmp_path)))


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
