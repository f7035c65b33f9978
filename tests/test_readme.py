"""The README's tour of the Python API runs as written (at smaller sizes) and its comments hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _api_tour() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## A tour of the Python API"):].split("```python", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_api_tour_runs_and_its_comments_hold(capsys):
    code = _api_tour()
    # the shapes its comments state, at the sizes it is written with
    for claim in ("(1000, 1500, 11) float32", "(1, 11, 121, 121): every window, stride 4",
                  "(1, 11, 481, 481): stride 1, 16 passes"):
        assert claim in code, claim
    assert (512 - 32) // 4 + 1 == 121 and 512 - 32 + 1 == 481
    # run it smaller, with tiles smaller than the image so that tiling is exercised
    for big, small in (("(1000, 1500, 3)", "(160, 224, 3)"), ("(1000, 1500)", "(160, 224)"),
                       ("512, 512", "96, 96"), ("tile=256", "tile=64")):
        assert big in code, big
        code = code.replace(big, small)
    names: dict = {}
    exec(compile(code, "README.md (A tour of the Python API)", "exec"), names)
    assert "Geometry(receptive_field=204, output_stride=1, input_multiple=16, halo=112" in capsys.readouterr().out
    whole, tiled = names["whole"], names["tiled"]
    assert whole.shape == (160, 224, 11) and whole.dtype == np.float32
    assert np.abs(tiled - whole).max() <= 1e-4  # "same numbers (within 1e-4)"
    assert names["labels"].shape == (160, 224)
    assert names["fast"].shape == whole.shape and names["fast"].dtype == np.float32  # "float32 out"
    assert tuple(names["grid"].shape) == (1, 11, (96 - 32) // 4 + 1, (96 - 32) // 4 + 1)
    assert tuple(names["dense"].shape) == (1, 11, 96 - 32 + 1, 96 - 32 + 1)
    assert names["wide"].input_size == (48, 48)
    result = names["scores"](names["cm"])
    assert {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "iu"} <= set(result)


def _cli_tour() -> list[list[str]]:
    """Every ``fcnkit ...`` command of the README's command-line tour, split as a shell would (comments dropped;
    ``a && b`` gives both)."""
    import shlex

    text = README.read_text(encoding="utf-8")
    block = text[text.index("## A tour of the command line"):].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            part, words = words[:cut], words[cut + 1:]
            if "fcnkit" in part:  # `torchrun ... -m fcnkit train ...` too
                commands.append(part[part.index("fcnkit") + 1:])
    return commands


def test_every_command_of_the_cli_tour_parses():
    from fcnkit.cli import build_parser

    commands = _cli_tour()
    assert len(commands) >= 25 and {c[0] for c in commands} >= {"demo", "scene", "train", "predict", "export"}
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # an unknown flag or a bad choice exits with status 2 and fails here
