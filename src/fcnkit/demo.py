"""``fcnkit demo``: everything fcnkit does, end to end, on the built-in digit scenes, offline, in minutes on a CPU.

1. a classifier: train ``digit_classifier`` on 48×48 windows, convolutionalize it, draw per-digit heat maps of a
   scene in one pass, time sliding the window over the same scene (on a crop, extrapolated per window, when the
   full loop would be slow), and score the heat maps: at how many held-out digit centres the right digit's map
   peaks within 4 px;
2. transfer (the FCN paper's method): the same classifier becomes the encoder of a segmentation FCN
   (``fcn8s_on``), fine-tuned on 64×64 patches and scored on held-out whole scenes: the demo's segmentation model;
3. FCN-8s vs U-Net trained from scratch at one small budget, with learning curves and per-class IU;
4. exact tiled inference over a 4096×4096 scene into an OME-Zarr label image, and the max |difference| between
   tiled and whole-image logits on a 1024×1024 crop (both runs see only the crop, so both are defined);
5. a real photo (faces), then checkpoints, pictures and ``report.html`` under the output folder.

The output folder: a new or empty folder is used as it is; a folder holding a previous demo's output (it has the
``.fcnkit-demo`` marker file) is deleted and written again; any other non-empty folder is refused. Every random
choice derives from ``seed``, so two runs give the same models and numbers (timings aside).

>>> result = run_demo("demo-output", quick=True)  # doctest: +SKIP
>>> result.metrics["mean_iu"], result.speedup, result.tiled_max_diff  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from fcnkit.errors import InputError
from fcnkit.hardware import native_bf16
from fcnkit.reporting.html import Report
from fcnkit.reporting.tiled_demo import tiled_section

MARKER = ".fcnkit-demo"
HEAT_VIEW = 256  # side of the scene corner drawn as heat maps (a larger one makes the digits too small to see)
METRIC_LABELS = {"pixel_accuracy": "pixel accuracy", "mean_accuracy": "mean accuracy", "mean_iu": "mean IU",
                 "fw_iu": "frequency-weighted IU"}


def _percent(fraction: float | None) -> str:
    """A share as a percentage to 0.01, so that 395 of 439 (89.977%) never reads as 90%."""
    return f"{100 * (fraction or 0):.2f}%"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's budget. ``FULL`` is ``fcnkit demo``; ``QUICK`` (``--quick``) is for tests and a first look."""

    seg_steps: int  # fine-tuning steps of the transfer model (the demo's segmentation model)
    seg_batch: int
    compare_width: float  # FCN-8s and U-Net trained from scratch for the comparison
    compare_steps: int
    compare_batch: int
    val_size: int  # side of the held-out scenes the FCN is scored on
    val_count: int
    clf_width: float
    clf_window: int  # side of the classifier's windows (its receptive field)
    clf_steps: int
    clf_batch: int
    clf_lr: float
    clf_val_windows: int  # held-out windows the classifier is scored on
    clf_windows: int  # labelled training windows
    heat_size: int  # side of the scene drawn as heat maps
    loc_size: int  # side of the held-out scenes the heat maps' peaks are scored on (large: few digits at the edge)
    loc_count: int
    sliding_crop: int  # side of the crop the sliding-window loop is timed on (extrapolated to the scene)
    big_size: int  # side of the scene for tiled inference
    exact_crop: int  # side of the crop where tiled and whole-image logits are compared
    exact_tile: int  # tile side for that comparison (several tiles, so seams are tested)
    evaluations: int  # held-out evaluations during each training run (points on the curves)
    seed: int = 0


FULL = DemoSettings(seg_steps=800, seg_batch=16, compare_width=0.125, compare_steps=150, compare_batch=16,
                    val_size=256, val_count=8, clf_width=1.0, clf_window=48, clf_steps=2700, clf_batch=64,
                    clf_lr=3e-3, clf_val_windows=1100, clf_windows=17600, heat_size=512, loc_size=512, loc_count=4,
                    sliding_crop=160, big_size=4096, exact_crop=1024, exact_tile=512, evaluations=5)
