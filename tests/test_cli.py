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


def test_user_error_is_one_line_without_traceback():
    # A real process: what a user sees on the terminal.
    result = subprocess.run([sys.executable, "-m", "fcnkit", "inspect", "no_such_model"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("fcnkit: error: ")
    assert "no_such_model" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
