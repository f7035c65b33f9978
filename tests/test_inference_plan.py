"""The tile planner: the least total work (halo included) within the memory budget, rectangles allowed."""

from __future__ import annotations

import itertools
from collections import namedtuple

import numpy as np
import pytest
import torch
from tiling_models import foreign_models

from fcnkit import InputError
from fcnkit.inference.plan import (DEFAULT_BUDGET, TILE_SHARE, Margins, choose_tile, default_memory_limit,
                                   format_bytes, plan_axis_tiles, round_up)
from fcnkit.inference.tiled import plan_prediction, predict, predict_tiled

SAME = Margins(multiple=16, stride=1, lo=112, hi=112)  # fcnkit's unet: D = 16, halo 112


def _budget(padded_pixels: int, bytes_per_pixel: float = 1.0) -> int:
    """The memory_limit whose tile share holds exactly ``padded_pixels`` pixels."""
    return int(np.ceil(padded_pixels * bytes_per_pixel / TILE_SHARE))


def _work(in_shape, out_shape, margins, tile) -> tuple[int, int]:
    """(total padded pixels, largest tile's padded pixels) of the real plan."""
    areas = [t.padded[0] * t.padded[1] for t in plan_axis_tiles(in_shape, out_shape, margins, tile)]
    return sum(areas), max(areas)


def test_full_width_strips_beat_squares():
    # two 2048-row strips read 4096 × (2048 + 112) each: 1.055× work, where 2×2 squares would cost 1.11×
    tile = choose_tile((4096, 4096), (4096, 4096), SAME, bytes_per_pixel=1.0, budget=_budget(4096 * 2160),
                       batch_size=1)
    assert tile == (2048, 4096)
    work, _ = _work((4096, 4096), (4096, 4096), SAME, tile)
    assert work / 4096**2 == pytest.approx((4096 + 2 * 112) / 4096)


def test_whole_image_is_one_tile_when_it_fits():
    tile = choose_tile((1000, 700), (1000, 700), SAME, bytes_per_pixel=8.0, budget=_budget(1008 * 704, 8.0),
                       batch_size=1)
    assert tile == (1008, 704)


def test_ties_go_to_rows():
    # 3 strips either way cost the same; rows keep reads and writes contiguous in row-major arrays
    th, tw = choose_tile((2048, 2048), (2048, 2048), SAME, bytes_per_pixel=1.0, budget=_budget(2048 * 912),
                         batch_size=1)
    assert tw == 2048 and th < 2048


@pytest.mark.parametrize(("shape", "margins", "pixels", "batch"), [
    ((300, 500), SAME, 60_000, 1),
    ((300, 500), SAME, 150_000, 2),
    ((257, 129), Margins(multiple=8, stride=1, lo=24, hi=24), 9_000, 1),
    ((200, 360), Margins(multiple=8, stride=4, lo=0, hi=32), 12_000, 1),  # valid padding, a heat-map grid
])
def test_choice_is_the_least_work_of_every_fitting_tile(shape, margins, pixels, batch):
    s, d = margins.stride, margins.multiple
    out_shape = tuple(-(-n // s) for n in shape)
    chosen = choose_tile(shape, out_shape, margins, bytes_per_pixel=1.0, budget=_budget(pixels * batch),
                         batch_size=batch)
    assert all(side % d == 0 for side in chosen)
    work, largest = _work(shape, out_shape, margins, chosen)
    assert largest <= pixels
    best = min(w for w, big in (_work(shape, out_shape, margins, (th, tw)) for th, tw in itertools.product(
        range(d, round_up(shape[0], d) + 1, d), range(d, round_up(shape[1], d) + 1, d))) if big <= pixels)
    assert work == best


def test_too_small_a_budget_names_the_smallest_tile():
    with pytest.raises(InputError, match=r"memory_limit=100 bytes is too small for even the smallest tile of this "
                                         r"model \(about \d+ MiB\); raise it \(--memory-limit, memory_limit= from "
                                         r"Python\) or give the tile \(--tile, tile=\)"):
        choose_tile((4096, 4096), (4096, 4096), SAME, bytes_per_pixel=1600.0, budget=100, batch_size=1)
    with pytest.raises(InputError, match=r"memory_limit=10 bytes is too small for even the smallest tile of this "
                                         r"model \(about \d+ KiB\);"):  # a small tile is not "about 0 MiB"
        choose_tile((64, 64), (64, 64), SAME, bytes_per_pixel=4.0, budget=10, batch_size=1)


@pytest.mark.parametrize(("size", "text"), [(0, "0 bytes"), (1000, "1000 bytes"), (1024, "1 KiB"), (1536, "1.5 KiB"),
                                            (300 * 2**10, "300 KiB"), (3.5 * 2**20, "3.5 MiB"), (2**30, "1 GiB"),
                                            (12.3 * 2**30, "12 GiB")])
def test_memory_sizes_read_in_binary_units(size, text):
    assert format_bytes(size) == text


def test_default_budget_is_moderate_and_never_more_than_half_of_available_memory(monkeypatch):
    import psutil

    memory = namedtuple("memory", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(64 * 2**30))
    assert default_memory_limit(torch.device("cpu")) == DEFAULT_BUDGET == 2**30
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(1 * 2**30))
    assert default_memory_limit(torch.device("cpu")) == 2**29


def test_min_tiles_shares_an_image_that_fits_in_one_tile():
    shape = (512, 512)
    one = choose_tile(shape, shape, SAME, bytes_per_pixel=1.0, budget=_budget(1024 * 1024), batch_size=1)
    assert one == (512, 512)
    tile = choose_tile(shape, shape, SAME, bytes_per_pixel=1.0, budget=_budget(1024 * 1024), batch_size=1,
                       min_tiles=4)
    assert len(plan_axis_tiles(shape, shape, SAME, tile)) >= 4
    # an image too small to share out: the least work for one worker
    assert choose_tile((16, 16), (16, 16), SAME, bytes_per_pixel=1.0, budget=_budget(4096), batch_size=1,
                       min_tiles=4) == (16, 16)


def test_rectangular_tiles_stay_exact():
    model = foreign_models()["unet_bn"]
    image = np.random.default_rng(1).integers(0, 256, (96, 160, 3)).astype(np.uint8)
    plan = plan_prediction(model, image, memory_limit="2MB")
    assert len(plan.tiles) > 1 and plan.tile[0] != plan.tile[1]
    np.testing.assert_allclose(predict_tiled(model, image, memory_limit="2MB"), predict(model, image), rtol=0,
                               atol=1e-4)
