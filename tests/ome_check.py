"""Check an OME-Zarr output the way other tools will see it: ome-zarr-models validates the NGFF 0.5 metadata, and
ome-zarr-py (the reader behind napari-ome-zarr) reads it back as a multiscale image, as labels when it is one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import ome_zarr_models
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel


def check_ome_zarr(path: str | Path) -> dict:
    """Validate ``path`` with both libraries and return its ``ome`` attributes.

    Asserts: ome-zarr-models accepts it as an NGFF 0.5 ``Image`` (``ImageLabel`` when it has ``image-label``);
    ome-zarr-py finds one multiscale node whose levels have the stored arrays' shapes, and reads a label image as
    labels with the stored colours (and class names, where present) and a channel image with its channel names.
    """
    path = Path(path)
    group = zarr.open_group(str(path), mode="r")
    ome = group.attrs.asdict()["ome"]
    model = ome_zarr_models.open_ome_zarr(group, version="0.5")
    labels = "image-label" in ome
    assert isinstance(model, ImageLabel if labels else Image), f"{path}: ome-zarr-models read it as {type(model)}"

    logging.getLogger("ome_zarr").setLevel(logging.ERROR)  # "no parent found": a label image on its own is fine
    nodes = list(Reader(parse_url(str(path)))())
    assert len(nodes) == 1, f"{path}: ome-zarr-py found {len(nodes)} nodes"
    node = nodes[0]
    assert node.load(Multiscales) is not None, f"{path}: ome-zarr-py does not see a multiscale image"
    paths = [d["path"] for d in ome["multiscales"][0]["datasets"]]
    assert [tuple(level.shape) for level in node.data] == [tuple(group[p].shape) for p in paths]
    np.testing.assert_array_equal(np.asarray(node.data[-1]), group[paths[-1]][:])
    if labels:
        assert node.load(Label) is not None, f"{path}: ome-zarr-py does not read it as labels"
        colours = {c["label-value"]: [v / 255 for v in c["rgba"]] for c in ome["image-label"].get("colors", [])}
        assert node.metadata["color"] == colours
        properties = {p["label-value"]: p["class"] for p in ome["image-label"].get("properties", [])}
        assert {k: v["class"] for k, v in node.metadata.get("properties", {}).items()} == properties
    elif "omero" in ome:
        assert node.metadata["channel_names"] == [c["label"] for c in ome["omero"]["channels"]]
    return ome
