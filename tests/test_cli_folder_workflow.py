"""A newcomer's run on their own ``folder:`` data: a held-out split said out loud, ``--resume`` without repeating
the model options, ``eval`` without ``--num-classes``, and a ``best.pt`` that holds weights only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnkit
from fcnkit.checkpoint import read_checkpoint
from fcnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
        mask = (image[:, :, 0] > 128).astype(np.uint8)  # a learnable 2-class rule
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "encoder_decoder", "--data", f"folder:{data}", "--patch", "16", "--batch-size", "2",
            "--steps", "2", "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, str]:
    """One 2-step run on a 6-image folder, trained at width 0.125; returns (data, run folder, stderr)."""
    root = tmp_path_factory.mktemp("folder")
    data, out = _folder(root / "data"), root / "run"
    import sys
    from io import StringIO

    err, sys.stderr = sys.stderr, StringIO()
    try:
        torch.set_num_threads(1)
        code = main(_train(data, out, "--num-classes", "2", "--width", "0.125"))
        printed = sys.stderr.getvalue()
    finally:
        sys.stderr = err
    assert code == 0, printed
    return data, out, printed


def test_training_says_which_images_are_held_out(run):
    data, out, printed = run
    assert (f"fcnkit: note: folder:{data} has no train/ and val/ subfolders: 1 of 6 images (every 5th stem: s4) "
            "are held out for validation.") in printed


def test_best_pt_is_weights_only_and_last_pt_resumable(run):
    _, out, _ = run
    best, last = read_checkpoint(out / "best.pt"), read_checkpoint(out / "last.pt")
    assert {"optimizer", "scheduler", "rng"} <= set(last) and not {"optimizer", "scheduler", "rng"} & set(best)
    assert (out / "best.pt").stat().st_size < (out / "last.pt").stat().st_size
    assert {k: v.shape for k, v in best["state_dict"].items()} == {k: v.shape for k, v in last["state_dict"].items()}
    model = fcnkit.load_checkpoint(out / "best.pt")  # both load as models
    assert fcnkit.load_checkpoint(out / "last.pt").fcnkit_spec == model.fcnkit_spec


def test_eval_takes_the_number_of_classes_from_the_checkpoint(run, capsys):
    data, out, _ = run
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", f"folder:{data}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 1 and len(result["iu"]) == 2  # the held-out image, both classes
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", f"folder:{data}", "--num-classes", "3"]) == 2
    assert capsys.readouterr().err == (f"fcnkit: error: --num-classes 3 does not match checkpoint '{out / 'last.pt'}', "
                                       "which predicts 2 classes; leave --num-classes out or set it to 2.\n")


def test_resume_takes_the_model_options_from_the_checkpoint(run, capsys, tmp_path):
    data, out, _ = run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (copy / name).write_bytes((out / name).read_bytes())
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    capsys.readouterr()

    assert main(_train(data, copy, "--num-classes", "2", "--resume", "--width", "0.25")) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fcnkit: error: resume: '{copy / 'last.pt'}' was trained with width=0.125, found --width 0.25; leave it out "
        "(a resumed run takes its model options from the checkpoint), or pass --overwrite to start over.")
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.name in before} == before  # nothing lost

    assert main(_train(data, copy, "--num-classes", "2", "--resume")) == 0  # no --width needed
    assert "step 2:" in capsys.readouterr().out
    assert read_checkpoint(copy / "last.pt")["model"]["options"] == {"width": 0.125}
