"""GPU check, prepared for when a GPU machine is lent: one script, a few minutes, one JSON file.

1. Exactness on CUDA: ``predict_tiled`` = ``predict`` for the default unet in fp32 (logits within 1e-4, labels
   identical), in bf16 (``precision="bf16"``) and under fp16 autocast (max |Δ| and label agreement reported).
2. Throughput: MP/s of ``predict`` / ``predict_tiled`` (fp32, bf16) against MONAI's ``sliding_window_inference``
   (roi 512, its defaults; fp32 and bf16 autocast) on SIZE² noise.
3. Peak GPU memory (``torch.cuda.max_memory_allocated``) and MP/s against the tile side.
4. With more than one GPU: ``fcnkit train`` under torchrun on NCCL, 1 GPU vs all, images/s.

``--dry-run`` runs the same code on the CPU with a thin model and tiny sizes (CI runs it so the script does not
rot); GPU memory is then reported as ``None``.

    python benchmarks/gpu.py --monai-path /tmp/monai        # on the GPU machine (~3 min on one H200)
    python benchmarks/gpu.py --dry-run                      # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, write_results  # noqa: E402


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeat: int) -> tuple[float, object]:
    result = fn()  # warm-up: cuDNN / oneDNN choose their kernels
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def _peak_memory(device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def exactness(model, image, device, tile: int) -> list[dict]:
    import torch

    from fcnkit.inference.tiled import predict, predict_tiled

    rows = []
    cases = [("fp32", "fp32", False), ("bf16", "bf16", False), ("fp16 autocast", "fp32", True)]
    for name, precision, fp16 in cases:
        with torch.autocast(device.type, dtype=torch.float16, enabled=fp16 and device.type == "cuda"):
            whole = predict(model, image, device=device, precision=precision)
            tiled = predict_tiled(model, image, tile=tile, device=device, precision=precision)
        rows.append({"case": name, "max_diff": float(np.abs(tiled - whole).max()),
                     "labels_agree": float((tiled.argmax(2) == whole.argmax(2)).mean()),
                     "exact": bool(np.abs(tiled - whole).max() <= 1e-4) if name == "fp32" else None})
    return rows


def throughput(model, image, device, repeat: int, monai_path: str) -> list[dict]:
    import torch

    from fcnkit.inference.tiled import predict, predict_tiled

    megapixels = image.shape[0] * image.shape[1] / 1e6
    rows = []

    def add(method: str, precision: str, fn) -> None:
        _reset_peak(device)
        seconds, _ = _timed(fn, device, repeat)
        rows.append({"method": method, "precision": precision, "seconds": seconds,
                     "megapixels_per_s": megapixels / seconds, "peak_gpu_gib": _gib(_peak_memory(device))})
        print(f"{method} {precision}: {megapixels / seconds:.2f} MP/s", file=sys.stderr, flush=True)

    for precision in ("fp32", "bf16"):
        add("predict (whole)", precision, lambda: predict(model, image, device=device, precision=precision))
        add("predict_tiled (default)", precision,
            lambda: predict_tiled(model, image, device=device, precision=precision))
    if Path(monai_path, "monai").exists():
        sys.path.insert(0, monai_path)
        from monai.inferers import sliding_window_inference

        net = model.to(device)
        roi = min(512, image.shape[0], image.shape[1])

        def monai(autocast: bool):
            def run():
                x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    y = sliding_window_inference(x, roi_size=roi, sw_batch_size=1, predictor=net)
                return y.float().cpu()
            return run

        add(f"MONAI sliding_window_inference (roi {roi})", "fp32", monai(False))
        add(f"MONAI sliding_window_inference (roi {roi})", "bf16", monai(True))
        model.cpu()
    return rows


def memory_by_tile(model, image, device, tiles: list[int], repeat: int) -> list[dict]:
    from fcnkit.inference.tiled import predict_tiled

    rows = []
    megapixels = image.shape[0] * image.shape[1] / 1e6
    for tile in tiles:
        _reset_peak(device)
        seconds, _ = _timed(lambda: predict_tiled(model, image, tile=tile, batch_size=1, device=device,
                                                  output="labels"), device, repeat)
        rows.append({"tile": tile, "seconds": seconds, "megapixels_per_s": megapixels / seconds,
                     "peak_gpu_gib": _gib(_peak_memory(device))})
    return rows


def ddp(gpus: int, steps: tuple[int, int] = (20, 60), batch: int = 32) -> list[dict]:
    """images/s of ``fcnkit train`` (unet 0.25, 64² patches) on 1 GPU and on ``gpus`` GPUs over NCCL."""
    rows = []
    for processes in sorted({1, gpus}):
        times = []
        for count in steps:
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "fcnkit", "train", "--model", "unet", "--data",
                           "scenes", "--width", "0.25", "--batch-size", str(batch), "--steps", str(count),
                           "--eval-every", "0", "--device", "cuda", "--out", out, "--overwrite"]
                start = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - start)
        rows.append({"gpus": processes, "images_per_s": (steps[1] - steps[0]) * batch / (times[1] - times[0])})
    return rows


def _gib(value: int | None) -> float | None:
    return None if value is None else value / 2**30


def main() -> None:
    import torch

    import fcnkit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU, tiny sizes")
    parser.add_argument("--size", type=int, help="image side (default 4096; dry run 96)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--monai-path", default="/tmp/monai")
    parser.add_argument("--out", default=None, help="results name in benchmarks/results (default gpu, dry gpu_dry)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here; pass --dry-run to check the script on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    size = args.size or (96 if args.dry_run else 4096)
    width = 0.125 if args.dry_run else 1.0
    repeat = 1 if args.dry_run else args.repeat
    torch.manual_seed(0)
    model = fcnkit.build_model("unet", num_classes=3, width=width).eval()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    small = image[: min(size, 1024), : min(size, 1024)]
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
               "size": size, "width": width, "gpus": torch.cuda.device_count()}
    results["exactness"] = exactness(model, small, device, tile=max(16, small.shape[0] // 3))
    results["throughput"] = throughput(model, image, device, repeat, args.monai_path)
    tiles = [32, 64] if args.dry_run else [256, 512, 1024, 2048, 4096]
    results["memory_by_tile"] = memory_by_tile(model, image, device, tiles, repeat)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        results["ddp"] = ddp(torch.cuda.device_count())
    name = args.out or ("gpu_dry" if args.dry_run else "gpu")
    path = write_results(name, results) if not args.dry_run or args.out else None
    print(markdown_table(results["exactness"], [("case", "tiled vs whole", "s"), ("max_diff", "max |Δ|", ".2e"),
                                                ("labels_agree", "labels agree", ".5f")]))
    print(markdown_table(results["throughput"], [("method", "method", "s"), ("precision", "precision", "s"),
                                                 ("megapixels_per_s", "MP/s", ".2f"),
                                                 ("peak_gpu_gib", "peak GPU (GiB)", ".2f")]))
    print(markdown_table(results["memory_by_tile"], [("tile", "tile", "d"), ("megapixels_per_s", "MP/s", ".2f"),
                                                     ("peak_gpu_gib", "peak GPU (GiB)", ".2f")]))
    if "ddp" in results:
        print(markdown_table(results["ddp"], [("gpus", "GPUs", "d"), ("images_per_s", "images/s", ".1f")]))
    print(json.dumps({"results": str(path) if path else None, "exact_fp32": results["exactness"][0]["exact"]}))
    if not results["exactness"][0]["exact"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
