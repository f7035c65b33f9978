"""The demo's real-photo section: MTCNN's trained R-Net, convolutionalized, finds the astronaut's face in one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnkit.reporting import faces
from fcnkit.reporting.html import Report

pytest.importorskip("skimage")
if faces.mtcnn_weights("rnet") is None:
    pytest.skip("facenet-pytorch 2.6.0 is not installed (make install adds it with --no-deps)", allow_module_level=True)


@pytest.mark.slow  # the sliding loop it times: a few seconds
def test_faces_section_finds_the_face_and_reports_the_loop_it_replaces(tmp_path):
    report = Report("t")
    lines: list[str] = []
    found = faces.add_faces_section(report, tmp_path, log=lines.append)
    row, col = found["peak"]
    assert 60 <= row <= 180 and 165 <= col <= 280  # the face in the full-size photo
    assert found["face_probability"] > 0.99
    # ceil_mode: one pass and the 24x24 sliding loop differ, and the section says why
    assert 1e-3 < found["max_diff"] < 0.5
    assert any("pool1" in w and "25x25" in w for w in found["warnings"])
    assert found["picture"].is_file() and found["picture"].stat().st_size > 10_000
    titles = [section.title for section in report.sections]
    assert titles == ["Faces in a real photo, one pass of a real classifier", "Faces: one pass vs sliding the window"]
    html = report.render()
    assert "speed-up" in html and "pool1" in html and "facenet-pytorch 2.6.0" in html
    assert len(lines) == 1 and "729 windows" in lines[0]


def test_missing_package_is_said_in_the_report_not_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(faces, "mtcnn_weights", lambda name: None)
    report = Report("t")
    lines: list[str] = []
    assert faces.add_faces_section(report, tmp_path, log=lines.append) is None
    assert "pip install --no-deps facenet-pytorch==2.6.0" in report.render()
    assert lines and "skipped" in lines[0]
    assert not (tmp_path / "pictures").exists()


def test_astronaut_is_scaled_and_rnet_loads_the_shipped_weights():
    image = faces.astronaut(0.25)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    model = faces.load_rnet()
    assert not model.training
    x = torch.from_numpy(np.array(image[20:44, 44:68], np.float32)).permute(2, 0, 1)[None]  # the face, one window
    with torch.no_grad():
        assert model(x)[0, 1] > 0.9
