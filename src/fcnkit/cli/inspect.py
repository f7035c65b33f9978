"""``fcnkit inspect``: a model's layer table, geometry, parameters and FLOPs per megapixel."""

from __future__ import annotations

import argparse
import json

from fcnkit.errors import InputError

_FILES = (".pt", ".pth", ".safetensors", ".onnx", ".pt2")
HELP = "show a model's layers (output shape and parameters at a size), geometry and FLOPs per megapixel"
EXAMPLE = """\
fcnkit inspect fcn8s --size 256 256 --num-classes 21
fcnkit inspect unet --width 0.25 --json
fcnkit inspect --checkpoint runs/scenes/best.pt --size 512 512"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="a registered model name (see `fcnkit.list_models()`)")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="inspect the model in this file instead: a .pt checkpoint, a .safetensors export, an "
                             ".onnx model or a .pt2 torch.export program")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="input size to run at (default 256 256, or a classifier's window)")
    parser.add_argument("--num-classes", type=int, default=21, metavar="K", help="classes for MODEL (default 21)")
    parser.add_argument("--width", type=float, metavar="W", help="channel multiplier for MODEL (default: the model's)")
    parser.add_argument("--in-channels", type=int, default=3, metavar="C", help="input channels for MODEL (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _load(args: argparse.Namespace):
    if (args.model is None) == (args.checkpoint is None):
        raise InputError("fcnkit inspect: expected exactly one of MODEL or --checkpoint CKPT, found "
                         f"{'both' if args.model else 'neither'}; e.g. `fcnkit inspect fcn8s`.")
    if args.checkpoint is not None:
        from fcnkit.loading import load_model

        return load_model(args.checkpoint)
    from pathlib import Path

    from fcnkit.models import build_model, list_models

    if args.model not in list_models() and (Path(args.model).exists() or Path(args.model).suffix in _FILES):
        raise InputError(f"MODEL: '{args.model}' is a file, not a registered model name; to inspect a file, pass it "
                         f"as --checkpoint {args.model}")
    if args.num_classes < 1:
        raise InputError(f"--num-classes: expected a positive integer, found {args.num_classes}; e.g. --num-classes 21.")
    options = {} if args.width is None else {"width": args.width}
    return build_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels, **options)


def run(args: argparse.Namespace) -> int:
    from fcnkit.reporting.inspect import format_report, inspect_model

    model = _load(args)
    if args.size is not None and min(args.size) < 1:
        raise InputError(f"--size: expected a positive height and width, found {args.size[0]} {args.size[1]}; "
                         f"e.g. --size 256 256.")
    report = inspect_model(model, size=tuple(args.size) if args.size else None)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
