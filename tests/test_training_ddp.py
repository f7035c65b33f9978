"""Two-process DDP training on CPU (gloo) with torchrun: the same result as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fcnkit.checkpoint import load_checkpoint, read_checkpoint
from fcnkit.training.loop import TrainConfig, train

# encoder_decoder has neither BatchNorm nor Dropout, so two half batches equal one whole batch up to the loss
# normalisation (each rank averages over its own valid pixels) and float summation order.
SETTINGS = dict(model="encoder_decoder", data="scenes:48", patch=32, batch_size=4, width=0.125, steps=3,
                optimizer="sgd", lr=0.01, eval_every=0, val_size=40, val_count=3)


def _flags() -> list[str]:
    flags = []
    for key, value in SETTINGS.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


@pytest.mark.slow
def test_two_processes_match_one_and_only_rank_0_writes(tmp_path, one_thread):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fcnkit", "train", *_flags(), "--no-progress", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("step 3:") == 1  # rank 1 prints nothing
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3]  # one line: rank 1 wrote nothing
    model = load_checkpoint(out / "last.pt")
    assert model(torch.zeros(1, 3, 21, 35)).shape == (1, 11, 21, 35)

    single = train(TrainConfig(**SETTINGS, out=str(tmp_path / "single"), progress=False))
    assert records[0]["loss"] == pytest.approx(sum(single.losses.values()) / 3, abs=2e-3)
    a = read_checkpoint(single.last_checkpoint)["state_dict"]
    b = read_checkpoint(out / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=5e-4, rtol=1e-3)
