"""``fcnkit convert``: turn a classifier checkpoint into a fully convolutional (score grid) checkpoint."""

from __future__ import annotations

import argparse

HELP = "convolutionalize a classifier checkpoint: its Linear head becomes convolutions, it scores every window"
EXAMPLE = """
fcnkit convert --checkpoint runs/digits/best.pt --input-size 32 32 --out runs/digits/fcn.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a classifier .pt file written by `fcnkit train` (or its .safetensors export)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="the window size the classifier was trained on (default: the model's input_size)")
    parser.add_argument("--out", required=True, help="the FCN checkpoint to write (.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from fcnkit.checkpoint import save_checkpoint
    from fcnkit.convert import convolutionalize
    from fcnkit.errors import CheckpointError, InputError
    from fcnkit.io.atomic import check_target
    from fcnkit.loading import load_model

    if not args.out.lower().endswith((".pt", ".pth")):
        raise InputError(f"--out {args.out}: fcnkit convert writes a .pt checkpoint; name it with .pt (e.g. "
                         f"fcn.pt), then `fcnkit export` makes ONNX, .pt2 or safetensors files of it.")
    check_target(args.out, overwrite=args.overwrite)  # before any work, and before save_checkpoint's own mkdir
    classifier = load_model(args.checkpoint)
    if getattr(classifier, "output_kind", None) != "classifier":
        raise CheckpointError(f"--checkpoint {args.checkpoint}: expected a classifier checkpoint (N, K output), "
                              f"found a {getattr(classifier, 'output_kind', 'unknown')!r} model; convert a model "
                              f"trained as a classifier, e.g. digit_classifier.")
    trained = getattr(classifier, "input_size", None)
    if args.input_size is not None and trained is not None and tuple(args.input_size) != tuple(trained):
        raise InputError(f"--input-size {args.input_size[0]} {args.input_size[1]}: the classifier in "
                         f"{args.checkpoint} takes {trained[0]}x{trained[1]} windows; leave --input-size out (or "
                         f"pass {trained[0]} {trained[1]}).")
    size = args.input_size or trained
    if size is None:
        raise InputError(f"--input-size: the classifier in {args.checkpoint} does not state its window size; pass "
                         f"--input-size H W (the size it was trained on).")
    fcn = convolutionalize(classifier, input_size=tuple(size),
                           in_channels=int(classifier.fcnkit_spec.get("in_channels", 3)))
    meta = classifier.fcnkit_meta
    path = save_checkpoint(args.out, model=fcn, class_names=meta["class_names"], palette=meta["palette"],
                           metrics=meta["metrics"])
    print(f"wrote {path}: window {fcn.window[0]}x{fcn.window[1]}, stride {fcn.stride[0]}x{fcn.stride[1]}, "
          f"{fcn.num_classes} classes; an H x W image gives a ((H - {fcn.window[0]}) // {fcn.stride[0]} + 1) x "
          f"((W - {fcn.window[1]}) // {fcn.stride[1]} + 1) score grid")
    return 0
