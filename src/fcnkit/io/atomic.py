"""Atomic file and folder replacement, so a crash never leaves a half-written output in place of a good one.

The recipe: write a temporary sibling (same folder, hence same filesystem), flush and fsync it, ``os.replace`` it
over the target (atomic on POSIX), then fsync the folder so the new directory entry survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from fcnkit.errors import DiskFullError, OutputError

# errno values that mean "the device (or the user's quota) is full": the run can continue once space is freed
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextlib.contextmanager
def writing(path: str | os.PathLike, detail: str = "") -> Iterator[None]:
    """Turn a full device (``ENOSPC``/``EDQUOT``) raised inside into a :class:`DiskFullError` naming ``path``.

    Any other error passes unchanged. ``detail`` says more about the file (", tile rows 0:512, cols 512:1024").
    torch reports a failed write inside ``torch.save`` as a ``RuntimeError`` around the ``OSError``; its cause and
    context are followed.

    >>> with writing("out.bin"):   # doctest: +SKIP
    ...     f.write(data)
    """
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as exc:
        if _is_no_space(exc):
            raise DiskFullError(path, detail) from exc
        raise


def _is_no_space(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:  # the chain of causes is short; the bound guards a cycle
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if isinstance(exc, RuntimeError) and "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` whose new folders survive a power cut: the parent of each folder it creates is fsynced."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    for new in missing:
        fsync_dir(new.parent if str(new.parent) else Path("."))
    return folder


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


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file under ``root``, then every folder from the deepest up to ``root`` itself.

    Run before a finished folder (a zarr store and its pyramid levels) is renamed into place: POSIX makes a file's
    data and its directory entry durable only through fsyncs of both, and the rename must not reach the disk before
    what it publishes. Files already synced cost one cheap syscall each.
    """
    root = Path(root)
    folders = [root]
    for folder, subfolders, files in os.walk(root):
        fsync_files(Path(folder, name) for name in files)
        folders.extend(Path(folder, name) for name in subfolders)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)


def unwritable_reason(folder: str | os.PathLike, exc: OSError | None = None) -> str:
    """Why files cannot be created in ``folder``, as a clause: a regular file in the way, a missing folder, or the
    operating system's reason (``exc``)."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            if exc is not None and exc.errno == errno.ENOENT:
                # the folder is there but the system says "no such file" for a new one in it (/proc, /sys)
                return f"{folder} does not exist" if parent != folder else f"{folder} does not take new files"
            break
    reason = exc.strerror.lower() if exc is not None and exc.strerror else "it cannot be written"
    return f"{folder} is not writable ({reason})"


def check_target(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse an output path before any work is spent on it; return it as a ``Path``.

    Refused: an existing file (unless ``overwrite``), an existing folder, a path with a regular file among its
    parents, and a location where no file can be created. Writability is tested by creating and deleting a
    temporary file in the nearest existing folder, because permission bits say nothing when running as root.

    >>> check_target("runs/fcn.pt", overwrite=False)   # doctest: +SKIP
    PosixPath('runs/fcn.pt')
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: expected a file path, found a folder; give a file name inside it")
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path}: expected a new file, found an existing one; pass --overwrite to "
                          "replace it or choose another path")
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: expected a folder to write into, found that {existing} is a file, not a "
                          "folder; choose another output location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fcnkit-probe-", dir=existing)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: expected a writable location, found that "
                          f"{unwritable_reason(existing, exc)}; choose another output location or fix its "
                          "permissions") from exc
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, what: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``, on error it is removed.

    The folder is created when missing. The file is flushed and fsynced before the rename and the folder after
    it, so a kill or a power cut leaves the old file or the new one, never half of one. The new file gets the
    usual permissions (``mkstemp`` alone would make it private). ``what`` names the file in errors
    ("checkpoint", "report"): a folder that cannot be created or written raises ``OutputError``.

    >>> with atomic_file("out.bin") as f:   # doctest: +SKIP
    ...     f.write(b"data")
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        with writing(target):
            make_dirs(folder)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        label = f"{what} '{target}'" if what else f"cannot write {target}"
        raise OutputError(
            f"{label}: expected a writable folder, found that {unwritable_reason(folder, exc)}; "
            "choose another location or fix its permissions"
        ) from exc
    os.close(fd)  # reopened by name: writers such as tifffile want a file object with a real .name
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with writing(target), open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
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
