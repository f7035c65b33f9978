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

from fcnkit.training.ddp import Dist
from fcnkit.errors import ModelError
from fcnkit.metrics import ConfusionMeter

METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")


TRAIN_THE_CLASSIFIER = "train the classifier itself (e.g. digit_classifier) and convolutionalize it afterwards"
EVALUATE_THE_CLASSIFIER = ("a grid of window scores is not scored by eval: evaluate the window classifier it was "
                           "converted from instead (the checkpoint given to `fcnkit convert`, e.g. its run's best.pt)")


def check_kind(model: nn.Module, where: str, fix: str = TRAIN_THE_CLASSIFIER) -> str:
    """The model's ``output_kind``, refusing heat-map grids, whose output is not one label per pixel; ``fix`` is
    what the refusal tells the user to do instead (training's by default)."""
    kind = getattr(model, "output_kind", "dense")
    if kind not in ("dense", "classifier"):
        raise ModelError(
            f"{where}: expected a dense segmentation model or a window classifier, found output_kind {kind!r}; "
            f"{fix}."
        )
    return kind


def evaluate_dense(
    model: nn.Module,
    dataset: Sequence,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    dist: Dist | None = None,
) -> ConfusionMeter:
    """Confusion over the whole images of ``dataset`` (items ``(image (H, W, 3) uint8, label (H, W))``).

    Each image goes through :func:`fcnkit.predict`, the whole-image reference (the model pads itself). Under DDP
    each rank predicts a strided share of the images; the matrices are summed across ranks.
    """
    from fcnkit.inference.tiled import predict

    meter = ConfusionMeter(num_classes)
    indices = range(len(dataset))[dist.shard(len(dataset))] if dist is not None else range(len(dataset))
    for i in indices:
        image, label = dataset[i]
        meter.update(predict(model, image, output="labels", device=device), np.asarray(label))
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


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    *,
    split: str = "val",
    num_classes: int | None = None,
    count: int | None = None,
    device: str | None = None,
) -> dict:
    """Scores of a checkpoint on a dataset: dense models on whole images, classifiers on labelled windows.

    Returns the four metrics, per-class ``iu``, ``class_names``, ``images`` (how many images or windows) and
    ``unit`` ("images", or "windows" for a classifier, whose pixel accuracy is its window accuracy).
    """
    from fcnkit.loading import load_model  # --checkpoint: a .pt, a .safetensors export, an .onnx model or a .pt2
    from fcnkit.data import open_dataset
    from fcnkit.errors import DataError

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(checkpoint, map_location=dev)
    kind = check_kind(model, f"checkpoint '{checkpoint}'", EVALUATE_THE_CLASSIFIER)
    k = model.fcnkit_spec["num_classes"]
    if num_classes is not None and num_classes != k:
        raise DataError(f"--num-classes {num_classes} does not match checkpoint '{checkpoint}', which predicts {k} "
                        f"classes; leave --num-classes out or set it to {k}.")
    scenes = str(data).partition(":")[0] == "scenes"
    if kind == "classifier":
        if not scenes:
            raise DataError(f"data {data}: a classifier is evaluated on labelled windows, which only the built-in "
                            f"scenes provide; pass --data scenes.")
        from fcnkit.data.scenes import classification_windows

        images, labels = classification_windows(split, count or 550, size=int(model.input_size[0]))
        meter = evaluate_windows(model, torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels),
                                 num_classes=k, device=dev)
        n = len(labels)
    else:
        options = {"count": count} if scenes and count else {}
        if str(data).partition(":")[0] == "folder":  # its masks do not say how many classes: the checkpoint does
            num_classes = k
        dataset = open_dataset(data, split=split, num_classes=num_classes if not scenes else None, **options)
        if dataset.num_classes != k:
            raise DataError(f"data {data}: has {dataset.num_classes} classes, checkpoint '{checkpoint}' predicts {k}; "
                            f"evaluate on the data the model was trained for.")
        n = min(count or len(dataset), len(dataset))
        dataset = [dataset[i] for i in range(n)] if n < len(dataset) else dataset
        meter = evaluate_dense(model, dataset, num_classes=k, device=dev)
    names = model.fcnkit_meta.get("class_names") or [str(i) for i in range(k)]
    return {"checkpoint": str(checkpoint), "data": data, "split": split, "images": n,
            "unit": "windows" if kind == "classifier" else "images", **summary(meter), "class_names": list(names)}


