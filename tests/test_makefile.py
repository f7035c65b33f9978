"""The Makefile's TORCH_INDEX: a CPU-only (or CUDA) user names a torch wheel index; without it nothing changes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _install_line(*variables: str) -> str:
    # -n: print the recipe only; -W: pretend the pins changed so the install recipe is shown even when up to date
    result = subprocess.run(["make", "-n", "-W", "constraints.txt", "install", *variables], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    (line,) = [ln for ln in result.stdout.splitlines() if '-e ".[dev]"' in ln]
    return line


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_torch_index_adds_an_extra_index_only_when_given():
    cpu = "https://download.pytorch.org/whl/cpu"
    assert f"pip install --quiet --extra-index-url {cpu} -c constraints.txt" in _install_line(f"TORCH_INDEX={cpu}")
    assert "--extra-index-url" not in _install_line()
