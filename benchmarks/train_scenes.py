"""Train FCN-32s, FCN-16s, FCN-8s, U-Net and SegNet with one budget on the digit scenes; score held-out scenes.

Every model trains from scratch on 64x64 patches of the training scenes with the same steps, batch, optimizer and
seed, then is evaluated on whole 256x256 validation scenes (handwriting never seen in training). The paper's
finding to check (Long et al. 2015, Table 2): skips help, FCN-8s >= FCN-16s >= FCN-32s in mean IU.

The recipe is fcnkit train's default (AdamW 3e-3, one-cycle, bf16 autocast where native, no mirroring of the
scenes); ``--backbone runs/digits/best.pt`` adds fcn8s_on, FCN-8s on that trained classifier (transfer). The
1-minute load average is recorded: figures measured while others share the CPU say so.

    python benchmarks/train_scenes.py --steps 1600           # Markdown table; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from fcnkit.training.loop import TrainConfig, train

MODELS = ("fcn32s", "fcn16s", "fcn8s", "unet", "segnet")
HERE = Path(__file__).resolve().parent


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1600, help="optimizer steps per model (default 1600)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier (default 0.25)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate (one-cycle)")
    parser.add_argument("--schedule", default="onecycle", choices=("onecycle", "cosine", "poly"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--backbone", help="a trained digit_classifier checkpoint: adds fcn8s_on (transfer)")
    parser.add_argument("--val-count", type=int, default=16, help="held-out 256x256 scenes to score")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_scenes.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    models = [*args.models, *(["fcn8s_on"] if args.backbone else [])]
    for name in models:
        started, load = time.perf_counter(), round(os.getloadavg()[0], 2)
        transfer = name == "fcn8s_on"
        result = train(TrainConfig(
            model=name, data="scenes", patch=64, batch_size=args.batch_size, steps=args.steps,
            width=None if transfer else args.width, backbone=args.backbone if transfer else None,
            lr=args.lr, optimizer="adamw", schedule=args.schedule, precision=args.precision, eval_every=0, checkpoint_every=args.steps, val_size=256,
            val_count=args.val_count, out=str(HERE / "out" / "train_scenes" / name), overwrite=True, progress=False,
        ))
        log = [json.loads(ln) for ln in (result.out / "metrics.jsonl").read_text().splitlines()]
        train_time = log[-1]["time"]  # training steps only, evaluation excluded
        row = {"model": name, **{k: result.metrics[k] for k in ("pixel_accuracy", "mean_accuracy", "mean_iu",
                                                                 "fw_iu")},
               "final_loss": log[-1]["loss"], "s_per_step": train_time / args.steps,
               "images_per_s": args.steps * args.batch_size / train_time,
               "params": sum(p.numel() for p in torch.load(result.last_checkpoint, weights_only=True)[
                   "state_dict"].values()),
               "wall_s": time.perf_counter() - started, "load_before": load,
               "load_after": round(os.getloadavg()[0], 2)}
        rows.append(row)
        print(f"{name}: mean IU {_pct(row['mean_iu'])}, {row['s_per_step']:.3f} s/step, load {load} -> "
              f"{row['load_after']}", flush=True)

    print(f"\nBudget: {args.steps} steps x {args.batch_size} patches of 64x64, AdamW lr {args.lr:g} ({args.schedule}, "
          f"{args.precision}), width "
          f"{args.width:g}; scored on {args.val_count} held-out 256x256 scenes; {torch.get_num_threads()} "
          f"thread(s), {platform.processor() or platform.machine()}.\n")
    print("| model | pixel acc. | mean acc. | mean IU | f.w. IU | s/step | train min | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {_pct(r['pixel_accuracy'])} | {_pct(r['mean_accuracy'])} | {_pct(r['mean_iu'])} "
              f"| {_pct(r['fw_iu'])} | {r['s_per_step']:.3f} | {r['s_per_step'] * args.steps / 60:.1f} | "
              f"{r['load_before']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    budget = {k: getattr(args, k) for k in ("steps", "batch_size", "width", "lr", "schedule", "precision",
                                            "val_count")}
    args.out.write_text(json.dumps({"budget": {**budget, "patch": 64, "val_size": 256,
                                               "threads": torch.get_num_threads()}, "results": rows}, indent=2)
                        + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
