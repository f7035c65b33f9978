"""Pictures of model outputs: class heat maps of a convolutionalized classifier, colour-map overlays.

Rendering uses matplotlib's object API with the Agg canvas, so it never touches pyplot's global state or needs a
display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnkit.errors import InputError

COLORBAR_PX = 100  # width of the colour bar strip right of the image in a heat-map PNG
MIN_SIDE_PX = 256  # small images are drawn enlarged by a whole factor so the shorter side reaches this


def as_rgb(image: object) -> np.ndarray:
    """An (H, W, 3) uint8 copy of an (H, W), (H, W, 1) or (H, W, 3+) image (floats in [0, 1] or 0-255)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] == 0:
        raise InputError(f"image: expected an (H, W) or (H, W, C) array, got shape {array.shape}; pass one image "
                         f"with channels last.")
    array = array[:, :, :3] if array.shape[2] >= 3 else np.repeat(array[:, :, :1], 3, axis=2)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if array.size and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return array


def overlay(image: object, heat: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5,
            vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Blend ``heat`` (H, W), coloured by ``cmap`` over [vmin, vmax], onto ``image``: (H, W, 3) uint8."""
    import matplotlib

    rgb = as_rgb(image)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise InputError(f"overlay: expected a heat map of the image's size {rgb.shape[:2]}, got {heat.shape}; "
                         f"upsample it first (fcnkit.viz.upsample_grid).")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay(alpha=...): expected a value in [0, 1], got {alpha}.")
    colours = matplotlib.colormaps[cmap](np.clip((heat - vmin) / (vmax - vmin), 0.0, 1.0))[:, :, :3] * 255.0
    return np.rint((1.0 - alpha) * rgb + alpha * colours).astype(np.uint8)


def _interpolation(size: int, cells: int, window: int, stride: int) -> np.ndarray:
    """(size, cells) weights giving each pixel the linear interpolation of the window centres around it."""
    # Cell i's window covers pixels [stride*i, stride*i + window): its centre is at stride*i + window/2, while
    # pixel y's centre is at y + 0.5. Pixels beyond the first/last centre take the nearest cell.
    u = np.clip((np.arange(size) + 0.5 - window / 2.0) / stride, 0.0, cells - 1.0)
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    weights = np.zeros((size, cells))
    np.add.at(weights, (np.arange(size), lo), 1.0 - (u - lo))
    np.add.at(weights, (np.arange(size), hi), u - lo)
    return weights


def upsample_grid(grid: np.ndarray, *, image_size: tuple[int, int], window: tuple[int, int],
                  stride: tuple[int, int]) -> np.ndarray:
    """A (H', W') per-window grid as an (H, W) map: bilinear between window centres (stride*i + window/2)."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or 0 in grid.shape:
        raise InputError(f"upsample_grid: expected a non-empty (H', W') grid, got shape {grid.shape}; the image "
                         f"must hold at least one full window.")
    rows = _interpolation(image_size[0], grid.shape[0], window[0], stride[0])
    cols = _interpolation(image_size[1], grid.shape[1], window[1], stride[1])
    return (rows @ grid @ cols.T).astype(np.float32)  # (H, W)


def class_scores(model: nn.Module, image: object) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Run a classifier (convolutionalized at its ``input_size``) or its FCN over an (H, W, C) image.

    Returns the (K, H', W') logits, the window and the stride.
    """
    from fcnkit.convert import convolutionalize
    from fcnkit.convert.reference import as_batch

    x = as_batch(image)
    if getattr(model, "output_kind", None) != "grid":
        size = getattr(model, "input_size", None)
        if size is None:
            raise InputError(f"heatmap: expected a convolutionalized classifier or a classifier with `input_size`, "
                             f"got a {type(model).__name__} without it; convolutionalize it with "
                             f"fcnkit.convolutionalize(model, input_size=(H, W)).")
        model = convolutionalize(model, input_size=tuple(size), in_channels=x.shape[1])
    window, stride = getattr(model, "window", None), getattr(model, "stride", None)
    if window is None or stride is None:
        raise InputError(f"heatmap: expected a model from fcnkit.convolutionalize (it knows its window and stride), "
                         f"got a {type(model).__name__}; pass its scores with window= and stride= instead.")
    param = next(model.parameters(), None)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(x.to(param.device if param is not None else "cpu"))[0].float().cpu()
    finally:
        model.train(training)
    return logits, tuple(window), tuple(stride)


def heatmap(scores_or_model: nn.Module | np.ndarray | torch.Tensor, image: object, *, class_index: int,
            out: str | os.PathLike | None = None, window: tuple[int, int] | None = None,
            stride: tuple[int, int] | None = None, softmax: bool = True, cmap: str = "jet", alpha: float = 0.5,
            label: str | None = None) -> np.ndarray:
    """The heat map of class ``class_index`` over ``image`` (H, W, C): an (H, W) float32 map in [0, 1].

    ``scores_or_model`` is a classifier (convolutionalized on the fly at its ``input_size``), a convolutionalized
    classifier, or a (K, H', W') / (1, K, H', W') score grid with ``window`` and ``stride`` given. Scores become
    probabilities with a softmax over K (``softmax=False`` takes them as they are), are upsampled to the image with
    window centres at ``stride*i + window/2`` (:func:`upsample_grid`), and, if ``out`` is given, drawn over the
    image in ``cmap`` with a colour bar and saved as a PNG of ``(H*z) x (W*z + COLORBAR_PX)`` pixels, where the
    zoom ``z`` is the smallest whole number making the shorter image side at least ``MIN_SIDE_PX``.
    """
    if isinstance(scores_or_model, nn.Module):
        logits, window, stride = class_scores(scores_or_model, image)
    else:
        logits = torch.as_tensor(np.asarray(scores_or_model), dtype=torch.float32)
        logits = logits[0] if logits.dim() == 4 and logits.shape[0] == 1 else logits
        if logits.dim() != 3 or window is None or stride is None:
            raise InputError(f"heatmap: expected a (K, H', W') score grid with window= and stride=, got shape "
                             f"{tuple(logits.shape)} with window={window}, stride={stride}; pass both, or pass "
                             f"the model.")
    num_classes = logits.shape[0]
    if isinstance(class_index, bool) or not isinstance(class_index, int) or not 0 <= class_index < num_classes:
        raise InputError(f"class_index: expected an integer in [0, {num_classes - 1}], got {class_index!r}.")
    probs = torch.softmax(logits, dim=0) if softmax else logits
    rgb = as_rgb(image)
    heat = upsample_grid(probs[class_index].numpy(), image_size=rgb.shape[:2], window=tuple(window),
                         stride=tuple(stride))
    if out is not None:
        _save(out, rgb, heat, cmap=cmap, alpha=alpha, label=label or f"class {class_index}")
    return heat


def _save(out: str | os.PathLike, rgb: np.ndarray, heat: np.ndarray, *, cmap: str, alpha: float,
          label: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    height, width = rgb.shape[:2]
    zoom = max(1, math.ceil(MIN_SIDE_PX / min(height, width)))
    image_w, total_h = width * zoom, height * zoom
    total_w = image_w + COLORBAR_PX
    dpi = 100
    fig = Figure(figsize=(total_w / dpi, total_h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, image_w / total_w, 1.0))
    ax.imshow(overlay(rgb, heat, cmap=cmap, alpha=alpha), interpolation="nearest")
    ax.set_axis_off()
    bar = fig.add_axes(((image_w + 10) / total_w, 0.05, 14 / total_w, 0.9))
    fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), cax=bar).set_label(label, fontsize=9)
    bar.tick_params(labelsize=8)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed: never a half-written PNG
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
    return path
