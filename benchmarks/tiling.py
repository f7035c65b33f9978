"""Benchmark: exact tiled inference against the whole image and MONAI, then out of core from BigTIFF to OME-Zarr.

1. In memory: fcnkit's default ``unet`` (width 1.0, random weights, seed 0) on SIZE×SIZE RGB noise. The whole-image
   run needs ~1.6 GiB per megapixel, so it is estimated first (measured cost per pixel) at SIZE, SIZE/√2 and SIZE/2
   and run only at the largest size whose estimate fits in half of the available memory (the others are recorded
   as not fitting). There: ``predict`` (whole), ``predict_tiled`` (defaults) and MONAI's
   ``sliding_window_inference`` (roi 512, overlap 0.25, gaussian): time, peak RSS, max |logits − whole|, labels
   that differ. At SIZE: ``predict_tiled`` (and MONAI with ``--monai-large``), checked against the whole-image run
   of a 1024² crop centred on a tile corner. Each variant in its own process (its own peak RSS).
2. Out of core: a tiled BigTIFF RGB of each side (written tile by tile into benchmarks/out/) through
   ``fcnkit predict`` to OME-Zarr labels with a fast model, ``--memory-limit 1GB``: MP/s and peak RSS.

Writes benchmarks/results/tiling.json (``--part`` keeps the other part's results) and prints Markdown tables. MONAI
is imported from ``--monai-path`` (``pip install --target /tmp/monai --no-deps monai``); fcnkit never needs it.
The machine's load average is recorded with each timing: on a shared machine the times are noisy.

    python benchmarks/tiling.py            # 4096² in memory (whole at 2048² on 24 GiB); 8k, 16k, 32k out of core
    python benchmarks/tiling.py --quick    # 1024² in memory; 2k, 4k out of core
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

from benchmarks.common import OUT, RESULTS, markdown_table, run_isolated, timed, timed_cpu, write_results  # noqa: E402

SMALL_MODEL = {"name": "encoder_decoder", "width": 0.125}  # ~1 MP/s on the 2 shared cores: 32k in ~15 min
CROP = 1024  # side of the whole-image reference crop at sizes where the whole image does not fit
BASE_RSS = 0.5 * 2**30  # python, torch, the model and the image, before the forward pass


def _unet():
    import torch

    import fcnkit

    torch.manual_seed(0)
    # FCNKIT_BENCH_WIDTH: a thinner unet, to try the benchmark itself quickly; the results use the default (1.0)
    return fcnkit.build_model("unet", num_classes=3, width=float(os.environ.get("FCNKIT_BENCH_WIDTH", 1.0))).eval()


def _image(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)


def in_memory(variant: str, size: int, monai_path: str = "", memory_limit: str | None = None,
              corner: tuple[int, int] = (0, 0)) -> dict:
    """One variant on the in-memory image (runs in a child process); logits saved for the comparison."""
    import torch

    from fcnkit.inference.tiled import plan_prediction, predict, predict_tiled

    model, image = _unet(), _image(size)
    predict(model, image[:64, :64])  # warm-up: oneDNN picks its kernels
    info: dict = {"variant": variant, "size": size}
    if variant == "whole":
        seconds, logits = timed(lambda: predict(model, image))
    elif variant == "tiled":
        plan = plan_prediction(model, image, memory_limit=memory_limit)
        h, (th, tw) = plan.halo, plan.tile
        # the halo's extra work: every tile's padded area over the image (rectangles have halo only where they
        # have a neighbour), and the same for one interior tile of this shape
        info.update(tile=f"{th}×{tw}", halo=h, tiles=len(plan.tiles), overhead=plan.overhead,
                    interior_overhead=(min(th + 2 * h, size) * min(tw + 2 * h, size)) / (th * tw),
                    memory_limit=memory_limit or "default")
        seconds, logits = timed(lambda: predict_tiled(model, image, memory_limit=memory_limit))
    elif variant == "crop_reference":
        # the whole-image run on a D-aligned crop centred on the first tile corner: its inside (one halo in from
        # the crop's edges) sees only pixels of the crop, so it must equal the tiled run there
        y, x = (min(t, size - CROP // 2) - CROP // 2 for t in corner)
        seconds, logits = timed(lambda: predict(model, image[y:y + CROP, x:x + CROP]))
        info.update(origin=[y, x])
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
    return {**info, "seconds": seconds, "megapixels_per_s": logits.shape[0] * logits.shape[1] / 1e6 / seconds}


def whole_image_estimate(size: int) -> float:
    """Bytes the whole-image run of the default unet needs at ``size``²: the measured cost per padded pixel
    (activations, input and output copies) plus what the process holds before it starts (checked at the size that
    runs: ``estimate_gib`` next to ``rss_gib``)."""
    import torch

    from fcnkit.inference.model import prepare
    from fcnkit.inference.shapes import bytes_per_pixel, geometry_of

    prepared = prepare(_unet(), device=torch.device("cpu"))
    geometry = geometry_of(prepared, 3)
    per_pixel = bytes_per_pixel(prepared, 3, geometry, "logits")
    side = -(-size // geometry.input_multiple) * geometry.input_multiple
    return per_pixel * side * side + BASE_RSS


def _compare(size: int, variant: str, reference: str = "whole", origin: tuple[int, int] = (0, 0),
             inset: int = 0) -> tuple[float, float]:
    """max |logits − reference| and the fraction of differing labels, read back by rows to keep the parent small.

    ``reference`` covers the region starting at ``origin``; only its inside, ``inset`` pixels from each edge,
    is compared (for a crop reference, the part that sees no zero padding at the crop's edge).
    """
    ref = np.load(OUT / f"tiling_{reference}_{size}.npy", mmap_mode="r")
    other = np.load(OUT / f"tiling_{variant}_{size}.npy", mmap_mode="r")
    (y0, x0), n = origin, ref.shape[0]
    worst, differ, count = 0.0, 0, 0
    for y in range(inset, n - inset, 256):
        rows = slice(y, min(y + 256, n - inset))
        a = np.asarray(ref[rows, inset:ref.shape[1] - inset])
        b = np.asarray(other[y0 + rows.start:y0 + rows.stop, x0 + inset:x0 + ref.shape[1] - inset])
        worst = max(worst, float(np.abs(a - b).max()))
        differ += int((a.argmax(2) != b.argmax(2)).sum())
        count += a.shape[0] * a.shape[1]
    return worst, differ / count


def _bigtiff(side: int) -> Path:
    """A tiled RGB BigTIFF of ``side``², written tile by tile (never whole in memory): a noise texture rolled per
    tile, stored uncompressed (noise does not compress; 32k² is 3 GiB, written in ~40 s)."""
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

    path = OUT / f"tiling_{SMALL_MODEL['name']}_{SMALL_MODEL['width']}.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = fcnkit.build_model(**SMALL_MODEL, num_classes=3)
        save_checkpoint(path, model=model)
    return path


def out_of_core(side: int, memory_limit: str) -> dict:
    """``fcnkit predict`` BigTIFF -> OME-Zarr labels in this (child) process."""
    import contextlib
    import io
    import re
    import shutil

    from fcnkit.cli import main

    target = OUT / f"slide_{side}_labels.ome.zarr"
    shutil.rmtree(target, ignore_errors=True)
    argv = ["predict", "--checkpoint", str(_checkpoint()), str(_bigtiff(side)), "--out", str(target), "--overwrite",
            *(["--memory-limit", memory_limit] if memory_limit != "default" else [])]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        seconds, code, user, system = timed_cpu(lambda: main(argv))
    if code != 0:
        raise RuntimeError(f"fcnkit predict exited {code}")
    plan = re.search(r"(\d+) tiles of (\d+×\d+) \(halo (\d+), ([0-9.]+)× work\)", printed.getvalue())
    shutil.rmtree(target, ignore_errors=True)  # a 32k label pyramid is ~1.4 GB of disk
    return {"side": side, "seconds": seconds, "megapixels_per_s": side * side / 1e6 / seconds,
            "tiles": int(plan.group(1)), "tile": plan.group(2), "overhead": float(plan.group(4)),
            "user_s": user, "system_s": system, "system_share": system / max(user, 1e-9)}


def _out_of_core_part(sides: list[int], memory_limit: str) -> dict:
    """``fcnkit predict`` on each side's BigTIFF, one process each: MP/s and peak RSS side by side."""
    rows = []
    for side in sides:
        path = _bigtiff(side)  # generated before the timed child starts
        row = run_isolated("benchmarks.tiling:out_of_core", side=side, memory_limit=memory_limit)
        row.update(rss_gib=row["peak_rss_bytes"] / 2**30, load_average=os.getloadavg()[0],
                   input_gib=path.stat().st_size / 2**30)
        rows.append(row)
        print(f"{side}²: {row['seconds']:.1f} s, {row['rss_gib']:.2f} GiB", file=sys.stderr, flush=True)
    return {"model": SMALL_MODEL, "memory_limit": memory_limit, "rows": rows}


def _in_memory_part(size: int, monai_path: str, monai_large: bool) -> dict:
    """Whole vs tiled vs MONAI at the largest size whose whole-image run fits; tiled (vs MONAI) at ``size``."""
    import psutil

    available = psutil.virtual_memory().available
    probes = []
    for side in sorted({size, round(size / 2**0.5 / 16) * 16, size // 2}, reverse=True):
        need = whole_image_estimate(side)
        # the same share the tiler takes by default: never push the shared machine into swap or the OOM killer
        probes.append({"size": side, "estimate_gib": need / 2**30, "fits": need <= 0.5 * available,
                       "available_gib": available / 2**30})
        print(f"whole {side}²: needs ~{need / 2**30:.1f} GiB of {available / 2**30:.1f} GiB available: "
              f"{'runs' if probes[-1]['fits'] else 'does not fit'}", file=sys.stderr, flush=True)
    fitting = [p["size"] for p in probes if p["fits"]]
    whole_size = fitting[0] if fitting else None
    has_monai = Path(monai_path, "monai").exists()
    rows = []

    def run(variant: str, side: int, **kw) -> dict:
        row = run_isolated("benchmarks.tiling:in_memory", variant=variant, size=side, monai_path=monai_path, **kw)
        row["rss_gib"] = row["peak_rss_bytes"] / 2**30
        row["load_average"] = os.getloadavg()[0]
        print(f"{variant} {side}²: {row['seconds']:.1f} s, {row['rss_gib']:.2f} GiB", file=sys.stderr, flush=True)
        rows.append(row)
        return row

    if whole_size is not None:
        whole = run("whole", whole_size)
        whole.update(max_diff=0.0, labels_differ=0.0, vs_whole=1.0,
                     estimate_gib=next(p["estimate_gib"] for p in probes if p["size"] == whole_size))
        for variant in ["tiled"] + (["monai"] if has_monai else []):
            row = run(variant, whole_size)
            row["max_diff"], row["labels_differ"] = _compare(whole_size, variant)
            row["vs_whole"] = row["seconds"] / whole["seconds"]
    if whole_size != size:
        tiled = run("tiled", size)
        large = [tiled] + ([run("monai", size)] if has_monai and monai_large else [])
        ref = run("crop_reference", size, corner=[int(v) for v in tiled["tile"].split("×")])
        for row in large:
            row["max_diff"], row["labels_differ"] = _compare(size, row["variant"], "crop_reference",
                                                             tuple(ref["origin"]), inset=tiled["halo"])
            row["compared_on"] = f"{CROP - 2 * tiled['halo']}² inside a {CROP}² whole-image crop at {ref['origin']}"
            if whole_size is not None:  # time per pixel against the whole-image run at the largest size that fits
                row["vs_whole_per_pixel"] = (row["seconds"] / size**2) / (whole["seconds"] / whole_size**2)
    return {"model": "unet (default options)", "whole_probes": probes, "whole_size": whole_size, "size": size,
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024² in memory; 2k and 4k out of core")
    parser.add_argument("--size", type=int, help="side of the in-memory image (default 4096, quick 1024)")
    parser.add_argument("--sides", type=int, nargs="*", help="out-of-core sides (default 8192 16384 32768)")
    parser.add_argument("--memory-limit", default="default",
                        help="for the out-of-core runs (default: no flag, fcnkit predict's own default budget)")
    parser.add_argument("--monai-path", default="/tmp/monai", help="folder where MONAI was pip-installed")
    parser.add_argument("--monai-large", action="store_true",
                        help="also run MONAI at the full in-memory size (about 2× the tiled time)")
    parser.add_argument("--part", choices=["all", "in_memory", "out_of_core"], default="all",
                        help="run one part; the other part's results in tiling.json are kept")
    args = parser.parse_args()
    size = args.size or (1024 if args.quick else 4096)
    sides = args.sides if args.sides is not None else ([2048, 4096] if args.quick else [8192, 16384, 32768])
    previous = RESULTS / "tiling.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    if args.part in ("all", "in_memory"):
        results["in_memory"] = _in_memory_part(size, args.monai_path, args.monai_large)
    if args.part in ("all", "out_of_core"):
        results["out_of_core"] = _out_of_core_part(sides, args.memory_limit)
    results.pop("machine", None)
    path = write_results("tiling", results)
    print(tables(results))
    print(f"\n{json.dumps(str(path))}")


def tables(results: dict) -> str:
    """The Markdown tables of the README."""
    parts = []
    if "in_memory" in results:
        part = results["in_memory"]
        probes = "; ".join(f"{p['size']}²: ~{p['estimate_gib']:.1f} GiB" + ("" if p["fits"] else " (does not fit)")
                           for p in part.get("whole_probes", []))
        parts.append(f"### In memory: unet (width 1.0), random weights, RGB\n\nWhole image needs {probes}; "
                     f"available {part['whole_probes'][0]['available_gib']:.1f} GiB, whole runs only within half.\n")
        parts.append(markdown_table(part["rows"], [
            ("size", "size", "d"), ("variant", "method", "s"), ("seconds", "time (s)", ".1f"),
            ("vs_whole", "× whole", ".2f"), ("vs_whole_per_pixel", "s/MP × whole's", ".2f"),
            ("rss_gib", "peak RSS (GiB)", ".2f"),
            ("max_diff", "max abs Δ logits", ".2e"), ("labels_differ", "labels differ", ".2e"), ("tile", "tile", "s"),
            ("overhead", "work / image", ".3f"), ("interior_overhead", "one interior tile, padded / own area", ".3f"),
            ("load_average", "load", ".1f")]))
    if "out_of_core" in results:
        part = results["out_of_core"]
        model = part["model"]
        model = model if isinstance(model, str) else f"{model['name']} width {model['width']}"
        parts.append(f"\n### Out of core: BigTIFF -> OME-Zarr labels, {model}, "
                     f"--memory-limit {part['memory_limit']}\n")
        parts.append(markdown_table(part["rows"], [
            ("side", "side", "d"), ("seconds", "time (s)", ".1f"), ("megapixels_per_s", "MP/s", ".2f"),
            ("rss_gib", "peak RSS (GiB)", ".2f"), ("rss_gib_without_trim", "before malloc_trim (GiB)", ".2f"),
            ("user_s", "user CPU (s)", ".1f"), ("system_s", "kernel CPU (s)", ".1f"),
            ("system_share", "kernel / user", ".3f"), ("tile", "tile", "s"), ("load_average", "load", ".1f")]))
    return "\n".join(parts)


if __name__ == "__main__":
    main()
