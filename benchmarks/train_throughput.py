"""Training throughput, fp32 against bf16 autocast: images per second of every dense model, one step at a time.

Each model (width 0.25 by default) trains on batches of 64x64 patches of the digit scenes exactly as ``fcnkit
train`` does (channels_last, the trainer's own optimizer: fused AdamW, per-pixel cross-entropy in fp32, bf16
autocast for ``bf16``); a few warm-up steps, then ``--steps`` timed steps. Batches are drawn before the clock
starts, so the figure is the model's step, not the scene renderer. Run it alone: other jobs on the cores change the
figures.

    python benchmarks/train_throughput.py            # Markdown table; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from fcnkit.data import PatchSampler, open_dataset
from fcnkit.losses import pixel_cross_entropy
from fcnkit.models import build_model
from fcnkit.training.config import TrainConfig
from fcnkit.training.setup import build_optimizer

MODELS = ("fcn32s", "fcn16s", "fcn8s", "unet", "segnet", "encoder_decoder")
HERE = Path(__file__).resolve().parent


def images_per_second(name: str, precision: str, batches: list, width: float, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_model(name, num_classes=11, width=width).to(memory_format=torch.channels_last).train()
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
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and precision")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_throughput.json")
    args = parser.parse_args()

    sampler = PatchSampler(open_dataset("scenes", split="train"), 64, seed=0, flips=False)
    batches = [(x.contiguous(memory_format=torch.channels_last), y)
               for x, y in (sampler.batch(args.batch_size, k) for k in range(args.warmup + args.steps))]
    rows, load = [], round(os.getloadavg()[0], 2)
    for name in args.models:
        fp32 = images_per_second(name, "fp32", batches, args.width, args.steps, args.warmup)
        bf16 = images_per_second(name, "bf16", batches, args.width, args.steps, args.warmup)
        rows.append({"model": name, "fp32_images_per_s": fp32, "bf16_images_per_s": bf16, "speedup": bf16 / fp32})
        print(f"{name}: fp32 {fp32:.1f}, bf16 {bf16:.1f} images/s ({bf16 / fp32:.2f}x)", flush=True)
    print(f"\nwidth {args.width:g}, batches of {args.batch_size} 64x64 patches, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}, load {load} -> {round(os.getloadavg()[0], 2)}\n")
    print("| model | fp32 images/s | bf16 images/s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['fp32_images_per_s']:.1f} | {r['bf16_images_per_s']:.1f} | {r['speedup']:.2f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"width": args.width, "batch_size": args.batch_size, "steps": args.steps,
                                    "threads": torch.get_num_threads(), "load_before": load,
                                    "load_after": round(os.getloadavg()[0], 2), "results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
