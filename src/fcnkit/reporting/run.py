"""HTML reports of training runs: what was trained, how it learned, how well it does, what it sees.

``report_for_run(run_dir)`` reads a folder written by ``fcnkit train`` (``metrics.jsonl`` and ``last.pt``, else
``best.pt``) and writes ``report.html`` with the settings, the four metrics and per-class IU, the training curves,
the model's geometry and sample pictures (image / truth / prediction panels for dense models, class heat maps for
classifiers). ``add_run_sections`` adds the same sections to a report under construction; the demo uses it.

>>> report_for_run("runs/fcn8s")  # doctest: +SKIP
PosixPath('runs/fcn8s/report.html')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fcnkit.errors import CheckpointError, FcnkitError
from fcnkit.reporting.html import Report

_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")
_SETTINGS = ("model", "data", "width", "backbone", "init_from", "steps", "batch_size", "patch", "optimizer", "lr",
             "seed", "val_size", "val_count")


@dataclass
class RunInfo:
    """A finished (or interrupted) training run, read back from its folder."""

    folder: Path
    checkpoint: Path  # last.pt, or best.pt when last.pt is missing (or the one asked for)
    raw: dict  # the checkpoint dict (fcnkit.checkpoint.read_checkpoint)
    records: list[dict]  # metrics.jsonl, in order
    model: nn.Module

    @property
    def config(self) -> dict:
        return dict(self.raw.get("extra", {}).get("config", {}))

    @property
    def class_names(self) -> list[str]:
        names = self.raw.get("class_names")
        return list(names) if names else [str(k) for k in range(self.raw["model"]["num_classes"])]

    @property
    def palette(self) -> np.ndarray | None:
        palette = self.raw.get("palette")
        return None if palette is None else np.asarray(palette, dtype=np.uint8)

    @property
    def metrics(self) -> dict | None:
        """The scores of the checkpoint's weights (the last evaluation of the run); undefined values are NaN."""
        metrics = self.raw.get("metrics") or (self.records[-1] if self.records else None)
        if metrics is None:
            return None
        nan = float("nan")  # the trainer stores NaN (a class never seen nor predicted) as JSON null
        out = {k: nan if metrics.get(k) is None else float(metrics[k]) for k in _METRICS}
        out["iu"] = [nan if v is None else float(v) for v in metrics.get("iu", [])]
        return out


