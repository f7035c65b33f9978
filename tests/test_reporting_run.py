"""Reports of training runs: a tiny real run, read back and written as one self-contained HTML file."""

from __future__ import annotations

import json

import pytest
from torch import nn

from fcnkit.errors import CheckpointError
from fcnkit.reporting import curves
from fcnkit.reporting.html import Report
from fcnkit.reporting.run import RunInfo, _settings, add_run_sections, load_run, report_for_run
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


SCORES = {"pixel_accuracy": 0.6, "mean_accuracy": 0.5, "mean_iu": 0.5, "fw_iu": 0.5, "iu": [0.4, 0.6]}


def _stopped_run(tmp_path, records: list[dict], extra: dict) -> RunInfo:
    raw = {"model": {"name": "tiny", "num_classes": 2}, "step": 30, "extra": extra, "class_names": ["a", "b"]}
    return RunInfo(tmp_path, tmp_path / "last.pt", raw, records, nn.Conv2d(3, 2, 1))


def test_a_run_stopped_before_its_first_evaluation_still_gets_its_loss(tmp_path, monkeypatch) -> None:
    drawn, real = [], curves.training_curves
    monkeypatch.setattr(curves, "training_curves", lambda records, out, **kw: drawn.append(records) or real(
        records, out, **kw))
    run = _stopped_run(tmp_path, [], {"window": [12.0, 30], "config": {}})
    report = Report("stopped")
    assert set(add_run_sections(report, run, tmp_path, title="tiny", samples=0)) == {"curves"}
    assert drawn == [[{"step": 30, "loss": 0.4}]]
    assert "The point at step 30 is the mean loss of the steps run after the last evaluation" in report.render()
    drawn.clear()  # stopped between evaluations: the steps after the last one are a point of their own
    add_run_sections(Report("x"), _stopped_run(tmp_path, [{"step": 20, "loss": 0.9, **SCORES}], {"window": [1.0, 10]}),
                     tmp_path, title="tiny", samples=0)
    assert drawn == [[{"step": 20, "loss": 0.9, **SCORES}, {"step": 30, "loss": 0.1}]]
    drawn.clear()  # a finished run's window is empty after its last evaluation: nothing is added
    add_run_sections(Report("x"), _stopped_run(tmp_path, [{"step": 30, "loss": 0.9, **SCORES}], {"window": [0.0, 0]}),
                     tmp_path, title="tiny", samples=0)
    assert drawn == [[{"step": 30, "loss": 0.9, **SCORES}]]


def test_settings_show_the_backbone_and_read_numbers_plainly(tmp_path) -> None:
    config = {"backbone": "runs/digits/best.pt", "width": 0.5, "data": "scenes", "init_from": None}
    run = _stopped_run(tmp_path, [], {"config": config, "elapsed": 174.2})
    html = Report("settings")
    html.add_key_values("settings", _settings(run))
    text = html.render()
    assert "<td>backbone</td><td>runs/digits/best.pt</td>" in text and "init_from" not in text
    assert '<td>width</td><td class="num">0.5</td>' in text
    assert '<td>training time (s, evaluation excluded)</td><td class="num">174.2</td>' in text
