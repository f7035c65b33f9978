"""Faults during ``fcnkit train``: SIGTERM and a double Ctrl-C, a second run on the same folder, a full disk while a
checkpoint or metrics.jsonl is written. Each ends with one clear message, a consistent run folder, and ``--resume``
giving the weights and scores of a run that was never interrupted."""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcnkit.checkpoint import read_checkpoint
from fcnkit.cli import main
from fcnkit.training import loop as loop_module

from faults_disk import grow, small_disk

CHILD = Path(__file__).with_name("faults_child.py")
STEPS = 8
ARGS = ["train", "--model", "fcn32s", "--data", "scenes:48", "--patch", "32", "--batch-size", "2", "--width",
        "0.0625", "--steps", str(STEPS), "--eval-every", "2", "--val-size", "40", "--val-count", "1", "--no-progress"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The same training, never interrupted (one thread, like the children)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ref") / "run"
        assert main([*ARGS, "--checkpoint-every", "100", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return {"ckpt": read_checkpoint(out / "last.pt"), "metrics": _metrics(out),
            "sizes": {p.name: p.stat().st_size for p in out.glob("*.pt")}}


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(run: Path, reference: dict) -> None:
    ckpt = read_checkpoint(run / "last.pt")
    assert ckpt["step"] == STEPS
    for key, value in reference["ckpt"]["state_dict"].items():
        assert torch.equal(value, ckpt["state_dict"][key]), key
    assert ckpt["metrics"] == reference["ckpt"]["metrics"]
    assert _metrics(run) == reference["metrics"]
    assert not list(run.glob(".*.tmp")) and not (run / "train.lock").exists()


def _error(stderr: str) -> str:
    """The error at the end of stderr (training prints its validation scores there before it)."""
    assert "fcnkit: error: " in stderr, stderr
    return stderr[stderr.index("fcnkit: error: "):]


def _child(hook: str, n: int, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), hook, str(n), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _expect(proc: subprocess.Popen, marker: str) -> str:
    """Wait for the child's next line, which must start with ``marker``; return the rest (the pid at a point)."""
    line = proc.stdout.readline().strip()
    if line.split(" ")[0] != marker:
        proc.kill()
        raise AssertionError(f"expected {marker} from the child, got {line!r}: {proc.communicate()[1][-2000:]}")
    return line[len(marker):].strip()


def test_sigterm_saves_the_step_a_second_run_is_refused_and_resume_is_exact(reference, tmp_path, one_thread,
                                                                           capsys):
    run = tmp_path / "run"
    argv = [*ARGS, "--checkpoint-every", "100", "--out", str(run)]
    first = _child("evals", 1, argv)
    try:
        _expect(first, "FAULT-POINT")  # step 2 evaluated and logged; no last.pt yet (checkpoints every 100 steps)
        holder = json.loads((run / "train.lock").read_text())
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        for second in (argv, [*argv, "--overwrite"]):
            assert main(second) == 2
            assert capsys.readouterr().err == (
                f"fcnkit: error: run folder {run} is being written by another fcnkit run (pid {first.pid} on "
                f"{socket.gethostname()}, started {holder['started']}; lock file {run / 'train.lock'}); wait for "
                "it to finish or stop it, or choose another output location\n")
            assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # --overwrite deleted nothing
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err
    assert err.splitlines()[-2:] == [
        f"fcnkit: stopped by SIGTERM; step 2 of {STEPS} is saved in {run / 'last.pt'}",
        f"fcnkit: to continue, run: {shlex.join(['fcnkit', *argv, '--resume'])}"]
    assert read_checkpoint(run / "last.pt")["step"] == 2 and not (run / "train.lock").exists()

    assert main([*argv, "--resume"]) == 0
    _assert_same_run(run, reference)


def test_a_second_ctrl_c_stops_inside_a_checkpoint_write_and_the_previous_one_stays(reference, tmp_path,
                                                                                   one_thread):
    run = tmp_path / "run"
    argv = [*ARGS, "--checkpoint-every", "2", "--out", str(run)]
    proc = _child("save-twice", 2, argv)  # inside the 2nd last.pt write (step 4); step 2's is on disk
    try:
        _expect(proc, "FAULT-POINT")
        proc.send_signal(signal.SIGINT)
        _expect(proc, "REQUESTED")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines()[-2:] == [
        f"fcnkit: stopped at once by a second SIGINT; step 2 of {STEPS} is saved in {run / 'last.pt'}",
        f"fcnkit: to continue, run: {shlex.join(['fcnkit', *argv, '--resume'])}"]
    assert read_checkpoint(run / "last.pt")["step"] == 2  # whole: the half-written one was never renamed
    assert not list(run.glob(".*.tmp"))

    assert main([*argv, "--resume"]) == 0
    _assert_same_run(run, reference)


def test_a_full_disk_while_logging_metrics_leaves_no_torn_line_behind(reference, tmp_path, one_thread, monkeypatch,
                                                                      capsys):
    run = tmp_path / "run"
    argv = [*ARGS, "--checkpoint-every", "2", "--out", str(run)]
    real_open, appends = builtins.open, [0]

    class HalfLine:  # a metrics.jsonl append that gets half a line onto the disk, then ENOSPC
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("metrics.jsonl") and mode == "a":
            appends[0] += 1
            if appends[0] == 2:  # the step-4 line
                return HalfLine(f)
        return f

    monkeypatch.setattr(loop_module, "open", fake_open, raising=False)
    assert main(argv) == 2
    monkeypatch.undo()
    err = _error(capsys.readouterr().err)
    assert err.startswith(f"fcnkit: error: no space left on device while writing {run / 'metrics.jsonl'}; free "
                          "space there and run the same command with --resume:\n")
    assert not (run / "metrics.jsonl").read_text().endswith("\n")  # the torn line is there
    assert read_checkpoint(run / "last.pt")["step"] == 2

    assert main([*argv, "--resume"]) == 0
    _assert_same_run(run, reference)


def test_a_real_full_filesystem_while_saving_a_checkpoint_then_resume(reference, tmp_path, one_thread, capsys):
    last, best = reference["sizes"]["last.pt"], reference["sizes"].get("best.pt", 0)
    # room for the first last.pt and best.pt, not for a second last.pt beside the first while it is replaced
    size = f"{(last + best + last // 2) // 1024}k"
    with small_disk(tmp_path / "disk", size) as disk:
        run = disk / "run"
        argv = [*ARGS, "--checkpoint-every", "2", "--out", str(run)]
        assert main(argv) == 2
        err = _error(capsys.readouterr().err)
        assert re.match(rf"fcnkit: error: no space left on device while writing {run}/(last|best)\.pt; free space "
                        r"there and run the same command with --resume:\n", err), err
        assert read_checkpoint(run / "last.pt")["step"] == 2  # the previous checkpoint is whole
        assert not list(run.glob(".*.tmp")) and not (run / "train.lock").exists()
        grow(disk, "64m")
        assert main([*argv, "--resume"]) == 0
        _assert_same_run(run, reference)


def _torchrun(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)


def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step_and_resume_is_exact(tmp_path):
    argv = ["train", "--model", "fcn32s", "--data", "scenes:48", "--patch", "32", "--batch-size", "4", "--width",
            "0.0625", "--steps", "4", "--eval-every", "2", "--val-size", "40", "--val-count", "2", "--no-progress",
            "--checkpoint-every", "100"]
    run = tmp_path / "run"
    proc = _torchrun(str(CHILD), "evals", "1", *argv, "--out", str(run))
    try:
        workers = [int(_expect(proc, "FAULT-POINT")) for _ in range(2)]  # both ranks evaluated step 2, waiting
        # as SLURM does, to every process: each worker gets SIGTERM twice (its own, then torchrun's forwarded one)
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"fcnkit: stopped by SIGTERM; step 2 of 4 is saved in {run / 'last.pt'}" in err, err[-3000:]
    assert err.count("fcnkit: stopped by") == 1  # rank 0 speaks for both
    assert err.count("fcnkit: SIGTERM received: stopping after the current step and saving; torchrun ends the "
                     "workers after its grace period") == 1
    assert "stopped at once" not in err and read_checkpoint(run / "last.pt")["step"] == 2

    for extra in (["--out", str(run), "--resume"], ["--out", str(tmp_path / "whole")]):  # resumed, uninterrupted
        done = _torchrun("-m", "fcnkit", *argv, *extra)
        _, err = done.communicate(timeout=300)
        assert done.returncode == 0, err[-3000:]
    a, b = read_checkpoint(tmp_path / "whole" / "last.pt"), read_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert _metrics(run) == _metrics(tmp_path / "whole")
