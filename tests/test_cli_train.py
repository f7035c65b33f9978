"""``fcnkit train`` and ``fcnkit eval`` through the command line: output, JSON, and errors as one line, status 2."""

from __future__ import annotations

import json

import pytest

from fcnkit.cli import main

TRAIN = ["train", "--model", "encoder_decoder", "--data", "scenes:48", "--patch", "32", "--batch-size", "2",
         "--width", "0.125", "--steps", "2", "--val-size", "40", "--val-count", "2", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_train_then_eval_table_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert "step 2: mean IU" in capsys.readouterr().out
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()

    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", "scenes:40", "--count", "2"]) == 0
    text = capsys.readouterr().out
    for label in ("pixel accuracy", "mean accuracy", "mean IU", "frequency-weighted IU", "background", "  9 "):
        assert label in text

    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", "scenes:40", "--count", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and len(result["iu"]) == 11 and result["class_names"][0] == "background"
    assert 0.0 <= result["mean_iu"] <= 1.0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # the same images as the trainer's evaluation (which ran the channels_last copy: allow a flipped pixel)
    assert result["mean_iu"] == pytest.approx(record["mean_iu"], abs=5e-3)


def test_existing_run_is_refused_then_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out)]) == 2
    assert "fcnkit: error: out: " in capsys.readouterr().err
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0  # already finished: nothing to redo
    assert "step 2:" in capsys.readouterr().out


def test_init_from_reports_new_parameters(tmp_path, capsys):
    first = ["train", "--model", "fcn32s", "--data", "scenes:48", "--patch", "32", "--batch-size", "2",
             "--width", "0.0625", "--steps", "1", "--val-size", "40", "--val-count", "1", "--no-progress"]
    assert main([*first, "--out", str(tmp_path / "a")]) == 0
    second = [*first, "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a" / "last.pt")]
    second[second.index("fcn32s")] = "fcn16s"
    assert main(second) == 0
    assert "new: score_pool4.bias, score_pool4.weight, upscore16.weight, upscore2.weight" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "steps: expected a positive integer, found 0"),
        (["--lr", "0"], "lr: expected a positive number, found 0.0"),
        (["--patch", "-4"], "patch: expected a positive integer, found -4"),
    ],
)
def test_bad_train_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main([*TRAIN, "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcnkit: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--seed", "-1"], "--seed: expected an integer from 0 to 4294967295 (2**32 - 1), found -1; pass e.g. --seed 0."),
    (["--seed", "4294967296"],
     "--seed: expected an integer from 0 to 4294967295 (2**32 - 1), found 4294967296; pass e.g. --seed 0."),
    (["--val-size", "5"], "--val-size: expected a side of at least 8 pixels for the validation scenes, found 5; "
                          "pass e.g. --val-size 256 (the default)."),
])
def test_seed_and_val_size_are_refused_by_flag_before_anything_runs(tmp_path, capsys, argv, message):
    assert main([*TRAIN, "--out", str(tmp_path / "run"), *argv]) == 2
    assert capsys.readouterr().err == f"fcnkit: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_eval_of_a_missing_checkpoint(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", "scenes"]) == 2
    assert "none.pt': expected a .pt file written by `fcnkit train`, found nothing" in capsys.readouterr().err


def test_cli_choices_match_the_library():
    from fcnkit.cli import train as cli_train
    from fcnkit.training.config import SCHEDULES
    from fcnkit.training.precision import PRECISIONS

    assert cli_train.SCHEDULES == SCHEDULES and cli_train.PRECISIONS == PRECISIONS


