"""Tiled inference equals whole-image inference: fcnkit's models and foreign ones, every output, any size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import zarr
from tiling_models import DiesOnWrite, GroupNormNet, foreign_models

import fcnkit
from fcnkit import InputError, NotExactError, OutputError
from fcnkit.inference.plan import parse_memory
from fcnkit.inference.tiled import plan_prediction, plan_tiles, predict, predict_tiled

FOREIGN = foreign_models()


def _image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels)).astype(np.uint8)


def _assert_same(tiled: np.ndarray, whole: np.ndarray, output: str) -> None:
    assert tiled.shape == whole.shape and tiled.dtype == whole.dtype
    if output == "labels":
        np.testing.assert_array_equal(tiled, whole)
    else:
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)


def _dense_registered() -> list[str]:
    return [n for n in fcnkit.list_models()
            if getattr(fcnkit.build_model(n, num_classes=2, width=0.0625), "output_kind", "dense") != "classifier"]


@pytest.mark.parametrize("name", _dense_registered())
def test_every_registered_local_model_tiles_exactly(name):
    torch.manual_seed(0)
    model = fcnkit.build_model(name, num_classes=3, width=0.0625).eval()
    geometry = fcnkit.analyze(model)
    if not geometry.local:
        pytest.skip(f"{name} is not local: {geometry.nonlocal_reason}")
    image = _image(70, 45)
    whole = predict(model, image)
    tile = 2 * geometry.input_multiple  # several tiles per axis, each with a halo clipped at the edges
    tiled = predict_tiled(model, image, tile=tile)
    _assert_same(tiled, whole, "logits")
    assert len(plan_tiles(image.shape, geometry, tile)) > 1


@pytest.mark.parametrize("name", sorted(FOREIGN))
@pytest.mark.parametrize("size", [(67, 93), (129, 40), (1, 1), (2, 17), (9, 9)])
def test_foreign_models_equal_whole_image_at_odd_sizes(name, size):
    model = FOREIGN[name]
    if name == "valid" and min(size) < 9:
        with pytest.raises(InputError, match="needs at least 9×9 pixels"):
            predict_tiled(model, _image(*size), tile=8)
        return
    image = _image(*size)
    whole = predict(model, image)
    for tile in ((1, 4, 8) if max(size) < 20 else (8, 28, 200)):
        _assert_same(predict_tiled(model, image, tile=tile), whole, "logits")


@pytest.mark.parametrize("output", ["logits", "probs", "labels"])
@pytest.mark.parametrize("name, grid, classes", [("unet_bn", (67, 93), 4), ("strided_grid", (17, 24), 5)])
def test_every_output_kind(name, grid, classes, output):
    model, image = FOREIGN[name], _image(67, 93)
    whole = predict(model, image, output=output)
    _assert_same(predict_tiled(model, image, tile=16, output=output, batch_size=3), whole, output)
    if output == "labels":
        assert whole.dtype == np.uint8 and whole.shape == grid
        np.testing.assert_array_equal(whole, predict(model, image, output="logits").argmax(axis=2))
        assert whole.max() < classes
    else:
        assert whole.dtype == np.float32 and whole.shape == (*grid, classes)
    if output == "probs":
        np.testing.assert_allclose(whole.sum(axis=2), 1.0, atol=1e-5)


def test_output_shapes_follow_the_model():
    image = _image(67, 93)
    assert predict(FOREIGN["unet_bn"], image).shape == (67, 93, 4)
    assert predict(FOREIGN["strided_grid"], image).shape == (17, 24, 5)  # ceil(67/4), ceil(93/4)
    assert predict(FOREIGN["valid"], image).shape == (59, 85, 3)  # 67 - 9 + 1
    heat = fcnkit.build_model("heatmap_net", num_classes=2, width=0.125).eval()
    assert predict(heat, _image(64, 64), output="labels").shape == (8, 8)


def test_grey_float_and_channel_checks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.MaxPool2d(2),
                                torch.nn.Upsample(scale_factor=2)).eval()
    grey = np.random.default_rng(1).random((31, 22)).astype(np.float64)
    _assert_same(predict_tiled(model, grey, tile=6), predict(model, grey), "logits")
    with pytest.raises(InputError, match="image has 3 channel\\(s\\) but the model expects 1"):
        predict(model, _image(8, 8))


def test_labels_are_int32_above_255_classes():
    model = torch.nn.Conv2d(3, 300, 1).eval()
    labels = predict_tiled(model, _image(10, 12), tile=4, output="labels")
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, predict(model, _image(10, 12), output="labels"))


def test_out_zarr_and_memmap(tmp_path):
    model, image = FOREIGN["dilated_transposed"], _image(50, 38)
    whole = predict(model, image, output="labels")
    z = zarr.create_array(str(tmp_path / "l.zarr"), shape=whole.shape, dtype=np.uint8, chunks=(16, 16))
    assert predict_tiled(model, image, tile=16, output="labels", out=z) is z
    np.testing.assert_array_equal(z[:], whole)
    logits = predict(model, image)
    mm = np.lib.format.open_memmap(tmp_path / "l.npy", mode="w+", dtype=np.float32, shape=logits.shape)
    predict_tiled(model, image, tile=10, out=mm)
    np.testing.assert_allclose(np.asarray(mm), logits, atol=1e-4)
    # the input may be out of core too
    zin = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, dtype=np.uint8, chunks=(16, 16, 3))
    zin[:] = image
    _assert_same(predict_tiled(model, zin, tile=12), logits, "logits")
    with pytest.raises(OutputError, match=r"out has shape \(3, 3\); expected \(50, 38\)"):
        predict_tiled(model, image, output="labels", out=np.zeros((3, 3), np.uint8))


def test_non_local_model_is_refused_by_name_or_warned():
    model, image = GroupNormNet().eval(), _image(20, 20)
    with pytest.raises(NotExactError, match="GroupNorm at 'norm'"):
        predict_tiled(model, image, tile=8)
    with pytest.warns(UserWarning, match="GroupNorm at 'norm'"):
        tiled = predict_tiled(model, image, tile=8, allow_inexact=True)
    assert tiled.shape == (20, 20, 4)
    assert np.abs(tiled - predict(model, image)).max() > 1e-3  # really inexact: the opt-in mattered


def test_resume_skips_done_tiles_and_gives_the_same_output(tmp_path):
    from fcnkit.io import create_output

    model, image = FOREIGN["unet_bn"], _image(40, 52)
    whole = predict(model, image, output="labels")

    path = tmp_path / "labels.zarr"
    out = create_output(path, whole.shape, np.uint8, chunks=(16, 16))
    with pytest.raises(RuntimeError, match="killed"):
        predict_tiled(model, image, tile=16, output="labels", out=DiesOnWrite(out, die_at=4), batch_size=1)
    total = len(plan_prediction(model, image, tile=16, output="labels", batch_size=1).tiles)
    assert len(out.done) == 3
    resumed = create_output(path, whole.shape, np.uint8, chunks=(16, 16), resume=True)
    assert len(resumed.done) == 3
    counted = DiesOnWrite(resumed)  # never dies: counts the tiles computed
    predict_tiled(model, image, tile=16, output="labels", out=counted)
    assert counted.writes == total - 3
    resumed.close()
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], whole)


def test_tile_from_memory_limit():
    model, image = FOREIGN["unet_bn"], _image(120, 100)
    whole = predict(model, image)
    big = plan_prediction(model, image, memory_limit="1GB")
    assert big.tiles and len(big.tiles) == 1 and big.overhead == pytest.approx(1.0)
    small = plan_prediction(model, image, memory_limit="3MB")
    assert len(small.tiles) > 1 and small.overhead > 1.0
    assert all(side % 4 == 0 for side in small.tile)
    _assert_same(predict_tiled(model, image, memory_limit="3MB"), whole, "logits")
    with pytest.raises(InputError, match="memory_limit=1000 bytes is too small"):
        predict_tiled(model, image, memory_limit=1000)


def test_tile_is_rounded_up_to_the_input_multiple():
    geometry = fcnkit.analyze(FOREIGN["unet_bn"])
    tiles = plan_tiles((40, 40, 3), geometry, 10)  # D = 4 -> tiles of 12
    assert [t.out[0] for t in tiles[:: 4]] == [(0, 12), (12, 24), (24, 36), (36, 40)]
    covered = np.zeros((40, 40), int)
    for t in tiles:
        (y0, y1), (x0, x1) = t.out
        covered[y0:y1, x0:x1] += 1
        assert t.read[0][0] % 4 == 0 and t.read[0][1] <= 40 and t.padded[0] % 4 == 0
        assert (t.keep[0][1] - t.keep[0][0]) == y1 - y0
    np.testing.assert_array_equal(covered, 1)  # every output pixel exactly once


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tile": 0}, "tile=0 must be a positive integer"),
    ({"tile": -8}, "tile=-8 must be a positive integer"),
    ({"tile": (8, 8, 8)}, "must be an int or a \\(height, width\\) pair"),
    ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
    ({"output": "argmax"}, "output='argmax' is not known; expected one of logits, probs, labels"),
    ({"halo": -1}, "halo=-1 must be a non-negative integer"),
    ({"memory_limit": "lots"}, "memory_limit='lots' is not a memory size"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        predict_tiled(FOREIGN["unet_bn"], _image(16, 16), **kwargs)


def test_bad_images():
    model = FOREIGN["unet_bn"]
    nan = _image(16, 16).astype(np.float32)
    nan[3, 5, 1] = np.nan
    with pytest.raises(InputError, match="rows 0:16, cols 0:16 contain NaN or Inf"):
        predict_tiled(model, nan, tile=16)
    with pytest.raises(InputError, match="contain NaN or Inf"):
        predict(model, np.full((8, 8, 3), np.inf, np.float32))
    with pytest.raises(InputError, match="image has shape \\(1, 3, 8, 8\\); expected an \\(H, W, C\\)"):
        predict(model, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="image has dtype complex64"):
        predict(model, np.zeros((8, 8, 3), np.complex64))


def test_smaller_halo_warns_and_explicit_halo_works():
    model, image = FOREIGN["dilated_transposed"], _image(24, 24)
    with pytest.warns(UserWarning, match="halo=2 is smaller than the 16 pixels"):
        predict_tiled(model, image, tile=8, halo=2)
    _assert_same(predict_tiled(model, image, tile=8, halo=30), predict(model, image), "logits")


def test_training_mode_and_rng_are_left_alone(capsys):
    model = foreign_models()["unet_bn"].train()
    state = torch.random.get_rng_state()
    predict_tiled(model, _image(24, 24), tile=12, progress=True)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(state, torch.random.get_rng_state())
    assert "tile" in capsys.readouterr().err  # the tqdm bar


def test_parse_memory():
    assert parse_memory("4GB") == 4 << 30
    assert parse_memory("512 MiB") == 512 << 20
    assert parse_memory(1000) == 1000
    with pytest.raises(InputError, match="must be a positive memory size"):
        parse_memory("0GB")


def test_a_tile_small_next_to_the_halo_warns_with_the_work_it_costs():
    from fcnkit.inference.tiled import TileOverheadWarning

    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125).eval()  # halo 32
    image = _image(120, 150)
    with pytest.warns(TileOverheadWarning, match=r"tile 8x8 with the model's halo of 32 px computes \d+\.\dx the "
                                                 r"image's pixels; a larger tile \(or none"):
        plan = plan_prediction(model, image, tile=8)
    assert plan.overhead > 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_prediction(model, image)  # a tile the budget chose: no warning
        plan_prediction(model, image, tile=200)  # one tile: no halo between tiles
