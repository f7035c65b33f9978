"""`fcnkit demo --quick` end to end, and how the demo treats its output folder."""

from __future__ import annotations

import re

import pytest
from ome_check import check_ome_zarr

from fcnkit.checkpoint import read_checkpoint
from fcnkit.cli import main
from fcnkit.demo import MARKER, prepare_out
from fcnkit.errors import InputError


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out

    # The story in order: classifier and heat maps, transfer, FCN-8s vs U-Net, tiling; then the summary.
    stages = [printed.index(f"[{i}/5]") for i in range(1, 6)]
    assert stages == sorted(stages)
    assert re.search(r"heat maps peak within 4 px of \d+/\d+ held-out digit centres \(\d+\.\d\d%\)", printed)
    assert re.search(r"from scratch at the same small budget: FCN-8s mean IU \d\.\d{3}, U-Net mean IU", printed)
    for label in ("pixel accuracy", "mean accuracy", "mean IU", "frequency-weighted IU"):
        assert re.search(rf"{label} \d\.\d{{3}}", printed), label
    assert re.search(r"\d+x faster, max \|score difference\| \d\.\de[-+]\d\d", printed)
    exact = re.search(r"max \|tiled - whole-image logits\| (\S+), labels identical", printed)
    assert exact and float(exact.group(1)) <= 1e-4  # the exact-tiling promise, measured by the demo itself
    assert printed.rstrip().endswith(f"report: {out / 'report.html'}")

    # One classifier for the story: the checkpoint whose accuracy is printed is the transfer model's encoder.
    used = re.search(r"window accuracy on held-out windows: (\d\.\d{3}) \((best|last)\.pt, step (\d+) of 40, ",
                     printed)
    assert used, printed
    raw = read_checkpoint(out / "digit_classifier" / f"{used.group(2)}.pt")
    assert used.group(1) == f"{raw['metrics']['pixel_accuracy']:.3f}" and int(used.group(3)) == raw["step"]
    backbone = read_checkpoint(out / "fcn8s_on" / "last.pt")["extra"]["config"]["backbone"]
    assert backbone == str(out / "digit_classifier" / f"{used.group(2)}.pt")

    html = (out / "report.html").read_text()
    assert 'id="metrics"' in html and 'id="per-class-iu"' in html
    for title in ("FCN-8s on the classifier (transfer): training curves", "Learning curves",
                  "Per-class IU on held-out scenes", "FCN-8s on the classifier (transfer): sample pictures",
                  "Heat maps of every digit in one pass", "Exact tiled inference", "Tiled prediction of the big scene",
                  "FCN-8s on the classifier (transfer): geometry", "Timings"):
        assert f"<h2>{title}</h2>" in html, title
    assert html.count("data:image/png;base64,") >= 5  # curves x2, panels, heat maps, big scene: embedded
    for name in ("fcn8s_on/last.pt", "fcn8s/last.pt", "unet/last.pt", "digit_classifier/last.pt", "digit_fcn.pt",
                 "pictures/heatmaps.png", "pictures/fcn8s_on/samples.png", "pictures/learning_curves.png", "pictures/big_scene.png", "scene1024_labels.ome.zarr/zarr.json",
                 MARKER):
        assert (out / name).exists(), name
    check_ome_zarr(out / "scene1024_labels.ome.zarr")

    # A second run into the same folder replaces the previous demo output rather than refusing it.
    (out / "stale.txt").write_text("from the first run")
    prepare_out(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_refuses_a_folder_that_is_not_a_demo_output(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"fcnkit: error: out: '{tmp_path}' is not empty and is not a previous demo output (no {MARKER} file)" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match=r"expected a folder for the demo's output, found the file"):
        prepare_out(tmp_path / "notes.txt")


def test_prepare_out_creates_and_marks(tmp_path) -> None:
    out = prepare_out(tmp_path / "new" / "demo")
    assert (out / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_out(empty) / MARKER).is_file()


def test_the_full_demo_says_up_front_when_it_trains_in_fp32(monkeypatch) -> None:
    import torch

    from fcnkit import demo

    cpu = torch.device("cpu")
    monkeypatch.setattr(demo, "native_bf16", lambda device: False)
    assert demo.hardware_note(False, cpu) == demo.SLOW_HARDWARE
    assert "fp32" in demo.SLOW_HARDWARE and "fcnkit demo --quick" in demo.SLOW_HARDWARE
    assert demo.hardware_note(True, cpu) is None  # --quick takes seconds anywhere
    monkeypatch.setattr(demo, "native_bf16", lambda device: True)
    assert demo.hardware_note(False, cpu) is None
