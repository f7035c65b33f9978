"""Benchmark: one pass of a convolutionalized classifier vs sliding the classifier over every window.

digit_classifier (32x32 windows, stride 4; random weights, or a trained checkpoint) on a 512x512 image: the FCN pass
against two explicit loops over all (512 - 32) / 4 + 1 = 121 x 121 windows: the literal one (one classifier call
per window, what "sliding the classifier" means) and a batched one (one call per grid row of 121 windows,
`fcnkit.convert.sliding_window`, a stronger baseline). All run under torch.inference_mode in channels_last. Prints
and writes benchmarks/results/convolutionalize.json: the time of each, the speed-ups, and max |FCN - loop|.

What bounds the speed-up: the FCN shares the convolutions of overlapping windows, but its first head layer (the
5x5 convolution made from the Linear) still runs once per window position, like in the loop. At width 1.0 that is
~12 GMAC for the FCN against ~215 GMAC for 14,641 windows, a compute ratio of ~18x; the rest of the measured
speed-up is the loop's per-call overhead.

    python benchmarks/convolutionalize.py [--checkpoint runs/digits/best.pt] [--size 512] [--width 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from fcnkit.checkpoint import load_checkpoint
from fcnkit.convert import convolutionalize, sliding_window
from fcnkit.models import build_model

RESULTS = Path(__file__).parent / "results" / "convolutionalize.json"


def _timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """The best wall time of ``repeats`` runs (after one warm-up run) and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _per_window(classifier, image: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The literal sliding window: one classifier call per window position."""
    (h, w), (sh, sw) = window, stride
    rows, cols = (image.shape[2] - h) // sh + 1, (image.shape[3] - w) // sw + 1
    grid = torch.empty(image.shape[0], 0, rows, cols)
    for i in range(rows):
        for j in range(cols):
            scores = classifier(image[:, :, i * sh:i * sh + h, j * sw:j * sw + w])
            if grid.shape[1] == 0:
                grid = torch.empty(image.shape[0], scores.shape[1], rows, cols)
            grid[:, :, i, j] = scores
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained digit_classifier checkpoint (default: random weights)")
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the random model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.checkpoint:
        classifier = load_checkpoint(args.checkpoint)
    else:
        classifier = build_model("digit_classifier", num_classes=11, width=args.width)
    classifier = classifier.eval().to(memory_format=torch.channels_last)
    fcn = convolutionalize(classifier, input_size=classifier.input_size).eval().to(memory_format=torch.channels_last)
    image = (torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 255)
    image = image.contiguous(memory_format=torch.channels_last)

    with torch.inference_mode():
        fcn_s, grid = _timed(lambda: fcn(image), repeats=3)
        loop_s, reference = _timed(lambda: sliding_window(classifier, image, window=fcn.window, stride=fcn.stride),
                                   repeats=1)
        start = time.perf_counter()
        literal = _per_window(classifier, image, fcn.window, fcn.stride)
        literal_s = time.perf_counter() - start
    result = {
        "model": "digit_classifier" + (f" ({args.checkpoint})" if args.checkpoint else f" (random, width {args.width})"),
        "image": [args.size, args.size], "window": list(fcn.window), "stride": list(fcn.stride),
        "windows": reference.shape[2] * reference.shape[3], "grid": list(grid.shape[2:]),
        "fcn_seconds": round(fcn_s, 4),
        "per_window_loop_seconds": round(literal_s, 3), "speedup_vs_per_window": round(literal_s / fcn_s, 1),
        "batched_loop_seconds": round(loop_s, 3), "speedup_vs_batched": round(loop_s / fcn_s, 1),
        "max_abs_diff": max((grid - reference).abs().max().item(), (grid - literal).abs().max().item()),
        "max_abs_score": reference.abs().max().item(),
        "same_argmax": bool(torch.equal(grid.argmax(1), reference.argmax(1))
                            and torch.equal(grid.argmax(1), literal.argmax(1))),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
