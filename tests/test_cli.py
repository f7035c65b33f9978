from __future__ import annotations

import subprocess
import sys

import pytest

import fcnkit
from fcnkit.cli import _commands, main

# The subcommands the README promises.
DESIGNED = ("demo", "scene", "train", "eval", "report", "predict", "convert", "heatmap", "inspect", "export")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fcnkit {fcnkit.__version__}"


def test_help_lists_every_designed_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()]
    assert set(DESIGNED) <= set(listed), f"missing from `fcnkit --help`: {sorted(set(DESIGNED) - set(listed))}"
    assert set(DESIGNED) <= set(_commands())


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_subcommand_help_shows_an_example(capsys, name):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out
    example = out.split("example:", 1)[1]
    assert f"fcnkit {name}" in example


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "fcnkit: error: argument COMMAND: invalid choice: 'frobnicate'" in err


def test_unknown_argument(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inspect", "fcn8s", "--bogus"])
    assert exc.value.code == 2
    assert "fcnkit: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_value_that_starts_with_a_dash_is_named_with_the_way_to_pass_it(capsys):
    # argparse alone says "expected one argument": the user sees no reason, since they gave one
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--checkpoint", "m.pt", "--memory-limit", "-1GB", "a.png", "--out", "o.png"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fcnkit: error: predict: argument --memory-limit: expected a value, found '-1GB', which starts with '-' and "
        "so reads as an option; to pass it as the value, write --memory-limit=-1GB")
    with pytest.raises(SystemExit):  # a flag at the end, with no value at all, keeps argparse's words
        main(["predict", "--checkpoint", "m.pt", "a.png", "--memory-limit"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fcnkit: error: predict: argument --memory-limit: expected one argument")


def test_user_error_is_one_line_without_traceback():
    # A real process: what a user sees on the terminal.
    result = subprocess.run([sys.executable, "-m", "fcnkit", "inspect", "no_such_model"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("fcnkit: error: ")
    assert "no_such_model" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_command_says_each_warning_once_as_one_line(tmp_path, capsys, monkeypatch):
    """bf16 asked for where it is emulated: the plan and the run both warn, the user reads it once, without a
    Python source line."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    from fcnkit import hardware
    from fcnkit.checkpoint import save_checkpoint
    from fcnkit.inference import model as inference_model

    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)  # the warning asks fcnkit.hardware
    monkeypatch.setattr(inference_model, "onednn_bf16", lambda: False)
    torch.manual_seed(0)
    net = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125)
    save_checkpoint(tmp_path / "m.pt", model=net)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "in.png")
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # pyproject ignores this warning for the tests that run bf16 on purpose
        code = main(["predict", "--checkpoint", str(tmp_path / "m.pt"), str(tmp_path / "in.png"), "--out",
                     str(tmp_path / "out.png"), "--precision", "bf16", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count(f"fcnkit: warning: {hardware.EMULATED_BF16}\n") == 1
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_a_reader_that_goes_away_ends_the_command_without_a_traceback():
    """`fcnkit inspect --json | head`: the pipe closes before fcnkit writes; exit 141 (SIGPIPE's), no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "fcnkit", "inspect", "encoder_decoder", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err
