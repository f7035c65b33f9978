"""Train FCN-32s, FCN-16s, FCN-8s, U-Net and SegNet with one budget on the digit scenes; score held-out scenes.

Every model trains from scratch on 64x64 patches of the training scenes with the same steps, batch, optimizer and
seed, then is evaluated on whole 256x256 validation scenes (handwriting never seen in training). The paper's
finding to check (Long et al. 2015, Table 2): skips help, FCN-8s >= FCN-16s >= FCN-32s in mean IU.

    python benchmarks/train_scenes.py --steps 300            # Markdown table; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per model (default 300)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.125, help="channel multiplier (CPU-sized: 0.125)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate, poly decay")
    parser.add_argument("--val-count", type=int, default=16, help="held-out 256x256 scenes to score")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_scenes.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        started = time.perf_counter()
        result = train(TrainConfig(
            model=name, data="scenes", patch=64, batch_size=args.batch_size, steps=args.steps, width=args.width,
            lr=args.lr, optimizer="adamw", eval_every=0, checkpoint_every=args.steps, val_size=256,
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
               "wall_s": time.perf_counter() - started}
        rows.append(row)
        print(f"{name}: mean IU {_pct(row['mean_iu'])}, {row['s_per_step']:.3f} s/step", flush=True)

    print(f"\nBudget: {args.steps} steps x {args.batch_size} patches of 64x64, AdamW lr {args.lr:g} (poly), width "
          f"{args.width:g}; scored on {args.val_count} held-out 256x256 scenes; {torch.get_num_threads()} "
          f"thread(s), {platform.processor() or platform.machine()}.\n")
    print("| model | pixel acc. | mean acc. | mean IU | f.w. IU | s/step | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {_pct(r['pixel_accuracy'])} | {_pct(r['mean_accuracy'])} | {_pct(r['mean_iu'])} "
              f"| {_pct(r['fw_iu'])} | {r['s_per_step']:.3f} | {r['images_per_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    budget = {k: getattr(args, k) for k in ("steps", "batch_size", "width", "lr", "val_count")}
    args.out.write_text(json.dumps({"budget": {**budget, "patch": 64, "val_size": 256,
                                               "threads": torch.get_num_threads()}, "results": rows}, indent=2)
                        + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
