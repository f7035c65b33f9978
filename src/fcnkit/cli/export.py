"""``fcnkit export``: a trained model as ONNX, TorchScript or a torch.export program (any H x W), or as safetensors
weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnkit.errors import InputError, OutputError

HELP = ("export a checkpoint as ONNX, TorchScript or a torch.export program (.pt2; any input size) or safetensors "
        "(weights + model spec)")
EXAMPLE = """\
fcnkit export --checkpoint runs/scenes/best.pt --format onnx --out fcn8s.onnx
fcnkit export --checkpoint runs/scenes/best.pt --format torchscript --out fcn8s.ts --size 96 96
fcnkit export --checkpoint runs/scenes/best.pt --format pt2 --out fcn8s.pt2
fcnkit export --checkpoint runs/scenes/best.pt --format safetensors --out fcn8s.safetensors"""

FORMATS = ("onnx", "torchscript", "pt2", "safetensors")
# fcnkit (and onnxruntime, torch.export, safetensors) tell these formats by the suffix; TorchScript has none of its own
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a .pt checkpoint written by `fcnkit train`, a .safetensors export, an .onnx model or a "
                             ".pt2 torch.export program")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="file format to write (pt2: torch.export.save, for torch.export.load)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--size", nargs=2, type=int, default=(64, 64), metavar=("H", "W"),
                        help="example input size used while exporting (default 64 64; the file takes any size)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")


def check_suffix(out: Path, fmt: str) -> None:
    """Refuse an ``--out`` whose suffix names another format than ``--format`` (an ONNX file named .pt2 is then
    read as a torch.export archive, and refused as a broken one)."""
    found, wanted = out.suffix.lower(), SUFFIXES.get(fmt)
    if found == wanted or (wanted is None and found not in SUFFIXES.values()):
        return
    other = next((name for name, suffix in SUFFIXES.items() if suffix == found), None)
    instead = f" (or pass --format {other} to write a {found} file)" if other else ""
    expected = (f"a name ending in {wanted}" if wanted else
                f"a name not ending in {', '.join(SUFFIXES.values())}, which name the other formats")
    raise InputError(f"--out {out}: --format {fmt} expects {expected}, found {found or 'no suffix'}; name it "
                     f"{out.with_suffix(wanted or '.ts')}{instead}.")


def run(args: argparse.Namespace) -> int:
    from fcnkit import export

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise OutputError(f"--out '{out}': expected a new file, found an existing "
                          f"{'folder' if out.is_dir() else 'file'}; choose another path or pass --overwrite.")
    if min(args.size) < 1:
        raise InputError(f"--size: expected a positive height and width, found {args.size[0]} {args.size[1]}; "
                         f"e.g. --size 64 64.")
    check_suffix(out, args.format)
    from fcnkit.loading import load_model

    model = load_model(args.checkpoint)
    in_channels = int(getattr(model, "fcnkit_spec", {}).get("in_channels", 3))
    if args.format == "safetensors":
        export.export_safetensors(model, out, overwrite=args.overwrite)
        print(f"wrote {out} (weights and model spec; load with fcnkit.export.load_safetensors)")
        return 0
    if args.format == "onnx":
        worst = export.export_onnx(model, out, in_channels=in_channels, sample_size=tuple(args.size),
                                   opset=args.opset, overwrite=args.overwrite)
    elif args.format == "pt2":
        worst = export.export_program(model, out, in_channels=in_channels, sample_size=tuple(args.size),
                                      overwrite=args.overwrite)
    else:
        worst = export.export_torchscript(model, out, in_channels=in_channels, sample_size=tuple(args.size),
                                          overwrite=args.overwrite)
    print(f"wrote {out} ({args.format}; checked against PyTorch at three sizes, max |difference| {worst:.2g})")
    return 0
