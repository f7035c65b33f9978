"""Two runs on one output (a job resubmitted while the first still runs): the second refuses, naming the first; the
lock of a run killed with ``kill -9`` is taken over, and the result equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_check import check_ome_zarr

import fcnkit
from fcnkit import predict
from fcnkit.cli import main

CHILD = Path(__file__).with_name("faults_child.py")


@pytest.mark.slow
def test_a_second_predict_is_refused_and_a_killed_runs_lock_is_taken_over(checkpoint, tmp_path, capsys):
    image = np.random.default_rng(4).integers(0, 256, (128, 96, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(32, 32))
    out = tmp_path / "labels.ome.zarr"
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in.tif"), "--out", str(out), "--tile", "16",
            "--quiet"]
    first = subprocess.Popen([sys.executable, str(CHILD), "tiles", "2", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert first.stdout.readline().startswith("FAULT-POINT ")  # two tiles written, the output locked
        lock = tmp_path / "labels.ome.zarr.lock"
        holder = json.loads(lock.read_text())
        before = sorted(p.name for p in tmp_path.iterdir())
        for second in ([*argv, "--resume"], [*argv, "--overwrite"]):
            assert main(second) == 2
            assert capsys.readouterr().err == (
                f"fcnkit: error: output {out} is being written by another fcnkit run (pid {first.pid} on "
                f"{socket.gethostname()}, started {holder['started']}; lock file {lock}); wait for it to finish or "
                "stop it, or choose another output location\n")
            assert sorted(p.name for p in tmp_path.iterdir()) == before  # --overwrite deleted nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert lock.exists()

    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().err == (f"fcnkit: note: took over the lock {lock} of a run that has ended (pid "
                                       f"{first.pid} on {holder['host']}, started {holder['started']})\n")
    assert not lock.exists()
    expected = predict(fcnkit.load_checkpoint(checkpoint), image, output="labels")
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][:], expected)
    check_ome_zarr(out)
