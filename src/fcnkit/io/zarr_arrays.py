"""Reading zarr arrays (v3, and v2 through zarr-python 3) as lazy (H, W, C) images.

A path may name an array, a group holding exactly one array, or an OME-Zarr image (handed to ``ome_zarr``).
Arrays without ``dimension_names`` follow fcnkit's channels-last convention: (H, W) or (H, W, C).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import zarr

from fcnkit.errors import InputError
from fcnkit.io.ome_zarr import is_ome_group, open_ome_group
from fcnkit.io.views import ChannelsLastView

ZARR_METADATA_FILES = ("zarr.json", ".zarray", ".zgroup")


def is_zarr_path(path: Path) -> bool:
    """True for a folder that holds zarr metadata (any suffix)."""
    return path.is_dir() and any((path / name).exists() for name in ZARR_METADATA_FILES)


def array_axes(array: Any, source: str) -> list[str]:
    """The axis names of a zarr array: its ``dimension_names`` when all are set, else (y, x) or (y, x, c)."""
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(names):
        return list(names)
    if array.ndim == 2:
        return ["y", "x"]
    if array.ndim == 3:
        return ["y", "x", "c"]
    raise InputError(
        f"zarr array {source} has shape {array.shape} and no dimension_names; expected (H, W) or (H, W, C); "
        "store the image channels-last or set dimension_names such as ['c', 'y', 'x']"
    )


def open_zarr(path: str | os.PathLike) -> ChannelsLastView:
    """Open a zarr array, a one-array group, or an OME-Zarr image as a lazy (H, W, C) view."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise InputError(f"zarr input {source} does not exist; check the path and its spelling")
    if not is_zarr_path(path):
        raise InputError(
            f"{source} is not a zarr store (no zarr.json, .zarray or .zgroup inside); "
            "give the path of a zarr array or OME-Zarr image folder"
        )
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:
        raise InputError(
            f"zarr input {source} cannot be opened ({type(exc).__name__}: {exc}); check that the store is complete"
        ) from exc
    if isinstance(node, zarr.Group):
        if is_ome_group(node):
            return open_ome_group(node, source, reopen=functools.partial(open_zarr, source))
        arrays = list(node.array_keys())
        if len(arrays) != 1:
            raise InputError(
                f"zarr group {source} holds {len(arrays)} arrays ({', '.join(sorted(arrays)) or 'none'}), expected "
                "exactly one or OME-Zarr multiscales metadata; give the path of one array, e.g. "
                f"{path / (sorted(arrays)[0] if arrays else 'ARRAY')}"
            )
        node = node[arrays[0]]
        source = str(path / arrays[0])
    return ChannelsLastView(node, array_axes(node, source), source, reopen=functools.partial(open_zarr, source))
