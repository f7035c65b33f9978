"""Benchmark: exact tiled inference against the whole image and MONAI, then out of core from BigTIFF to OME-Zarr.

1. In memory: fcnkit's default ``unet`` (random weights, seed 0) on a SIZE×SIZE RGB image: ``predict_tiled``
   (defaults: tile from the memory budget), ``predict`` (whole image) and MONAI's ``sliding_window_inference``
   (roi 512, overlap 0.25, gaussian). Each in its own process: time, peak RSS, max |logits − whole| and the
   fraction of labels that differ from the whole-image run.
2. Out of core: a tiled BigTIFF RGB of each side (written tile by tile into benchmarks/out/) through
   ``fcnkit predict`` to OME-Zarr labels with a small model, ``--memory-limit 1GB``: MP/s and peak RSS.

Writes benchmarks/results/tiling.json and prints Markdown tables. MONAI is imported from ``--monai-path`` (install
it there with ``pip install --target /tmp/monai --no-deps monai``); it is never needed by fcnkit itself.

    python benchmarks/tiling.py            # 4096² in memory; 8k, 16k, 32k out of core (hours on 2 cores)
    python benchmarks/tiling.py --quick    # 1024² in memory; 2k, 4k out of core
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import OUT, markdown_table, run_isolated, timed, write_results  # noqa: E402

SMALL_MODEL = {"name": "unet", "width": 0.25}


def _unet():
    import torch

    import fcnkit

    torch.manual_seed(0)
    return fcnkit.build_model("unet", num_classes=3).eval()


def _image(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)


def in_memory(variant: str, size: int, monai_path: str = "") -> dict:
    """One variant on the in-memory image (runs in a child process); logits saved for the comparison."""
    import torch

    from fcnkit.tiling import plan_prediction, predict, predict_tiled

    model, image = _unet(), _image(size)
    predict(model, image[:64, :64])  # warm-up: oneDNN picks its kernels
    info: dict = {"variant": variant}
    if variant == "whole":
        seconds, logits = timed(lambda: predict(model, image))
    elif variant == "tiled":
        plan = plan_prediction(model, image)
        h, (th, tw) = plan.halo, plan.tile
        info.update(tile=f"{th}×{tw}", halo=h, tiles=len(plan.tiles), overhead=plan.overhead,
                    interior_overhead=(th + 2 * h) * (tw + 2 * h) / (th * tw))
        seconds, logits = timed(lambda: predict_tiled(model, image))
    else:
        sys.path.insert(0, monai_path)
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()

        def run() -> np.ndarray:
            with torch.inference_mode():
                y = sliding_window_inference(x, roi_size=512, sw_batch_size=1, predictor=model, overlap=0.25,
                                             mode="gaussian")
            return y[0].permute(1, 2, 0).numpy()

        seconds, logits = timed(run)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / f"tiling_{variant}_{size}.npy", np.ascontiguousarray(logits, np.float32))
    return {**info, "seconds": seconds, "megapixels_per_s": size * size / 1e6 / seconds}


def _compare(size: int, variant: str) -> tuple[float, float]:
    """max |logits − whole| and the fraction of differing labels, read back by rows to keep the parent small."""
    whole = np.load(OUT / f"tiling_whole_{size}.npy", mmap_mode="r")
    other = np.load(OUT / f"tiling_{variant}_{size}.npy", mmap_mode="r")
    worst, differ = 0.0, 0
    for y in range(0, size, 256):
        a, b = np.asarray(whole[y:y + 256]), np.asarray(other[y:y + 256])
        worst = max(worst, float(np.abs(a - b).max()))
        differ += int((a.argmax(2) != b.argmax(2)).sum())
    return worst, differ / (size * size)


def _bigtiff(side: int) -> Path:
    """A tiled RGB BigTIFF of ``side``², written tile by tile (never whole in memory)."""
    import tifffile

    path = OUT / f"slide_{side}.tif"
    if path.exists():
        return path
    tile = 512
    rng = np.random.default_rng(side)
    texture = rng.integers(0, 256, (tile, tile, 3)).astype(np.uint8)

    def tiles():
        for i in range(side // tile):
            for j in range(side // tile):
                yield np.roll(texture, (7 * i + 3 * j) % tile, axis=0)

    OUT.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path.with_suffix(".tmp.tif"), tiles(), shape=(side, side, 3), dtype=np.uint8,
                     tile=(tile, tile), bigtiff=True, photometric="rgb")
    path.with_suffix(".tmp.tif").rename(path)
    return path


def _checkpoint() -> Path:
    import torch

    import fcnkit
    from fcnkit.checkpoint import save_checkpoint

    path = OUT / "tiling_small_model.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = fcnkit.build_model(SMALL_MODEL["name"], num_classes=3, width=SMALL_MODEL["width"])
        save_checkpoint(path, model=model)
    return path


def out_of_core(side: int, memory_limit: str) -> dict:
    """``fcnkit predict`` BigTIFF -> OME-Zarr labels in this (child) process."""
    import shutil

    from fcnkit.cli import main

    target = OUT / f"slide_{side}_labels.ome.zarr"
    shutil.rmtree(target, ignore_errors=True)
    argv = ["predict", "--checkpoint", str(_checkpoint()), str(_bigtiff(side)), "--out", str(target),
            "--memory-limit", memory_limit, "--quiet", "--overwrite"]
    seconds, code = timed(lambda: main(argv))
    if code != 0:
        raise RuntimeError(f"fcnkit predict exited {code}")
    return {"side": side, "seconds": seconds, "megapixels_per_s": side * side / 1e6 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024² in memory; 2k and 4k out of core")
    parser.add_argument("--size", type=int, help="side of the in-memory image (default 4096, quick 1024)")
    parser.add_argument("--sides", type=int, nargs="*", help="out-of-core sides (default 8192 16384 32768)")
    parser.add_argument("--memory-limit", default="1GB", help="for the out-of-core runs (default 1GB)")
    parser.add_argument("--monai-path", default="/tmp/monai", help="folder where MONAI was pip-installed")
    args = parser.parse_args()
    size = args.size or (1024 if args.quick else 4096)
    sides = args.sides if args.sides is not None else ([2048, 4096] if args.quick else [8192, 16384, 32768])

    rows = []
    variants = ["whole", "tiled"] + (["monai"] if Path(args.monai_path, "monai").exists() else [])
    for variant in variants:
        row = run_isolated("benchmarks.tiling:in_memory", variant=variant, size=size, monai_path=args.monai_path)
        row["max_diff"], row["labels_differ"] = (0.0, 0.0) if variant == "whole" else _compare(size, variant)
        row["rss_gib"] = row["peak_rss_bytes"] / 2**30
        rows.append(row)
        print(f"{variant}: {row['seconds']:.1f} s", file=sys.stderr, flush=True)
    whole_s = rows[0]["seconds"]
    for row in rows:
        row["vs_whole"] = row["seconds"] / whole_s

    slides = []
    for side in sides:
        row = run_isolated("benchmarks.tiling:out_of_core", side=side, memory_limit=args.memory_limit)
        row["rss_gib"] = row["peak_rss_bytes"] / 2**30
        slides.append(row)
        print(f"{side}²: {row['seconds']:.1f} s", file=sys.stderr, flush=True)

    path = write_results("tiling", {"in_memory": {"model": "unet (default options)", "size": size, "rows": rows},
                                    "out_of_core": {"model": SMALL_MODEL, "memory_limit": args.memory_limit,
                                                    "rows": slides}})
    print(f"### In memory: unet, {size}×{size} RGB\n")
    print(markdown_table(rows, [("variant", "method", "s"), ("seconds", "time (s)", ".1f"),
                                ("vs_whole", "× whole", ".2f"), ("rss_gib", "peak RSS (GiB)", ".2f"),
                                ("max_diff", "max |Δ logits|", ".2e"), ("labels_differ", "labels differ", ".2e"),
                                ("tile", "tile", "s"), ("interior_overhead", "(T+2h)²/T²", ".3f"),
                                ("overhead", "work / image", ".3f")]))
    print(f"\n### Out of core: BigTIFF -> OME-Zarr labels, unet width {SMALL_MODEL['width']}, "
          f"--memory-limit {args.memory_limit}\n")
    print(markdown_table(slides, [("side", "side", "d"), ("seconds", "time (s)", ".1f"),
                                  ("megapixels_per_s", "MP/s", ".2f"), ("rss_gib", "peak RSS (GiB)", ".2f")]))
    print(f"\n{json.dumps(str(path))}")


if __name__ == "__main__":
    main()
