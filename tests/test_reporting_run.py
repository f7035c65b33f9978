"""Reports of training runs: a tiny real run, read back and written as one self-contained HTML file."""

from __future__ import annotations

import json

import pytest

from fcnkit.errors import CheckpointError
from fcnkit.reporting.html import Report
from fcnkit.reporting.run import add_run_sections, load_run, report_for_run
from fcnkit.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="fcn8s", data="scenes", patch=32, batch_size=2, steps=4, width=1 / 32, eval_every=2,
                      checkpoint_every=4, val_size=64, val_count=1, out=str(out), progress=False))
    return out


@pytest.mark.slow
def test_report_for_a_training_run(tiny_run) -> None:
    path = report_for_run(tiny_run)
    assert path == tiny_run / "report.html"
    html = path.read_text()
    assert 'id="metrics"' in html and 'id="per-class-iu"' in html
    for title in ("fcn8s: settings", "fcn8s: scores on held-out whole images", "fcn8s: training curves",
                  "fcn8s: geometry", "fcn8s: sample pictures"):
        assert f"<h2>{title}</h2>" in html, title
    assert html.count("data:image/png;base64,") == 2  # curves and panels, embedded
    assert "receptive field (px)" in html and "halo for exact tiling (px)" in html
    assert (tiny_run / "pictures" / "curves.png").is_file() and (tiny_run / "pictures" / "samples.png").is_file()
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]


@pytest.mark.slow
def test_run_metrics_and_custom_target(tiny_run, tmp_path) -> None:
    run = load_run(tiny_run)
    assert run.checkpoint.name == "last.pt" and run.config["steps"] == 4
    assert set(run.metrics) == {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "iu"}
    assert len(run.metrics["iu"]) == len(run.class_names) == 11
    report = Report("two")
    made = add_run_sections(report, run, tmp_path / "pics", title="tiny", samples=0)
    assert set(made) == {"curves"} and not (tmp_path / "pics" / "samples.png").exists()
    target = report_for_run(tiny_run, tmp_path / "elsewhere" / "r.html")
    assert target.is_file()


@pytest.mark.slow
def test_load_run_reads_the_checkpoint_asked_for(tiny_run) -> None:
    best = load_run(tiny_run, checkpoint="best.pt")
    assert best.checkpoint == tiny_run / "best.pt"
    assert best.metrics["mean_iu"] == pytest.approx(max(r["mean_iu"] for r in best.records))  # its own scores
    assert best.raw["step"] in (2, 4)
    with pytest.raises(CheckpointError, match=r"checkpoint: expected '.*nope\.pt', found no such file \(checkpoints "
                                              r"in '.*': best\.pt, last\.pt\); pass one of those"):
        load_run(tiny_run, checkpoint="nope.pt")


def test_refuses_a_folder_without_checkpoints(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"run_dir: expected a training folder holding last.pt or best.pt, "
                                              r"found neither in '.*'; point at the --out folder of fcnkit train"):
        report_for_run(tmp_path)
