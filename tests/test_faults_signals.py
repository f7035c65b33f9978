"""SIGINT (Ctrl-C) and SIGTERM (a scheduler's notice): stop at a safe point, save, say how to continue; a second
signal stops at once. Real signals to real ``fcnkit`` processes, sent when the child reports that it reached the
chosen point (tests/faults_child.py), so nothing depends on timing; then ``--resume`` equals an uninterrupted run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from ome_check import check_ome_zarr

import fcnkit
from fcnkit import predict
from fcnkit.cli import continue_command, main
from fcnkit.signals import GracefulStop, Interrupted, active, on_interrupt, safe_point, stop_requested

CHILD = Path(__file__).with_name("faults_child.py")


def test_first_signal_requests_a_stop_and_the_safe_point_raises(capfd):
    with GracefulStop(unit="tile") as stop:
        assert active() is stop and not stop_requested()
        safe_point()  # nothing requested: a no-op
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs on this (main) thread before the next line
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(Interrupted) as caught:
            safe_point()
    assert active() is None and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert caught.value.status == 143 and not caught.value.immediate
    assert "fcnkit: SIGTERM received: stopping after the current tile and saving; send it again to stop at once" \
        in capfd.readouterr().err


def test_a_second_signal_stops_at_once():
    with GracefulStop():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)
    assert caught.value.immediate and caught.value.status == 130


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started with `nohup … &`
    try:
        with GracefulStop():
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop_requested()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_on_interrupt_records_what_is_saved():
    with pytest.raises(Interrupted) as caught:
        with on_interrupt(lambda: "3 of 9 tiles are saved"), on_interrupt(lambda: None):
            raise Interrupted(signal.SIGTERM)
    assert caught.value.saved == "3 of 9 tiles are saved" and caught.value.resumable


def test_the_command_to_continue():
    argv = ["predict", "--checkpoint", "m.pt", "my slide.tif", "--out", "o.zarr", "--overwrite"]
    assert continue_command(argv, resume=True) == "fcnkit predict --checkpoint m.pt 'my slide.tif' --out o.zarr --resume"
    assert continue_command([*argv[:-1], "--resume"], resume=True).count("--resume") == 1
    assert continue_command(argv, resume=False) == shlex.join(["fcnkit", *argv])


def _child(hook: str, n: int, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(CHILD), hook, str(n), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _reach(proc: subprocess.Popen, marker: str = "FAULT-POINT") -> None:
    line = proc.stdout.readline().strip()
    if line.split(" ")[0] != marker:
        proc.kill()
        raise AssertionError(f"expected {marker} from the child, got {line!r}: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_predict_stops_after_the_tiles_in_flight_and_resume_equals_an_uninterrupted_run(checkpoint, tmp_path,
                                                                                       signum, capsys):
    image = np.random.default_rng(3).integers(0, 256, (128, 96, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(32, 32))
    out = tmp_path / "big.ome.zarr"
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "big.tif"), "--out", str(out), "--tile", "16",
            "--quiet"]
    proc = _child("tiles", 3, argv)
    _reach(proc)  # three tiles are journaled and the writer waits for the signal
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    journal = tmp_path / "big.ome.zarr.journal"
    saved = len(journal.read_text().splitlines()) - 1
    name = signal.Signals(signum).name
    assert 3 <= saved < 48 and not out.exists() and not (tmp_path / "big.ome.zarr.lock").exists()
    assert err.splitlines()[-2:] == [
        f"fcnkit: stopped by {name}; {saved} of 48 tiles of {out} are saved in {out}.partial (journal "
        "big.ome.zarr.journal)",
        f"fcnkit: to continue, run: {shlex.join(['fcnkit', *argv, '--resume'])}"]

    assert main([*argv, "--resume"]) == 0
    assert not journal.exists()
    expected = predict(fcnkit.load_checkpoint(checkpoint), image, output="labels")
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][:], expected)
    check_ome_zarr(out)


def test_dask_blocks_stop_at_a_safe_point_and_resume(tmp_path):
    import dask.array as da

    from fcnkit.inference.dask import predict_dask, predict_into
    from fcnkit.io import create_output

    torch.manual_seed(0)
    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125).eval()
    image = np.random.default_rng(1).integers(0, 256, (64, 48, 3)).astype(np.uint8)
    lazy = predict_dask(model, da.from_array(image, chunks=32), output="labels", tile=16)
    path = tmp_path / "labels.zarr"

    class SignalAfterFirst:  # the scheduler's SIGTERM arrives while the first block is being written
        def __init__(self, out):
            self.out, self.shape, self.dtype = out, out.shape, out.dtype

        @property
        def done(self):
            return self.out.done

        def __setitem__(self, key, value):
            self.out[key] = value

        def mark_done(self, tile_id):
            self.out.mark_done(tile_id)
            if len(self.out.done) == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    with GracefulStop(unit="tile"), pytest.raises(Interrupted):
        with create_output(path, lazy.shape, lazy.dtype, chunks=16) as out:
            predict_into(lazy, SignalAfterFirst(out))
    assert not path.exists() and len(out.done) == 1  # one block journaled, then the stop
    with create_output(path, lazy.shape, lazy.dtype, chunks=16, resume=True) as out:
        assert len(out.done) == 1
        predict_into(lazy, out)
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], predict(model, image, output="labels"))


def test_a_stop_in_the_second_of_two_inputs_says_so_and_resume_skips_the_first(checkpoint, tmp_path, monkeypatch,
                                                                              capfd):
    from PIL import Image

    from fcnkit.io import journal as journal_module

    images = [np.random.default_rng(seed).integers(0, 256, (40, 32, 3)).astype(np.uint8) for seed in (1, 2)]
    for name, image in zip("ab", images):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out",
            f"{out}/", "--format", ".zarr", "--tile", "16", "--quiet"]
    real_append = journal_module.Journal.append

    def append(self, tile_id):  # SIGTERM once the second output has its first tile
        real_append(self, tile_id)
        if self.path.name == "b.zarr.journal" and len(self.done) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(journal_module.Journal, "append", append)
    assert main(argv) == 143
    monkeypatch.undo()
    err = capfd.readouterr().err.splitlines()
    saved = len((out / "b.zarr.journal").read_text().splitlines()) - 1
    assert err[-2] == (f"fcnkit: stopped by SIGTERM; {saved} of 6 tiles of {out / 'b.zarr'} are saved in "
                       f"{out / 'b.zarr.partial'} (journal b.zarr.journal); 1 of 2 outputs were complete before")
    assert err[-1] == f"fcnkit: to continue, run: {shlex.join(['fcnkit', *argv, '--resume'])}"
    assert (out / "a.zarr").is_dir() and not (out / "b.zarr").exists()

    assert main([*argv, "--resume"]) == 0
    model = fcnkit.load_checkpoint(checkpoint)
    for name, image in zip("ab", images):
        np.testing.assert_array_equal(zarr.open_array(str(out / f"{name}.zarr"))[:],
                                      predict(model, image, output="labels"))


def test_under_torchrun_a_forwarded_second_signal_is_the_same_request(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # from the scheduler
        os.kill(os.getpid(), signal.SIGTERM)  # the same, forwarded by the torchrun agent
        assert stop.requested
        with pytest.raises(Interrupted) as caught:
            safe_point()
    assert not caught.value.immediate
