"""``fcnkit predict``: exact tiled inference of a checkpoint on images of any size, streamed to disk, resumable.

One input: ``--out`` is the output file and its suffix picks the format (``.png``, ``.zarr``, ``.ome.zarr``,
``.tif``); an existing ``.zarr`` store there is a previous result (refused, replaced with ``--overwrite``, continued
with ``--resume``), never a folder to write into. Several inputs (or an ``--out`` that is an existing plain folder or
ends with ``/``): ``--out`` is a folder and each input ``NAME.ext`` gives ``NAME`` + a suffix there: ``--format``
if given, else ``FOLDER_RULE``.
Output tiles are aligned to the storage chunks, so a killed run resumed with ``--resume`` rewrites no finished chunk.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "predict labels, probabilities or an overlay for images of any size, tile by tile, exactly"
EXAMPLE = """
fcnkit predict --checkpoint runs/unet/best.pt slide.tif --out slide-labels.ome.zarr
fcnkit predict --checkpoint runs/unet/best.pt a.png b.png --out results/ --output overlay
fcnkit predict --checkpoint best.pt slide.tif --out labels.ome.zarr --memory-limit 2GB --resume
"""

OUTPUTS = ("labels", "probs", "logits", "overlay")
STOP_UNIT = "tile"  # SIGINT/SIGTERM finish the tiles in flight, then stop (fcnkit.signals)
FOLDER_RULE = ("a PNG for overlays and for labels of PNG/JPEG inputs, an OME-Zarr for the rest (TIFF and zarr "
               "inputs, probabilities, logits)")
_MAX_CHUNK = 1024  # output chunk side: large enough for throughput, small enough for viewers and pyramids
_OVERLAY_ALPHA = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a .pt checkpoint written by `fcnkit train`, a .safetensors export, or any "
                             ".onnx model or .pt2 torch.export program")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images: PNG, JPEG, TIFF/BigTIFF, .zarr, .ome.zarr")
    parser.add_argument("--out", required=True,
                        help="output file for one input (its suffix picks the format: .png, .zarr, .ome.zarr, .tif), "
                             f"or a folder for several inputs; in a folder each input gets {FOLDER_RULE}")
    parser.add_argument("--output", choices=OUTPUTS, default="labels",
                        help="labels (default), probs or logits (float32 per class), overlay (the image with each "
                             "class's colour blended in, class 0 (background) left as it is, and a legend, as RGB "
                             "PNG, TIFF or OME-Zarr)")
    parser.add_argument("--format", dest="suffix", metavar="SUFFIX",
                        help="suffix of every output in an --out folder: .png, .zarr, .ome.zarr or .tif "
                             "(default: per input, see --out)")
    parser.add_argument("--tile", type=int, help="tile side in pixels (default: the least work within --memory-limit)")
    parser.add_argument("--memory-limit",
                        help="memory for the tiles, e.g. 4GB (default 1GB on CPU, at most half of the available "
                             "memory: peak RSS stays below ~2 GiB; more gives larger tiles, less halo work)")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default: what fits)")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                        help="fp32 (default, exact), bf16 (faster where the CPU/GPU has bf16 units; outputs stay "
                             "float32), auto (bf16 where native)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run, skipping finished tiles")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on a dask cluster: tcp://HOST:PORT, or local:N for N local worker processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def check_tiling_flags(args: argparse.Namespace, *names: str) -> None:
    """The tiling flags ``names`` (positive numbers when given) and ``--memory-limit``, checked before anything
    loads, each error under the flag's own name (``predict`` and ``heatmap``)."""
    from fcnkit.errors import InputError
    from fcnkit.inference.plan import parse_memory

    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag}: expected a positive number, found {value}; leave it out to choose it from "
                             f"memory.")
    if args.memory_limit is not None:
        parse_memory(args.memory_limit, name="--memory-limit")


