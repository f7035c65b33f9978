"""What a long run prints: lines (not a redrawn bar) when redirected, validation scores, nothing when quiet; for
training steps and for predicted tiles."""

from __future__ import annotations

import io

import pytest

from fcnkit.training.loop import TrainConfig, train
from fcnkit.progress import Progress, format_duration


def test_lines_mode_prints_step_rate_eta_loss_and_validation():
    stream = io.StringIO()  # not a terminal: "auto" means lines
    p = Progress("train unet", total=10, mode="auto", interval=0.0, stream=stream)
    assert p.bar is None and p.mode == "lines"
    p.update(5, loss="0.5000")
    p.evaluation(5, {"mean_iu": 0.25, "pixel_accuracy": 0.9})
    p.evaluation(10, {"mean_iu": 0.5, "pixel_accuracy": 0.75}, accuracy="window accuracy")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("train unet: step 5/10 (50%), ") and "step/s, ETA " in lines[0]
    assert lines[0].endswith("loss 0.5000")
    assert lines[1] == "train unet: step 5/10 validation: mean IU 0.250, pixel accuracy 0.900"
    assert lines[2] == "train unet: step 10/10 validation: mean IU 0.500, window accuracy 0.750"
    assert "\r" not in stream.getvalue()


def test_lines_are_throttled_but_the_last_step_is_always_shown():
    stream = io.StringIO()
    p = Progress("t", total=100, mode="lines", interval=3600.0, stream=stream)
    for step in range(1, 101):
        p.update(step, loss="1.0")
    assert [ln.split(",")[0] for ln in stream.getvalue().splitlines()] == ["t: step 100/100 (100%)"]


def test_off_keeps_validation_and_quiet_prints_nothing():
    off, quiet = io.StringIO(), io.StringIO()
    for stream, kwargs in ((off, {"mode": "off"}), (quiet, {"quiet": True})):
        p = Progress("t", total=4, interval=0.0, stream=stream, **kwargs)
        p.update(4, loss="1.0")
        p.evaluation(4, {"mean_iu": 0.1, "pixel_accuracy": 0.2})
    assert off.getvalue() == "t: step 4/4 validation: mean IU 0.100, pixel accuracy 0.200\n"
    assert quiet.getvalue() == ""


def test_format_duration():
    assert [format_duration(v) for v in (9, 75, 3725)] == ["9s", "1m15s", "1h02m"]


@pytest.mark.usefixtures("one_thread")
def test_a_redirected_run_prints_a_few_plain_lines(tmp_path, capsys):
    train(TrainConfig(model="fcn32s", data="scenes:48", patch=32, batch_size=2, width=0.0625, steps=4,
                      eval_every=2, val_size=40, val_count=1, out=str(tmp_path)))
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err
    assert [ln for ln in err.splitlines() if "validation" in ln][:2] == [
        ln for ln in err.splitlines() if ln.startswith("train fcn32s: step 2/4 validation") or
        ln.startswith("train fcn32s: step 4/4 validation")]
    assert len(err) < 1000


def test_quiet_run_prints_nothing(tmp_path, capsys):
    train(TrainConfig(model="fcn32s", data="scenes:48", patch=32, batch_size=2, width=0.0625, steps=2,
                      eval_every=1, val_size=40, val_count=1, out=str(tmp_path), quiet=True))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_fields_follow_the_rate_and_a_tile_run_counts_tiles():
    stream = io.StringIO()
    p = Progress("fcnkit predict", total=8, initial=2, unit="tile", mode="lines", interval=0.0, stream=stream)
    p.update(4, **{"MP/s": "1.5"})
    p.update(8, **{"MP/s": "1.6"})
    first, last = stream.getvalue().splitlines()
    assert first.startswith("fcnkit predict: tile 4/8 (50%), ") and " tile/s, ETA " in first
    assert first.endswith(", MP/s 1.5") and last.startswith("fcnkit predict: tile 8/8 (100%), ")


def test_a_redirected_prediction_prints_lines_not_redraws(capsys):
    import numpy as np

    import fcnkit

    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125).eval()
    image = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    fcnkit.predict_tiled(model, image, tile=32, progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("fcnkit predict: ")]
    assert lines and lines[-1].startswith("fcnkit predict: tile ") and " (100%), " in lines[-1], err
    assert "MP/s " in lines[-1]
