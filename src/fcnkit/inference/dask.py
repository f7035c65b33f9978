"""Exact inference on a dask cluster, following the same tile plan as ``predict_tiled``.

``plan_prediction`` decides the tiles (regions, halos clipped at the image edge, valid padding and output stride,
the memory budget); each tile becomes one task that reads its input window from the dask array and runs the same
read/forward code as the in-process runner, and each output block of the returned dask array is one tile's output
region. So the result equals ``fcnkit.predict`` block for block, the output chunks are the plan's, and a resume
journal holds the same tile ids whether the tiles ran here or on a cluster.

The model is prepared once (:mod:`fcnkit.inference.model`) and is one task of the graph that every tile depends
on: it goes to the scheduler once and to each worker once, not into every task.

>>> import dask.array as da                                        # doctest: +SKIP
>>> labels = predict_dask(model, da.from_zarr("slide.zarr"), output="labels")
>>> labels.to_zarr("labels.zarr")
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcnkit.errors import InputError
from fcnkit.inference.inputs import conversion_of, model_input
from fcnkit.inference.kinds import check_output
from fcnkit.inference.model import prepare
from fcnkit.inference.plan import Tile
from fcnkit.inference.runner import forward_batch, read_batch
from fcnkit.inference.tiled import TilePlan, check_plan, plan_prediction
from fcnkit.progress import Progress
from fcnkit.signals import safe_point

TILES_PER_THREAD = 2  # on a cluster, at least this many tiles per worker thread when the image allows


@dataclasses.dataclass(frozen=True)
class _Payload:
    """What every tile task needs, sent to each worker once: the prepared network and how to feed it."""

    net: torch.nn.Module
    device: str
    dtype: torch.dtype
    conversion: Any  # fcnkit.io.pixels.PixelConversion for this image and model


def _run_tile(payload: _Payload, window: np.ndarray, tile: Tile, output: str) -> np.ndarray:
    """One planned tile on a worker: ``window`` is the image at ``tile.read``; returns the tile's output region."""
    (r0, r1), (c0, c1) = tile.read
    local = dataclasses.replace(tile, read=((0, r1 - r0), (0, c1 - c0)))
    window = payload.conversion.apply(np.asarray(window))
    x = read_batch(window, [local], torch.device(payload.device), payload.dtype)
    return forward_batch(payload.net, x, [local], output)[0]


def _as_dask(array: Any):
    import dask.array as da

    if isinstance(array, da.Array):
        return array
    if isinstance(array, (str, Path)):
        from fcnkit.io import open_image

        array = open_image(array)
    if not hasattr(array, "shape") or len(array.shape) not in (2, 3):
        raise InputError(f"predict_dask expected an (H, W, C) or (H, W) array, zarr path or dask array, got "
                         f"{type(array).__name__}; pass e.g. dask.array.from_zarr(path).")
    return da.from_array(array, chunks="auto" if not hasattr(array, "chunks") else array.chunks)


def _active_client(client: Any) -> Any:
    """``client``, else the distributed client this process already uses (if any)."""
    if client is not None:
        return client
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def min_tiles(client: Any) -> int:
    """How many tiles a plan for ``client``'s cluster should have at least: ``TILES_PER_THREAD`` per worker
    thread, so that every worker has work and a slow one does not leave the others idle at the end."""
    return TILES_PER_THREAD * max(1, sum(client.nthreads().values())) if client is not None else 1


