"""Training curves: loss and mean IU against the step, from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fcnkit.errors import InputError
from fcnkit.reporting.pictures import write_png


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The evaluation records of a training run's ``metrics.jsonl`` (one JSON object per line), in order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"metrics: expected the training log '{path}', found no such file; point at a run "
                         f"folder written by fcnkit train.")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"metrics: line {number} of '{path}' is not JSON ({exc.msg}); the file is damaged, "
                                 f"rerun the training or delete that line.") from exc
    return records


def training_curves(records: list[dict] | str | os.PathLike, out: str | os.PathLike, *,
                    losses: dict[int, float] | None = None, title: str | None = None) -> Path:
    """Save loss (left) and mean IU / pixel accuracy (right) against the step, from ``metrics.jsonl`` records.

    ``records`` are dicts with ``step``, ``loss`` (mean training loss since the previous record) and the metrics,
    or the path of a ``metrics.jsonl``; ``losses`` (step -> loss of that step), when given, is drawn faintly behind.
    """
    from matplotlib.figure import Figure

    if isinstance(records, (str, os.PathLike)):
        records = read_metrics(records)
    records = [r for r in records if isinstance(r, dict) and "step" in r]
    if not records:
        raise InputError("records: expected at least one evaluation record with a 'step', found none; train with "
                         "evaluations (eval_every) so metrics.jsonl has lines.")
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    if losses:
        steps = sorted(losses)
        loss_ax.plot(steps, [losses[s] for s in steps], color="#9db7dd", linewidth=0.8, label="per step")
    points = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    if points:
        loss_ax.plot(*zip(*points), "o-", color="#1f4e9c", label="mean since last evaluation")
    loss_ax.set(xlabel="step", ylabel="training loss (cross-entropy)", title="loss")
    loss_ax.legend(fontsize=9, frameon=False)
    for key, label, colour in (("mean_iu", "mean IU", "#c0392b"), ("pixel_accuracy", "pixel accuracy", "#7f8c8d")):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            score_ax.plot(*zip(*points), "o-", color=colour, label=label)
    score_ax.set(xlabel="step", ylabel="score on held-out data", title="evaluation", ylim=(0.0, 1.0))
    score_ax.legend(fontsize=9, frameon=False, loc="lower right")
    return _finish(fig, (loss_ax, score_ax), title, out)


def compare_curves(runs: dict[str, list[dict]], out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Held-out mean IU of several runs against the step (left) and the training seconds (right), one line each.

    ``runs`` maps a label to its ``metrics.jsonl`` records (``step``, ``time`` = training seconds so far, ``mean_iu``).
    """
    from matplotlib.figure import Figure

    if not any(runs.values()):
        raise InputError("runs: expected at least one run with evaluation records, found none.")
    fig = Figure(figsize=(12.0, 3.6), layout="constrained")
    step_ax, time_ax = fig.subplots(1, 2, sharey=True)
    for label, records in runs.items():
        points = [(r["step"], r.get("time"), r["mean_iu"]) for r in records if r.get("mean_iu") is not None]
        if points:
            steps, seconds, scores = zip(*points)
            step_ax.plot(steps, scores, "o-", label=label)
            time_ax.plot(seconds, scores, "o-", label=label)
    step_ax.set(xlabel="step", ylabel="held-out mean IU", ylim=(0.0, 1.0))
    time_ax.set(xlabel="training seconds (evaluation excluded)")
    time_ax.legend(fontsize=9, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside, not over
    return _finish(fig, (step_ax, time_ax), title, out)


def _finish(fig, axes, title: str | None, out: str | os.PathLike) -> Path:
    """The common end of the curve figures: light grids, the optional title, the PNG written atomically."""
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=12)
    return write_png(fig, out)