QUICK = DemoSettings(seg_steps=20, seg_batch=4, compare_width=0.0625, compare_steps=10, compare_batch=4,
                     val_size=128, val_count=2, clf_width=0.25, clf_window=32, clf_steps=40, clf_batch=32,
                     clf_lr=3e-3, clf_val_windows=110, clf_windows=1100, heat_size=192, loc_size=128, loc_count=2,
                     sliding_crop=96, big_size=1024, exact_crop=256, exact_tile=128, evaluations=2)


@dataclass
class DemoResult:
    """What the demo measured, and where it wrote it."""

    out: Path
    report: Path
    metrics: dict  # the segmentation model's (fcn8s_on) scores on held-out scenes: four metrics, per-class "iu"
    class_names: list[str]
    window_accuracy: float  # digit_classifier (its best.pt, the one the demo uses) on held-out windows
    localization: dict  # heat maps, every window: {"centres", "hits", "fraction", "border", "step"} (4 px)
    compare: dict[str, dict]  # model -> scores of the from-scratch comparison
    fcn_seconds: float  # one convolutionalized pass over the heat-map scene
    sliding_seconds: float  # the sliding-window loop over the same scene (extrapolated when `sliding_crop` < scene)
    sliding_extrapolated: bool
    speedup: float
    heat_max_diff: float  # max |FCN score − classifier score| over the windows of the crop
    tiled_max_diff: float  # max |tiled − whole-image logits| on the exactness crop
    tiled_labels_equal: bool
    big_mean_iu: float  # the tiled labels of the big scene against its truth
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> (wall s, CPU s)

    def summary(self) -> str:
        """The lines the demo ends with."""
        m = self.metrics
        how = "extrapolated from a crop" if self.sliding_extrapolated else "measured on the whole scene"
        loc = self.localization
        lines = [f"digit_classifier: window accuracy {self.window_accuracy:.3f}; heat maps peak within 4 px of "
                 f"{loc['hits']}/{loc['centres']} held-out digit centres ({_percent(loc['fraction'])})",
                 "FCN-8s on the classifier (transfer) on held-out scenes: " + ", ".join(
                     f"{label} {m[k]:.3f}" for k, label in METRIC_LABELS.items()),
                 "from scratch at the same small budget: " + ", ".join(
                     f"{name} mean IU {scores['mean_iu']:.3f}" for name, scores in self.compare.items()),
                 f"heat maps: one FCN pass {self.fcn_seconds:.2f} s vs sliding window {self.sliding_seconds:.1f} s "
                 f"({how}): {self.speedup:.0f}x faster, max |score difference| {self.heat_max_diff:.1e}",
                 f"tiled inference: max |tiled - whole-image logits| {self.tiled_max_diff:.1e}, labels "
                 f"{'identical' if self.tiled_labels_equal else 'DIFFERENT'}; big-scene mean IU "
                 f"{self.big_mean_iu:.3f}",
                 f"report: {self.report}"]
        return "\n".join(lines)


def prepare_out(out: str | Path) -> Path:
    """Make ``out`` ready: create it, or replace a previous demo output; refuse a folder with other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: expected a folder for the demo's output, found the file '{out}'; pass another "
                         f"--out.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(f"out: '{out}' is not empty and is not a previous demo output (no {MARKER} file), so "
                             f"the demo will not delete it; pass another --out or empty that folder.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by fcnkit demo; the next demo run into this folder replaces it\n")
    return out


class _Clock:
    """Wall and process-CPU time per stage; the CPU time shows what a busy, shared machine did to the wall time."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.timings = log, {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.timings[stage] = (wall, cpu)
        self.log(f"      {stage}: {wall:.1f} s (CPU {cpu:.1f} s)")


