"""The tile runner on its own: windows, batches of one shape, the reader/writer threads, errors, the journal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fcnkit.inference.runner as runner
from fcnkit.errors import InputError, ModelError
from fcnkit.inference.plan import Tile
from fcnkit.inference.runner import _batches, finish, forward_batch, read_batch, read_window, run_plan, to_model_input

CPU = torch.device("cpu")


def _tiles(height: int, width: int, side: int) -> list[Tile]:
    """Tiles of a point-wise model (no halo, multiple 1): each reads, keeps and writes its own block."""
    tiles = []
    for y in range(0, height, side):
        for x in range(0, width, side):
            h, w = min(side, height - y), min(side, width - x)
            tiles.append(Tile(id=len(tiles), out=((y, y + h), (x, x + w)), read=((y, y + h), (x, x + w)),
                              keep=((0, h), (0, w)), padded=(h, w)))
    return tiles


class _Journal(np.ndarray):
    """An output array with the resume journal's ``done``/``mark_done``; records the order of writes and marks."""

    def __new__(cls, shape, dtype):
        obj = np.zeros(shape, dtype).view(cls)
        obj.events, obj.done = [], set()
        return obj

    def __setitem__(self, key, value):
        self.events.append(("write", key))
        super().__setitem__(key, value)

    def mark_done(self, tile_id: int) -> None:
        self.events.append(("done", tile_id))
        self.done.add(tile_id)


def test_read_window_gives_channels_last_in_the_images_dtype_and_refuses_nan():
    image = np.arange(24, dtype=np.uint8).reshape(4, 6)
    window = read_window(image, (1, 3), (2, 5))
    assert window.shape == (2, 3, 1) and window.dtype == np.uint8  # cast for the model later, batch by batch
    np.testing.assert_array_equal(window[..., 0], image[1:3, 2:5])
    bad = np.zeros((4, 4, 3), np.float32)
    bad[2, 1, 0] = np.inf
    with pytest.raises(InputError, match=r"image rows 0:4, cols 0:4 contain NaN or Inf; expected finite values"):
        read_window(bad, (0, 4), (0, 4))
    read_window(bad, (0, 2), (0, 4))  # a window without the bad pixel is fine


def test_to_model_input_is_nchw_and_finish_reshapes_each_output_kind():
    x = to_model_input(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5), CPU, torch.float32)
    assert x.shape == (2, 5, 3, 4) and x[1, 2, 0, 3] == 1 * 60 + 0 * 20 + 3 * 5 + 2
    y = torch.randn(2, 4, 3, 5)
    assert finish(y, "logits").shape == (2, 3, 5, 4)
    torch.testing.assert_close(finish(y, "probs").sum(dim=3), torch.ones(2, 3, 5))
    labels = finish(y, "labels")
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), y.argmax(dim=1))
    assert finish(torch.randn(1, 300, 2, 2), "labels").dtype == torch.int32
    with pytest.raises(ModelError, match=r"the model returned \(2, 4\); expected a dense \(N, K, H, W\) tensor"):
        finish(torch.zeros(2, 4), "logits")


def test_batches_stack_only_tiles_of_one_shape():
    tiles = _tiles(10, 10, 4)  # 4×4 interior tiles, 4×2 / 2×4 / 2×2 edge tiles
    batches = list(_batches(sorted(tiles, key=lambda t: t.padded), 3))
    assert all(len({t.padded for t in b}) == 1 and len(b) <= 3 for b in batches)
    assert sorted(t.id for b in batches for t in b) == list(range(len(tiles)))
    x = read_batch(np.ones((10, 10, 2), np.uint8), batches[-1], CPU, torch.float32)
    assert x.shape == (len(batches[-1]), 2, *batches[-1][0].padded)


def test_forward_batch_refuses_an_output_smaller_than_the_geometry_says():
    tile = Tile(id=0, out=((0, 4), (0, 4)), read=((0, 4), (0, 4)), keep=((0, 4), (0, 4)), padded=(4, 4))
    shrink = torch.nn.Conv2d(1, 2, 3)  # valid padding: 2×2 out of a 4×4 tile
    with pytest.raises(ModelError, match=r"returned a \(2, 2\) output for a \(4, 4\) tile; expected at least"):
        forward_batch(shrink, torch.zeros(1, 1, 4, 4), [tile], "logits")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_run_plan_fills_every_tile_and_journals_after_writing(batch_size):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 1).eval()
    image = np.random.default_rng(0).integers(0, 256, (10, 13, 3)).astype(np.uint8)
    tiles = _tiles(10, 13, 4)
    out = _Journal((10, 13, 2), np.float32)
    run_plan(model, image, tiles, output="logits", out=out, batch_size=batch_size, device=CPU,
             dtype=torch.float32, journal=True, progress=False, stride=1)
    with torch.no_grad():
        whole = model(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(np.asarray(out), whole, atol=1e-5)
    assert out.done == {t.id for t in tiles}
    for tile in tiles:  # each tile is marked done only after its data was written
        (y0, y1), (x0, x1) = tile.out
        written = out.events.index(("write", (slice(y0, y1), slice(x0, x1))))
        assert written < out.events.index(("done", tile.id))


def test_run_plan_reraises_a_failing_read_on_the_callers_thread():
    class Broken:
        shape, dtype = (8, 8, 3), np.dtype(np.uint8)

        def __getitem__(self, key):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        run_plan(torch.nn.Conv2d(3, 2, 1), Broken(), _tiles(8, 8, 4), output="labels",
                 out=np.zeros((8, 8), np.uint8), batch_size=1, device=CPU, dtype=torch.float32, journal=False,
                 progress=False, stride=1)


def test_run_plan_reraises_a_failing_write():
    class ReadOnly(np.ndarray):
        def __setitem__(self, key, value):
            raise PermissionError("read-only output")

    out = np.zeros((8, 8), np.uint8).view(ReadOnly)
    with pytest.raises(PermissionError, match="read-only output"):
        run_plan(torch.nn.Conv2d(3, 2, 1), np.zeros((8, 8, 3), np.uint8), _tiles(8, 8, 2), output="labels",
                 out=out, batch_size=2, device=CPU, dtype=torch.float32, journal=False, progress=False, stride=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, None])
