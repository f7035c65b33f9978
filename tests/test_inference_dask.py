from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.inference.dask import close, connect, predict_dask, predict_into
from fcnkit.inference.tiled import plan_prediction
from fcnkit.errors import InputError, NotExactError
from tiling_models import DiesOnWrite

da = pytest.importorskip("dask.array")


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c)).astype(np.float32)


def _foreign_net() -> nn.Module:
    # Not an fcnkit model: pooling to a multiple of 4, a transposed convolution back up.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.ConvTranspose2d(8, 5, 4, stride=4),
    ).eval()


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return fcnkit.build_model("unet", num_classes=4, width=0.125).eval()


@pytest.mark.parametrize("output", ["logits", "labels"])
def test_unaligned_input_chunks_give_the_whole_image_result(unet, output):
    image = _image(250, 231)
    # chunks of 23×31: aligned to nothing the model cares about
    lazy = predict_dask(unet, da.from_array(image, chunks=(23, 31, 3)), output=output, tile=64)
    plan = plan_prediction(unet, image, tile=64, output=output)
    assert lazy.chunks[:2] == tuple(tuple(sides) for sides in plan.grid)  # one block per planned tile
    assert lazy.fcnkit_plan.tiles == plan.tiles
    got = lazy.compute(scheduler="synchronous")
    want = fcnkit.predict(unet, image, output=output)
    assert got.shape == want.shape and got.dtype == want.dtype
    if output == "labels":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_valid_padding_strided_model_follows_the_plan():
    # a convolutionalized classifier: valid padding, output stride 4; the old dask path re-derived the tiling,
    # ignored the padding and failed with "image is 4×4 but this valid-padding model needs at least 32×32"
    torch.manual_seed(0)
    classifier = fcnkit.build_model("digit_classifier", num_classes=11).eval()
    model = fcnkit.convolutionalize(classifier, input_size=(32, 32))
    geometry = fcnkit.analyze(model)
    assert geometry.padding == "valid" and geometry.output_stride == 4
    image = _image(300, 260)
    lazy = predict_dask(model, da.from_array(image, chunks=(100, 90, 3)), tile=64)
    assert lazy.numblocks[:2] == (5, 4)
    want = fcnkit.predict(model, image)
    got = lazy.compute(scheduler="synchronous")
    assert got.shape == want.shape == (68, 58, 11)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_foreign_model_and_two_dimensional_input():
    model = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).eval()
    image = _image(50, 41, 1)[:, :, 0]
    got = predict_dask(model, da.from_array(image, chunks=(17, 17)), chunk=16).compute(scheduler="synchronous")
    np.testing.assert_allclose(got, fcnkit.predict(model, image), atol=1e-4, rtol=0)


def test_the_model_is_one_task_in_the_graph():
    lazy = predict_dask(_foreign_net(), da.from_array(_image(64, 64), chunks=16), chunk=16)
    keys = [k for k in dict(lazy.__dask_graph__()) if "fcnkit-model" in str(k)]
    assert len(keys) == 1
    assert lazy.numblocks[:2] == (4, 4)


def test_a_plan_is_followed_and_checked(unet):
    image = _image(96, 80)
    plan = plan_prediction(unet, image, tile=48, output="labels")
    lazy = predict_dask(unet, da.from_array(image, chunks=32), output="labels", plan=plan)
    np.testing.assert_array_equal(lazy.compute(scheduler="synchronous"), fcnkit.predict(unet, image, output="labels"))
    with pytest.raises(InputError, match="plan was made for output='labels' but output='logits'"):
        predict_dask(unet, da.from_array(image, chunks=32), plan=plan)
    with pytest.raises(InputError, match=r"plan was made for an image of shape \(96, 80, 3\)"):
        predict_dask(unet, da.from_array(_image(64, 80), chunks=32), output="labels", plan=plan)
    with pytest.raises(InputError, match="plan= already fixes"):
        predict_dask(unet, da.from_array(image, chunks=32), output="labels", plan=plan, tile=32)


def test_nonlocal_model_is_refused_unless_allowed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4)).eval()
    array = da.from_array(_image(32, 32), chunks=16)
    with pytest.raises(NotExactError, match="GroupNorm"):
        predict_dask(model, array)
    with pytest.warns(UserWarning, match="will differ from the whole-image run"):
        predict_dask(model, array, allow_inexact=True)


