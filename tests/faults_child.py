"""Runs ``fcnkit ARGV`` in a child process that pauses at a chosen point, so a test can fault it there, not by luck.

    python tests/faults_child.py HOOK N ARGV...

At the point, the child prints ``FAULT-POINT <pid>`` on stdout and waits for the test to act (a signal; another process
started meanwhile; a kill). The test reads that line instead of sleeping or polling, so the fault always lands at
the same place. Nothing in fcnkit is changed beyond the one function wrapped below; the signals are real ones sent
by the test.

HOOK:
- ``tiles``: after the N-th tile is journaled (the writer thread), wait until a SIGINT/SIGTERM asked for a stop.
- ``evals``: after the N-th evaluation of ``fcnkit train`` (a metrics.jsonl line), wait the same way.
- ``save-twice``: in the middle of the N-th write of ``last.pt``, wait for a first signal, print ``REQUESTED``, then
  wait for a second one, which stops the run at once inside the write.
"""

from __future__ import annotations

import os
import sys
import threading


def _point() -> None:
    print(f"FAULT-POINT {os.getpid()}", flush=True)  # the pid: under torchrun the test signals the workers too


def _wait_for_stop() -> None:
    from fcnkit.signals import active

    stop = active()
    if stop is None or not stop.wait(timeout=120):
        raise SystemExit("faults_child: no stop was requested within 120 s")


def _after_nth(owner: object, name: str, n: int, action) -> None:
    original = getattr(owner, name)
    calls = [0]

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            action()
        return result

    setattr(owner, name, wrapped)


def _hold_inside_nth_save(n: int) -> None:
    import torch

    original = torch.save
    calls = [0]

    def save(payload, f, *args, **kwargs):
        if ".last.pt." not in getattr(f, "name", ""):  # atomic_file's temporary for last.pt
            return original(payload, f, *args, **kwargs)
        calls[0] += 1
        if calls[0] != n:
            return original(payload, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half of a checkpoint")  # bytes in the temporary file when the stop comes
        _point()
        _wait_for_stop()
        print("REQUESTED", flush=True)
        threading.Event().wait(120)  # the second signal's handler raises Interrupted out of this wait
        raise SystemExit("faults_child: no second signal within 120 s")

    torch.save = save


def main() -> int:
    hook, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if hook == "tiles":
        from fcnkit.io.journal import Journal

        _after_nth(Journal, "append", n, lambda: (_point(), _wait_for_stop()))
    elif hook == "evals":
        from fcnkit.training.loop import _Run

        _after_nth(_Run, "_evaluate_and_log", n, lambda: (_point(), _wait_for_stop()))
    elif hook == "save-twice":
        _hold_inside_nth_save(n)
    else:
        raise SystemExit(f"faults_child: unknown hook {hook!r}")
    from fcnkit.cli import main as fcnkit

    return fcnkit(argv)


if __name__ == "__main__":
    sys.exit(main())
