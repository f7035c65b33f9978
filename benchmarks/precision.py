"""Benchmark: fp32 against bf16 inference, side by side with the convolution peak measured in the same run.

1. Peak: a 3×3 convolution 64→64 on a 256×256 map, channels_last, batch 1, in fp32 and in bf16 (weights and input
   cast once; and under ``torch.autocast``): GFLOP/s = 2·MACs / time, best of ``--repeat``.
2. The default ``unet`` (width 1.0, 3 classes, random weights, seed 0) on SIZE² RGB noise: ``predict`` (whole image)
   and ``predict_tiled`` (default budget, and a budget the whole image fits in) in fp32 and bf16; MONAI's
   ``sliding_window_inference`` with its defaults (roi 512, overlap 0.25, constant blending) in fp32 and under bf16
   autocast. GFLOP/s = the model's FLOPs on the image (``fcnkit inspect``: 2·MACs) / time, and % of the same-run
   peak of that precision; max |Δ logits| and label agreement against the fp32 whole-image run, and for tiled runs
   against the whole-image run of the same precision.
3. Agreement of bf16 and fp32 labels on trained models: a small unet trained here on digit scenes (60 steps), on
   held-out scenes and on a real photo (scikit-image's astronaut); the nuclei checkpoint of benchmarks/nuclei.py on
   its real micrograph, when benchmarks/out/nuclei/best.pt exists.
4. ``--compile``: ``torch.compile`` (inductor, freezing) of the unet at 512²: compile time and speed against eager.

Writes benchmarks/results/precision.json and prints the README tables. The load average is recorded: on a shared
machine the times are noisy.

    python benchmarks/precision.py                 # 1024², repeat 2, MONAI from /tmp/monai (~4 min alone)
    python benchmarks/precision.py --quick         # 512², repeat 1 (~1 min alone)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import OUT, default_precisions, markdown_table, write_results  # noqa: E402


def _best(fn, repeat: int) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls after one warm-up call; the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def conv_peak(repeat: int, side: int = 256) -> dict:
    """GFLOP/s of one 3×3 convolution 64→64 on ``side``², channels_last, fp32 / bf16 / bf16 autocast."""
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(1, 64, side, side).contiguous(memory_format=torch.channels_last)
    flops = 2 * 64 * 64 * 9 * side * side
    bf16 = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(torch.bfloat16, memory_format=torch.channels_last)
    bf16.load_state_dict(conv.state_dict())
    xb = x.to(torch.bfloat16)
    peak = {}
    with torch.inference_mode():
        peak["fp32"] = flops / _best(lambda: conv(x), repeat * 5)[0] / 1e9
        peak["bf16"] = flops / _best(lambda: bf16(xb), repeat * 5)[0] / 1e9
        with torch.autocast("cpu", dtype=torch.bfloat16):
            peak["bf16_autocast"] = flops / _best(lambda: conv(x), repeat * 5)[0] / 1e9
    return peak


def _unet(width: float = 1.0):
    import torch

    import fcnkit

    torch.manual_seed(0)
    return fcnkit.build_model("unet", num_classes=3, width=width).eval()


def unet_rows(size: int, repeat: int, peak: dict, monai_path: str,
              precisions: tuple[str, ...] = ("fp32", "bf16")) -> list[dict]:
    import torch

    from fcnkit.inference.tiled import plan_prediction, predict, predict_tiled
    from fcnkit.reporting.inspect import inspect_model

    model = _unet(float(os.environ.get("FCNKIT_BENCH_WIDTH", 1.0)))
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    flops = inspect_model(model, size=(size, size)).flops
    rows: list[dict] = []
    outputs: dict[str, np.ndarray] = {}

    def record(variant: str, precision: str, fn, **info) -> None:
        seconds, logits = _best(fn, repeat)
        outputs[f"{variant}/{precision}"] = logits
        gflops = flops / seconds / 1e9
        rows.append({"variant": variant, "precision": precision, "seconds": seconds, "gflops": gflops,
                     "percent_of_peak": 100 * gflops / peak[precision], "load_average": os.getloadavg()[0],
                     **info})
        print(f"{variant} {precision}: {seconds:.2f} s, {gflops:.0f} GFLOP/s", file=sys.stderr, flush=True)

    for precision in precisions:
        record("whole", precision, lambda: predict(model, image, precision=precision))
        plan = plan_prediction(model, image, precision=precision)
        record("tiled (default budget)", precision, lambda: predict_tiled(model, image, plan=plan),
               tile=f"{plan.tile[0]}×{plan.tile[1]}", tiles=len(plan.tiles), overhead=plan.overhead)
        big = plan_prediction(model, image, precision=precision, memory_limit="16GB")
        record("tiled (whole fits: 16GB)", precision, lambda: predict_tiled(model, image, plan=big),
               tile=f"{big.tile[0]}×{big.tile[1]}", tiles=len(big.tiles), overhead=big.overhead)
    if Path(monai_path, "monai").exists():
        sys.path.insert(0, monai_path)
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()

        def monai(autocast: bool):
            def run() -> np.ndarray:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    y = sliding_window_inference(x, roi_size=512, sw_batch_size=1, predictor=model)
                return y[0].float().permute(1, 2, 0).numpy()
            return run

        record("MONAI sliding_window_inference (defaults, roi 512)", "fp32", monai(False))
        if "bf16" in precisions:
            record("MONAI sliding_window_inference (defaults, roi 512)", "bf16", monai(True), note="autocast")
    reference = outputs["whole/fp32"]
    for row in rows:
        logits = outputs[f"{row['variant']}/{row['precision']}"]
        row["max_diff_vs_fp32_whole"] = float(np.abs(logits - reference).max())
        row["labels_agree_vs_fp32_whole"] = float((logits.argmax(2) == reference.argmax(2)).mean())
        same = outputs[f"whole/{row['precision']}"]
        if row["variant"].startswith("tiled"):
            row["max_diff_vs_whole_same_precision"] = float(np.abs(logits - same).max())
            row["labels_agree_vs_whole_same_precision"] = float((logits.argmax(2) == same.argmax(2)).mean())
        whole = next(r for r in rows if r["variant"] == "whole" and r["precision"] == row["precision"])
        row["vs_whole"] = row["seconds"] / whole["seconds"]
        fp32 = next((r for r in rows if r["variant"] == row["variant"] and r["precision"] == "fp32"), None)
        row["speedup_vs_fp32"] = fp32["seconds"] / row["seconds"] if fp32 else None
    return rows


def _trained_scenes_model():
    """A small unet trained for 60 steps on digit-scene patches (~10 s): confident regions and real boundaries."""
    import torch

    import fcnkit
    from fcnkit.data.scenes import make_scene

    torch.manual_seed(0)
    model = fcnkit.build_model("unet", num_classes=11, width=0.125)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(60):
        images, labels = zip(*(make_scene(64, split="train", index=4 * step + k) for k in range(4)))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(np.stack(labels)).long(),
                                                 ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def agreement_rows() -> list[dict]:
    """bf16 vs fp32 labels on trained models and real images."""
    from fcnkit.data.scenes import make_scene
    from fcnkit.inference.tiled import predict

    def agree(name: str, model, images: list[np.ndarray]) -> dict:
        same = total = 0
        for image in images:
            a = predict(model, image, output="labels")
            b = predict(model, image, output="labels", precision="bf16")
            same, total = same + int((a == b).sum()), total + a.size
        return {"case": name, "pixels": total, "labels_agree": same / total}

    rows = []
    scenes_model = _trained_scenes_model()
    rows.append(agree("unet 0.125 trained 60 steps on scenes; 4 held-out 256² scenes", scenes_model,
                      [make_scene(256, split="val", index=i)[0] for i in range(4)]))
    try:
        from skimage import data

        rows.append(agree("the same model; real photo (skimage astronaut, 512²)", scenes_model, [data.astronaut()]))
    except ImportError:
        pass
    checkpoint = OUT / "nuclei" / "best.pt"
    if checkpoint.exists():
        from fcnkit.checkpoint import load_checkpoint
        from fcnkit.data.nuclei import read_nuclei

        image, _ = read_nuclei()
        rows.append(agree(f"nuclei checkpoint ({checkpoint.relative_to(OUT.parent.parent)}); real micrograph",
                          load_checkpoint(checkpoint), [image]))
    return rows


def compile_rows(repeat: int) -> list[dict]:
    """torch.compile (inductor, freezing) of the unet at 512²: compile time, compiled vs eager."""
    import torch
    import torch._inductor.config as inductor

    from fcnkit.inference.model import prepare

    inductor.freezing = True
    rows = []
    x32 = torch.randint(0, 256, (1, 3, 512, 512)).float().contiguous(memory_format=torch.channels_last)
    for precision in ("fp32", "bf16"):
        net = prepare(_unet(), precision=precision).net
        x = x32.to(net.score.weight.dtype if hasattr(net, "score") else torch.float32)
        with torch.inference_mode():
            compiled = torch.compile(net, dynamic=False)
            start = time.perf_counter()
            compiled(x)
            compile_s = time.perf_counter() - start
            eager = _best(lambda: net(x), repeat)[0]
            fast = _best(lambda: compiled(x), repeat)[0]
        rows.append({"precision": precision, "compile_s": compile_s, "eager_s": eager, "compiled_s": fast,
                     "speedup": eager / fast, "load_average": os.getloadavg()[0]})
        print(f"compile {precision}: {compile_s:.0f} s to compile, {eager:.2f} → {fast:.2f} s", file=sys.stderr)
    return rows


def tables(results: dict) -> str:
    peak = results["peak_gflops"]
    parts = [f"3×3 conv 64→64 on 256², channels_last: **{peak['fp32']:.0f} GFLOP/s fp32**, "
             f"**{peak['bf16']:.0f} GFLOP/s bf16** ({peak['bf16_autocast']:.0f} under autocast). "
             f"Load average during the run: {results['load_average_start']:.1f} at start.\n",
             markdown_table(results["unet"], [
                 ("variant", f"default unet, {results['size']}²", "s"), ("precision", "precision", "s"),
                 ("seconds", "time (s)", ".2f"), ("gflops", "GFLOP/s", ".0f"),
                 ("percent_of_peak", "% of conv peak", ".0f"), ("speedup_vs_fp32", "× fp32 speed", ".2f"),
                 ("vs_whole", "time / whole", ".2f"), ("overhead", "work / image", ".2f"),
                 ("max_diff_vs_fp32_whole", "max Δ vs fp32 whole", ".2e"),
                 ("labels_agree_vs_fp32_whole", "labels = fp32 whole", ".5f"),
                 ("max_diff_vs_whole_same_precision", "max Δ vs whole (same precision)", ".2e"),
                 ("load_average", "load", ".1f")])]
    if results.get("agreement"):
        parts.append("\n" + markdown_table(results["agreement"], [
            ("case", "bf16 vs fp32 labels", "s"), ("pixels", "pixels", "d"), ("labels_agree", "agree", ".5f")]))
    if results.get("compile"):
        parts.append("\n" + markdown_table(results["compile"], [
            ("precision", "torch.compile, unet 512²", "s"), ("compile_s", "compile (s)", ".0f"),
            ("eager_s", "eager (s)", ".2f"), ("compiled_s", "compiled (s)", ".2f"), ("speedup", "speed-up", ".2f"),
            ("load_average", "load", ".1f")]))
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512², one timed repeat")
    parser.add_argument("--size", type=int, help="image side (default 1024, quick 512)")
    parser.add_argument("--repeat", type=int, help="timed repeats, best kept (default 2, quick 1)")
    parser.add_argument("--monai-path", default="/tmp/monai", help="folder where MONAI was pip-installed")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (about 2 min)")
    parser.add_argument("--no-agreement", action="store_true", help="skip the trained-model agreement part")
    parser.add_argument("--name", default="precision", help="results file name in benchmarks/results")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"),
                        help="default: fp32, and bf16 where the CPU has native bf16 (elsewhere PyTorch emulates it, "
                             "~9x slower than fp32; the peaks are measured in both either way)")
    args = parser.parse_args()
    size = args.size or (512 if args.quick else 1024)
    repeat = args.repeat or (1 if args.quick else 2)
    results: dict = {"size": size, "repeat": repeat, "load_average_start": os.getloadavg()[0]}
    results["peak_gflops"] = conv_peak(repeat)
    precisions = tuple(args.precisions or default_precisions())
    results["unet"] = unet_rows(size, repeat, results["peak_gflops"], args.monai_path, precisions)
    if not args.no_agreement:
        results["agreement"] = agreement_rows()
    if args.compile:
        results["compile"] = compile_rows(repeat)
    results["load_average_end"] = os.getloadavg()[0]
    path = write_results(args.name, results)
    print(tables(results))
    print(f"\n{json.dumps(str(path))}")


if __name__ == "__main__":
    main()
