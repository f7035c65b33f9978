"""The resume journal: torn lines from a kill or a full disk never glue onto the next id."""

from __future__ import annotations

import errno
import os

import pytest

from fcnkit.errors import DiskFullError, OutputError
from fcnkit.io import journal as journal_module
from fcnkit.io.journal import Journal

FINGERPRINT = {"shape": [8, 8], "dtype": "|u1", "kind": "labels", "output_format": "zarr", "plan": "tile=8x8"}


def test_append_and_reopen(tmp_path):
    path = tmp_path / "o.journal"
    j = Journal.create(path, FINGERPRINT)
    for tile in (3, 1, 4):
        j.append(tile)
    j.close()
    again = Journal.open(path)
    assert again.done == {1, 3, 4} and again.fingerprint == FINGERPRINT
    again.close()


def test_a_torn_last_line_is_cut_off_so_the_next_id_stays_whole(tmp_path):
    path = tmp_path / "o.journal"
    j = Journal.create(path, FINGERPRINT)
    j.append(7)
    j.close()
    with open(path, "a") as f:
        f.write("12")  # a kill in the middle of an append: "12" without its newline
    reopened = Journal.open(path)
    assert reopened.done == {7}
    reopened.append(13)
    reopened.close()
    assert path.read_text().splitlines()[1:] == ["7", "13"]  # not "1213"
    assert Journal.open(path).done == {7, 13}


def test_a_full_disk_during_an_append_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "o.journal"
    j = Journal.create(path, FINGERPRINT)
    j.append(5)
    real_write = os.write

    def short_then_full(fd, data):  # what write(2) does when the disk fills in the middle of a line
        if len(data) > 1:
            return real_write(fd, data[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", short_then_full)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {path} \\(the resume journal\\)"):
        j.append(61)
    monkeypatch.undo()
    assert 61 not in j.done
    assert path.read_text().splitlines()[1:] == ["5"]
    j.append(62)
    j.close()
    assert Journal.open(path).done == {5, 62}


def test_a_corrupted_journal_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "o.journal"
    path.write_text("not json\n1\n")
    with pytest.raises(OutputError, match="resume journal .* is corrupted .*pass --overwrite"):
        Journal.open(path)
