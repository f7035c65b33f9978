"""A real ``kill -9`` of ``python -m fcnkit train`` mid-run, then ``--resume``: the same weights as a run never killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fcnkit.checkpoint import read_checkpoint
from fcnkit.errors import CheckpointError
from fcnkit.training.loop import TrainConfig, train

STEPS = 16
ARGS = ["--model", "fcn32s", "--data", "scenes:48", "--patch", "32", "--batch-size", "2", "--width", "0.0625",
        "--steps", str(STEPS), "--checkpoint-every", "1", "--eval-every", "0", "--val-size", "40",
        "--val-count", "1", "--no-progress"]


def _fcnkit(out, *extra) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels as the in-process reference below
    return subprocess.Popen([sys.executable, "-m", "fcnkit", "train", *ARGS, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _step(path) -> int:
    try:
        return int(read_checkpoint(path)["step"])
    except CheckpointError:  # not written yet (the file appears whole or not at all)
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, one_thread):
    run = tmp_path / "run"
    proc = _fcnkit(run)
    deadline = time.monotonic() + 120
    while _step(run / "last.pt") < 2:
        assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(run / "last.pt")["step"]  # the file a kill left behind is whole
    assert 2 <= killed_at < STEPS

    resumed = _fcnkit(run, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"step {STEPS}:" in out
    assert not list(run.glob(".*.tmp"))

    whole = train(TrainConfig(model="fcn32s", data="scenes:48", patch=32, batch_size=2, width=0.0625,
                              steps=STEPS, checkpoint_every=STEPS, eval_every=0, val_size=40, val_count=1,
                              out=str(tmp_path / "whole"), progress=False))
    a = read_checkpoint(whole.last_checkpoint)
    b = read_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["metrics"] == b["metrics"]