def test_backbone_only_for_transfer_models(tmp_path, capsys):
    from fcnkit.checkpoint import save_checkpoint
    from fcnkit.models import build_model

    clf = tmp_path / "clf"
    save_checkpoint(clf / "best.pt", model=build_model("digit_classifier", num_classes=11, width=0.125))
    assert main([*TRAIN, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr() == ("", "")  # --quiet: nothing at all
    assert main([*TRAIN, "--backbone", str(clf / "best.pt"), "--out", str(tmp_path / "x")]) == 2
    assert ("fcnkit: error: backbone: only the transfer models fcn32s_on, fcn16s_on, fcn8s_on start from a "
            "classifier, found --model encoder_decoder") in capsys.readouterr().err
    seg = tmp_path / "seg"
    args = ["train", "--model", "fcn16s_on", "--backbone", str(clf / "best.pt"), "--data", "scenes:48", "--patch",
            "32", "--batch-size", "2", "--steps", "2", "--val-size", "40", "--val-count", "1", "--no-progress",
            "--out", str(seg)]
    assert main(args) == 0
    assert "step 2: mean IU" in capsys.readouterr().out
    from fcnkit.checkpoint import load_checkpoint

    model = load_checkpoint(seg / "last.pt")  # rebuilt from its own metadata, without the backbone file
    assert model.fcnkit_spec["options"]["backbone"]["name"] == "digit_classifier"


def test_model_options_and_class_weights_reach_the_run(tmp_path, capsys):
    from fcnkit.checkpoint import read_checkpoint

    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--model", "fcn32s", "--model-option", "batch_norm=true",
                 "--class-weights", "0.5,1,1,1,1,1,1,1,1,1,2"]) == 0
    assert "fcnkit: class weights 0.50, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 2.00" \
        in capsys.readouterr().err
    saved = read_checkpoint(out / "last.pt")
    assert saved["model"]["options"]["batch_norm"] is True
    assert saved["extra"]["config"]["class_weights"] == [0.5] + [1.0] * 9 + [2.0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--model-option", "window"], "expected NAME=VALUE, found 'window'; pass e.g. --model-option window=48"),
    (["--model-option", "windw=48"], "model 'encoder_decoder': unknown option 'windw'"),
    (["--model-option", "width=0.5"], "expected an option other than width, found 'width=0.5'; pass --width 0.5"),
    (["--class-weights", "heavy"], "expected 'balanced', 'none' or comma-separated numbers (one per class), found "
                                   "'heavy'"),
    (["--class-weights", "1,2"], "class_weights: expected 11 numbers (one per class), found 2"),
])
def test_bad_model_options_and_class_weights_exit_2(tmp_path, capsys, argv, message):
    try:
        code = main([*TRAIN, "--out", str(tmp_path / "run"), *argv])
    except SystemExit as stop:  # argparse's own refusals (a flag's format) exit from the parser
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_patch_below_the_models_input_multiple_is_refused(tmp_path, capsys):
    assert main(["train", "--model", "unet", "--data", "scenes:48", "--patch", "3", "--steps", "1", "--width",
                 "0.0625", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err == ("fcnkit: error: patch: expected at least 16 px, the input multiple of unet, "
                                       "found --patch 3; pass --patch 64 or larger.\n")
    assert not (tmp_path / "run" / "last.pt").exists()
    assert main(["train", "--model", "unet", "--data", "scenes:48", "--steps", "0", "--out", str(tmp_path / "r")]) == 2
    assert "steps: expected a positive integer, found 0; pass e.g. --steps 1 (steps=1 from Python)" in \
        capsys.readouterr().err


def test_a_transfer_model_without_a_backbone_says_it_starts_untrained(tmp_path, capsys):
    assert main(["train", "--model", "fcn8s_on", "--data", "scenes:48", "--patch", "32", "--steps", "1",
                 "--batch-size", "2", "--val-count", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert ("fcnkit: note: fcn8s_on without --backbone starts from an untrained digit_classifier (no transfer); "
            "pass --backbone CLASSIFIER.pt") in capsys.readouterr().err


def test_eval_says_what_n_a_means_when_a_class_is_nowhere(capsys, monkeypatch):
    """An 11-class model scored on masks of 3 classes that it never predicts digits 3-9 on: 7 rows of n/a."""
    import fcnkit.training.evaluate as evaluate

    iu = [0.9, 0.5, 0.25] + [None] * 8
    result = {"checkpoint": "m.pt", "data": "folder:cells", "split": "val", "images": 1, "unit": "images",
              "pixel_accuracy": 0.9, "mean_accuracy": 0.8, "mean_iu": 0.55, "fw_iu": 0.85, "iu": iu,
              "class_names": [str(i) for i in range(11)]}
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda *a, **k: result)
    assert main(["eval", "--checkpoint", "m.pt", "--data", "folder:cells"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "m.pt on folder:cells (val, 1 image)"
    assert "  10        n/a" in lines
    assert lines[-1] == ("  n/a: no pixel of these classes in the masks or the predictions, so left out of the means "
                         "(8 of the model's 11 classes)")
    result["iu"] = [0.9] * 10 + [None]
    assert main(["eval", "--checkpoint", "m.pt", "--data", "folder:cells"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("  n/a: no pixel of this class in the masks")
    result["iu"] = [0.9] * 11
    assert main(["eval", "--checkpoint", "m.pt", "--data", "folder:cells"]) == 0
    assert "n/a" not in capsys.readouterr().out
