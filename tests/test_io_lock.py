"""One writer per output: a second process is refused, naming the first; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from fcnkit.errors import OutputError
from fcnkit.io.lock import WriterLock, lock_path

HOLD = """
import sys
from pathlib import Path
from fcnkit.io.lock import WriterLock
lock = WriterLock.acquire(Path(sys.argv[1]), target="output o.zarr")
print("FAULT-POINT", flush=True)
sys.stdin.read()   # holds the lock until the test closes stdin or kills it
lock.release()
"""


def _holder(path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "FAULT-POINT"
    return proc


def test_lock_path_is_beside_the_output(tmp_path):
    assert lock_path(tmp_path / "slide.ome.zarr") == tmp_path / "slide.ome.zarr.lock"


def test_acquire_writes_the_holder_and_release_removes_the_file(tmp_path):
    path = tmp_path / "o.zarr.lock"
    with WriterLock.acquire(path, target="output o.zarr") as lock:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert lock.held
    assert not path.exists() and not lock.held


def test_a_second_process_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "o.zarr.lock"
    first = _holder(path)
    try:
        started = json.loads(path.read_text())["started"]
        with pytest.raises(OutputError) as caught:
            WriterLock.acquire(path, target="output o.zarr")
        assert str(caught.value) == (
            f"output o.zarr is being written by another fcnkit run (pid {first.pid} on {socket.gethostname()}, "
            f"started {started}; lock file {path}); wait for it to finish or stop it, or choose another output "
            "location")
    finally:
        first.communicate("")
    assert first.returncode == 0 and not path.exists()
    WriterLock.acquire(path, target="output o.zarr").release()  # free again once the first one is done


def test_the_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path):
    path = tmp_path / "o.zarr.lock"
    first = _holder(path)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert path.exists()  # kill -9 leaves the file; the kernel released the lock itself
    before = json.loads(path.read_text())
    notes = []
    lock = WriterLock.acquire(path, target="output o.zarr", note=notes.append)
    assert notes == [f"took over the lock {path} of a run that has ended (pid {first.pid} on {before['host']}, "
                     f"started {before['started']})"]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_an_unclosed_writer_of_this_process_does_not_lock_it_out(tmp_path):
    path = tmp_path / "o.zarr.lock"
    forgotten = WriterLock.acquire(path, target="output o.zarr")
    notes = []
    again = WriterLock.acquire(path, target="output o.zarr", note=notes.append)
    assert not forgotten.held and again.held
    assert notes == [f"took over the lock {path} from an earlier writer in this process that was never closed"]
    forgotten.release()  # a late release of the old one must not delete the new holder's file
    assert path.exists()
    again.release()