def _train_dense(out: Path, s: DemoSettings, name: str, title: str, clock: _Clock, progress: str, *, steps: int,
                 batch: int, **options: Any) -> tuple[Any, Any]:
    """Train one segmentation model of the demo on 64x64 patches, scored on the held-out scenes. -> (result, run)"""
    from fcnkit.reporting.run import load_run
    from fcnkit.training.loop import TrainConfig, train

    with clock(f"train {title}"):
        result = train(TrainConfig(
            model=name, data="scenes", patch=64, batch_size=batch, steps=steps, eval_every=max(1, steps //
            s.evaluations), checkpoint_every=steps, val_size=s.val_size, val_count=s.val_count,
            out=str(out / name), seed=s.seed, progress=progress, **options))
    return result, load_run(out / name)


def _transfer(out: Path, s: DemoSettings, backbone: Path, report: Report, clock: _Clock, log: Callable[[str], None],
              progress: str) -> tuple[Any, Any]:
    """Stage 2: the classifier becomes a segmentation FCN (the paper's transfer), fine-tuned on patches."""
    from fcnkit.reporting.run import add_run_sections

    log(f"[2/5] transfer: the same classifier as the encoder of an FCN-8s-style segmentation net (fcn8s_on: 1x1 "
        f"scores, skips, bilinear up-sampling), fine-tuned for {s.seg_steps} steps of {s.seg_batch} 64x64 patches; "
        f"scored on {s.val_count} held-out {s.val_size}x{s.val_size} scenes (handwriting it never saw)")
    result, run = _train_dense(out, s, "fcn8s_on", "FCN-8s on the classifier", clock, progress, steps=s.seg_steps,
                               batch=s.seg_batch, backbone=str(backbone))
    log("      " + ", ".join(f"{label} {result.metrics[k]:.3f}" for k, label in METRIC_LABELS.items()))
    made = add_run_sections(report, run, out / "pictures" / "fcn8s_on", title="FCN-8s on the classifier (transfer)",
                            losses=result.losses, samples=3)
    log(f"      panels: {made.get('samples')}")
    return result, run


def _compare(out: Path, s: DemoSettings, transfer: Any, report: Report, clock: _Clock, log: Callable[[str], None],
             progress: str) -> dict[str, dict]:
    """Stage 3: FCN-8s and U-Net from scratch at one budget; learning curves and per-class IU of all three."""
    from fcnkit.reporting.curves import compare_curves

    log(f"[3/5] FCN-8s vs U-Net from scratch (width {s.compare_width}, class-balanced loss), {s.compare_steps} "
        f"steps of {s.compare_batch} patches each: a glimpse; benchmarks/train_scenes.py trains them for minutes")
    runs = {"FCN-8s on the classifier (transfer)": transfer}
    scores = {}
    for name, title in (("fcn8s", "FCN-8s"), ("unet", "U-Net")):
        result, run = _train_dense(out, s, name, title, clock, progress, steps=s.compare_steps,
                                   batch=s.compare_batch, width=s.compare_width, class_weights="balanced")
        runs[f"{title} from scratch"] = run
        scores[title] = result.metrics
        log(f"      {title}: mean IU {result.metrics['mean_iu']:.3f}, pixel accuracy "
            f"{result.metrics['pixel_accuracy']:.3f}")
    picture = compare_curves({label: run.records for label, run in runs.items()},
                             out / "pictures" / "learning_curves.png", title="held-out mean IU while training")
    report.add_image("Learning curves", picture,
                     f"Held-out mean IU at each evaluation, against the step and the training seconds. Transfer "
                     f"fine-tunes {s.seg_steps} steps from the trained classifier; FCN-8s and U-Net start from "
                     f"scratch with {s.compare_steps} steps.")
    names = transfer.class_names
    report.add_table("Per-class IU on held-out scenes", ["model", *names, "mean IU"],
                     [(label, *(("–" if v is None else f"{v:.3f}") for v in run.metrics["iu"]),
                       f"{run.metrics['mean_iu']:.3f}") for label, run in runs.items()])
    return scores


