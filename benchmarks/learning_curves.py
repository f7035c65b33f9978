"""Learning curves on the digit scenes: held-out mean IU against steps and seconds, one curve per training lever.

Each variant changes one thing of the reference recipe (U-Net width 0.25, batch 16, AdamW 3e-3, one-cycle, bf16
autocast where native, no mirroring) and trains with the same seed; every ``--eval-every`` steps the model is scored
on whole held-out 256x256 scenes of unseen handwriting. The 1-minute load average is recorded at the start and end
of every run: on a shared machine, compare seconds only between runs made at a similar load.

    python benchmarks/learning_curves.py --variants recipe mirror poly --steps 800
    python benchmarks/learning_curves.py --plot        # draw docs/images/learning_curves.png from the JSON

Results accumulate in benchmarks/results/learning_curves.json (a variant run again replaces its earlier curve).
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

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "learning_curves.json"
PICTURE = HERE.parent / "docs" / "images" / "learning_curves.png"
RECIPE = dict(model="unet", width=0.25, batch_size=16, lr=3e-3, schedule="onecycle", precision="auto", mirror=None)
# name -> (what changes, the changed TrainConfig fields)
VARIANTS: dict[str, tuple[str, dict]] = {
    "recipe": ("the recipe", {}),
    "mirror": ("+ left-right mirroring", {"mirror": True}),
    "poly": ("poly schedule, no warm-up (the old default)", {"schedule": "poly", "warmup": 0}),
    "batch8": ("batch 8", {"batch_size": 8}),
    "lr1e-3": ("AdamW 1e-3 (the old default)", {"lr": 1e-3}),
    "fp32": ("fp32 instead of bf16", {"precision": "fp32"}),
    "fcn8s": ("FCN-8s (width 0.25) instead of U-Net", {"model": "fcn8s"}),
    "segnet": ("SegNet (width 0.25) instead of U-Net", {"model": "segnet"}),
    "transfer": ("FCN-8s on the trained digit classifier (transfer)", {"model": "fcn8s_on", "width": None}),
    "transfer_scratch": ("FCN-8s on an untrained digit classifier (same net, from scratch)",
                         {"model": "fcn8s_on", "width": None}),
}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_variant(name: str, args: argparse.Namespace) -> dict:
    what, changes = VARIANTS[name]
    settings = {**RECIPE, **changes}
    options: dict = {}
    if name == "transfer":
        settings["backbone"] = str(args.backbone)
    elif name == "transfer_scratch":
        options = {"backbone": json.loads(args.backbone_spec)}
    load_before, started = _load(), time.perf_counter()
    result = train(TrainConfig(
        data="scenes", patch=64, steps=args.steps, eval_every=args.eval_every, checkpoint_every=args.steps,
        val_size=256, val_count=args.val_count, out=str(HERE / "out" / "curves" / name), overwrite=True,
        model_options=options, progress="lines", **settings))
    log = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    return {"variant": name, "what": what, "settings": settings, "steps": [r["step"] for r in log],
            "seconds": [r["time"] for r in log], "mean_iu": [r["mean_iu"] for r in log],
            "loss": [r["loss"] for r in log], "final": result.metrics, "load_before": load_before,
            "load_after": _load(), "wall_s": round(time.perf_counter() - started, 1)}


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for curve in results["curves"].values():
        label = f"{curve['what']} (load {curve['load_before']:.1f})"
        axes[0].plot(curve["steps"], curve["mean_iu"], marker=".", label=label)
        axes[1].plot(curve["seconds"], curve["mean_iu"], marker=".", label=label)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training seconds (evaluation excluded; shared CPU, see load)")
    axes[0].set_ylabel("held-out mean IU")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Digit scenes: held-out mean IU while training (2 CPU cores)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val-count", type=int, default=8, help="held-out 256x256 scenes (default 8)")
    parser.add_argument("--backbone", type=Path, help="digit_classifier checkpoint for the 'transfer' variant")
    parser.add_argument("--backbone-spec", default='{"name": "digit_classifier", "num_classes": 11, '
                        '"in_channels": 3, "options": {"width": 0.5}}', help="backbone of 'transfer_scratch'")
    parser.add_argument("--plot", action="store_true", help="draw the picture from the saved results")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"curves": {}}
    for name in args.variants:
        curve = run_variant(name, args)
        results["curves"][name] = curve
        results["machine"] = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                              "val_scenes": args.val_count, "val_size": 256}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: mean IU {curve['mean_iu']} at steps {curve['steps']}; load {curve['load_before']} -> "
              f"{curve['load_after']}", flush=True)
    if args.plot:
        print(f"wrote {plot(results, PICTURE)}")


if __name__ == "__main__":
    main()
