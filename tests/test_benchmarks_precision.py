"""The precision and tile-sweep benchmarks run, on tiny sizes, and measure what their tables claim."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import precision, tile_sweep  # noqa: E402


def test_conv_peak_measures_both_precisions():
    peak = precision.conv_peak(1, side=16)
    assert set(peak) == {"fp32", "bf16", "bf16_autocast"} and all(v > 0 for v in peak.values())


@pytest.mark.slow
def test_unet_rows_compare_every_variant_with_the_whole_image(monkeypatch, tmp_path):
    monkeypatch.setenv("FCNKIT_BENCH_WIDTH", "0.0625")
    rows = precision.unet_rows(64, 1, {"fp32": 1.0, "bf16": 1.0}, str(tmp_path))  # no MONAI there
    assert [(r["variant"].split(" ")[0], r["precision"]) for r in rows] == [
        ("whole", "fp32"), ("tiled", "fp32"), ("tiled", "fp32"), ("whole", "bf16"), ("tiled", "bf16"),
        ("tiled", "bf16")]
    for row in rows:
        assert row["gflops"] > 0 and row["percent_of_peak"] == pytest.approx(100 * row["gflops"])
        if row["variant"].startswith("tiled"):
            assert row["max_diff_vs_whole_same_precision"] <= 1e-4  # exact in both precisions
    assert rows[3]["max_diff_vs_fp32_whole"] > 0  # bf16 really ran


def test_tile_sweep_reports_the_plan_and_cpu_times():
    row = tile_sweep.sweep_one("encoder_decoder", 64, "1GB", width=0.125)
    assert row["tile"] == "64×64" and row["tiles"] == 1 and row["overhead"] == pytest.approx(1.0)
    assert row["seconds"] > 0 and row["user_s"] >= 0 and row["system_s"] >= 0


def test_unet_rows_in_fp32_only_where_bf16_would_be_emulated(monkeypatch, tmp_path):
    monkeypatch.setenv("FCNKIT_BENCH_WIDTH", "0.0625")
    rows = precision.unet_rows(64, 1, {"fp32": 1.0, "bf16": 1.0}, str(tmp_path), ("fp32",))
    assert [r["precision"] for r in rows] == ["fp32"] * 3
    assert all(r["speedup_vs_fp32"] == pytest.approx(1.0) for r in rows)


def test_results_say_which_cpu():
    import torch

    from benchmarks.common import machine

    where = machine()
    assert where["cpu"] and where["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(where["native_bf16"], bool)
