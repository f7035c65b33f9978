from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from fcnkit.errors import InputError, OutputError
from fcnkit.reporting.html import Report

SCORES = {
    "pixel_accuracy": 0.91,
    "mean_accuracy": 0.8,
    "mean_iu": 0.7,
    "fw_iu": 0.85,
    "iu": [0.9, float("nan"), 0.5],
}


def _report() -> Report:
    report = Report("fcnkit test run", subtitle="unit test")
    report.add_metrics("Evaluation", SCORES, ["background", "one", "two"])
    report.add_key_values("Geometry", {"receptive field": 404, "input multiple": 32, "local": True})
    gradient = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3))
    report.add_image("A picture", gradient, caption="a grey ramp")
    report.add_text("Notes", "first paragraph\n\nsecond <paragraph>")
    return report


def test_render_has_metrics_per_class_and_embedded_image():
    page = _report().render()
    assert '<table id="metrics">' in page
    assert "<td>mean IU</td><td class=\"num\">0.7000</td>" in page
    assert '<table id="per-class-iu">' in page
    # a class absent from truth and prediction shows a dash, not "nan"
    assert "<td>one</td><td class=\"num\">–</td>" in page
    assert re.search(r'src="data:image/png;base64,iVBOR', page)
    assert "second &lt;paragraph&gt;" in page


def test_write_is_atomic_and_leaves_no_partial(tmp_path):
    path = _report().write(tmp_path / "sub" / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_write_under_a_regular_file_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"report '.*file/report\.html': expected a writable folder, found that "
                                          r".*file is a file, not a folder"):
        _report().write(tmp_path / "file" / "report.html")


def test_bad_image_and_class_names_are_refused(tmp_path):
    report = Report("x")
    with pytest.raises(InputError, match="does not exist"):
        report.add_image("missing", tmp_path / "nope.png")
    with pytest.raises(InputError, match="2 class names for 3 per-class IU"):
        report.add_metrics("m", SCORES, ["a", "b"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000",
]


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (.ci/run installs it)")
def test_report_loads_in_headless_chromium(tmp_path):
    path = _report().write(tmp_path / "report.html")
    profile = tmp_path / "profile"
    common = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*common, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert 'data-status="ok"' in dom, dom[:500]
    assert '<table id="metrics">' in dom
    assert "mean IU" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,900", path.as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    assert shot.stat().st_size > 1000
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_numbers_read_as_a_person_writes_them():
    report = Report("numbers")
    report.add_key_values("Settings", {"width": 1.0, "seconds": 516.0, "lr": 0.003, "score": 0.95823, "diff": 1.53e-05,
                                       "zero": 0.0, "total (s)": 1183.62, "missing": float("nan"), "half": 0.5,
                                       "time (s)": 174.2, "thousands": 2000.04})
    cells = re.findall(r'<td class="num">([^<]*)</td>', report.render())
    assert cells == ["1", "516", "0.003", "0.9582", "1.53e-05", "0", "1,183.6", "–", "0.5", "174.2", "2,000"]
