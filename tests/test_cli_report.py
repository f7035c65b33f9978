"""``fcnkit report RUN_DIR``: the HTML report of a training run from the command line."""

from __future__ import annotations

import pytest

from fcnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_report_of_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "encoder_decoder", "--data", "scenes:48", "--patch", "32", "--batch-size", "2",
                 "--width", "0.125", "--steps", "2", "--val-size", "40", "--val-count", "2", "--no-progress",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out == f"wrote {run / 'report.html'}\n"
    html = (run / "report.html").read_text()
    assert "fcnkit training run: encoder_decoder" in html and 'id="metrics"' in html
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!")


def test_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"fcnkit: error: run_dir: expected a training folder holding last.pt or "
                                       f"best.pt, found neither in '{tmp_path}'; point at the --out folder of fcnkit "
                                       "train.\n")
    assert list(tmp_path.iterdir()) == []
