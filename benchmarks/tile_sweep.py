"""Benchmark: speed and peak memory of ``predict_tiled`` against the memory budget (hence the tile), per model.

For each model and each ``--memory-limit`` value, one child process (its own peak RSS) builds the model (random
weights, seed 0), plans SIZE×SIZE RGB noise with that budget and times ``predict_tiled(..., output="labels")`` after a
small warm-up: the tile chosen, tiles, the halo's extra work, seconds, MP/s, peak RSS, and user / system CPU time
(system time is the kernel faulting in and returning large activation buffers). ``default`` is the budget fcnkit
uses when none is given. The table justifies that default (docs: README, Benchmarks).

    python benchmarks/tile_sweep.py                 # 2048², unet and encoder_decoder, 256MB … 8GB (~15 min alone)
    python benchmarks/tile_sweep.py --quick         # 1024², unet only, 4 budgets (~2 min alone)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, markdown_table, run_isolated, timed_cpu, write_results  # noqa: E402

BUDGETS = ["256MB", "512MB", "1GB", "2GB", "4GB", "8GB", "default"]
MODELS = ["unet", "encoder_decoder"]


def sweep_one(model_name: str, size: int, budget: str, precision: str = "fp32", width: float = 1.0) -> dict:
    """One budget in this (child) process: the plan it gives and how fast and large the run is."""
    import torch

    import fcnkit
    from fcnkit.inference.tiled import plan_prediction, predict_tiled

    torch.manual_seed(0)
    model = fcnkit.build_model(model_name, num_classes=3, width=width).eval()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    predict_tiled(model, image[:64, :64], precision=precision)  # warm-up: oneDNN picks its kernels
    limit = None if budget == "default" else budget
    plan = plan_prediction(model, image, memory_limit=limit, output="labels", precision=precision)
    seconds, _, user, system = timed_cpu(lambda: predict_tiled(model, image, plan=plan, output="labels"))
    return {"model": model_name, "width": width, "size": size, "budget": budget, "precision": precision,
            "tile": f"{plan.tile[0]}×{plan.tile[1]}", "tiles": len(plan.tiles), "overhead": plan.overhead,
            "seconds": seconds, "megapixels_per_s": size * size / 1e6 / seconds, "user_s": user, "system_s": system}


def run(models: list[str], size: int, budgets: list[str], precision: str, width: float) -> list[dict]:
    rows = []
    for name in models:
        for budget in budgets:
            row = run_isolated("benchmarks.tile_sweep:sweep_one", model_name=name, size=size, budget=budget,
                               precision=precision, width=width)
            row.update(rss_gib=row["peak_rss_bytes"] / 2**30, load_average=os.getloadavg()[0],
                       system_share=row["system_s"] / max(row["user_s"], 1e-9))
            print(f"{name} {budget}: tile {row['tile']}, {row['seconds']:.1f} s, {row['rss_gib']:.2f} GiB, "
                  f"sys/user {row['system_share']:.2f}, load {row['load_average']:.1f}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    return markdown_table(rows, [
        ("model", "model", "s"), ("precision", "precision", "s"), ("budget", "--memory-limit", "s"),
        ("tile", "tile", "s"), ("tiles", "tiles", "d"), ("overhead", "work / image", ".2f"),
        ("seconds", "time (s)", ".1f"), ("megapixels_per_s", "MP/s", ".3f"), ("rss_gib", "peak RSS (GiB)", ".2f"),
        ("system_share", "system / user CPU", ".2f"), ("load_average", "load", ".1f")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024², unet, 256MB 1GB 4GB default")
    parser.add_argument("--size", type=int, help="image side (default 2048, quick 1024)")
    parser.add_argument("--models", nargs="*", help=f"default {' '.join(MODELS)}")
    parser.add_argument("--budgets", nargs="*", help=f"default {' '.join(BUDGETS)}")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--width", type=float, default=1.0, help="model width (1.0: the default models)")
    parser.add_argument("--out", default=str(RESULTS / "tile_sweep.json"))
    args = parser.parse_args()
    size = args.size or (1024 if args.quick else 2048)
    models = args.models or (["unet"] if args.quick else MODELS)
    budgets = args.budgets or (["256MB", "1GB", "4GB", "default"] if args.quick else BUDGETS)
    rows = run(models, size, budgets, args.precision, args.width)
    path = write_results(Path(args.out).stem, {"size": size, "rows": rows})
    print(table(rows))
    print(f"\n{json.dumps(str(path))}")


if __name__ == "__main__":
    main()
