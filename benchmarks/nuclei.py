"""Train a U-Net on the real nuclei image (``--data nuclei``) and compare it with Otsu's threshold.

Three 256x256 quadrants of stardist's 512x512 fluorescence image train the model; the held-out quadrant (never seen
in training, not even as context) is scored with mean IU. Baselines: Otsu's threshold on the whole image (the
figure usually quoted, 0.821), and on the held-out quadrant both with the threshold fitted on the training quadrants
(a fair baseline: it sees no held-out pixel) and with the held-out quadrant's own threshold.

    python benchmarks/nuclei.py --held-out tl --steps 600      # Markdown row; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fcnkit.data.nuclei import QUADRANTS, read_nuclei, otsu_threshold
from fcnkit.metrics import confusion_matrix, scores
from fcnkit.training.evaluate import evaluate_checkpoint
from fcnkit.training.loop import TrainConfig, train

HERE = Path(__file__).resolve().parent


def _mean_iu(pred: np.ndarray, label: np.ndarray) -> float:
    return float(scores(confusion_matrix(pred.astype(np.uint8), label, 2))["mean_iu"])


def otsu_baselines(held_out: str) -> dict:
    """Otsu mean IU on the whole image and on the held-out quadrant (training-fitted and own threshold)."""
    image, label = read_nuclei()
    half = image.shape[0] // 2, image.shape[1] // 2

    def quadrant(name: str, array: np.ndarray) -> np.ndarray:
        r, c = QUADRANTS[name]
        return array[r * half[0]:(r + 1) * half[0], c * half[1]:(c + 1) * half[1]]

    whole_t = otsu_threshold(image)
    train_pixels = np.concatenate([quadrant(q, image).ravel() for q in QUADRANTS if q != held_out])
    train_t = otsu_threshold(train_pixels)
    img, lab = quadrant(held_out, image), quadrant(held_out, label)
    own_t = otsu_threshold(img)
    return {
        "whole_image": {"threshold": whole_t, "mean_iu": _mean_iu(image > whole_t, label)},
        "held_out_train_threshold": {"threshold": train_t, "mean_iu": _mean_iu(img > train_t, lab)},
        "held_out_own_threshold": {"threshold": own_t, "mean_iu": _mean_iu(img > own_t, lab)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", default="tl", choices=sorted(QUADRANTS), help="quadrant to score (default tl)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate, poly decay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "nuclei.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = f"nuclei:{args.held_out}"
    baselines = otsu_baselines(args.held_out)
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = train(TrainConfig(
        model="unet", data=data, patch=args.patch, batch_size=args.batch_size, steps=args.steps, width=args.width,
        lr=args.lr, optimizer="adamw", eval_every=max(1, args.steps // 5), checkpoint_every=args.steps,
        seed=args.seed, out=str(HERE / "out" / "nuclei"), overwrite=True, progress=False))
    seconds = time.perf_counter() - started
    final = evaluate_checkpoint(str(Path(result.out) / "last.pt"), data, split="val", device="cpu")
    record = {
        "data": data, "model": "unet", "width": args.width, "steps": args.steps, "batch_size": args.batch_size,
        "patch": args.patch, "lr": args.lr, "seed": args.seed, "train_seconds": round(seconds, 1),
        "held_out_mean_iu": final["mean_iu"], "held_out_pixel_accuracy": final["pixel_accuracy"],
        "best_mean_iu_during_training": result.best_mean_iu, "otsu": baselines,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("| data | model | budget | held-out mean IU | Otsu (train threshold) | Otsu (own threshold) | "
          "Otsu (whole image) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {data} | U-Net ×{args.width} | {args.steps} steps × {args.batch_size} × {args.patch}², "
          f"{seconds / 60:.1f} min | {final['mean_iu']:.3f} | "
          f"{baselines['held_out_train_threshold']['mean_iu']:.3f} | "
          f"{baselines['held_out_own_threshold']['mean_iu']:.3f} | {baselines['whole_image']['mean_iu']:.3f} |")


if __name__ == "__main__":
    main()
