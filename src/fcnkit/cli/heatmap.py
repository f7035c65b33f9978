"""``fcnkit heatmap``: where does a class appear in an image? A convolutionalized classifier is an FCN, so it runs
through the same exact, memory-bounded tiled path as ``fcnkit predict`` (``--tile``, ``--memory-limit``,
``--device``)."""

from __future__ import annotations

import argparse

MAX_PICTURE_SIDE = 4096  # larger images are drawn subsampled by a whole factor

HELP = "draw a class heat map of an image with a classifier (convolutionalized on the fly) or its FCN checkpoint"
EXAMPLE = """
fcnkit heatmap --checkpoint runs/digits/best.pt scene.png --out heat.png --class 3
fcnkit heatmap --checkpoint runs/digits/fcn.pt scene.png --out heat.png      # the most confident class
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a classifier or `fcnkit convert` .pt file")
    parser.add_argument("input", metavar="INPUT", help="the image (PNG, JPEG, TIFF/BigTIFF, .zarr, .ome.zarr)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--class", dest="class_", metavar="K",
                        help="class name, or index when no name matches (so on the digit scenes --class 7 is the "
                             "digit 7, index 8; default: the class with the highest probability anywhere, other "
                             "than 'background')")
    parser.add_argument("--tile", type=int, help="tile side in pixels (default: the least work within --memory-limit)")
    parser.add_argument("--memory-limit",
                        help="memory for the tiles, e.g. 4GB (default 1GB on CPU, at most half of the available "
                             "memory; half of the free memory on a GPU)")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _class_index(choice: str | None, names: list[str], probs=None) -> int:
    """The index of ``--class`` among ``names``; without a choice, the class of the highest probability in
    ``probs`` (K, H', W') other than 'background'."""
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
    raise InputError(f"--class: expected a class index 0-{len(names) - 1} or one of {', '.join(names)}, found "
                     f"{choice!r}; pass one of those, or leave --class out for the most confident class.")


def run(args: argparse.Namespace) -> int:
    """The classifier, convolutionalized, runs tile by tile like ``fcnkit predict`` (exact, memory bounded by the
    tile); only the (K, H', W') probability grid and the picture are whole."""
    import numpy as np
    import torch

    from fcnkit.cli.predict import check_tiling_flags
    from fcnkit.convert import convolutionalize
    from fcnkit.errors import InputError
    from fcnkit.inference import plan_prediction, predict_tiled
    from fcnkit.inference.inputs import model_input
    from fcnkit.io import open_image
    from fcnkit.io.atomic import check_target
    from fcnkit.loading import load_model
    from fcnkit.reporting.pictures import heatmap

    if not args.out.lower().endswith(".png"):
        raise InputError(f"--out {args.out}: expected a path ending in .png, found another suffix; name the "
                         f"picture like heat.png.")
    check_tiling_flags(args, "tile")
    check_target(args.out, overwrite=args.overwrite)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint)
    names = (getattr(model, "fcnkit_meta", None) or {}).get("class_names")
    count = (getattr(model, "fcnkit_spec", None) or {}).get("num_classes")
    names = names or ([str(k) for k in range(int(count))] if count else None)
    # a --class the model does not have is refused before any tile runs
    k = _class_index(args.class_, names) if args.class_ is not None and names else None
    fcn = model if getattr(model, "output_kind", None) == "grid" else None
    if fcn is None:
        size = getattr(model, "input_size", None)
        if size is None:
            raise InputError(f"--checkpoint {args.checkpoint}: expected a classifier (with its input size) or a "
                             f"convolutionalized classifier, found a {type(model).__name__}; use `fcnkit predict` "
                             f"for a dense model.")
        fcn = convolutionalize(model, input_size=tuple(size),
                               in_channels=int(model.fcnkit_spec.get("in_channels", 3)))
    window, stride = tuple(fcn.window), tuple(fcn.stride)
    image = open_image(args.input)
    height, width = int(image.shape[0]), int(image.shape[1])
    if height < window[0] or width < window[1]:
        raise InputError(f"{args.input} is {height}x{width} pixels, expected at least the classifier's "
                         f"{window[0]}x{window[1]} window; use a larger image or a classifier trained on smaller "
                         f"windows.")
    adapted = model_input(fcn, image)
    plan = plan_prediction(fcn, adapted, tile=args.tile, output="probs", device=device,
                           memory_limit=args.memory_limit)
    probs = predict_tiled(fcn, adapted, plan=plan, output="probs",
                          progress=False if args.quiet else "fcnkit heatmap")  # (H', W', K)
    probs = torch.from_numpy(probs).permute(2, 0, 1)  # (K, H', W')
    names = names or [str(k) for k in range(probs.shape[0])]
    k = _class_index(args.class_, names, probs) if k is None else k
    picture, step = _picture(image)
    # outside=NaN: the edge band where no window is centred shows the image alone, as in the report's heat maps,
    # rather than the nearest window's value smeared to the border
    heatmap(probs, picture, class_index=k, window=(window[0] / step, window[1] / step),
            stride=(stride[0] / step, stride[1] / step), softmax=False, out=args.out, label=names[k],
            outside=np.nan)
    shown = "" if step == 1 else f", drawn at 1/{step} scale"
    tiles = f"{len(plan.tiles)} tile{'' if len(plan.tiles) == 1 else 's'}"
    print(f"wrote {args.out}: class {k} ({names[k]}), peak probability {probs[k].max().item():.3f}, "
          f"{probs.shape[1]}x{probs.shape[2]} windows of {window[0]}x{window[1]} at stride {stride[0]}, "
          f"{tiles} of {plan.tile[0]}x{plan.tile[1]}{shown}")
    return 0


def _picture(image) -> tuple[object, int]:
    """The image to draw under the heat map, subsampled by a whole ``step`` so its longer side is at most
    ``MAX_PICTURE_SIDE`` (a 6000x6000 picture is 100 MB of PNG and no clearer on a screen)."""
    import math

    import numpy as np

    step = max(1, math.ceil(max(image.shape[0], image.shape[1]) / MAX_PICTURE_SIDE))
    if step == 1:
        return np.asarray(image[0 : image.shape[0], 0 : image.shape[1]]), 1
    rows = []
    band = 256 * step  # read in row bands: memory stays one band plus the picture
    for y in range(0, image.shape[0], band):
        rows.append(np.asarray(image[y : min(y + band, image.shape[0]), 0 : image.shape[1]])[::step, ::step])
    return np.concatenate(rows, axis=0), step
