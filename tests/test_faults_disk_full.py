"""A full disk while an output, its pyramid, its journal or a checkpoint is written: one error naming the file, a
consistent output and journal, and ``--resume`` (after freeing space) equal to an uninterrupted run.

Two ways to fill a disk: a real small tmpfs (needs root and a kernel that lets the test mount; skipped otherwise)
and ENOSPC injected at the write calls themselves (zarr chunk writes, the journal's ``os.write``, ``fsync``,
``torch.save``), which runs everywhere.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

import fcnkit
from fcnkit.checkpoint import read_checkpoint, save_checkpoint
from fcnkit.cli import main
from fcnkit.errors import DiskFullError
from fcnkit.io import journal as journal_module

from faults_disk import small_disk
from ome_check import check_ome_zarr

IMAGE = np.random.default_rng(6).integers(0, 256, (512, 320, 3)).astype(np.uint8)


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "in.tif"
    tifffile.imwrite(path, IMAGE, tile=(64, 64))
    return path


@pytest.fixture(scope="module")
def reference(checkpoint, source, tmp_path_factory) -> np.ndarray:
    """The same command, never interrupted."""
    out = tmp_path_factory.mktemp("ref") / "labels.ome.zarr"
    assert main(["predict", "--checkpoint", str(checkpoint), str(source), "--out", str(out), "--tile", "64",
                 "--quiet"]) == 0
    group = zarr.open_group(str(out))
    return group["0"][:], group["1"][:]


def _argv(checkpoint: Path, source: Path, out: Path) -> list[str]:
    return ["predict", "--checkpoint", str(checkpoint), str(source), "--out", str(out), "--tile", "64", "--quiet"]


def _fail_zarr_writes(monkeypatch, when) -> None:
    """ENOSPC from the ``when(array, calls)``-th write of a zarr array (the chunk write under it)."""
    real = zarr.Array.__setitem__
    calls = [0]

    def setitem(self, key, value):
        calls[0] += 1
        if when(self, calls[0]):
            raise _no_space()
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)


def _fail_journal_append(monkeypatch, nth: int) -> None:
    real = os.write
    calls = [0]

    def write(fd, data):
        calls[0] += 1
        if calls[0] == nth:
            raise _no_space()
        return real(fd, data)

    monkeypatch.setattr(journal_module.os, "write", write)


FAULTS = {
    # fault: (inject, the file the message names and what it adds)
    "level-0 chunk": (lambda mp: _fail_zarr_writes(mp, lambda a, n: n == 9), ".partial (output rows "),
    "journal": (lambda mp: _fail_journal_append(mp, 6), ".journal (the resume journal)"),
    "pyramid level": (lambda mp: _fail_zarr_writes(mp, lambda a, n: a.path == "1"),
                      ".partial (its pyramid levels and metadata)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_enospc_while_writing_an_output_then_resume_is_exact(checkpoint, source, reference, tmp_path, monkeypatch,
                                                            capsys, fault):
    inject, named = FAULTS[fault]
    out = tmp_path / "labels.ome.zarr"
    argv = _argv(checkpoint, source, out)
    inject(monkeypatch)
    assert main(argv) == 2
    monkeypatch.undo()  # space is freed
    err = capsys.readouterr().err
    assert err.startswith(f"fcnkit: error: no space left on device while writing {out}{named}"), err
    assert err.endswith(f"; free space there and run the same command with --resume:\n  fcnkit {' '.join(argv)} "
                        "--resume\n")
    journal = tmp_path / "labels.ome.zarr.journal"
    assert not out.exists() and journal.exists() and (tmp_path / "labels.ome.zarr.partial").is_dir()
    lines = journal.read_text().split("\n")
    assert lines[-1] == "" and all(line.isdigit() for line in lines[1:-1])  # whole lines only, no torn id
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "labels.ome.zarr.lock").exists()

    assert main([*argv, "--resume"]) == 0
    group = zarr.open_group(str(out))
    np.testing.assert_array_equal(group["0"][:], reference[0])
    np.testing.assert_array_equal(group["1"][:], reference[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.ome.zarr"]
    check_ome_zarr(out)


def test_enospc_while_writing_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    model = fcnkit.build_model("fcn32s", num_classes=3, width=0.0625)
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, model=model, step=1)

    def half_then_full(payload, f, *args, **kwargs):  # torch.save got as far as half a file
        f.write(b"PK\x03\x04" + bytes(1000))
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from _no_space()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {path};"):
        save_checkpoint(path, model=model, step=2)
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "2m") as folder:
        yield folder


@pytest.mark.slow
def test_a_real_full_filesystem_during_predict_then_resume_after_freeing_space(checkpoint, source, disk, tmp_path,
                                                                               capsys):
    ballast = disk / "ballast"
    ballast.write_bytes(bytes(2 * 1024 * 1024 - 256 * 1024))  # leaves 256 KiB: less than the float32 logits need
    out = disk / "logits.zarr"
    argv = [*_argv(checkpoint, source, out), "--output", "logits"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fcnkit: error: no space left on device while writing {out}.partial"), err
    assert not out.exists() and (disk / "logits.zarr.journal").exists()
    finished = len((disk / "logits.zarr.journal").read_text().splitlines()) - 1
    assert 0 < finished < 40

    ballast.unlink()  # the user frees space
    assert main([*argv, "--resume"]) == 0
    fresh = tmp_path / "fresh.zarr"
    assert main([*_argv(checkpoint, source, fresh), "--output", "logits"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], zarr.open_array(str(fresh))[:])
    assert sorted(p.name for p in disk.iterdir()) == ["logits.zarr"]
