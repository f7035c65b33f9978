"""A power cut at any moment: what a rename publishes must already be on disk, and the rename itself must reach it.

POSIX makes a file's data durable with fsync(file) and its name with fsync(folder). These tests record every
``os.fsync`` (by the path behind the descriptor) and every ``os.replace`` while fcnkit writes an OME-Zarr output with
a pyramid, a PNG output and a checkpoint in a new run folder, and check the order: each file and folder of the
finished store synced before the rename that publishes it, the parent folder synced after it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ome_check import check_ome_zarr

import fcnkit
from fcnkit.checkpoint import save_checkpoint
from fcnkit.io import create_output


class Recorder:
    """Wraps os.fsync and os.replace: ``events`` lists ("fsync", path) and ("replace", source, target)."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[str, ...]] = []
        self.published: dict[str, set[str]] = {}  # source of a replace -> every path under it at that moment
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kwargs):
            src, dst = os.path.realpath(src), os.path.realpath(dst)
            if os.path.isdir(src):
                self.published[src] = {src} | {os.path.join(d, n) for d, subs, files in os.walk(src)
                                                for n in subs + files}
            self.events.append(("replace", src, dst))
            return real_replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def replace_of(self, target: Path) -> int:
        hits = [i for i, e in enumerate(self.events) if e[0] == "replace" and e[2] == os.path.realpath(target)]
        assert len(hits) == 1, f"expected one rename onto {target}, found {len(hits)}"
        return hits[0]

    def synced(self, path: str | Path, *, before: int | None = None, after: int | None = None) -> bool:
        lo, hi = (after + 1 if after is not None else 0), (before if before is not None else len(self.events))
        return ("fsync", os.path.realpath(path)) in self.events[lo:hi]


def _write_tiles(out, shape, tile) -> None:
    rng = np.random.default_rng(0)
    n = 0
    for y in range(0, shape[0], tile):
        for x in range(0, shape[1], tile):
            h, w = min(tile, shape[0] - y), min(tile, shape[1] - x)
            out[y:y + h, x:x + w] = rng.integers(0, 3, (h, w)).astype(np.uint8)
            out.mark_done(n)
            n += 1


@pytest.mark.parametrize("replacing", [False, True], ids=["new", "replacing-an-old-output"])
def test_an_ome_zarr_store_and_its_pyramid_are_synced_before_the_rename(tmp_path, monkeypatch, replacing):
    target = tmp_path / "labels.ome.zarr"
    if replacing:
        with create_output(target, (64, 64), np.uint8) as old:
            _write_tiles(old, (64, 64), 64)
    recorder = Recorder(monkeypatch)
    with create_output(target, (600, 400), np.uint8, chunks=128, overwrite=replacing) as out:
        _write_tiles(out, (600, 400), 128)
    rename = recorder.replace_of(target)
    source = recorder.events[rename][1]
    published = recorder.published[source]
    assert any("/1/" in p for p in published), "the output should have a pyramid level 1"
    unsynced = sorted(p for p in published if not recorder.synced(p, before=rename))
    assert unsynced == [], f"published by the rename without an fsync first: {unsynced[:5]}"
    assert recorder.synced(tmp_path, after=rename), "the folder holding the new name was not synced after the rename"
    assert not (tmp_path / "labels.ome.zarr.journal").exists()
    check_ome_zarr(target)


def test_a_png_output_is_synced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "labels.png"
    recorder = Recorder(monkeypatch)
    with create_output(target, (40, 30), np.uint8) as out:
        _write_tiles(out, (40, 30), 16)
    rename = recorder.replace_of(target)
    assert recorder.synced(recorder.events[rename][1], before=rename)
    assert recorder.synced(tmp_path, after=rename)


def test_a_checkpoint_in_a_new_folder_survives_a_power_cut(tmp_path, monkeypatch):
    model = fcnkit.build_model("fcn32s", num_classes=3, width=0.0625)
    target = tmp_path / "runs" / "fcn32s" / "last.pt"
    recorder = Recorder(monkeypatch)
    save_checkpoint(target, model=model, step=3)
    rename = recorder.replace_of(target)
    assert recorder.synced(recorder.events[rename][1], before=rename)  # the temporary file's bytes
    assert recorder.synced(target.parent, after=rename)  # the name last.pt
    # the new folders' own names, in the folders that hold them
    assert recorder.synced(tmp_path, before=rename) and recorder.synced(tmp_path / "runs", before=rename)
