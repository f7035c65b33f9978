"""Training curves from a run's metrics.jsonl: the picture's size, and refusals of missing or damaged logs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnkit.errors import InputError
from fcnkit.reporting.curves import read_metrics, training_curves


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_training_curves_from_metrics_jsonl(tmp_path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 5, "loss": 1.5, "mean_iu": 0.2, "pixel_accuracy": 0.7}\n'
                   '{"step": 10, "loss": 0.9, "mean_iu": null, "pixel_accuracy": 0.8}\n')
    assert [r["step"] for r in read_metrics(log)] == [5, 10]
    out = training_curves(log, tmp_path / "c.png", losses={s: 2.0 / s for s in range(1, 11)}, title="run")
    assert _png(out).shape[:2] == (360, 1000)
    with pytest.raises(InputError, match=r"records: expected at least one evaluation record"):
        training_curves([], tmp_path / "c.png")
    with pytest.raises(InputError, match=r"expected the training log '.*missing.jsonl', found no such file"):
        training_curves(tmp_path / "missing.jsonl", tmp_path / "c.png")
    log.write_text('{"step": 5}\nnot json\n')
    with pytest.raises(InputError, match=r"line 2 of '.*metrics.jsonl' is not JSON"):
        read_metrics(log)
