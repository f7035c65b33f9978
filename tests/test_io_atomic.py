"""Atomic replacement, a full disk named by file, durable new folders, and fsync of whole trees."""

from __future__ import annotations

import errno
import os

import pytest

from fcnkit.errors import DiskFullError, OutputError
from fcnkit.io import atomic
from fcnkit.io.atomic import atomic_file, fsync_tree, make_dirs, writing


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_writing_names_the_file_for_enospc_and_edquot_only(tmp_path):
    for code in (errno.ENOSPC, errno.EDQUOT):
        with pytest.raises(DiskFullError, match=f"no space left on device while writing {tmp_path / 'x'} \\(rows"):
            with writing(tmp_path / "x", " (rows 0:8)"):
                raise OSError(code, os.strerror(code))
    with pytest.raises(PermissionError):
        with writing(tmp_path / "x"):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(DiskFullError):  # torch.save wraps the write error of its zip writer in a RuntimeError
        with writing(tmp_path / "x"):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:
                raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed") from exc
    assert issubclass(DiskFullError, OutputError)


def test_a_full_disk_in_atomic_file_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    monkeypatch.setattr(atomic.os, "fsync", _no_space)  # delayed allocation: the error comes at fsync
    with pytest.raises(DiskFullError, match=f"while writing {target};"):
        with atomic_file(target) as f:
            f.write(b"new and longer")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_make_dirs_fsyncs_the_parent_of_every_new_folder(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    synced = []
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: synced.append(os.fspath(p)))
    make_dirs(tmp_path / "a" / "b" / "c")
    assert synced == [os.fspath(tmp_path / "a"), os.fspath(tmp_path / "a" / "b")]
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_fsync_tree_syncs_every_file_then_folders_deepest_first(tmp_path, monkeypatch):
    (tmp_path / "s" / "1" / "c").mkdir(parents=True)
    for name in ("s/zarr.json", "s/1/zarr.json", "s/1/c/0"):
        (tmp_path / name).write_bytes(b"x")
    files, folders = [], []
    monkeypatch.setattr(atomic, "fsync_files", lambda paths: files.extend(os.fspath(p) for p in paths))
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: folders.append(os.fspath(p)))
    fsync_tree(tmp_path / "s")
    assert sorted(files) == sorted(os.fspath(tmp_path / n) for n in ("s/zarr.json", "s/1/zarr.json", "s/1/c/0"))
    assert folders == [os.fspath(tmp_path / n) for n in ("s/1/c", "s/1", "s")]


def test_unwritable_reason_says_what_stands_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    missing = OSError(errno.ENOENT, "No such file or directory")
    assert atomic.unwritable_reason(tmp_path / "file" / "sub") == f"{tmp_path / 'file'} is a file, not a folder"
    assert atomic.unwritable_reason(tmp_path / "a" / "b", missing) == f"{tmp_path / 'a' / 'b'} does not exist"
    # the folder exists but refuses a new file with "no such file" (as /proc does): not "not writable (no such file)"
    assert atomic.unwritable_reason(tmp_path, missing) == f"{tmp_path} does not take new files"
    denied = OSError(errno.EACCES, "Permission denied")
    assert atomic.unwritable_reason(tmp_path, denied) == f"{tmp_path} is not writable (permission denied)"
