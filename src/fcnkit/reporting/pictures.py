"""Pictures of model outputs: class heat maps of a convolutionalized classifier, colour-map overlays.

Also label pictures (palette colouring, overlays, image / truth / prediction panels with a legend); training curves
are in :mod:`fcnkit.reporting.curves`. Rendering uses matplotlib's object API with the Agg canvas, so it never
touches pyplot's global state or needs a display; every PNG goes through fcnkit's one atomic writer, so a reader
never sees half a picture. Image pixels are shown by the one pixel rule, :mod:`fcnkit.io.pixels`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnkit.errors import InputError
from fcnkit.io.atomic import atomic_file
from fcnkit.io.pixels import display_rgb

COLORBAR_PX = 100  # width of the colour bar strip right of the image in a heat-map PNG (up to 1000 px tall)
BAR_REFERENCE_PX = 1000  # taller pictures get a bar strip and labels scaled by round(height / 1000)
MIN_SIDE_PX = 256  # small images are drawn enlarged by a whole factor so the shorter side reaches this


def as_rgb(image: object) -> np.ndarray:
    """An (H, W, 3) uint8 picture of an (H, W) or (H, W, C) image by the one pixel rule, :func:`fcnkit.io.pixels.
    display_rgb`: grey repeated, alpha dropped, 16-bit scaled by 1/257, floats in [0, 1] scaled to 0-255."""
    return display_rgb(image)


def overlay(image: object, heat: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5,
            vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Blend ``heat`` (H, W), coloured by ``cmap`` over [vmin, vmax], onto ``image``: (H, W, 3) uint8; NaN pixels
    (no score there) keep the image."""
    import matplotlib

    rgb = as_rgb(image)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise InputError(f"overlay: expected a heat map of the image's size {rgb.shape[:2]}, got {heat.shape}; "
                         f"upsample it first (fcnkit.reporting.pictures.upsample_grid).")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay(alpha=...): expected a value in [0, 1], got {alpha}.")
    missing = np.isnan(heat)
    colours = matplotlib.colormaps[cmap](np.clip((np.where(missing, vmin, heat) - vmin) / (vmax - vmin), 0.0, 1.0))
    blended = (1.0 - alpha) * rgb + alpha * colours[:, :, :3] * 255.0
    blended[missing] = rgb[missing]
    return np.rint(blended).astype(np.uint8)


def _cell_position(size: int, window: int, stride: int) -> np.ndarray:
    """Each pixel's position in cells: 0 at window 0's centre, 1 at window 1's, and so on (unclipped)."""
    # Cell i's window covers pixels [stride*i, stride*i + window): its centre is at stride*i + window/2, while
    # pixel y's centre is at y + 0.5.
    return (np.arange(size) + 0.5 - window / 2.0) / stride


def _interpolation(size: int, cells: int, window: int, stride: int) -> np.ndarray:
    """(size, cells) weights giving each pixel the linear interpolation of the window centres around it."""
    u = np.clip(_cell_position(size, window, stride), 0.0, cells - 1.0)  # beyond the end centres: the nearest cell
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    weights = np.zeros((size, cells))
    np.add.at(weights, (np.arange(size), lo), 1.0 - (u - lo))
    np.add.at(weights, (np.arange(size), hi), u - lo)
    return weights


def upsample_grid(grid: np.ndarray, *, image_size: tuple[int, int], window: tuple[int, int],
                  stride: tuple[int, int], outside: float | None = None) -> np.ndarray:
    """A (H', W') per-window grid as an (H, W) map: bilinear between window centres (stride*i + window/2).

    Pixels beyond the first/last centre take the nearest cell, or ``outside`` (e.g. NaN: no window is centred
    there) when given and they lie more than half a stride beyond it.
    """
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or 0 in grid.shape:
        raise InputError(f"upsample_grid: expected a non-empty (H', W') grid, got shape {grid.shape}; the image "
                         f"must hold at least one full window.")
    rows = _interpolation(image_size[0], grid.shape[0], window[0], stride[0])
    cols = _interpolation(image_size[1], grid.shape[1], window[1], stride[1])
    heat = (rows @ grid @ cols.T).astype(np.float32)  # (H, W)
    if outside is not None:
        for axis, (size, cells, w, st) in enumerate(zip(image_size, grid.shape, window, stride)):
            u = _cell_position(size, w, st)
            far = (u < -0.5) | (u > cells - 0.5)  # more than half a stride beyond the end centres
            heat[(far, slice(None)) if axis == 0 else (slice(None), far)] = outside
    return heat


