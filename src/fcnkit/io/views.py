"""A lazy (H, W, C) view of an on-disk array whose axes come in another order (cyx, tczyx, yxs, ...).

Slicing the view reads only the chunks or tiles under the window, so memory stays O(window) whatever the image size.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fcnkit.errors import InputError

# axis names that mean "rows", "columns" and "channels" in tifffile, OME-Zarr and zarr dimension_names
_ROW = {"y", "Y"}
_COL = {"x", "X"}
_CHANNEL = {"c", "C", "s", "S"}
_NEVER_CHANNEL = {"t", "T", "z", "Z"}  # time and depth are never taken as channels


def axes_to_yxc(axes: Sequence[str], shape: Sequence[int], source: str) -> tuple[int, int, int | None]:
    """Find the row, column and (optional) channel axes among ``axes``; every other axis must have size 1.

    A generic extra axis (tifffile's 'I' or 'Q' for a page stack, not time or z) of size > 1 is taken as the
    channels when no channel axis is named. Returns the positions ``(y, x, c)``, ``c=None`` for one channel.
    """
    names = list(axes)
    found = {"y": None, "x": None, "c": None}
    extra = []
    for i, name in enumerate(names):
        key = "y" if name in _ROW else "x" if name in _COL else "c" if name in _CHANNEL else None
        if key is not None and found[key] is None:
            found[key] = i
        elif shape[i] != 1:
            extra.append(i)
    if found["c"] is None and len(extra) == 1 and names[extra[0]] not in _NEVER_CHANNEL:
        found["c"] = extra.pop()
    if found["y"] is None or found["x"] is None or extra:
        described = ", ".join(f"{n}={s}" for n, s in zip(names, shape))
        raise InputError(
            f"{source} has axes ({described}); expected a 2-D image with an optional channel axis (other axes such "
            "as time or z must have size 1); select one plane and save it as its own image"
        )
    return found["y"], found["x"], found["c"]


class ChannelsLastView:
    """Read-only lazy (H, W, C) view of ``array`` (anything sliceable to numpy: zarr array, tifffile zarr store).

    ``view[y0:y1, x0:x1]`` -> numpy (y1-y0, x1-x0, C); ``view[y0:y1, x0:x1, c]`` also works. Integers drop the axis
    as numpy does. ``np.asarray(view)`` reads everything (only for small images).
    """

    def __init__(
        self,
        array: Any,
        axes: Sequence[str],
        source: str,
        *,
        closer: Callable[[], None] | None = None,
        reopen: Callable[[], Any] | None = None,
    ) -> None:
        self._array = array
        self._reopen = reopen  # a picklable call that opens the file again (e.g. functools.partial(open_tiff, path))
        self._y, self._x, self._c = axes_to_yxc(axes, array.shape, source)
        # closes the file even if the caller forgets, when the view is garbage-collected
        self._finalizer = weakref.finalize(self, closer) if closer is not None else None
        self.source = source
        channels = 1 if self._c is None else array.shape[self._c]
        # the generic axis ('I', 'Q': a stack of pages) taken as the channels, if one was; a pixel conversion that
        # would drop one of them as "alpha" refuses such an image (fcnkit.inference.inputs)
        self.pages_as_channels = axes[self._c] if self._c is not None and axes[self._c] not in _CHANNEL else None
        self.shape = (array.shape[self._y], array.shape[self._x], channels)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ChannelsLastView({self.source!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key) or len(key) > 3:
            raise IndexError(f"index the image as img[y0:y1, x0:x1] or img[y0:y1, x0:x1, c]; got {key!r}")
        key = key + (slice(None),) * (3 - len(key))
        wanted = {self._y: ("y", key[0]), self._x: ("x", key[1])}
        if self._c is not None:
            wanted[self._c] = ("c", key[2])
        index, kept = [], []
        for axis in range(len(self._array.shape)):
            if axis in wanted:
                name, k = wanted[axis]
                index.append(k)
                if not isinstance(k, (int, np.integer)):
                    kept.append(name)
            else:
                index.append(0)  # a singleton axis such as t or z
        try:
            data = np.asarray(self._array[tuple(index)])
        except MemoryError:
            raise
        except Exception as exc:  # a codec, zlib or I/O error: the bytes under this window are damaged or missing
            raise InputError(
                f"{self.source}: {_region(key[0], 'rows')}, {_region(key[1], 'cols')} cannot be read "
                f"({type(exc).__name__}: {exc}); the file is corrupted or truncated there; restore it (copy or download "
                "it again) and run the same command with --resume"
            ) from exc
        order = [kept.index(n) for n in ("y", "x", "c") if n in kept]
        data = data.transpose(order)
        if self._c is None:
            data = data[..., np.newaxis][..., key[2]]  # give the single channel its axis, then apply the c index
        return data

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:, :]
        return data if dtype is None else data.astype(dtype)

    def __reduce__(self) -> tuple:
        # pickles as the call that opens it, so dask workers reopen the file instead of receiving an open handle
        if self._reopen is None:
            raise TypeError(f"{self!r} was not opened from a file, so it cannot be pickled; pickle its array instead")
        return (_call, (self._reopen,))

    def close(self) -> None:
        """Release the open file behind the view (TIFF); a no-op for zarr."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> ChannelsLastView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _region(index: Any, name: str) -> str:
    """'rows 64:128' for a slice or an integer index, in the image's own coordinates."""
    if isinstance(index, slice):
        start = "" if index.start is None else index.start
        stop = "" if index.stop is None else index.stop
        return f"{name} {start}:{stop}"
    return f"{name} {index}"


def _call(opener: Callable[[], Any]) -> Any:
    return opener()