def run(args: argparse.Namespace) -> int:
    from fcnkit.loading import load_model
    from fcnkit.errors import InputError
    from fcnkit.signals import Interrupted

    check_tiling_flags(args, "tile", "batch_size")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pass one of them.")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.checkpoint, map_location="cpu")
    if getattr(model, "output_kind", "dense") == "classifier":
        h, w = getattr(model, "input_size", None) or ("H", "W")
        raise InputError(f"--checkpoint {args.checkpoint}: a window classifier (one class per {h}x{w} window), not "
                         f"a model of images; make it a heat-map FCN with `fcnkit convert --checkpoint "
                         f"{args.checkpoint} --out FCN.pt` and predict with FCN.pt, or draw its maps with `fcnkit "
                         f"heatmap --checkpoint {args.checkpoint} IMAGE`.")
    targets = _targets([Path(p) for p in args.inputs], Path(args.out), args.out.endswith(("/", "\\")),
                       args.output, args.suffix)
    _check_inputs(targets)
    args.client = _distributed().connect(args.scheduler) if args.scheduler else None  # one cluster for all inputs
    try:
        for finished, (source, target) in enumerate(targets):
            try:
                _predict_one(model, source, target, args)
            except Interrupted as exc:
                if len(targets) > 1:
                    exc.record(f"{finished} of {len(targets)} outputs were complete before", resumable=finished > 0)
                raise
            except InputError as exc:
                # tiling's errors say "image …" (it does not know file names): say which file instead
                message = str(exc)
                if not message.startswith("image ") or str(source) in message:
                    raise
                raise type(exc)(f"{source} {message[len('image '):]}") from exc
    finally:
        if args.client is not None:
            _distributed().close(args.client)
    return 0


def _targets(inputs: list[Path], out: Path, folder_hint: bool, output: str, suffix: str | None
             ) -> list[tuple[Path, Path]]:
    """``(input, output path)`` pairs: ``--out`` itself for one input, else ``folder/stem + suffix``."""
    from fcnkit.errors import InputError

    store = _is_store(out)
    if len(inputs) == 1 and not folder_hint and (store or not out.is_dir()):
        if suffix is not None:
            raise InputError(f"--format {suffix} applies to an --out folder; for one input the suffix of --out "
                             f"({out.name}) decides the format, so leave --format out.")
        return [(inputs[0], out)]
    if len(inputs) == 1 and not folder_hint and _output_suffix(out):  # an existing folder named like a file
        raise InputError(f"--out {out}: an existing folder, named like a {_output_suffix(out)} file; to write into "
                         f"it end --out with a slash ({out}/), or pass another name for the output file.")
    if store or out.exists() and not out.is_dir() or _output_suffix(out) and not folder_hint:
        what = "an existing zarr store" if store else "a file" if out.exists() else f"a {_output_suffix(out)} file name"
        count = f"{len(inputs)} inputs" if len(inputs) > 1 else "a folder target (trailing /)"
        raise InputError(f"--out {out}: expected a folder for {count}, found {what}; pass a folder such as "
                         f"{out.parent / out.name.split('.')[0]}/ and each input gets its own output inside it.")
    if suffix is not None and not suffix.startswith("."):
        suffix = "." + suffix
    pairs, seen = [], {}
    for path in inputs:
        stem = path.name
        for ext in (".ome.zarr", ".ome.tif", ".ome.tiff", *path.suffixes[-1:]):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        target = out / (stem + (suffix or _default_suffix(path, output)))
        if target in seen:
            raise InputError(f"inputs {seen[target]} and {path} would both write {target}; rename one of them.")
        seen[target] = path
        pairs.append((path, target))
    return pairs


def _check_inputs(targets: list[tuple[Path, Path]]) -> None:
    """Before any work: every input is there, and no output would replace an input."""
    from fcnkit.errors import InputError

    sources = {source.resolve(): source for source, _ in targets}
    for source, target in targets:
        if not source.exists():
            raise InputError(f"input {source} does not exist; check the path and its spelling (nothing was "
                             f"written).")
        if target.resolve() in sources:
            raise InputError(f"--out {target} is the input {sources[target.resolve()]}: writing it would replace the "
                             f"image; choose another --out.")