def class_scores(model: nn.Module, image: object) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Run a classifier (convolutionalized at its ``input_size``) or its FCN over an (H, W, C) image.

    An array image goes in by the one pixel rule (:func:`fcnkit.inference.inputs.model_input`: grey, alpha and
    16-bit converted as ``fcnkit.predict`` converts them); a (N, C, H, W) tensor as it is. Returns the (K, H', W')
    logits, the window and the stride.
    """
    from fcnkit.convert import convolutionalize
    from fcnkit.convert.reference import as_batch
    from fcnkit.inference.inputs import model_input

    if not isinstance(image, torch.Tensor):
        image = np.asarray(model_input(model, np.asarray(image)))
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
            label: str | None = None, outside: float | None = None) -> np.ndarray:
    """The heat map of class ``class_index`` over ``image`` (H, W, C): an (H, W) float32 map in [0, 1].

    ``scores_or_model`` is a classifier (convolutionalized on the fly at its ``input_size``), a convolutionalized
    classifier, or a (K, H', W') / (1, K, H', W') score grid with ``window`` and ``stride`` given. Scores become
    probabilities with a softmax over K (``softmax=False`` takes them as they are), are upsampled to the image with
    window centres at ``stride*i + window/2`` (:func:`upsample_grid`), and, if ``out`` is given, drawn over the
    image in ``cmap`` with a colour bar and saved as a PNG of ``(H*z) x (W*z + COLORBAR_PX*b)`` pixels, where the
    zoom ``z`` is the smallest whole number making the shorter image side at least ``MIN_SIDE_PX`` and the bar
    scale ``b = max(1, round(H*z / BAR_REFERENCE_PX))`` keeps the bar readable on tall pictures. ``outside`` is
    the value of the edge band where no window is centred (:func:`upsample_grid`): ``np.nan`` draws the image alone
    there; None (the default) extends the nearest window's value.
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
                         stride=tuple(stride), outside=outside)
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
    # the colour bar grows with tall pictures, so its numbers stay readable when the PNG is viewed scaled to fit
    scale = max(1, round(total_h / BAR_REFERENCE_PX))
    total_w = image_w + COLORBAR_PX * scale
    dpi = 100
    fig = Figure(figsize=(total_w / dpi, total_h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, image_w / total_w, 1.0))
    ax.imshow(overlay(rgb, heat, cmap=cmap, alpha=alpha), interpolation="nearest")
    ax.set_axis_off()
    bar = fig.add_axes(((image_w + 10 * scale) / total_w, 0.05, 14 * scale / total_w, 0.9))
    fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), cax=bar).set_label(label, fontsize=9 * scale)
    bar.tick_params(labelsize=8 * scale, width=scale, length=3.5 * scale)
    return write_png(fig, out, dpi=dpi)


