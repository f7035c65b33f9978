"""benchmarks/gpu.py waits for a GPU; its dry run (the same code on the CPU, tiny sizes) keeps it from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run", "--monai-path", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"results": None, "exact_fp32": True}
    assert "| fp32 |" in proc.stdout and "| bf16 |" in proc.stdout and "peak GPU (GiB)" in proc.stdout


def test_gpu_script_refuses_to_run_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no CUDA device here; pass --dry-run" in proc.stderr
