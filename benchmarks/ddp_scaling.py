"""Benchmark: data-parallel training with torchrun, 1 process vs 2, on this machine.

Each configuration trains the same model with the same global batch for two step counts; the difference of the two
wall times cancels start-up, data preparation and the final evaluation, so images/s is the steady training rate:

    images/s = (steps_long - steps_short) * batch / (time_long - time_short)

With 2 processes each gets half of every batch and 1 thread; with 1 process it gets both cores. Writes
benchmarks/results/ddp_scaling.json and prints a Markdown table.

    python benchmarks/ddp_scaling.py [--model unet] [--width 0.25] [--batch-size 16] [--steps 20 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "ddp_scaling.json"


def _run(processes: int, steps: int, args: argparse.Namespace, out: Path) -> float:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", "fcnkit", "train", "--model", args.model, "--data", "scenes", "--width", str(args.width),
        "--batch-size", str(args.batch_size), "--patch", str(args.patch), "--steps", str(steps),
        "--eval-every", "0", "--checkpoint-every", str(steps), "--out", str(out), "--overwrite",
    ]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs=2, default=(20, 60), metavar=("SHORT", "LONG"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            short, long = (_run(processes, s, args, Path(tmp) / f"p{processes}") for s in args.steps)
            rate = (args.steps[1] - args.steps[0]) * args.batch_size / (long - short)
            rows.append({"processes": processes, "images_per_second": round(rate, 1),
                         "seconds_short": round(short, 1), "seconds_long": round(long, 1)})
    base = rows[0]["images_per_second"]
    for row in rows:
        row["speedup"] = round(row["images_per_second"] / base, 2)
    result = {"model": args.model, "width": args.width, "batch_size": args.batch_size, "patch": args.patch,
              "steps": list(args.steps), "cpus": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.model} width {args.width}, global batch {args.batch_size} of {args.patch}x{args.patch}, "
          f"{os.cpu_count()} CPUs")
    print("| processes | images/s | speed-up |\n|---:|---:|---:|")
    for row in rows:
        print(f"| {row['processes']} | {row['images_per_second']} | {row['speedup']}x |")


if __name__ == "__main__":
    main()
