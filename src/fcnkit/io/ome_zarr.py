"""OME-Zarr (NGFF 0.4 and 0.5): reading level 0 of an image, writing a nearest-neighbour pyramid and its metadata.

fcnkit writes NGFF 0.5 (zarr v3): a group whose attributes hold ``{"ome": {"version": "0.5", "multiscales": [...]}}``
and, for a label image, ``"image-label"`` with one colour per class, so napari and QuPath show the classes. NGFF puts
a channel axis before the spatial ones, so (H, W, C) results are stored as (c, y, x).
Spec: https://ngff.openmicroscopy.org/0.5/
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr

from fcnkit.errors import InputError
from fcnkit.io.views import ChannelsLastView

NGFF_VERSION = "0.5"
# a pyramid stops at the first level whose smaller side is under this, or that fits in one chunk
PYRAMID_MIN_SIDE = 256


def _ome_attributes(group: zarr.Group) -> dict[str, Any]:
    attrs = group.attrs.asdict()
    return attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs  # 0.5 nests under "ome"; 0.4 does not


def is_ome_group(group: zarr.Group) -> bool:
    """True for an OME-Zarr image group (or a bioformats2raw container whose image 0 is one)."""
    attrs = _ome_attributes(group)
    return "multiscales" in attrs or "bioformats2raw.layout" in attrs


def open_ome_group(group: zarr.Group, source: str, *, reopen: Callable[[], Any] | None = None) -> ChannelsLastView:
    """Level 0 of the first multiscale image of ``group`` as a lazy (H, W, C) view (t and z must be singletons).

    ``reopen``: a picklable call that opens the same image again (how the view is sent to dask workers).
    """
    attrs = _ome_attributes(group)
    if "multiscales" not in attrs and "0" in group:  # bioformats2raw layout: the image is the subgroup "0"
        group, source = group["0"], f"{source}/0"
        attrs = _ome_attributes(group)
    try:
        multiscale = attrs["multiscales"][0]
        path = multiscale["datasets"][0]["path"]
        array = group[path]
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(
            f"OME-Zarr image {source} has incomplete multiscales metadata ({type(exc).__name__}: {exc}); "
            "re-export it with an NGFF writer"
        ) from exc
    axes = [a["name"] if isinstance(a, dict) else a for a in multiscale.get("axes", [])]
    if not axes:  # NGFF before 0.3 implied t, c, z, y, x
        axes = list("tczyx"[-array.ndim :])
    if len(axes) != array.ndim:
        raise InputError(
            f"OME-Zarr image {source} declares axes {axes} but its level-0 array has {array.ndim} dimensions; "
            "fix the multiscales metadata"
        )
    return ChannelsLastView(array, axes, f"{source}/{path}", reopen=reopen)


def level_shapes(shape: tuple[int, int], chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) of each pyramid level: halve (rounding up) until the smaller side is under 256 or one chunk holds it."""
    shapes = [tuple(shape)]
    height, width = shape
    while min(height, width) >= PYRAMID_MIN_SIDE and (height > chunks[0] or width > chunks[1]):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        shapes.append((height, width))
    return shapes


def build_pyramid(group: zarr.Group, *, channels: int | None) -> int:
    """Add levels "1", "2", ... below level "0" of ``group`` by nearest-neighbour subsampling ([::2, ::2]).

    Works one destination chunk at a time (reading the 2x2 chunks above it), so memory is O(chunk) for any image.
    Existing levels (from an interrupted close) are replaced. Returns the number of levels, level 0 included.
    """
    source = group["0"]
    chunks = tuple(source.chunks[-2:])
    shapes = level_shapes(tuple(source.shape[-2:]), chunks)
    lead = () if channels is None else (channels,)
    for level, (height, width) in enumerate(shapes[1:], start=1):
        target = group.create_array(
            str(level),
            shape=lead + (height, width),
            dtype=source.dtype,
            chunks=lead + (min(chunks[0], height), min(chunks[1], width)),
            dimension_names=source.metadata.dimension_names,
            fill_value=source.fill_value,
            overwrite=True,
        )
        for y in range(0, height, chunks[0]):
            for x in range(0, width, chunks[1]):
                y1, x1 = min(y + chunks[0], height), min(x + chunks[1], width)
                block = np.asarray(source[..., 2 * y : 2 * y1, 2 * x : 2 * x1])
                target[..., y:y1, x:x1] = block[..., ::2, ::2]
        source = target
    return len(shapes)


def ome_metadata(
    *,
    levels: int,
    channels: int | None,
    name: str,
    palette: Any = None,
    labels: bool = False,
    class_names: list[str] | None = None,
    channel_windows: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """The NGFF 0.5 ``ome`` attributes: multiscales with axes and scale transforms, and what viewers show.

    A label image gets ``image-label``: one colour per class (label 0, the background, fully transparent so the
    image underneath shows) and, with ``class_names``, ``properties`` naming each label value (napari shows them).
    A channel image (probabilities, logits) gets ``omero`` channels named after ``class_names`` (when there is one
    per channel), coloured with ``palette`` and windowed to ``channel_windows`` (min, max) per channel.
    """
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if channels is not None:
        axes.insert(0, {"name": "c", "type": "channel"})
    lead = [] if channels is None else [1.0]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": lead + [2.0**i, 2.0**i]}]}
        for i in range(levels)
    ]
    multiscale = {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "nearest",
        "metadata": {"description": "each level is the previous one subsampled by 2 (nearest neighbour, [::2, ::2])"},
    }
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [multiscale]}
    colours = [] if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3).tolist()
    if labels:
        ome["image-label"] = _image_label(colours, class_names)
    elif channels is not None:
        ome["omero"] = _omero(channels, colours, class_names, channel_windows)
    return ome


def _image_label(colours: list[list[int]], class_names: list[str] | None) -> dict[str, Any]:
    """NGFF ``image-label``: colours and properties must list the same label values (one per class)."""
    count = len(class_names) if class_names else len(colours)
    colours = colours + [[128, 128, 128]] * (count - len(colours))  # a class without a palette entry shows grey
    label = {"colors": [{"label-value": i, "rgba": [*colours[i], 0 if i == 0 else 255]} for i in range(count)]}
    if class_names:
        label["properties"] = [{"label-value": i, "class": str(n)} for i, n in enumerate(class_names)]
    return label


def _omero(channels: int, colours: list[list[int]], class_names: list[str] | None,
           windows: list[tuple[float, float]] | None) -> dict[str, Any]:
    """OMERO rendering settings: a name, colour and display window per channel (NGFF "omero" block)."""
    names = [str(n) for n in class_names] if class_names and len(class_names) == channels else \
        [f"channel {c}" for c in range(channels)]
    entries = []
    for c in range(channels):
        low, high = windows[c] if windows else (0.0, 1.0)
        if c < len(colours):  # the class's palette colour; black (a background) would render as nothing: white
            rgb = colours[c] if any(colours[c]) else [255, 255, 255]
        else:  # no palette colour: hues evenly around the circle, so channels differ (an RGB image's are R, G, B)
            rgb = [round(255 * v) for v in colorsys.hsv_to_rgb(c / channels, 1.0, 1.0)]
        entries.append({
            "label": names[c],
            "color": "".join(f"{v:02X}" for v in rgb),
            "window": {"min": float(low), "max": float(high), "start": float(low), "end": float(high)},
            "active": True,
        })
    return {"channels": entries, "rdefs": {"model": "color"}}
