"""The training-throughput benchmark times each model in each asked-for precision and layout, and writes them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import train_throughput  # noqa: E402


def test_images_per_second_trains_in_either_layout():
    batches = [(torch.randint(0, 256, (2, 3, 64, 64)).float(), torch.randint(0, 11, (2, 64, 64))) for _ in range(2)]
    for layout in train_throughput.LAYOUTS:
        rate = train_throughput.images_per_second("encoder_decoder", "fp32", layout, batches, 0.0625, steps=1,
                                                  warmup=1)
        assert rate > 0


def test_the_script_writes_one_rate_per_model_and_variant(tmp_path):
    out = tmp_path / "tp.json"
    done = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--models", "encoder_decoder", "unet",
                           "--width", "0.0625", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                           "--precisions", "fp32", "--memory-formats", "channels_last", "contiguous",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| model | fp32 channels_last images/s | fp32 contiguous images/s |" in done.stdout
    result = json.loads(out.read_text())
    assert [r["model"] for r in result["results"]] == ["encoder_decoder", "unet"]
    assert all(sorted(r["images_per_s"]) == ["fp32 channels_last", "fp32 contiguous"] for r in result["results"])
    assert result["machine"]["cpu"] and result["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