def _heatmaps(out: Path, s: DemoSettings, report: Report, clock: _Clock, log: Callable[[str], None],
              progress: str) -> dict:
    """Stage 1: train the window classifier, convolutionalize it, heat maps in one pass vs the sliding loop, and
    how often they peak at held-out digit centres."""
    from fcnkit.checkpoint import save_checkpoint
    from fcnkit.convert import convolutionalize, sliding_window
    from fcnkit.data.scenes import make_scene
    from fcnkit.reporting.run import add_run_sections, load_run
    from fcnkit.training.loop import TrainConfig, train
    from fcnkit.reporting.pictures import class_scores, heatmap_panels

    log(f"[1/5] training digit_classifier (width {s.clf_width}) for {s.clf_steps} steps of {s.clf_batch} labelled "
        f"{s.clf_window}x{s.clf_window} windows, then convolutionalizing it")
    with clock("train digit_classifier"):
        result = train(TrainConfig(
            model="digit_classifier", data="scenes", batch_size=s.clf_batch, steps=s.clf_steps, lr=s.clf_lr,
            width=s.clf_width, model_options={"window": s.clf_window},
            eval_every=max(1, s.clf_steps // s.evaluations), checkpoint_every=s.clf_steps,
            val_count=s.clf_val_windows, windows=s.clf_windows, out=str(out / "digit_classifier"), seed=s.seed,
            progress=progress))
    # One classifier for the whole story: the checkpoint with the best held-out mean IU (best.pt, as `fcnkit train`
    # keeps it) draws the heat maps, is scored, and becomes the transfer model's encoder.
    checkpoint = result.best_checkpoint or result.last_checkpoint
    run = load_run(out / "digit_classifier", checkpoint=checkpoint.name)
    accuracy = float(run.metrics["pixel_accuracy"])
    log(f"      window accuracy on held-out windows: {accuracy:.3f} ({checkpoint.name}, step {run.raw.get('step')} "
        f"of {s.clf_steps}, chosen by held-out mean IU; {float(result.metrics['pixel_accuracy']):.3f} at the last "
        f"step); the heat maps and the transfer use it")
    add_run_sections(report, run, out / "pictures" / "digit_classifier", title="digit_classifier",
                     losses=result.losses, samples=0)
    classifier = run.model.eval()
    fcn = convolutionalize(classifier, input_size=classifier.input_size).eval()
    meta = classifier.fcnkit_meta
    save_checkpoint(out / "digit_fcn.pt", model=fcn, class_names=meta["class_names"], palette=meta["palette"],
                    metrics=meta["metrics"])
    image, _ = make_scene(s.heat_size, split="val", seed=s.seed, index=1)
    class_scores(fcn, image[:64, :64])  # warm-up: the first call pays for one-off allocations
    with clock("heat maps, one FCN pass"):
        logits, window, stride = class_scores(fcn, image)  # (K, H', W')
    fcn_seconds = clock.timings["heat maps, one FCN pass"][0]
    crop = image[:s.sliding_crop, :s.sliding_crop]
    with torch.inference_mode():  # warm-up on the first row of windows (the same batch shape as every row)
        sliding_window(classifier, crop[:window[0]], window=window, stride=stride)
    with clock("sliding-window loop"), torch.inference_mode():
        reference = sliding_window(classifier, crop, window=window, stride=stride)[0]  # (K, h', w')
    crop_windows = reference.shape[1] * reference.shape[2]
    all_windows = logits.shape[1] * logits.shape[2]
    sliding_seconds = clock.timings["sliding-window loop"][0] * all_windows / crop_windows
    # The FCN is exact on unpadded features: its grid restricted to the crop's windows is the loop's grid.
    max_diff = float((logits[:, :reference.shape[1], :reference.shape[2]] - reference).abs().max())
    how = (f"timed on a {s.sliding_crop}x{s.sliding_crop} crop ({crop_windows:,} windows) and extrapolated per "
           f"window to the scene's {all_windows:,}") if crop_windows < all_windows else "timed on the whole scene"
    log(f"      {s.heat_size}x{s.heat_size} scene, {all_windows:,} windows: one FCN pass {fcn_seconds:.2f} s, "
        f"sliding window {sliding_seconds:.1f} s ({how}): {sliding_seconds / fcn_seconds:.0f}x faster; "
        f"max |score difference| {max_diff:.1e}")
    # Draw a corner of the scene large enough to read; its windows' scores are those of the one full pass.
    view = min(s.heat_size, HEAT_VIEW)
    cells = [(view - w) // st + 1 for w, st in zip(window, stride)]
    picture = heatmap_panels(out / "pictures" / "heatmaps.png", image[:view, :view],
                             torch.softmax(logits[:, :cells[0], :cells[1]], 0).numpy(), window=window,
                             stride=stride, class_names=run.class_names)
    log(f"      heat maps: {picture}")
    report.add_image("Heat maps of every digit in one pass", picture,
                     f"digit_classifier convolutionalized, run once over a {s.heat_size}×{s.heat_size} held-out "
                     f"scene ({all_windows:,} windows of {window[0]}×{window[1]} at stride {stride[0]}); shown: its "
                     f"top-left {view}×{view}.")
    from fcnkit.data.scenes import DigitScenes
    from fcnkit.training.evaluate import heatmap_localization

    scenes = DigitScenes("val", size=s.loc_size, count=s.loc_count, seed=s.seed)
    with clock("heat maps at digit centres"):
        coarse = heatmap_localization(fcn, scenes)  # the one pass: a window every `stride` px
        loc = heatmap_localization(fcn, scenes, step=1)  # shift-and-stitch: every window, stride^2 passes
    log(f"      heat maps peak within 4 px of {loc['hits']} of {loc['centres']} held-out digit centres "
        f"({_percent(loc['fraction'])}) scoring every window (shift-and-stitch, {stride[0] ** 2} passes); "
        f"{_percent(coarse['fraction'])} on the one pass's {stride[0]}-px grid; {loc['border']} more lie "
        f"too near the edge of the {s.loc_count} {s.loc_size}x{s.loc_size} scenes for a whole window")
    report.add_key_values("Heat maps: one pass vs sliding the window", {
        "held-out digit centres where the right digit's map peaks within 4 px (every window, shift-and-stitch)":
            f"{loc['hits']}/{loc['centres']} ({_percent(loc['fraction'])})",
        f"the same on the one pass's {stride[0]}-px grid":
            f"{coarse['hits']}/{coarse['centres']} ({_percent(coarse['fraction'])})",
        "digit centres too near the scene's edge for a whole window (not counted)": loc["border"],
        "scene": f"{s.heat_size}×{s.heat_size}", "windows": all_windows, "one FCN pass (s)": round(fcn_seconds, 3),
        "sliding-window loop (s)": round(sliding_seconds, 2), "how the loop was timed": how,
        "speed-up": f"{sliding_seconds / fcn_seconds:.1f}×",
        "max |FCN − classifier| over the crop's windows": f"{max_diff:.2e}"})
    return {"window_accuracy": accuracy, "fcn_seconds": fcn_seconds, "sliding_seconds": sliding_seconds,
            "extrapolated": crop_windows < all_windows, "max_diff": max_diff, "localization": loc,
            "checkpoint": checkpoint}


# measured: 167-208 s on 2 cores of a CPU with AMX (bf16), 1011-1184 s on 2 cores of an AVX2-only AMD EPYC (fp32)
SLOW_HARDWARE = ("fcnkit demo: this machine has no native bf16 (AMX or AVX512-BF16; or a GPU), so the demo trains in "
                 "fp32: expect 17-20 minutes on 2 cores (3-4 minutes where bf16 is native); "
                 "`fcnkit demo --quick` takes seconds.")


def hardware_note(quick: bool, device: torch.device | None = None) -> str | None:
    """:data:`SLOW_HARDWARE` where the full demo will train in fp32 (``device``: where training runs, CUDA when
    available), else None."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return None if quick or native_bf16(device) else SLOW_HARDWARE


def run_demo(out_dir: str | Path = "demo-output", *, quick: bool = False,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo into ``out_dir`` (see the module docstring) and return what it measured."""
    s = QUICK if quick else FULL
    started, cpu = time.perf_counter(), time.process_time()
    out = prepare_out(out_dir)
    clock = _Clock(log)
    torch.manual_seed(s.seed)
    log(f"fcnkit demo{' --quick' if quick else ''}: writing to {out.resolve()} "
        f"({torch.get_num_threads()} torch threads)")
    if (note := hardware_note(quick)) is not None:
        log(note)
    report = Report("fcnkit demo", subtitle="built-in digit scenes" + (" · quick run" if quick else ""))
    report.add_text("What this is", (
        f"The FCN story in order: a {s.clf_window}×{s.clf_window} window classifier turned into an FCN draws heat "
        "maps of every digit in one pass; the same classifier becomes the encoder of a segmentation FCN (the FCN "
        "paper's transfer) that labels every pixel; FCN-8s and U-Net trained from scratch for comparison; tiled "
        "inference over a large scene equals whole-image inference. Scenes are made of scikit-learn's handwritten "
        "digits; the held-out scenes use handwriting never seen in training."))
    progress = "off" if quick else "auto"
    heat = _heatmaps(out, s, report, clock, log, progress=progress)
    result, run = _transfer(out, s, heat["checkpoint"], report, clock, log, progress=progress)
    metrics = result.metrics
    compare = _compare(out, s, run, report, clock, log, progress=progress)
    tiled = tiled_section(out, s, run, report, clock, log, progress=progress)
    from fcnkit.reporting.faces import add_faces_section  # real trained weights on a real photo; says so if missing

    with clock("faces in a real photo (R-Net)"):
        add_faces_section(report, out, log=log)
    log("[5/5] writing the report")
    result = DemoResult(
        out=out, report=out / "report.html", metrics=metrics, class_names=run.class_names,
        window_accuracy=heat["window_accuracy"], localization=heat["localization"], compare=compare,
        fcn_seconds=heat["fcn_seconds"],
        sliding_seconds=heat["sliding_seconds"], sliding_extrapolated=heat["extrapolated"],
        speedup=heat["sliding_seconds"] / heat["fcn_seconds"], heat_max_diff=heat["max_diff"],
        tiled_max_diff=tiled["max_diff"], tiled_labels_equal=tiled["labels_equal"], big_mean_iu=tiled["mean_iu"],
        timings=clock.timings)
    total = time.perf_counter() - started
    m = result.metrics
    report.add_key_values("Results at a glance", {
        **{f"segmentation (FCN-8s on the classifier) {label}": round(float(m[k]), 4)
           for k, label in METRIC_LABELS.items()},
        **{f"{name} from scratch, mean IU": round(float(v["mean_iu"]), 4) for name, v in result.compare.items()},
        "digit_classifier window accuracy": round(result.window_accuracy, 4),
        "heat maps peaking within 4 px of held-out digit centres": _percent(result.localization['fraction']),
        "heat maps: one FCN pass vs sliding the window": f"{result.speedup:.0f}× faster"
                                                         + (" (loop extrapolated from a crop)"
                                                            if result.sliding_extrapolated else ""),
        "tiled vs whole-image logits, max |difference|": f"{result.tiled_max_diff:.1e}",
        "whole demo (s)": round(total, 1)})
    report.sections.insert(1, report.sections.pop())  # right after the introduction
    report.add_table("Timings", ["stage", "wall (s)", "CPU (s)"],
                     [(stage, round(w, 2), round(c, 2)) for stage, (w, c) in clock.timings.items()]
                     + [("whole demo", round(total, 1), round(time.process_time() - cpu, 1))])
    report.write(result.report)
    log(f"fcnkit demo finished in {total:.0f} s")
    log(result.summary())
    return result
