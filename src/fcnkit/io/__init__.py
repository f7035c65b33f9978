"""Image readers and streaming writers: PNG/JPEG, TIFF/BigTIFF, zarr v3 and OME-Zarr.

``open_image(path)`` gives an (H, W, C) array-like whose windows ``img[y0:y1, x0:x1]`` are numpy arrays: a numpy
array for PNG/JPEG, a lazy view for TIFF/zarr/OME-Zarr that reads only the tiles under the window.
``read_image(path, mode="rgb"|"label")`` reads a whole image for datasets. ``create_output`` streams a result to
``.png``, ``.zarr``, ``.ome.zarr`` or ``.tif`` and finalises it atomically; ``Output.mark_done`` journals tiles for
resume. Pixel values are converted by one rule, :mod:`fcnkit.io.pixels`.
"""

from __future__ import annotations

from fcnkit.io.images import write_png
from fcnkit.io.outputs import Output, create_output, output_status
from fcnkit.io.reading import INPUT_SUFFIXES, open_image, read_image
from fcnkit.io.tiff import write_tiff
from fcnkit.io.views import ChannelsLastView

__all__ = [
    "ChannelsLastView", "INPUT_SUFFIXES", "Output", "create_output", "open_image", "output_status", "read_image",
    "write_png", "write_tiff",
]
