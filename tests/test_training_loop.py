"""The trainer: exact resume, staged initialisation, classifiers on windows, logs, and errors for bad numbers."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fcnkit.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from fcnkit.errors import CheckpointError, DataError, InputError, ModelError, OutputError
from fcnkit.training.loop import TrainConfig, _truncate_log, train
from fcnkit.training.setup import Batches, init_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(data="scenes:48", patch=32, batch_size=2, width=0.0625, val_size=40, val_count=2, progress=False)


def _config(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig(**{"model": "fcn32s", "steps": 4, "out": str(tmp_path / name), **TINY, **kw})


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    # fcn32s has Dropout, so this also checks that the torch RNG state is saved and restored.
    whole = train(_config(tmp_path, "whole", steps=6, eval_every=2, checkpoint_every=3))
    assert sorted(whole.losses) == [1, 2, 3, 4, 5, 6]

    real_next = Batches.next

    def crash_at_step_4(self, device):
        if self.step == 3:  # the batch of step 4: step 3's last.pt is on disk, step 4 never finishes
            raise KeyboardInterrupt
        return real_next(self, device)

    monkeypatch.setattr(Batches, "next", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "split", steps=6, eval_every=2, checkpoint_every=3))
    monkeypatch.setattr(Batches, "next", real_next)
    assert read_checkpoint(tmp_path / "split" / "last.pt")["step"] == 3

    resumed = train(_config(tmp_path, "split", steps=6, eval_every=2, checkpoint_every=3, resume=True))
    assert sorted(resumed.losses) == [4, 5, 6]
    assert [resumed.losses[s] for s in (4, 5, 6)] == [whole.losses[s] for s in (4, 5, 6)]
    _assert_same_weights(load_checkpoint(whole.last_checkpoint), load_checkpoint(resumed.last_checkpoint))
    assert resumed.metrics == whole.metrics

    def lines(run):
        return [{k: v for k, v in json.loads(ln).items() if k != "time"}
                for ln in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert lines("split") == lines("whole")
    assert [r["step"] for r in lines("whole")] == [2, 4, 6]


def test_metrics_log_and_checkpoints(tmp_path):
    result = train(_config(tmp_path, steps=2, eval_every=1))
    records = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert set(r) >= {"step", "loss", "pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "iu", "time"}
        assert len(r["iu"]) == 11 and r["loss"] > 0
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    best = read_checkpoint(result.best_checkpoint)
    assert best["metrics"]["mean_iu"] == max(r["mean_iu"] for r in records) == result.best_mean_iu
    model = load_checkpoint(result.last_checkpoint)
    assert model.fcnkit_meta["class_names"][:2] == ["background", "0"]
    assert model.fcnkit_meta["step"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]


def test_steps_run_deterministic_kernels_without_nan_fills_and_the_settings_come_back(tmp_path, monkeypatch):
    import fcnkit.training.loop as loop

    seen = []
    loss = loop._Run._loss

    def recording(self, x, y):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory))
        return loss(self, x, y)

    monkeypatch.setattr(loop._Run, "_loss", recording)
    assert not torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory
    train(_config(tmp_path, steps=2))
    assert seen == [(True, False), (True, False)]
    assert not torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory


def test_init_from_copies_matching_weights_and_reports_new_ones(tmp_path):
    from fcnkit.models import build_model

    fcn32 = build_model("fcn32s", num_classes=11, width=0.0625)
    path = save_checkpoint(tmp_path / "fcn32s.pt", model=fcn32)
    torch.manual_seed(1)
    fcn16 = build_model("fcn16s", num_classes=11, width=0.0625)
    new = init_from_checkpoint(fcn16, str(path))
    old = fcn32.state_dict()
    expected_new = sorted(k for k in fcn16.state_dict() if k not in old)
    assert new == expected_new and any(k.startswith("score_pool4") for k in new)
    for k, v in fcn16.state_dict().items():
        if k in old:
            assert torch.equal(v, old[k]), k

    result = train(_config(tmp_path, "fcn16s", model="fcn16s", steps=1, init_from=str(path)))
    assert result.new_parameters == expected_new


def test_init_from_unrelated_model_is_refused(tmp_path):
    from fcnkit.models import build_model

    path = save_checkpoint(tmp_path / "clf.pt", model=build_model("digit_classifier", num_classes=11, width=0.25))
    fcn = build_model("fcn32s", num_classes=11, width=0.0625)
    with pytest.raises(CheckpointError, match=r"clf\.pt'.*share no name and shape with 'fcn32s'"):
        init_from_checkpoint(fcn, str(path))


@pytest.mark.slow
def test_classifier_trains_on_windows(tmp_path):
    result = train(TrainConfig(model="digit_classifier", data="scenes", steps=2, batch_size=8, width=0.125,
                               val_count=22, windows=33, out=str(tmp_path / "clf"), progress=False))
    assert sorted(result.losses) == [1, 2]
    assert len(load_checkpoint(result.last_checkpoint).fcnkit_meta["class_names"]) == 11
    with pytest.raises(InputError, match=r"windows: expected a positive integer, found 0"):
        train(TrainConfig(model="digit_classifier", data="scenes", steps=2, windows=0, out=str(tmp_path / "w")))
    model = load_checkpoint(result.last_checkpoint)
    assert model.output_kind == "classifier"
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 11)
    assert 0.0 <= result.metrics["pixel_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"steps": 0}, InputError, r"steps: expected a positive integer, found 0"),
        ({"steps": None}, InputError, r"expected exactly one of them"),
        ({"patch": 0}, InputError, r"patch: expected a positive integer, found 0"),
        ({"lr": -0.1}, InputError, r"lr: expected a positive number, found -0.1"),
        ({"optimizer": "adam"}, InputError, r"optimizer: expected one of adamw, sgd, found 'adam'"),
        ({"batch_size": 2.5}, InputError, r"batch_size: expected a positive integer"),
        ({"resume": True}, CheckpointError, r"resume: expected '.*last\.pt' from an earlier run, found none"),
        ({"patch": 100}, DataError, r"--patch 100 larger than every training image \(largest 48x48\).*--patch 48"),
        ({"model": "heatmap_net"}, ModelError, r"output_kind 'grid'"),
    ],
)
def test_bad_numbers_are_refused(tmp_path, change, error, message):
    with pytest.raises(error, match=message):
        train(_config(tmp_path, **change))


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    train(_config(tmp_path, steps=1))
    with pytest.raises(InputError, match=r"holds a run already.*--resume.*--overwrite"):
        train(_config(tmp_path, steps=1))
    assert train(_config(tmp_path, steps=1, overwrite=True)).step == 1


def test_a_failed_overwrite_keeps_the_previous_run_and_a_failed_start_leaves_no_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (run / name).write_text(f"previous {name}")
    with pytest.raises(ModelError, match="nope"):
        train(_config(tmp_path, model="nope", overwrite=True))
    with pytest.raises(CheckpointError, match="missing.pt"):
        train(_config(tmp_path, init_from=str(tmp_path / "missing.pt"), overwrite=True))
    assert {p.name: p.read_text() for p in run.iterdir()} == {
        name: f"previous {name}" for name in ("last.pt", "best.pt", "metrics.jsonl")}
    with pytest.raises(ModelError, match="nope"):
        train(_config(tmp_path, "fresh", model="nope"))
    assert not (tmp_path / "fresh").exists()


def test_out_under_a_regular_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match=r"a_file is a file, not a folder"):
        train(_config(tmp_path, "a_file/run", model="nope"))  # refused before the model name is even looked at


def test_truncate_log_keeps_earlier_lines_and_is_atomic(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (2, 4, 6)))
    before = log.read_text()

    def power_cut(fd):
        raise OSError("fsync failed (simulated)")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError, match="simulated"):
        _truncate_log(log, 4)
    assert log.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    monkeypatch.undo()
    _truncate_log(log, 4)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [2, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_resume_with_another_model_is_refused(tmp_path):
    train(_config(tmp_path, steps=1))
    with pytest.raises(CheckpointError, match=r"resume: .*holds a fcn32s model, found --model fcn16s; resume with"):
        train(_config(tmp_path, model="fcn16s", steps=2, resume=True))
    with pytest.raises(CheckpointError, match=r"run of 1 steps, found 3 now"):
        train(_config(tmp_path, steps=3, resume=True))
