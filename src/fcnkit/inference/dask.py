"""Exact inference on a dask cluster: the tiling rule of DESIGN.md, with dask chunks as the tiles.

The input is rechunked so that every chunk boundary is a multiple of the model's ``input_multiple`` D, each chunk
is extended by the halo h (itself a multiple of D) on every side that has a neighbour — never past the image edge —
and the model runs on the extended block exactly as :func:`fcnkit.predict` runs on a whole image. Keeping only the
chunk's own rows and columns then gives, block for block, the whole-image result.

The model is one task in the graph: each worker receives it once and reuses it for all its chunks.

>>> import dask.array as da                                        # doctest: +SKIP
>>> labels = predict_dask(model, da.from_zarr("slide.zarr"), output="labels")
>>> labels.to_zarr("labels.zarr")
"""

from __future__ import annotations

import functools
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fcnkit.errors import InputError, NotExactError

_OUTPUTS = ("logits", "probs", "labels")


def _aligned_chunks(size: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunk sizes along one axis: multiples of the (aligned) ``chunk``, the last one never thinner than the halo."""
    sizes = [chunk] * (size // chunk)
    if size % chunk:
        sizes.append(size % chunk)
    # dask's overlap needs every chunk at least as deep as the halo; fold a thin last chunk into its neighbour.
    if len(sizes) > 1 and sizes[-1] < halo:
        last = sizes.pop()
        sizes[-1] += last
    return tuple(sizes)


def _predict_block(block: np.ndarray, model, *, output: str, halo: int, stride: int, grid, block_id=None):
    from fcnkit.inference.tiled import predict

    bi, bj = block_id[:2]  # the output block id has no channel index for labels
    top = halo if bi > 0 else 0
    left = halo if bj > 0 else 0
    bottom = halo if bi < grid[0] - 1 else 0
    right = halo if bj < grid[1] - 1 else 0
    rows = block.shape[0] - top - bottom
    cols = block.shape[1] - left - right
    result = predict(model, block, output=output)
    y0, x0 = top // stride, left // stride
    return result[y0 : y0 + math.ceil(rows / stride), x0 : x0 + math.ceil(cols / stride)]


def _as_dask(array: Any):
    import dask.array as da

    if isinstance(array, da.Array):
        return array
    if isinstance(array, (str, Path)):
        from fcnkit.io import open_image

        array = open_image(array)
    if not hasattr(array, "shape") or len(array.shape) not in (2, 3):
        raise InputError(
            f"predict_dask expected an (H, W, C) or (H, W) array, zarr path or dask array, got {type(array).__name__}"
        )
    return da.from_array(array, chunks="auto" if not hasattr(array, "chunks") else array.chunks)


def predict_dask(
    model,
    array: Any,
    *,
    output: str = "logits",
    chunk: int | None = None,
    halo: int | None = None,
    in_channels: int | None = None,
    allow_inexact: bool = False,
):
    """Whole-image-exact inference over a dask array; returns a lazy dask array.

    ``array``: a dask array, an array-like, or a path fcnkit can open, shaped (H, W, C) or (H, W), any chunking
    (it is rechunked to chunks aligned to the model's input multiple). ``chunk`` is the aligned chunk side
    (default: about 1024 pixels). Returns (H', W', K) float32 for logits/probs, (H', W') uint8 (int32 above 255
    classes) for labels — equal to ``fcnkit.predict(model, array.compute(), output=output)``.
    """
    import dask
    import dask.array as da

    from fcnkit.geometry.analysis import analyze

    if output not in _OUTPUTS:
        raise InputError(f"output={output!r} is not one of {', '.join(_OUTPUTS)}")
    x = _as_dask(array)
    if x.ndim == 2:
        x = x[:, :, None]
    channels = in_channels or x.shape[2]
    geometry = analyze(model, in_channels=channels)
    if not geometry.local:
        if not allow_inexact:
            raise NotExactError(
                f"{geometry.nonlocal_reason}; pass allow_inexact=True to run it per chunk anyway (results will differ)"
            )
        import warnings

        warnings.warn(f"chunked inference is not exact: {geometry.nonlocal_reason}", stacklevel=2)
    multiple, stride = geometry.input_multiple, geometry.output_stride
    h = geometry.halo if halo is None else halo
    if h < 0:
        raise InputError(f"halo must be ≥ 0, got {h}")
    h = math.ceil(h / multiple) * multiple
    side = chunk if chunk is not None else 1024
    if side <= 0:
        raise InputError(f"chunk must be a positive number of pixels, got {side}")
    # Chunk boundaries on multiples of D (and of the stride), at least as deep as the halo.
    side = max(math.ceil(side / multiple) * multiple, h, multiple)
    height, width = x.shape[:2]
    chunks = (_aligned_chunks(height, side, h), _aligned_chunks(width, side, h), (x.shape[2],))
    x = x.rechunk(chunks)

    from fcnkit.inference.tiled import label_dtype, predict

    probe_side = max(multiple, stride)
    sample = predict(model, np.zeros((probe_side, probe_side, x.shape[2]), np.float32), output="logits")
    num_classes = sample.shape[-1]

    # An axis with a single chunk has no neighbour to borrow from.
    depth = {0: h if len(chunks[0]) > 1 else 0, 1: h if len(chunks[1]) > 1 else 0, 2: 0}
    extended = da.overlap.overlap(x, depth=depth, boundary="none") if any(depth.values()) else x
    model_task = dask.delayed(model, name=f"fcnkit-model-{uuid.uuid4().hex}", traverse=False)
    out_rows = tuple(math.ceil(c / stride) for c in chunks[0])
    out_cols = tuple(math.ceil(c / stride) for c in chunks[1])
    # Static arguments go in a partial: blockwise reserves keyword names such as `output` for itself.
    run = functools.partial(_predict_block, output=output, halo=h, stride=stride, grid=x.numblocks[:2])
    if output == "labels":
        return extended.map_blocks(
            run, model_task, dtype=label_dtype(num_classes), chunks=(out_rows, out_cols), drop_axis=2
        )
    return extended.map_blocks(run, model_task, dtype=np.float32, chunks=(out_rows, out_cols, (num_classes,)))


def connect(scheduler: str):
    """A dask ``Client`` for ``scheduler``: ``tcp://host:port`` (a running cluster) or ``local:N`` (N worker
    processes on 127.0.0.1, started here and closed with the client)."""
    from distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        count = scheduler.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--scheduler {scheduler!r}: expected local:N with N ≥ 1 worker processes, e.g. local:2")
        cluster = LocalCluster(
            n_workers=int(count), threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        client = Client(cluster)
        client._fcnkit_cluster = cluster  # closed together with the client in `close`
        return client
    if "://" not in scheduler:
        raise InputError(
            f"--scheduler {scheduler!r} is not an address: expected tcp://HOST:PORT of a running dask scheduler "
            "or local:N to start N local workers"
        )
    try:
        return Client(scheduler, timeout="10s")
    except OSError as exc:
        raise InputError(f"--scheduler {scheduler!r}: could not reach a dask scheduler there ({exc})") from exc


def close(client) -> None:
    """Close a client from :func:`connect`, and the local cluster it started, if any."""
    cluster = getattr(client, "_fcnkit_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def predict_into(result, out, *, client=None, progress: bool = False) -> None:
    """Compute the lazy ``result`` of :func:`predict_dask` block by block into ``out`` (any array-like, e.g. an
    ``fcnkit.io`` Output), on ``client``'s cluster or the local scheduler.

    Workers compute; this process writes each block as it arrives, so any writable target works. When ``out``
    has a resume journal (``done``/``mark_done``), finished blocks are skipped and each is marked once written.
    """
    from distributed import as_completed

    blocks = [(i, j) for i in range(result.numblocks[0]) for j in range(result.numblocks[1])]
    done = set(getattr(out, "done", set()))
    offsets = [np.cumsum((0, *c)) for c in result.chunks[:2]]
    todo = [(n, ij) for n, ij in enumerate(blocks) if n not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(blocks), initial=len(blocks) - len(todo), unit="chunk", desc="fcnkit predict")

    def write(n: int, ij: tuple[int, int], value: np.ndarray) -> None:
        (i, j) = ij
        out[offsets[0][i] : offsets[0][i + 1], offsets[1][j] : offsets[1][j + 1]] = value
        if hasattr(out, "mark_done"):
            out.mark_done(n)
        if bar is not None:
            bar.update(1)

    if client is None:
        for n, ij in todo:
            write(n, ij, result.blocks[ij].compute())
    else:
        futures = {client.compute(result.blocks[ij]): (n, ij) for n, ij in todo}
        for future in as_completed(futures):
            write(*futures[future], future.result())
            future.release()
    if bar is not None:
        bar.close()
