"""Benchmark: one pass of a convolutionalized classifier vs sliding the classifier over every window.

digit_classifier (32x32 windows, stride 4; random weights, or a trained checkpoint) on a 512x512 image: the FCN pass
against the explicit loop over all (512 - 32) / 4 + 1 = 121 x 121 windows (one classifier call per grid row, so the
loop is batched fairly). Both run under torch.inference_mode in channels_last. Prints and writes
benchmarks/results/convolutionalize.json: the time of each, the speed-up, and max |FCN - loop|.

What bounds the speed-up: the FCN shares the convolutions of overlapping windows, but its first head layer (the
5x5 convolution made from the Linear) still runs once per window position, like in the loop. At width 1.0 that is
~12 GMAC for the FCN against ~215 GMAC for 14,641 windows, a compute ratio of ~18x; the rest of the measured
speed-up is the loop's per-call overhead.

    python benchmarks/convolutionalize.py [--checkpoint runs/digits/best.pt] [--size 512] [--width 1.0]
"""

from __future__ import annotations

import argparse
import json
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
    result = {
        "model": "digit_classifier" + (f" ({args.checkpoint})" if args.checkpoint else f" (random, width {args.width})"),
        "image": [args.size, args.size], "window": list(fcn.window), "stride": list(fcn.stride),
        "windows": reference.shape[2] * reference.shape[3], "grid": list(grid.shape[2:]),
        "fcn_seconds": round(fcn_s, 4), "loop_seconds": round(loop_s, 3), "speedup": round(loop_s / fcn_s, 1),
        "max_abs_diff": (grid - reference).abs().max().item(),
        "max_abs_score": reference.abs().max().item(),
        "same_argmax": bool(torch.equal(grid.argmax(1), reference.argmax(1))),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