def _log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(K, H, W) logits -> log(p / (1 - p)) of each class's softmax probability p: ordered as p, but where p rounds
    to 1.0 (in float32, or float64 past ~37 nats) the log-odds still tell the surer window from the less sure one."""
    odds = torch.empty_like(logits)
    for c in range(len(logits)):
        odds[c] = logits[c] - torch.logsumexp(torch.cat([logits[:c], logits[c + 1:]]), 0)
    return odds


def _digit_regions(label: np.ndarray, num_classes: int, min_pixels: int) -> list[tuple[float, float, int]]:
    """``(cy, cx, class)`` of every connected region of one digit class (1 .. K-1) of at least ``min_pixels`` pixels,
    gaps of up to 2 px bridged (a stroke thinner than the fully-inked threshold breaks into pieces)."""
    from scipy import ndimage

    found = []
    for cls in range(1, num_classes):
        pixels = label == cls
        regions, _ = ndimage.label(ndimage.binary_dilation(pixels, iterations=1))
        regions[~pixels] = 0
        for index, box in enumerate(ndimage.find_objects(regions), start=1):
            if box is not None and (regions[box] == index).sum() >= min_pixels:
                found.append(((box[0].start + box[0].stop - 1) / 2, (box[1].start + box[1].stop - 1) / 2, cls))
    return found


@torch.no_grad()
def heatmap_localization(fcn: nn.Module, scenes: Sequence, *, radius: float = 4.0, search: float = 16.0,
                         min_pixels: int = 20, step: int | None = None) -> dict:
    """How well a convolutionalized digit classifier's heat maps find held-out digits, as one number.

    For every digit in ``scenes`` (items ``(image (H, W, 3), label (H, W))``), look at the map of its own class within
    ``search`` px of its centre: a hit when the map's maximum there lies within ``radius`` px of it. Where the digits
    are known (built-in scenes, :meth:`~fcnkit.data.scenes.DigitScenes.digits`), a digit is one placed digit and its
    centre the centre of its inked pixels, as the classifier's training windows are centred; elsewhere a digit is a
    connected region of one class of at least ``min_pixels`` pixels (gaps of up to 2 px bridged), its centre the
    centre of its bounding box, so a digit whose stroke breaks into pieces counts as several. The map is the class's
    probability, compared as log-odds so that "certain" windows are not ties. A window's score sits at the window's
    centre. A digit whose centre no window centre comes within ``radius`` px of (it is too near the image's edge for
    a whole window centred on it) cannot be hit by any map: it is counted in ``border`` and left out of ``centres``.
    ``step``: score windows every ``step`` px by shift-and-stitch (:func:`fcnkit.convert.shift_and_stitch`,
    (stride / step)^2 passes); None: one pass, a window per stride.
    Returns ``{"centres", "hits", "fraction", "border", "step"}``.
    """
    from fcnkit.convert import shift_and_stitch

    window = fcn.window
    stride = fcn.stride if step is None else (step, step)
    hits = centres = border = 0
    for index, (image, label) in enumerate(scenes):
        x = torch.as_tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None]
        with torch.inference_mode():
            grid = fcn.eval()(x) if step is None else shift_and_stitch(fcn.eval(), x, step=step)
            probs = _log_odds(grid[0].double()).numpy()  # (K, H', W')
        ys = stride[0] * np.arange(probs.shape[1]) + (window[0] - 1) / 2  # window centres
        xs = stride[1] * np.arange(probs.shape[2]) + (window[1] - 1) / 2
        known = getattr(scenes, "digits", None)
        digits = known(index) if callable(known) else _digit_regions(np.asarray(label), probs.shape[0], min_pixels)
        for cy, cx, cls in digits:
            if np.hypot(np.abs(ys - cy).min(), np.abs(xs - cx).min()) > radius:
                border += 1  # too near the edge for a whole window to be centred within radius of it
                continue
            rows, cols = np.abs(ys - cy) <= max(search, radius), np.abs(xs - cx) <= max(search, radius)
            near = probs[int(cls)][np.ix_(rows, cols)]
            i, j = np.unravel_index(int(near.argmax()), near.shape)
            centres += 1
            hits += bool(np.hypot(ys[rows][i] - cy, xs[cols][j] - cx) <= radius)
    return {"centres": centres, "hits": hits, "fraction": hits / centres if centres else None, "border": border,
            "step": stride[0]}