def write_png(fig: object, out: str | os.PathLike, *, dpi: int = 100, **savefig: object) -> Path:
    """Save a matplotlib figure as a PNG at ``out`` with fcnkit's one atomic writer (:func:`fcnkit.io.atomic.
    atomic_file`: a temporary sibling, fsynced, then renamed, so a reader never sees half a picture)."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise InputError(f"out: expected a path ending in .png, got {str(path)!r}; name the picture like 'x.png'.")
    with atomic_file(path, what="picture") as f:
        fig.savefig(f, dpi=dpi, format="png", **savefig)
    return path


# --- label pictures: palette colours, overlays, panels ------------------------------------------------------------

IGNORE_RGB = (224, 224, 192)  # VOC's colour for label 255 ("ignore"), also voc_palette(256)[255]
PANEL_INCHES = 2.8  # side of one picture in a panel figure
MAX_LEGEND_CLASSES = 24  # more classes than this: the legend lists only those present


def _palette(palette: object | None) -> np.ndarray:
    from fcnkit.data import voc_palette

    if palette is None:
        return voc_palette(256)
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) == 0 or pal.min() < 0 or pal.max() > 255:
        raise InputError(f"palette: expected a (K, 3) array of 0-255 colours, got shape {pal.shape}; pass e.g. "
                         f"fcnkit.data.voc_palette(K).")
    return pal.astype(np.uint8)


def _labels(labels: object, name: str = "labels") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise InputError(f"{name}: expected an (H, W) array of integer class indices, got shape {array.shape} of "
                         f"{array.dtype}; take the argmax over classes first (predict(..., output='labels')).")
    return array.astype(np.int64)


def colorize(labels: object, palette: object | None = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours ``palette[label]``; 255 (ignore) is cream as in VOC.

    ``palette`` is (K, 3) uint8 (default: the VOC palette, ``fcnkit.data.voc_palette``).

    >>> colorize(np.array([[0, 1], [2, 255]]))[:, :, 0].tolist()
    [[0, 128], [0, 224]]
    """
    array = _labels(labels)
    pal = _palette(palette)
    lut = np.zeros((max(256, len(pal)), 3), np.uint8)
    lut[:len(pal)] = pal
    if len(pal) <= 255:
        lut[255] = IGNORE_RGB
    bad = (array < 0) | ((array >= len(pal)) & (array != 255))
    if bad.any():
        values = np.unique(array[bad]).tolist()[:5]
        raise InputError(f"labels: expected class indices 0-{len(pal) - 1} (or 255, ignore) for a palette of "
                         f"{len(pal)} colours, found {values}; pass a palette with a colour for every class.")
    return lut[array]


def overlay_labels(image: object, labels: object, *, palette: object | None = None, alpha: float = 0.55,
                   background: int | None = 0) -> np.ndarray:
    """Class colours blended onto ``image`` (H, W[, C]): (H, W, 3) uint8; ``background`` pixels keep the image."""
    rgb = as_rgb(image)
    array = _labels(labels)
    if array.shape != rgb.shape[:2]:
        raise InputError(f"labels: expected the image's size {rgb.shape[:2]}, got {array.shape}; predict on this "
                         f"image or resize the labels with nearest-neighbour sampling.")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay_labels(alpha=...): expected a value in [0, 1], got {alpha}.")
    colours = colorize(array, palette).astype(np.float64)
    blended = np.rint((1.0 - alpha) * rgb + alpha * colours).astype(np.uint8)
    if background is not None:
        blended[array == background] = rgb[array == background]
    return blended


