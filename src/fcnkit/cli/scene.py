"""``fcnkit scene``: write a built-in digit scene and its label mask, to try the other commands on."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a built-in digit scene (PNG, TIFF, zarr or OME-Zarr) and its label mask, e.g. as input for predict"
EXAMPLE = """
fcnkit scene --size 4096 --out scene.png               # also writes scene-labels.png (0 background, 1-10 digits)
fcnkit scene --size 8192 --out slide.tif --index 1     # a tiled TIFF, and slide-labels.tif
fcnkit scene --size 2048x3072 --out slide.zarr         # a zarr array (H, W, 3), and slide-labels.zarr
"""

SUFFIXES = (".png", ".tif", ".tiff", ".zarr", ".ome.zarr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True,
                        help="the image to write; its suffix picks the format: " + ", ".join(SUFFIXES))
    parser.add_argument("--size", default="1024",
                        help="side N or HxW in pixels (default 1024); the scene is drawn in memory, about 10 s for "
                             "4096x4096 on one CPU core")
    parser.add_argument("--labels", metavar="PATH",
                        help="where the label mask goes (default: --out with -labels before the suffix)")
    parser.add_argument("--split", choices=("train", "val"), default="val",
                        help="whose handwriting: val (default; digits no training scene uses) or train")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scene (default 0)")
    parser.add_argument("--index", type=int, default=0, help="which scene of the seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def labels_path(out: Path) -> Path:
    """``scene.png`` -> ``scene-labels.png``, ``slide.ome.zarr`` -> ``slide-labels.ome.zarr``."""
    name = out.name
    suffix = next((s for s in (".ome.zarr", *SUFFIXES) if name.lower().endswith(s)), out.suffix)
    return out.with_name(name[: len(name) - len(suffix)] + "-labels" + name[len(name) - len(suffix):])


def run(args: argparse.Namespace) -> int:
    from fcnkit.data.scenes import CLASS_NAMES, make_scene, parse_size
    from fcnkit.data.common import voc_palette
    from fcnkit.errors import DataError, InputError
    from fcnkit.io import create_output

    out = Path(args.out)
    if not out.name.lower().endswith(SUFFIXES):
        raise InputError(f"--out {out}: expected a name ending in {', '.join(SUFFIXES)}, found "
                         f"{out.suffix or 'no suffix'}; name the scene like scene.png or slide.tif.")
    labels = Path(args.labels) if args.labels else labels_path(out)
    if labels == out:
        raise InputError(f"--labels {labels} is the --out image itself; choose another path for the label mask.")
    if not labels.name.lower().endswith(SUFFIXES):
        raise InputError(f"--labels {labels}: expected a name ending in {', '.join(SUFFIXES)}, found "
                         f"{labels.suffix or 'no suffix'}; name the mask like scene-labels.png or leave --labels out.")
    try:
        size = parse_size(args.size, "--size")
    except DataError:
        raise InputError(f"--size: expected N or HxW with sides of at least 8 pixels, found {args.size!r}; pass "
                         f"e.g. --size 4096 or --size 2048x3072.") from None
    for flag, value in (("--seed", args.seed), ("--index", args.index)):
        if value < 0:
            raise InputError(f"{flag}: expected an integer >= 0, found {value}; pass e.g. {flag} 0.")
    # both targets are checked before either is written: a refused --labels must not leave the image behind
    for flag, path in (("--out", out), ("--labels" if args.labels else "--out", labels)):
        _check_target(path, flag, overwrite=args.overwrite)
    image, mask = make_scene(size, split=args.split, seed=args.seed, index=args.index)
    height, width = mask.shape
    with create_output(out, image.shape, image.dtype, kind="image", overwrite=args.overwrite,
                       metadata={"scene": {"split": args.split, "seed": args.seed, "index": args.index}}) as target:
        target[0:height, 0:width] = image
    names = list(CLASS_NAMES)
    with create_output(labels, mask.shape, mask.dtype, kind="labels", overwrite=args.overwrite,
                       palette=voc_palette(len(names)), metadata={"class_names": names}) as target:
        target[0:height, 0:width] = mask
    digits = int(((mask > 0) & (mask != 255)).sum())
    print(f"wrote {out} ({height}x{width} RGB) and {labels} (labels 0 background, 1-10 digits 0-9, 255 ignore; "
          f"{100 * digits / mask.size:.1f}% digit pixels)")
    return 0


def _check_target(path: Path, flag: str, *, overwrite: bool) -> None:
    """Refuse an existing target (without ``overwrite``) or one that cannot be written, before any drawing."""
    from fcnkit.errors import InputError
    from fcnkit.io.atomic import check_target
    from fcnkit.io.outputs import partial_path

    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it or choose another {flag}.")
    # a zarr store is a folder, which check_target refuses as a file target: probe where its new copy is written
    check_target(partial_path(path) if path.is_dir() else path, overwrite=True, flag=flag)
