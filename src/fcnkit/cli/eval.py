"""``fcnkit eval``: the four FCN metrics of a checkpoint on a dataset, with a per-class IU table."""

from __future__ import annotations

import argparse
import json

HELP = "score a checkpoint: pixel accuracy, mean accuracy, mean IU, frequency-weighted IU, IU per class"
EXAMPLE = """
fcnkit eval --checkpoint runs/fcn8s/best.pt --data scenes
fcnkit eval --checkpoint runs/unet/best.pt --data voc:/data/VOC2012 --split val --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a .pt checkpoint written by `fcnkit train`, a .safetensors export, or any "
                             ".onnx model or .pt2 torch.export program")
    parser.add_argument("--data", required=True,
                        help="scenes | voc:ROOT | folder:ROOT (without ROOT/train and ROOT/val, the val split is every "
                             "5th image, the images training held out) | nuclei[:QUADRANT]")
    parser.add_argument("--split", choices=("train", "val"), default="val", help="which split (default val)")
    parser.add_argument("--num-classes", type=int,
                        help="number of classes, checked against the checkpoint (default: the checkpoint's)")
    parser.add_argument("--count", type=int, help="score only the first COUNT images (default: all)")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _fmt(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def run(args: argparse.Namespace) -> int:
    from fcnkit.errors import InputError
    from fcnkit.training.evaluate import evaluate_checkpoint

    if args.count is not None and args.count < 1:
        raise InputError(f"--count: expected a positive number of images, found {args.count}; leave it out to "
                         f"score every image.")
    result = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, num_classes=args.num_classes,
                                 count=args.count, device=args.device)
    if args.json:
        print(json.dumps(result))
        return 0
    unit = result["unit"] if result["images"] != 1 else result["unit"][:-1]
    print(f"{result['checkpoint']} on {result['data']} ({result['split']}, {result['images']} {unit})")
    accuracy = "window accuracy" if result["unit"] == "windows" else "pixel accuracy"
    for key, label in (("pixel_accuracy", accuracy), ("mean_accuracy", "mean accuracy"),
                       ("mean_iu", "mean IU"), ("fw_iu", "frequency-weighted IU")):
        print(f"  {label:<22} {_fmt(result[key])} %")
    width = max(len("class"), *(len(n) for n in result["class_names"]))
    print(f"\n  {'class':<{width}}  IU (%)")
    for name, iu in zip(result["class_names"], result["iu"]):
        print(f"  {name:<{width}}  {_fmt(iu)}")
    absent = [name for name, iu in zip(result["class_names"], result["iu"]) if iu is None]
    if absent:
        print(f"\n  n/a: no pixel of {'this class' if len(absent) == 1 else 'these classes'} in the "
              f"{'labels' if result['unit'] == 'windows' else 'masks'} or the predictions, so left out of the means "
              f"({len(absent)} of the model's {len(result['iu'])} classes)")
    return 0