def predict_dask(model: Any, array: Any, *, output: str = "logits", tile: int | tuple[int, int] | None = None,
                 chunk: int | None = None, halo: int | None = None, memory_limit: int | str | None = None,
                 allow_inexact: bool = False, precision: str | None = None, plan: TilePlan | None = None,
                 client: Any = None):
    """Whole-image-exact inference over a dask array; returns a lazy dask array.

    ``array``: a dask array, an array-like, or a path fcnkit can open, shaped (H, W, C) or (H, W), any chunking.
    ``tile`` (``chunk`` is the same), ``halo``, ``memory_limit``, ``allow_inexact`` and ``precision`` mean what they
    mean for ``predict_tiled``; ``plan`` (from ``plan_prediction``) replaces the first four. On a cluster the tile
    chosen from memory is small enough that every worker thread of ``client`` (default: the distributed client in
    use, if any) gets at least ``TILES_PER_THREAD`` tiles. Returns
    (H', W', K) float32 for logits/probs, (H', W') uint8 (int32 above 255 classes) for labels, equal to
    ``fcnkit.predict(model, array.compute(), output=output)``, chunked as the plan's tiles; ``result.fcnkit_plan``
    is the plan (``predict_into`` journals its tile ids).
    """
    import dask
    import dask.array as da

    check_output(output)
    if tile is not None and chunk is not None and tile != chunk:
        raise InputError(f"tile={tile!r} and chunk={chunk!r} name the same thing; pass one of them.")
    tile = tile if tile is not None else chunk
    x = _as_dask(array)
    client = _active_client(client)
    prepared = prepare(model, device=plan.device if plan is not None else None,
                       precision=precision if precision is not None or plan is None else plan.precision)
    image = model_input(prepared.source, x)  # the pixel rule; says once when the values look wrong
    if plan is None:
        plan = plan_prediction(prepared, image, tile=tile, halo=halo, output=output, memory_limit=memory_limit,
                               allow_inexact=allow_inexact, min_tiles=min_tiles(client))
    elif any(v is not None for v in (tile, halo, memory_limit)):
        raise InputError("plan= already fixes tile, halo and memory_limit; pass either plan= or those, not both.")
    else:
        check_plan(plan, prepared, image, output)
    payload = _Payload(net=prepared.net, device=str(prepared.device), dtype=prepared.dtype,
                       conversion=conversion_of(prepared.source, x))
    token = uuid.uuid4().hex
    # One task holds the model; every tile depends on it, so each worker receives it once. Not client.scatter:
    # scattered data has no recipe, and once the active memory manager has trimmed its replicas to one, a worker
    # killed mid-job loses it for good and the whole job is cancelled; a task is recomputed on another worker.
    model_ref = dask.delayed(payload, name=f"fcnkit-model-{token}", traverse=False)
    rows, cols = plan.grid
    channels = plan.shape[2:]
    blocks = []
    for i, height in enumerate(rows):
        row = []
        for j, width in enumerate(cols):
            t = plan.tiles[i * len(cols) + j]
            (r0, r1), (c0, c1) = t.read
            task = dask.delayed(_run_tile, pure=False)(model_ref, x[r0:r1, c0:c1], t, output,
                                                       dask_key_name=f"fcnkit-tile-{token}-{i}-{j}")
            block = da.from_delayed(task, shape=(height, width, *channels), dtype=plan.dtype)
            row.append([block] if channels else block)  # nest to the array's depth: da.block joins trailing axes
        blocks.append(row)
    result = da.block(blocks)
    result.fcnkit_plan = plan
    return result


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
    has a resume journal (``done``/``mark_done``), finished blocks are skipped and each is marked once written,
    by the plan's tile id (the same ids ``predict_tiled`` journals), so a run resumes on another cluster or none.
    """
    from distributed import as_completed

    plan = getattr(result, "fcnkit_plan", None)
    blocks = [(i, j) for i in range(result.numblocks[0]) for j in range(result.numblocks[1])]
    ids = [t.id for t in plan.tiles] if plan is not None and len(plan.tiles) == len(blocks) else \
        list(range(len(blocks)))
    done = set(getattr(out, "done", set()))
    offsets = [np.cumsum((0, *c)) for c in result.chunks[:2]]
    todo = [(ids[n], ij) for n, ij in enumerate(blocks) if ids[n] not in done]
    bar = Progress("fcnkit predict", total=len(blocks), initial=len(blocks) - len(todo), unit="tile") \
        if progress else None
    finished = len(blocks) - len(todo)

    def write(tile_id: int, ij: tuple[int, int], value: np.ndarray) -> None:
        nonlocal finished
        (i, j) = ij
        out[offsets[0][i] : offsets[0][i + 1], offsets[1][j] : offsets[1][j + 1]] = value
        if hasattr(out, "mark_done"):
            out.mark_done(tile_id)
        finished += 1
        if bar is not None:
            bar.update(finished)
        safe_point()  # after SIGINT/SIGTERM: stop once this block is written and journaled

    if client is None:
        for tile_id, ij in todo:
            write(tile_id, ij, result.blocks[ij].compute())
    else:
        futures = {client.compute(result.blocks[ij]): (tile_id, ij) for tile_id, ij in todo}
        for future in as_completed(futures):
            write(*futures[future], future.result())
            future.release()
    if bar is not None:
        bar.close()
