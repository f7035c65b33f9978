"""Training throughput: images per second of every dense model, one step at a time, in fp32 and bf16 autocast and
in either memory layout.

Each model (width 0.25 by default) trains on batches of 64x64 patches of the digit scenes exactly as ``fcnkit
train`` does (the trainer's own optimizer: fused AdamW, per-pixel cross-entropy in fp32, bf16 autocast for
``bf16``, the model and its batches in channels_last); a few warm-up steps, then ``--steps`` timed steps. Batches
are drawn before the clock starts, so the figure is the model's step, not the scene renderer. ``--memory-formats
channels_last contiguous`` times both layouts side by side (the A/B behind the trainer's choice of channels_last).
bf16 is timed by default only where the CPU has native bf16 (elsewhere PyTorch emulates it, several times slower
than fp32). Run it alone: other jobs on the cores change the figures.

    python benchmarks/train_throughput.py            # Markdown table; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from fcnkit.data import PatchSampler, open_dataset
from fcnkit.losses import pixel_cross_entropy
from fcnkit.models import build_model
from fcnkit.training.config import TrainConfig
from fcnkit.training.setup import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import default_precisions, machine  # noqa: E402

MODELS = ("fcn32s", "fcn16s", "fcn8s", "unet", "segnet", "encoder_decoder")
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
HERE = Path(__file__).resolve().parent


def images_per_second(name: str, precision: str, layout: str, batches: list, width: float, steps: int,
                      warmup: int) -> float:
    torch.manual_seed(0)
    memory_format = LAYOUTS[layout]
    batches = [(x.contiguous(memory_format=memory_format), y) for x, y in batches]
    model = build_model(name, num_classes=11, width=width).to(memory_format=memory_format).train()
    optimizer, _ = build_optimizer(model, TrainConfig(model=name, lr=1e-3), warmup + steps)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = pixel_cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for x, y in batches[:warmup]:
        step(x, y)
    started = time.perf_counter()
    for x, y in batches[warmup:warmup + steps]:
        step(x, y)
    return steps * len(batches[0][0]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"),
                        default=default_precisions(),
                        help="default: fp32, and bf16 where the CPU has native bf16")
    parser.add_argument("--memory-formats", nargs="+", choices=tuple(LAYOUTS), default=["channels_last"],
                        help="layouts to time (default: channels_last, the trainer's)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_throughput.json")
    args = parser.parse_args()

    # (precision, layout) in the order of the table's columns
    variants = list(dict.fromkeys((p, layout) for p in args.precisions for layout in args.memory_formats))
    sampler = PatchSampler(open_dataset("scenes", split="train"), 64, seed=0, flips=False)
    batches = [sampler.batch(args.batch_size, k) for k in range(args.warmup + args.steps)]
    rows, load = [], round(os.getloadavg()[0], 2)
    for name in args.models:
        row = {"model": name, "images_per_s": {}}
        for precision, layout in variants:
            rate = images_per_second(name, precision, layout, batches, args.width, args.steps, args.warmup)
            row["images_per_s"][f"{precision} {layout}"] = rate
            print(f"{name}: {precision} {layout} {rate:.1f} images/s", flush=True)
        rows.append(row)
    where = machine()
    print(f"\nwidth {args.width:g}, batches of {args.batch_size} 64x64 patches, {torch.get_num_threads()} thread(s), "
          f"{where['cpu']} ({where['cpu_capability']}), load {load} -> {round(os.getloadavg()[0], 2)}\n")
    columns = [f"{p} {layout}" for p, layout in variants]
    print("| model | " + " | ".join(f"{c} images/s" for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f"{r['images_per_s'][c]:.1f}" for c in columns) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"width": args.width, "batch_size": args.batch_size, "steps": args.steps,
                                    "threads": torch.get_num_threads(), "machine": where, "load_before": load,
                                    "load_after": round(os.getloadavg()[0], 2), "results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
