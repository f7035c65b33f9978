"""One writer at a time: a lock file beside an output (or in a run folder) that names the run holding it.

A resubmitted job that starts while the first one still runs must not write into the same output. The lock is
``fcntl.flock`` on ``<name>.lock``, so the kernel releases it when its process ends, however it ends (``kill -9``,
a crash, a power cut): a lock file left by a dead run is taken over, with a note. The file holds the holder's pid,
host and start time, which a refused second run names. flock works across NFS clients on Linux (the kernel maps it
to NFS byte-range locks); on a filesystem without locks the run refuses to start rather than risk two writers.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from fcnkit.errors import OutputError
from fcnkit.io.atomic import unwritable_reason, writing


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output: ``<target>.lock``, beside it."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


def _note(message: str) -> None:
    print(f"fcnkit: note: {message}", file=sys.stderr)


def _describe(holder: dict) -> str:
    if not holder:
        return "a run that is still starting"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _read_holder(fd: int) -> dict:
    raw = os.pread(fd, 4096, 0)
    try:
        holder = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


# the locks this process holds, by real path
_HELD: dict[str, WriterLock] = {}


class WriterLock:
    """A held lock; ``release()`` (or leaving the ``with`` block) deletes the lock file and frees the lock.

    >>> with WriterLock.acquire(Path("slide.ome.zarr.lock"), target="output slide.ome.zarr"):   # doctest: +SKIP
    ...     write_everything()
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, *, target: str, note: Callable[[str], None] = _note) -> WriterLock:
        """Take the lock at ``path`` or raise :class:`OutputError` naming the run that holds it.

        ``target`` names what is protected in messages ("output out.ome.zarr", "run folder runs/fcn8s"). A lock file
        whose holder has ended is taken over and ``note`` is called with a sentence saying so.
        """
        path = Path(path)
        earlier = _HELD.get(os.path.realpath(path))
        if earlier is not None and earlier.held:
            # flock conflicts even within one process: an Output of ours that was never closed must not lock us out
            note(f"took over the lock {path} from an earlier writer in this process that was never closed")
            earlier.release()
        while True:
            try:
                with writing(path):
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise OutputError(f"cannot write {target}: {unwritable_reason(path.parent, exc)} (its lock file "
                                  f"{path.name} cannot be created); choose a writable location") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"cannot lock {path} for {target} ({exc.strerror}); this filesystem does not "
                                      f"support file locks, write to a local disk instead") from exc
                raise OutputError(
                    f"{target} is being written by another fcnkit run ({_describe(holder)}; lock file {path}); wait "
                    f"for it to finish or stop it, or choose another output location") from None
            # The previous holder deletes the file before it unlocks: if ours was deleted meanwhile, lock the new one.
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            note(f"took over the lock {path} of a run that has ended ({_describe(previous)})")
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        try:
            with writing(path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
        except BaseException:
            cls(path, fd).release()
            raise
        lock = cls(path, fd)
        _HELD[os.path.realpath(path)] = lock
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Delete the lock file, then unlock (in that order, so no one can lock a file that is about to vanish)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
            if _HELD.get(os.path.realpath(self.path)) is self:
                del _HELD[os.path.realpath(self.path)]

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
