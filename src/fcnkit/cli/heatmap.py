"""``fcnkit heatmap``: where does a class appear in an image? One pass of a convolutionalized classifier."""

from __future__ import annotations

import argparse

HELP = "draw a class heat map of an image with a classifier (convolutionalized on the fly) or its FCN checkpoint"
EXAMPLE = """
fcnkit heatmap --checkpoint runs/digits/best.pt scene.png --out heat.png --class 3
fcnkit heatmap --checkpoint runs/digits/fcn.pt scene.png --out heat.png      # the most confident class
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a classifier or `fcnkit convert` .pt file")
    parser.add_argument("input", metavar="INPUT", help="the image (PNG, JPEG, TIFF, ...)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--class", dest="class_", metavar="K",
                        help="class index or name (default: the class with the highest probability anywhere, "
                             "other than 'background')")


def _class_index(choice: str | None, names: list[str], probs) -> int:
    from fcnkit.errors import InputError

    if choice is None:
        peaks = probs.amax(dim=(1, 2))  # (K,)
        if len(names) > 1 and names[0] == "background":
            peaks[0] = -1.0
        return int(peaks.argmax())
    if choice in names:
        return names.index(choice)
    if choice.lstrip("-").isdigit() and 0 <= int(choice) < len(names):
        return int(choice)
    raise InputError(f"--class: expected a class index 0-{len(names) - 1} or one of {', '.join(names)}, got "
                     f"{choice!r}.")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from fcnkit.loading import load_model
    from fcnkit.errors import InputError
    from fcnkit.io import read_image
    from fcnkit.io.atomic import check_target
    from fcnkit.reporting.pictures import class_scores, heatmap

    if not args.out.lower().endswith(".png"):
        raise InputError(f"--out {args.out}: expected a path ending in .png, found another suffix; name the "
                         f"picture like heat.png.")
    check_target(args.out, overwrite=args.overwrite)
    model = load_model(args.checkpoint)
    image = read_image(args.input, mode="rgb")  # (H, W, 3) uint8
    if int(model.fcnkit_spec.get("in_channels", 3)) == 1:
        image = image.mean(axis=2, keepdims=True).astype(np.float32)
    logits, window, stride = class_scores(model, image)  # (K, H', W')
    if logits.shape[1] == 0 or logits.shape[2] == 0:
        raise InputError(f"{args.input} is {image.shape[0]}x{image.shape[1]} pixels, expected at least the "
                         f"classifier's {window[0]}x{window[1]} window; use a larger image or a classifier trained "
                         f"on smaller windows.")
    probs = torch.softmax(logits, dim=0)
    names = model.fcnkit_meta["class_names"] or [str(k) for k in range(logits.shape[0])]
    k = _class_index(args.class_, names, probs)
    heatmap(logits, image, class_index=k, window=window, stride=stride, out=args.out, label=names[k])
    print(f"wrote {args.out}: class {k} ({names[k]}), peak probability {probs[k].max().item():.3f}, "
          f"{logits.shape[1]}x{logits.shape[2]} windows of {window[0]}x{window[1]} at stride {stride[0]}")
    return 0