def load_run(run_dir: str | os.PathLike, checkpoint: str | None = None) -> RunInfo:
    """Read a training folder: ``last.pt`` (or ``best.pt``), its model, and ``metrics.jsonl`` when present.

    ``checkpoint`` names the file to read instead (``"best.pt"``: the weights with the best held-out mean IU).
    """
    from fcnkit.checkpoint import load_checkpoint, read_checkpoint
    from fcnkit.reporting.curves import read_metrics

    folder = Path(run_dir)
    if checkpoint is not None:
        chosen = folder / checkpoint
        if not chosen.is_file():
            found = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
            raise CheckpointError(f"checkpoint: expected '{chosen}', found no such file (checkpoints in '{folder}': "
                                  f"{', '.join(found) or 'none'}); pass one of those, or run fcnkit train first.")
        candidates = [chosen]
    else:
        candidates = [folder / "last.pt", folder / "best.pt"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise CheckpointError(f"run_dir: expected a training folder holding last.pt or best.pt, found neither in "
                              f"'{folder}'; point at the --out folder of fcnkit train.")
    log = folder / "metrics.jsonl"
    records = read_metrics(log) if log.is_file() else []
    return RunInfo(folder, path, read_checkpoint(path), records, load_checkpoint(path))


def _settings(run: RunInfo) -> dict[str, Any]:
    config, spec = run.config, run.raw["model"]
    settings = {"model": spec["name"], **{k: config[k] for k in _SETTINGS[1:] if config.get(k) is not None}}
    settings["parameters"] = sum(p.numel() for p in run.model.parameters())
    settings["step"] = run.raw.get("step")
    elapsed = run.raw.get("extra", {}).get("elapsed")
    if elapsed is not None:
        settings["training time (s, evaluation excluded)"] = round(float(elapsed), 1)
    settings["checkpoint"] = run.checkpoint.name
    return settings


def _records(run: RunInfo) -> list[dict]:
    """``metrics.jsonl``'s records, then, for a run stopped between evaluations, the mean training loss of the
    steps after the last one, which the checkpoint keeps (``extra["window"]``: loss sum and step count): a run
    interrupted before its first evaluation has no metrics.jsonl, and this point is then its only one."""
    total, count = run.raw.get("extra", {}).get("window") or (0.0, 0)
    step = run.raw.get("step")
    records = list(run.records)
    if count and step is not None and (not records or records[-1].get("step", -1) < step):
        records.append({"step": step, "loss": total / count})
    return records


def geometry_rows(model: nn.Module, raw_geometry: dict | None = None) -> dict[str, Any]:
    """The model's geometry (``fcnkit.analyze``) as report rows; a model it cannot analyse gets its reason."""
    from fcnkit.convert import convolutionalize
    from fcnkit.geometry.analysis import analyze

    rows: dict[str, Any] = {}
    try:
        if raw_geometry is None and getattr(model, "output_kind", None) == "classifier":
            # A window classifier has no spatial output; describe the FCN that convolutionalize makes of it.
            model = convolutionalize(model, input_size=tuple(model.input_size),
                                     in_channels=int(model.fcnkit_spec.get("in_channels", 3)))
            rows["as an FCN: window, stride (px)"] = f"{model.window[0]}×{model.window[1]}, {model.stride[0]}"
        geometry = raw_geometry or analyze(model).to_dict()
    except FcnkitError as exc:
        return {**rows, "geometry": f"not analysed: {exc}"}
    names = {"receptive_field": "receptive field (px)", "output_stride": "output stride",
             "input_multiple": "input multiple", "halo": "halo for exact tiling (px)", "padding": "padding",
             "local": "local (tiles exactly)", "nonlocal_reason": "why not local"}
    return {**rows, **{names.get(k, k): v for k, v in geometry.items() if v is not None}}


def _dense_samples(run: RunInfo, pictures: Path, count: int) -> Path | None:
    """Image / truth / prediction panels of the first ``count`` validation images (None if the data is gone)."""
    from fcnkit.data import open_dataset
    from fcnkit.metrics import confusion_matrix, scores
    from fcnkit.inference.tiled import predict
    from fcnkit.reporting.pictures import panels

    config = run.config
    options = {"size": config["val_size"]} if config.get("val_size") and str(config.get("data", "")).startswith(
        "scenes") else {}
    try:
        val = open_dataset(config.get("data", "scenes"), split="val", num_classes=config.get("num_classes"),
                           **options)
    except FcnkitError:
        return None  # the data moved or needs a path this machine lacks; the report says so
    samples, titles = [], []
    k = len(run.class_names)
    for index in range(min(count, len(val))):
        image, truth = val[index]
        pred = predict(run.model, image, output="labels")
        samples.append((image, truth, pred))
        titles.append(f"val image {index} · mean IU {scores(confusion_matrix(pred, truth, k))['mean_iu']:.3f}")
    return panels(pictures / "samples.png", samples, class_names=run.class_names, palette=run.palette,
                  titles=titles)


def _classifier_samples(run: RunInfo, pictures: Path) -> Path | None:
    """Heat maps of every non-background class over a validation scene (built-in scenes only)."""
    import torch

    from fcnkit.data.scenes import make_scene
    from fcnkit.reporting.pictures import class_scores, heatmap_panels

    if not str(run.config.get("data", "scenes")).startswith("scenes"):
        return None
    image, _ = make_scene(256, split="val", seed=int(run.config.get("seed", 0)))
    logits, window, stride = class_scores(run.model, image)
    return heatmap_panels(pictures / "heatmaps.png", image, torch.softmax(logits, 0).numpy(), window=window,
                          stride=stride, class_names=run.class_names)


def add_run_sections(report: Report, run: RunInfo, pictures: str | os.PathLike, *, title: str,
                     losses: dict[int, float] | None = None, samples: int = 2) -> dict[str, Path]:
    """Add ``run``'s settings, metrics, curves, geometry and sample pictures to ``report``; return the PNGs made.

    Pictures are written under ``pictures``; ``losses`` (step -> loss) adds the per-step loss to the curves;
    ``samples`` is how many validation images to draw as panels (dense models; classifiers draw one heat-map grid),
    0 for none.
    """
    from fcnkit.reporting.curves import training_curves

    pictures = Path(pictures)
    made: dict[str, Path] = {}
    report.add_key_values(f"{title}: settings", _settings(run))
    metrics = run.metrics
    kind = getattr(run.model, "output_kind", "dense")
    if metrics is not None:
        where = "held-out windows (window accuracy = pixel accuracy)" if kind == "classifier" else \
            "held-out whole images"
        report.add_metrics(f"{title}: scores on {where}", metrics, run.class_names)
    records = _records(run)
    if records:
        made["curves"] = training_curves(records, pictures / "curves.png", losses=losses, title=title)
        pending = "" if records[-1] in run.records else (
            f" The point at step {records[-1]['step']} is the mean loss of the steps run after the last evaluation "
            f"(the run stopped before evaluating them), kept in {run.checkpoint.name}.")
        report.add_image(f"{title}: training curves", made["curves"],
                         "Loss: mean over the steps since the previous evaluation (and per step, faint, when "
                         f"known). Scores: on held-out data at each evaluation.{pending}")
    report.add_key_values(f"{title}: geometry", geometry_rows(run.model, run.raw.get("geometry")))
    if samples <= 0:
        return made
    if kind == "classifier":
        picture = _classifier_samples(run, pictures)
        h, w = getattr(run.model, "input_size", ("H", "W"))
        caption = f"Each digit's probability for the {h}×{w} window centred at each pixel, in one FCN pass."
    else:
        picture = _dense_samples(run, pictures, samples)
        caption = "Validation images the model never saw in training; colours follow the class legend."
    if picture is not None:
        made["samples"] = picture
        report.add_image(f"{title}: sample pictures", picture, caption)
    else:
        report.add_text(f"{title}: sample pictures", f"The run's data ({run.config.get('data')}) could not be "
                                                     f"opened here, so no sample pictures were drawn.")
    return made


def report_for_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write a self-contained HTML report of a training run; ``out`` defaults to ``<run_dir>/report.html``.

    Pictures are also kept as PNGs in ``<run_dir>/pictures/``. Returns the report's path.
    """
    run = load_run(run_dir)
    report = Report(f"fcnkit training run: {run.raw['model']['name']}", subtitle=str(run.folder))
    add_run_sections(report, run, run.folder / "pictures", title=run.raw["model"]["name"])
    return report.write(out if out is not None else run.folder / "report.html")
