"""Stopping on SIGINT (Ctrl-C) and SIGTERM (a batch scheduler's notice) at a safe point, so nothing is lost.

One rule for ``fcnkit train`` and ``fcnkit predict``: while a :class:`GracefulStop` is active, the first SIGINT or
SIGTERM only records the request and says so on stderr; the work loop calls :func:`safe_point` between units
(training steps, predicted tiles), which raises :class:`Interrupted` once a stop was requested. The caller then saves
what a resume needs (``last.pt`` at that step; the tiles in flight and their journal), and the CLI prints what was
saved and the command that continues. A second signal raises :class:`Interrupted` at once, wherever the program is:
every file fcnkit writes is replaced atomically or journaled after it is synced, so even that leaves a consistent
state to resume from. Under torchrun a worker counts further signals as the same request (torchrun forwards them;
it kills workers itself after its grace period), and all ranks stop after the same step.

Exit status is 128 + the signal number, as a shell reports a process ended by that signal: 130 for SIGINT, 143 for
SIGTERM (SLURM and Kubernetes read 143 as "stopped on request").

Example::

    with GracefulStop(unit="step"):
        for step in range(steps):
            train_one_step()
            safe_point()        # raises Interrupted after a signal; save before letting it propagate
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal: at a safe point (``immediate=False``) or at once after a second signal.

    It is a ``KeyboardInterrupt``, so ``except Exception`` blocks do not swallow it. Whoever knows what is on disk
    fills in ``saved`` (e.g. "step 40 of 100 saved in runs/x/last.pt") and ``resumable`` (whether ``--resume``
    continues, or the same command must simply be run again).
    """

    def __init__(self, signum: int, *, immediate: bool = False) -> None:
        self.signum = int(signum)
        self.immediate = immediate
        self.saved: str | None = None
        self.resumable = False
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        """The exit status: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    def record(self, saved: str, *, resumable: bool) -> None:
        """Say what is on disk (appended to what a deeper caller said) and whether ``--resume`` continues it."""
        self.saved = saved if self.saved is None else f"{self.saved}; {saved}"
        self.resumable = self.resumable or resumable


_active: GracefulStop | None = None


class GracefulStop:
    """While active (``with GracefulStop(unit="tile"):``), SIGINT and SIGTERM request a stop at the next safe point.

    Handlers are installed only on the main thread (Python delivers signals there) and only for signals that are
    not ignored (a job started with ``nohup`` or in the background keeps ignoring SIGINT); the previous handlers are
    restored on exit. ``unit`` names what finishes before the stop in the notice printed on the first signal.
    """

    def __init__(self, *, unit: str = "step") -> None:
        self.unit = unit
        self.signum: int | None = None
        self._event = threading.Event()
        self._previous: dict[int, object] = {}
        self._outer: GracefulStop | None = None

    @property
    def requested(self) -> bool:
        """True once a signal asked the run to stop."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (or ``timeout`` seconds pass); True if it was requested."""
        return self._event.wait(timeout)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was requested: call it where stopping leaves nothing half done."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if _torchrun_worker():
                return  # the same request again, forwarded by torchrun (see below)
            raise Interrupted(signum, immediate=True)
        self.signum = signum
        self._event.set()
        name = signal.Signals(signum).name
        then = "torchrun ends the workers after its grace period" if _torchrun_worker() else \
            "send it again to stop at once"
        if os.environ.get("RANK", "0") == "0":  # one notice for a torchrun job, from rank 0
            # os.write, not print: a handler that runs inside another print to stderr would hit a reentrant call
            os.write(2, f"\nfcnkit: {name} received: stopping after the current {self.unit} and saving; "
                        f"{then}\n".encode())

    def __enter__(self) -> GracefulStop:
        global _active
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        self._outer, _active = _active, self
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _active
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()
        _active = self._outer


def _torchrun_worker() -> bool:
    """True in a process started by torchrun. Its agent forwards a SIGTERM/SIGINT to every worker, which a scheduler
    or a terminal has often signalled already, so a worker sees one request twice; the agent itself kills workers
    that have not stopped after its grace period (30 s), which is the "at once" there."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def active() -> GracefulStop | None:
    """The innermost active :class:`GracefulStop`, or None (the Python API without the CLI)."""
    return _active


def stop_requested() -> bool:
    """True if a signal asked the active :class:`GracefulStop` to stop (False when none is active)."""
    return _active is not None and _active.requested


def requested_signal() -> int | None:
    """The signal that asked the active :class:`GracefulStop` to stop, or None."""
    return None if _active is None else _active.signum


def safe_point() -> None:
    """Raise :class:`Interrupted` if a stop was requested; a no-op when no :class:`GracefulStop` is active."""
    if _active is not None:
        _active.check()


@contextlib.contextmanager
def on_interrupt(describe: Callable[[], str | None]) -> Iterator[None]:
    """Add ``describe()`` (what is saved, computed when the stop happens) to an :class:`Interrupted` passing through;
    ``--resume`` continues it. ``describe()`` returns None when nothing is saved yet (the same command starts again).

    >>> with create_output(path, ...) as out, on_interrupt(lambda: f"{len(out.done)} tiles saved"):   # doctest: +SKIP
    ...     predict_tiled(model, image, out=out)
    """
    try:
        yield
    except Interrupted as exc:
        saved = describe()
        if saved is not None:
            exc.record(saved, resumable=True)
        raise
