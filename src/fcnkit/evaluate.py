"""Evaluation: dense models on whole validation images of any size, classifiers on labelled windows.

An FCN is evaluated the way it is used: each validation image goes through the network whole (the model pads itself
to its multiple and crops back), never as crops. Both functions return a :class:`fcnkit.metrics.ConfusionMeter`
summed over all DDP processes, so every rank gets the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fcnkit._ddp import Dist
from fcnkit.errors import ModelError
from fcnkit.metrics import ConfusionMeter

METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")


def check_kind(model: nn.Module, where: str) -> str:
    """The model's ``output_kind``, refusing heat-map grids, whose output is not one label per pixel."""
    kind = getattr(model, "output_kind", "dense")
    if kind not in ("dense", "classifier"):
        raise ModelError(
            f"{where}: expected a dense segmentation model or a window classifier, found output_kind {kind!r}; "
            f"train the classifier itself (e.g. digit_classifier) and convolutionalize it afterwards."
        )
    return kind


@torch.no_grad()
def _labels_whole_image(model: nn.Module, image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W) predicted labels of one whole image (H, W, C) uint8."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    return model(x)[0].argmax(0)


def evaluate_dense(
    model: nn.Module,
    dataset: Sequence,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    dist: Dist | None = None,
) -> ConfusionMeter:
    """Confusion over the whole images of ``dataset`` (items ``(image (H, W, 3) uint8, label (H, W))``).

    Under DDP each rank predicts a strided share of the images; the matrices are summed across ranks.
    """
    device = torch.device(device)
    meter = ConfusionMeter(num_classes)
    was_training = model.training
    model.eval()
    indices = range(len(dataset))[dist.shard(len(dataset))] if dist is not None else range(len(dataset))
    for i in indices:
        image, label = dataset[i]
        pred = _labels_whole_image(model, image, device)
        meter.update(pred, torch.from_numpy(np.asarray(label)).to(pred.device))
    model.train(was_training)
    if dist is not None:
        meter.all_reduce()
    return meter


@torch.no_grad()
def evaluate_windows(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    dist: Dist | None = None,
    batch_size: int = 256,
) -> ConfusionMeter:
    """Confusion over window labels of a classifier: ``images`` (N, C, h, w), ``labels`` (N,) integer classes.

    ``scores()["pixel_accuracy"]`` of the result is the window accuracy.
    """
    device = torch.device(device)
    meter = ConfusionMeter(num_classes)
    was_training = model.training
    model.eval()
    share = slice(None) if dist is None else dist.shard(len(images))
    images, labels = images[share], labels[share]
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float()
        meter.update(model(x).argmax(1), labels[start:start + batch_size].to(device))
    model.train(was_training)
    if dist is not None:
        meter.all_reduce()
    return meter


def summary(meter: ConfusionMeter) -> dict:
    """The four metrics and per-class IU of ``meter`` as plain JSON values (NaN becomes None)."""
    s = meter.scores()
    out = {k: (None if np.isnan(s[k]) else round(float(s[k]), 6)) for k in METRICS}
    out["iu"] = [None if np.isnan(v) else round(float(v), 6) for v in s["iu"]]
    return out