def test_bad_arguments_are_named():
    model = _foreign_net()
    with pytest.raises(InputError, match="output='mask' is not known"):
        predict_dask(model, da.zeros((8, 8, 3), chunks=4), output="mask")
    with pytest.raises(InputError, match="tile=0 must be a positive integer"):
        predict_dask(model, da.zeros((8, 8, 3), chunks=4), chunk=0)
    with pytest.raises(InputError, match="name the same thing"):
        predict_dask(model, da.zeros((8, 8, 3), chunks=4), chunk=8, tile=16)
    with pytest.raises(InputError, match="local:N"):
        connect("local:zero")
    with pytest.raises(InputError, match="not an address"):
        connect("somehost")


@pytest.mark.slow
def test_local_cluster_is_exact_and_survives_a_killed_worker(tmp_path):
    model = _foreign_net()
    image = _image(96, 80)
    want = fcnkit.predict(model, image, output="logits")
    client = connect("local:2")
    try:
        lazy = predict_dask(model, da.from_array(image, chunks=(40, 40, 3)), chunk=16, client=client)
        out = np.full(want.shape, np.nan, np.float32)
        predict_into(lazy, out, client=client)
        np.testing.assert_allclose(out, want, atol=1e-4, rtol=0)

        # Kill one worker process while its chunks are running; its nanny restarts it and dask recomputes them.
        big = np.tile(image, (6, 6, 1))
        slow = predict_dask(model, da.from_array(big, chunks=64), chunk=16, client=client)
        futures = client.compute(slow)
        deadline = time.monotonic() + 60
        while not any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = next(addr for addr, tasks in client.processing().items() if tasks)
        pid = client.run(os.getpid, workers=[busy])[busy]
        os.kill(pid, signal.SIGKILL)
        assert not futures.done(), "the job finished before the worker was killed; make it longer"
        got = futures.result(timeout=240)
        full = fcnkit.predict(model, big, output="logits")
        np.testing.assert_allclose(got, full, atol=1e-4, rtol=0)
    finally:
        close(client)


@pytest.mark.slow
def test_every_worker_gets_tiles_and_the_model_is_sent_once(unet):
    image = _image(512, 512)
    client = connect("local:2")
    try:
        lazy = predict_dask(unet, da.from_array(image, chunks=256), output="labels", client=client)
        assert lazy.npartitions >= 2 * 2  # two tiles per worker thread, though one tile fits in memory
        assert len([k for k in dict(lazy.__dask_graph__()) if "fcnkit-model" in str(k)]) == 1  # one task
        out = np.zeros(lazy.shape, lazy.dtype)
        predict_into(lazy, out, client=client)
        np.testing.assert_array_equal(out, fcnkit.predict(unet, image, output="labels"))
    finally:
        close(client)


@pytest.mark.slow
def test_resume_on_a_restarted_cluster(unet, tmp_path):
    import zarr

    from fcnkit.io import create_output

    image = _image(160, 144)
    want = fcnkit.predict(unet, image, output="labels")

    path = tmp_path / "labels.zarr"
    first = connect("local:2")
    try:
        out = create_output(path, want.shape, np.uint8, chunks=(48, 48), plan_key="tile=48x48")
        with pytest.raises(RuntimeError, match="killed"):
            lazy = predict_dask(unet, image, output="labels", tile=48, client=first)
            predict_into(lazy, DiesOnWrite(out, die_at=3), client=first)
        address = first.scheduler.address
    finally:
        close(first)
    assert len(out.done) == 2
    second = connect("local:2")  # a new cluster: a new scheduler address, the same plan
    try:
        assert second.scheduler.address != address
        resumed = create_output(path, want.shape, np.uint8, chunks=(48, 48), plan_key="tile=48x48", resume=True)
        assert len(resumed.done) == 2
        lazy = predict_dask(unet, image, output="labels", tile=48, client=second)
        counted = DiesOnWrite(resumed)  # never dies: counts the tiles computed
        predict_into(lazy, counted, client=second)
        assert counted.writes == lazy.npartitions - 2
        resumed.close()
    finally:
        close(second)
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], want)


@pytest.mark.slow
def test_cli_predict_on_a_local_cluster_equals_predict(tmp_path, capsys):
    import zarr

    from fcnkit.checkpoint import save_checkpoint
    from fcnkit.cli import main
    from fcnkit.io import write_png

    torch.manual_seed(0)
    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.25).eval()
    save_checkpoint(tmp_path / "m.pt", model=model, class_names=["bg", "a", "b"])
    image = _image(150, 133).astype(np.uint8)
    write_png(tmp_path / "in.png", image)
    code = main(["predict", "--checkpoint", str(tmp_path / "m.pt"), str(tmp_path / "in.png"),
                 "--out", str(tmp_path / "out.zarr"), "--tile", "64", "--scheduler", "local:2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    got = np.asarray(zarr.open_array(str(tmp_path / "out.zarr"), mode="r"))
    np.testing.assert_array_equal(got, fcnkit.predict(model, image, output="labels"))
