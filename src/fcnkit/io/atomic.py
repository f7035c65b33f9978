"""Atomic file and folder replacement, so a crash never leaves a half-written output in place of a good one.

The recipe: write a temporary sibling (same folder, hence same filesystem), flush and fsync it, ``os.replace`` it
over the target (atomic on POSIX), then fsync the folder so the new directory entry survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from fcnkit.errors import OutputError


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that renames and new files inside it are durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def fsync_files(paths: Iterable[str | os.PathLike]) -> None:
    """fsync each existing file; missing files are skipped.

    zarr does not store chunks equal to the fill value, so a chunk written as all zeros may legitimately be absent.
    Folders are not synced here: a fsync of a file on ext4/xfs also commits the entry that created it, and a folder
    fsync per chunk would double the cost (about 5 ms each on a plain disk).
    """
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``, on error it is removed.

    >>> with atomic_file("out.bin") as f:   # doctest: +SKIP
    ...     f.write(b"data")
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(
            f"cannot write {target}: its folder {folder} is not writable ({exc.strerror}); "
            "choose another output location or fix its permissions"
        ) from exc
    os.close(fd)  # reopened by name: writers such as tifffile want a file object with a real .name
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def replace_dir(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` to ``target``, replacing an existing ``target`` folder or file.

    ``os.replace`` cannot replace a non-empty folder, so an old target is first renamed aside and deleted only after
    the new one is in place; if the second rename fails the old target is put back.
    """
    aside = None
    if target.exists() or target.is_symlink():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, aside)
    try:
        os.replace(source, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    fsync_dir(target.parent)
    if aside is not None:
        remove_path(aside)


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