def test_read_batch_zero_pads_each_window_and_keeps_the_images_dtype_until_asked(dtype):
    edge = Tile(id=0, out=((0, 3), (0, 2)), read=((0, 3), (0, 2)), keep=((0, 3), (0, 2)), padded=(4, 4))
    image = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    x = read_batch(image, [edge], CPU, dtype)
    assert x.dtype == (dtype or torch.uint8) and x.shape == (1, 2, 4, 4)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = np.zeros((4, 4, 2), np.float32)
    expected[:3, :2] = image
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).float().numpy(), expected)
    half = read_batch(image.astype(np.float16), [edge], CPU, None)  # a dtype torch is not handed: float32 at once
    assert half.dtype == torch.float32 and torch.equal(half, x.float())


def test_on_cpu_the_reader_hands_over_the_images_values_and_the_model_gets_its_dtype(monkeypatch):
    read, seen = [], []
    original = runner.read_batch
    monkeypatch.setattr(runner, "read_batch", lambda *a: read.append(original(*a).dtype) or original(*a))
    image = np.random.default_rng(1).integers(0, 256, (24, 24, 3)).astype(np.uint8)
    out = np.zeros((24, 24, 3), np.float32)
    run_plan(lambda x: seen.append(x.dtype) or x.float(), image, _tiles(24, 24, 8), output="logits", out=out,
             batch_size=2, device=CPU, dtype=torch.bfloat16, journal=False, progress=False, stride=1)
    assert set(read) == {torch.uint8} and set(seen) == {torch.bfloat16}
    np.testing.assert_array_equal(out, image)  # 0-255 integers are exact in bf16


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.mark.parametrize("fails", [False, True])
def test_a_run_keeps_freed_memory_for_the_next_batch_and_gives_it_back_at_the_end(monkeypatch, fails):
    libc = _FakeLibc()
    monkeypatch.setattr(runner, "_LIBC", libc)
    monkeypatch.setattr(runner, "_rss", lambda: 2**30)  # no growth: no trim until the end

    def model(x):
        if fails:
            raise RuntimeError("model broke")
        return torch.nn.functional.conv2d(x, torch.ones(2, 3, 1, 1))

    def run():  # 16 batches of one tile: a long plan
        run_plan(model, np.zeros((16, 16, 3), np.uint8), _tiles(16, 16, 4), output="labels",
                 out=np.zeros((16, 16), np.uint8), batch_size=1, device=CPU, dtype=torch.float32, journal=False,
                 progress=False, stride=1)
    if fails:
        with pytest.raises(RuntimeError, match="model broke"):
            run()
    else:
        run()
    # no mmap for large buffers and no trimming while the plan runs; glibc's defaults and one trim afterwards
    assert libc.calls == [("mallopt", -4, 0), ("mallopt", -1, 2**31 - 1), ("mallopt", -4, 65536),
                          ("mallopt", -1, 128 * 1024), ("malloc_trim", 0)]


def test_without_glibc_a_run_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(runner, "_LIBC", None)
    image = np.random.default_rng(3).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    out = np.zeros((8, 8), np.uint8)
    run_plan(lambda x: x, image, _tiles(8, 8, 4), output="labels", out=out, batch_size=1, device=CPU,
             dtype=torch.float32, journal=False, progress=False, stride=1)
    np.testing.assert_array_equal(out, image.argmax(axis=2))


def test_freed_memory_is_trimmed_once_the_heap_outgrows_the_first_batch_by_a_quarter(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(runner, "_LIBC", libc)
    sizes = iter([100, 110, 125, 130, 120, 126])
    monkeypatch.setattr(runner, "_rss", lambda: next(sizes))
    with runner._FreedMemory(batches=8) as heap:
        for _ in range(6):
            heap.after_batch()
    assert heap.ceiling == 125 and heap.trims == 2  # after 130 and 126
    assert libc.calls.count(("malloc_trim", 0)) == 3  # and once at the end


def test_tiles_of_one_shape_run_one_after_another_at_any_batch_size():
    shapes = []
    image = np.zeros((10, 10, 1), np.uint8)  # 4x4 interior tiles, 4x2 / 2x4 / 2x2 at the edges, row by row
    run_plan(lambda x: shapes.append(tuple(x.shape[2:])) or x.float(), image, _tiles(10, 10, 4), output="logits",
             out=np.zeros((10, 10, 1), np.float32), batch_size=1, device=CPU, dtype=torch.float32, journal=False,
             progress=False, stride=1)
    assert shapes == sorted(shapes) and len(shapes) == 9  # batch after batch allocates the same buffers


def test_a_short_plan_leaves_glibc_as_it_is_and_trims_after_every_batch(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(runner, "_LIBC", libc)
    run_plan(torch.nn.Conv2d(3, 2, 1), np.zeros((8, 8, 3), np.uint8), _tiles(8, 8, 4), output="labels",
             out=np.zeros((8, 8), np.uint8), batch_size=1, device=CPU, dtype=torch.float32, journal=False,
             progress=False, stride=1)
    # 4 batches: a heap kept for reuse would only fragment, so each batch's memory goes back at once
    assert libc.calls == [("malloc_trim", 0)] * 4