def _default_suffix(source: Path, output: str) -> str:
    """The output suffix for ``source`` in an --out folder (``FOLDER_RULE``): a result like its input."""
    if output == "overlay" or output == "labels" and source.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return ".png"
    return ".ome.zarr"


def _output_suffix(path: Path) -> str | None:
    """The output suffix ``path`` ends with (``.ome.zarr``, ``.png``, ...), or None for a folder-like name."""
    name = path.name.lower()
    return next((s for s in (".ome.zarr", ".zarr", ".png", ".tif", ".tiff") if name.endswith(s)), None)


def _is_store(path: Path) -> bool:
    """True for an existing zarr store (a previous result), which is a file to replace, not a folder to fill."""
    return path.is_dir() and (path.name.lower().endswith(".zarr") or
                              any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")))


def _predict_one(model: Any, source: Path, target: Path, args: argparse.Namespace) -> None:
    from fcnkit.errors import OutputError
    from fcnkit.io import create_output, open_image, output_status
    from fcnkit.io.outputs import output_format
    from fcnkit.io.reading import output_metadata
    from fcnkit.inference.tiled import plan_prediction
    from fcnkit.signals import on_interrupt

    image = _adapted(open_image(source), model, source)
    output = "labels" if args.output == "overlay" else args.output
    identity = {"model": _model_digest(model), "input": _input_key(source, image), "output": args.output}
    if args.resume and output_status(target) == "complete":
        stored = (output_metadata(target) or {}).get("identity")
        if stored != identity:
            keys = [k for k in identity if not isinstance(stored, dict) or stored.get(k) != identity[k]]
            record = ("it records " + ", ".join(f"{k} {v}" for k, v in stored.items()) if isinstance(stored, dict)
                      else "it records none")
            raise OutputError(f"--resume: {target} is complete, but from another {' and '.join(keys)} ({record}); "
                              f"pass --overwrite to compute it again, or choose another --out.")
        if not args.quiet:
            print(f"{target}: already complete, skipped")
        return
    tile = args.tile if args.tile is not None else _previous_tile(target) if args.resume else None
    # planned once: the output's chunks, the journal and the computation all follow this plan
    min_tiles = _distributed().min_tiles(args.client) if args.client is not None else 1
    plan = plan_prediction(model, image, tile=tile, output=output, batch_size=args.batch_size, device=args.device,
                           memory_limit=args.memory_limit, precision=args.precision, min_tiles=min_tiles)
    meta = getattr(model, "fcnkit_meta", {}) or {}
    palette = meta.get("palette")
    if args.output == "overlay":
        _write_overlay(model, image, target, plan, palette, args, identity)
        return
    chunks = tuple(_chunk(side // plan.stride) for side in plan.tile)
    kind = "labels" if output == "labels" else "image"
    # tile ids are the same in this process and on any cluster: a run resumes on a restarted cluster or without one
    plan_key = f"tile={plan.tile[0]}x{plan.tile[1]}" + (f";precision={plan.precision}" if plan.precision != "fp32"
                                                        else "")
    started = time.perf_counter()
    with create_output(target, plan.shape, plan.dtype, chunks=chunks, overwrite=args.overwrite, resume=args.resume,
                       # probabilities and logits in OME-Zarr: each class's channel shown in its colour
                       kind=kind, palette=palette if kind == "labels" or output_format(target) == "ome-zarr" else None,
                       metadata={"source": source.name, "output": output, "class_names": meta.get("class_names")},
                       plan_key=plan_key, identity=identity) as out, on_interrupt(lambda: _saved(out, plan, args)):
        resumed = len(getattr(out, "done", ()) or ())  # tiles an earlier run finished: not computed now
        _compute(model, image, out, plan, output, args)
    if not args.quiet:
        seconds = time.perf_counter() - started
        n = len(plan.tiles)
        # the speed of this run: the image's pixels in the share of its tiles this run computed
        megapixels = image.shape[0] * image.shape[1] / 1e6 * (n - resumed) / n
        done_before = f", {resumed} done by an earlier run" if resumed else ""
        print(f"{target}: {plan.shape[0]}×{plan.shape[1]} {output}, {n} tile{'s' if n != 1 else ''} of "
              f"{plan.tile[0]}×{plan.tile[1]} (halo {plan.halo}, {plan.overhead:.2f}× work{done_before}), "
              f"{megapixels / seconds:.2f} MP/s")


_DIGESTS: dict[int, tuple[Any, str]] = {}


def _model_digest(model: Any) -> str:
    """A short digest of the model's spec, weights and (for ONNX and .pt2 models) file: which model computed an
    output, so that --resume never mixes two models' tiles (once per model and command)."""
    import hashlib
    import json

    import torch

    cached = _DIGESTS.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    digest = hashlib.blake2b(digest_size=8)
    spec = getattr(model, "fcnkit_spec", None) or {"class": type(model).__name__}
    digest.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if spec.get("format") in ("onnx", "pt2"):
        digest.update(Path(spec["path"]).read_bytes())
    _DIGESTS[id(model)] = (model, digest.hexdigest())
    return _DIGESTS[id(model)][1]


def _input_key(source: Path, image: Any) -> str:
    """Which input an output was computed from: its name, the image's shape and dtype, and for a file its size in
    bytes (a zarr store, a folder of many chunks, goes by name, shape and dtype)."""
    size = f":{source.stat().st_size}" if source.is_file() else ""
    return f"{source.name}{size}:{'x'.join(map(str, image.shape))}:{np.dtype(image.dtype).str}"


def _saved(out: Any, plan: Any, args: argparse.Namespace) -> str:
    """What an interrupted prediction leaves: its finished tiles, journaled beside the partial output."""
    from fcnkit.io.outputs import journal_path, partial_path

    count = f"{len(out.done)} finished blocks" if args.scheduler else f"{len(out.done)} of {len(plan.tiles)} tiles"
    return f"{count} of {out.path} are saved in {partial_path(out.path)} (journal {journal_path(out.path).name})"


def _adapted(image: Any, model: Any, source: Path) -> Any:
    """``image`` as the model takes it, converted window by window by the one pixel rule of the API
    (:mod:`fcnkit.io.pixels`: grey repeated to RGB, alpha dropped, 16-bit scaled to 0-255); a note on stderr says
    what changed. Any other channel mismatch is left for tiling to refuse."""
    from fcnkit.inference.inputs import conversion_of, model_input

    done = conversion_of(model, image).notes()
    if done:
        print(f"fcnkit: note: {source}: {', '.join(done)}, as the model expects.", file=sys.stderr)
    return model_input(model, image)


def _compute(model: Any, image: Any, out: Any, plan: Any, output: str, args: argparse.Namespace) -> None:
    from fcnkit.inference.tiled import predict_tiled

    if args.client is None:
        predict_tiled(model, image, plan=plan, output=output, out=out, progress=not args.quiet)
        return
    distributed = _distributed()
    result = distributed.predict_dask(model, image, output=output, plan=plan, client=args.client)
    distributed.predict_into(result, out, client=args.client, progress=not args.quiet)


def _distributed() -> Any:
    from fcnkit.errors import FcnkitError

    try:
        import fcnkit.inference.dask as distributed
    except ImportError as exc:
        raise FcnkitError(f"--scheduler needs fcnkit.inference.dask with dask and distributed installed ({exc}); "
                          f"install fcnkit[distributed] or leave --scheduler out.") from exc
    if not all(hasattr(distributed, name) for name in ("connect", "predict_dask", "predict_into", "close")):
        raise FcnkitError("--scheduler is not available in this fcnkit build (fcnkit.inference.dask lacks "
                          "predict_dask/predict_into); leave --scheduler out to predict in this process.")
    return distributed


def _chunk(side: int) -> int:
    """The largest divisor of the tile side up to ``_MAX_CHUNK``: chunks then never straddle two tiles."""
    return max(d for d in range(1, min(side, _MAX_CHUNK) + 1) if side % d == 0)


def _previous_tile(target: Path) -> tuple[int, int] | None:
    """The tile of an interrupted run (from its journal), so that a resume without --tile uses the same plan."""
    import json

    from fcnkit.io.outputs import journal_path

    path = journal_path(target)
    if not path.exists():
        return None
    try:
        header = json.loads(path.read_text().split("\n", 1)[0])
        tile = dict(part.split("=", 1) for part in str(header.get("plan", "")).split(";") if "=" in part)["tile"]
        height, width = (int(v) for v in tile.split("x"))
    except (ValueError, KeyError):
        return None  # create_output then explains what does not match
    return height, width


def _on_the_image(grid: np.ndarray, model: Any, stride: int, height: int, width: int) -> np.ndarray:
    """A model's labels placed on the image's pixels: a dense model's as they are; a heat-map grid's cell (i, j)
    over the stride × stride block at the centre of its window (a convolutionalized classifier's window starts at
    (stride·i, stride·j)), and -1 where no window is centred (the image's edges)."""
    window = getattr(model, "window", None)
    oy, ox = ((w - stride) // 2 for w in window) if window is not None else (0, 0)
    block = np.repeat(np.repeat(grid, stride, axis=0), stride, axis=1)
    h, w = max(0, min(block.shape[0], height - oy)), max(0, min(block.shape[1], width - ox))
    labels = np.full((height, width), -1, np.int64)
    labels[oy:oy + h, ox:ox + w] = block[:h, :w]
    return labels


def _write_overlay(model: Any, image: Any, target: Path, plan: Any, palette: Any, args: argparse.Namespace,
                   identity: dict) -> None:
    """The image with each pixel's class colour blended in (50 %; class 0, the background, and the edges a heat-map
    grid does not cover are left as they are) and a legend strip below it (colour and name of each class shown),
    written as an RGB PNG or TIFF."""
    from fcnkit.data import voc_palette
    from fcnkit.errors import InputError
    from fcnkit.io import create_output
    from fcnkit.io.pixels import display_rgb
    from fcnkit.inference.tiled import predict_tiled
    from fcnkit.reporting.legend import legend_strip

    height, width = image.shape[:2]
    if height * width > 64e6:
        raise InputError(f"--output overlay builds the whole {height}×{width} picture in memory; use --output labels "
                         f"(e.g. to .ome.zarr) for images above 64 megapixels.")
    grid = predict_tiled(model, image, plan=plan, output="labels", progress=not args.quiet)
    labels = _on_the_image(grid, model, plan.stride, height, width)  # -1 where no window is centred
    colours = np.asarray(palette if palette is not None else voc_palette(256), np.uint8)
    colours = np.concatenate([colours, np.zeros((max(0, int(labels.max()) + 1 - len(colours)), 3), np.uint8)])
    picture = display_rgb(image[0:height, 0:width])
    blended = picture.astype(np.float64)
    shown = labels > 0  # class 0 is the background, left as it is (as in OME-Zarr label images and the report)
    blended[shown] = (1 - _OVERLAY_ALPHA) * picture[shown] + _OVERLAY_ALPHA * colours[labels[shown]]
    names = (getattr(model, "fcnkit_meta", None) or {}).get("class_names") or []
    present = np.unique(labels[shown]).tolist()  # the legend lists the classes the picture shows
    legend = legend_strip(width, [(names[k] if k < len(names) else f"class {k}", colours[k]) for k in present])
    with create_output(target, (height + len(legend), width, 3), np.uint8, overwrite=args.overwrite or args.resume,
                       kind="image", metadata={"class_names": names or None, "legend_rows": len(legend),
                                               "identity": identity}) as out:
        out[0:height, 0:width] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        out[height:, 0:width] = legend
    if not args.quiet:
        print(f"{target}: overlay of {height}×{width} labels")