def _legend(fig: object, present: set[int], class_names: list[str], pal: np.ndarray) -> None:
    from matplotlib.patches import Patch

    shown = range(len(class_names)) if len(class_names) <= MAX_LEGEND_CLASSES else sorted(present)
    handles = [Patch(facecolor=pal[k] / 255.0, edgecolor="0.35", label=class_names[k]) for k in shown]
    if 255 in present:
        handles.append(Patch(facecolor=np.array(IGNORE_RGB) / 255.0, edgecolor="0.35", label="ignore (255)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False, fontsize=10)


def panels(out: str | os.PathLike, samples: list[tuple[object, object | None, object]], *,
           class_names: list[str], palette: object | None = None, titles: list[str] | None = None) -> Path:
    """Save one row per sample: image | truth | prediction | prediction over the image, with a class legend.

    ``samples`` holds ``(image (H, W[, C]), truth (H, W) or None, prediction (H, W))`` triples; ``titles`` one
    line per row (e.g. the row's mean IU). Returns the PNG's path; each picture is ``PANEL_INCHES`` at 100 dpi.
    """
    from matplotlib.figure import Figure

    if not samples:
        raise InputError("samples: expected at least one (image, truth, prediction) triple, got none.")
    if titles is not None and len(titles) != len(samples):
        raise InputError(f"titles: expected one per sample ({len(samples)}), got {len(titles)}.")
    pal = _palette(palette)
    names = list(class_names)
    if len(pal) < len(names):
        raise InputError(f"palette: expected a colour for each of the {len(names)} classes, got {len(pal)}; pass "
                         f"fcnkit.data.voc_palette({len(names)}).")
    columns = ("image", "truth", "prediction", "prediction over image")
    fig = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * len(samples) + 0.9), layout="constrained")
    axes = fig.subplots(len(samples), len(columns), squeeze=False)
    present: set[int] = set()
    for row, (image, truth, pred) in enumerate(samples):
        rgb, pred = as_rgb(image), _labels(pred, "prediction")
        truth = None if truth is None else _labels(truth, "truth")
        for name, value in (("prediction", pred), ("truth", truth)):
            if value is not None and value.shape != rgb.shape[:2]:
                raise InputError(f"samples[{row}]: expected the {name} at the image's size {rgb.shape[:2]}, got "
                                 f"{value.shape}.")
            if value is not None:
                classes = set(np.unique(value).tolist())
                if max(classes - {255}, default=0) >= len(names):
                    raise InputError(f"samples[{row}]: the {name} holds class {max(classes - {255})} but only "
                                     f"{len(names)} class names were given; pass every class's name.")
                present |= classes
        pictures = (rgb, None if truth is None else colorize(truth, pal), colorize(pred, pal),
                    overlay_labels(rgb, pred, palette=pal))
        for col, (ax, picture) in enumerate(zip(axes[row], pictures)):
            ax.set_xticks([]), ax.set_yticks([])
            if picture is None:
                ax.text(0.5, 0.5, "no truth", ha="center", va="center", color="0.5", transform=ax.transAxes)
            else:
                ax.imshow(picture, interpolation="nearest")
            if row == 0:
                ax.set_title(columns[col], fontsize=11)
        if titles is not None:
            axes[row][0].set_ylabel(titles[row], fontsize=10)
    _legend(fig, present, names, pal)
    return write_png(fig, out)


def heatmap_panels(out: str | os.PathLike, image: object, probs: object, *, window: tuple[int, int],
                   stride: tuple[int, int], class_names: list[str], classes: list[int] | None = None,
                   columns: int = 4, cmap: str = "jet", alpha: float = 0.6) -> Path:
    """Save the image and one heat map per class in ``classes`` (default: all but class 0) in a grid, one colour bar.

    ``probs`` is the (K, H', W') per-window probability grid of a convolutionalized classifier over ``image``
    (H, W[, C]); each class's grid is upsampled with :func:`upsample_grid` and drawn over the image in grey.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    grid = np.asarray(probs, dtype=np.float64)
    if grid.ndim != 3 or grid.shape[0] != len(class_names):
        raise InputError(f"probs: expected a (K, H', W') grid with K = {len(class_names)} (one per class name), "
                         f"got shape {grid.shape}.")
    classes = list(range(1, len(class_names))) if classes is None else list(classes)
    if not classes or any(not 0 <= k < len(class_names) for k in classes):
        raise InputError(f"classes: expected class indices in [0, {len(class_names) - 1}], got {classes}.")
    rgb = as_rgb(image)
    # Jet over a colourful image is hard to read: draw the heat over the image's brightness only.
    grey = as_rgb(np.rint(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8))
    rows = math.ceil((len(classes) + 1) / columns)
    fig = Figure(figsize=(PANEL_INCHES * columns + 0.8, PANEL_INCHES * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title("image", fontsize=11)
    for ax, k in zip(axes[1:], classes):
        heat = upsample_grid(grid[k], image_size=rgb.shape[:2], window=tuple(window), stride=tuple(stride),
                             outside=np.nan)  # the edge band where no window is centred shows the image alone
        ax.imshow(overlay(grey, heat, cmap=cmap, alpha=alpha), interpolation="nearest")
        ax.set_title(f"{class_names[k]}: peak {grid[k].max():.2f}", fontsize=11)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    for ax in axes[len(classes) + 1:]:
        ax.set_axis_off()
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), ax=list(axes), shrink=0.6)
    bar.set_label("class probability of\nthe window centred here", fontsize=10)  # two lines: fits one row of panels
    return write_png(fig, out)
