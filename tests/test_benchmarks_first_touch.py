"""The first-touch benchmark runs on a tiny size and reports one row per wait, with faults counted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import first_touch  # noqa: E402


# 64 MiB: above glibc's largest mmap threshold (32 MiB), so every allocation is a fresh mapping that faults in
SIZE = 64 * 2**20


def test_touch_faults_in_the_memory_it_writes():
    seconds, kernel, faults = first_touch.touch(SIZE)
    assert seconds > 0 and kernel >= 0 and faults >= 32  # at least 32 huge pages, or 16,384 small ones


def test_measure_reports_each_wait_of_each_repeat():
    rows = first_touch.measure(gib=SIZE / 2**30, waits=(0.0, 0.01), repeats=2)
    assert [(r["repeat"], r["wait_s"]) for r in rows] == [(0, 0.0), (0, 0.01), (1, 0.0), (1, 0.01)]
    assert all(r["kernel_s_per_gib"] == pytest.approx(r["kernel_s"] * 16) and r["minor_faults"] >= 32 for r in rows)
