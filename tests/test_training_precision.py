"""--precision: auto resolves to bf16 only with native bf16; bf16 runs resume exactly; bad values are refused."""

from __future__ import annotations

import pytest
import torch

from fcnkit.checkpoint import read_checkpoint
from fcnkit.errors import CheckpointError, InputError
from fcnkit.training import precision
from fcnkit.training import loop
from fcnkit.training.loop import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(model="fcn32s", data="scenes:48", patch=32, batch_size=2, width=0.0625, eval_every=0, val_size=40,
            val_count=1, progress=False)


def test_auto_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert precision.resolve_precision("auto", cpu) == "fp32" and precision.autocast_dtype("auto", cpu) is None
    with pytest.warns(UserWarning, match=r"precision='bf16' on a CPU without native bf16 .* pass precision='auto'"):
        assert precision.autocast_dtype("bf16", cpu) is torch.bfloat16  # asked for explicitly: emulated, honoured
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert precision.autocast_dtype("auto", cpu) is torch.bfloat16
    assert precision.autocast_dtype("fp32", cpu) is None
    with pytest.raises(InputError, match=r"precision: expected one of auto, fp32, bf16, found 'fp16'; pass 'auto'"):
        precision.resolve_precision("fp16", cpu)
    with pytest.raises(InputError, match=r"precision: expected one of auto, fp32, bf16, found 'half'"):
        train(TrainConfig(**TINY, steps=1, precision="half"))


class _Stop(Exception):
    pass


def test_bf16_run_resumed_halfway_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    whole = train(TrainConfig(**TINY, steps=6, checkpoint_every=3, precision="bf16", out=str(tmp_path / "whole")))
    save = loop._Run._save

    def save_then_stop(self, name, metrics):  # a crash right after step 3's checkpoint
        path = save(self, name, metrics)
        if name == "last.pt" and self.step == 3:
            raise _Stop
        return path

    monkeypatch.setattr(loop._Run, "_save", save_then_stop)
    with pytest.raises(_Stop):
        train(TrainConfig(**TINY, steps=6, checkpoint_every=3, precision="bf16", out=str(tmp_path / "split")))
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "split" / "last.pt")["extra"]["precision"] == "bf16"
    resumed = train(TrainConfig(**TINY, steps=6, checkpoint_every=3, precision="bf16", out=str(tmp_path / "split"),
                                resume=True))
    assert sorted(resumed.losses) == [4, 5, 6]
    assert all(resumed.losses[k] == whole.losses[k] for k in (4, 5, 6))
    a = read_checkpoint(whole.last_checkpoint)["state_dict"]
    b = read_checkpoint(resumed.last_checkpoint)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_precision(tmp_path):
    train(TrainConfig(**TINY, steps=2, checkpoint_every=1, precision="bf16", out=str(tmp_path)))
    with pytest.raises(CheckpointError, match=r"trained in bf16, this run would use fp32; pass --precision bf16"):
        train(TrainConfig(**TINY, steps=2, precision="fp32", out=str(tmp_path), resume=True))
