"""``fcnkit train``: train a model on patches (or a classifier on windows), with resumable checkpoints."""

from __future__ import annotations

import argparse

HELP = "train a model on image patches; checkpoints go to OUT/last.pt and OUT/best.pt"
STOP_UNIT = "step"  # SIGINT/SIGTERM finish the step, save last.pt, then stop (fcnkit.signals)
EXAMPLE = """
fcnkit train --model unet --data scenes --width 0.25 --steps 1600 --out runs/unet
fcnkit train --model unet --data scenes --width 0.25 --steps 1600 --out runs/unet --resume
fcnkit train --model digit_classifier --data scenes --width 0.5 --steps 1500 --batch-size 64 --out runs/digits
fcnkit train --model fcn8s_on --backbone runs/digits/best.pt --data scenes --steps 800 --out runs/fcn8s_on
torchrun --nproc_per_node 2 -m fcnkit train --model unet --data voc:/data/VOC2012 --out runs/unet
"""

# Literal copies of fcnkit.training's SCHEDULES and PRECISIONS: the CLI imports no torch until a command runs
# (tests/test_cli_train.py checks that they agree).
SCHEDULES = ("onecycle", "cosine", "poly")
PRECISIONS = ("auto", "fp32", "bf16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (see `fcnkit inspect --help` / list_models())")
    parser.add_argument("--data", required=True,
                        help="scenes | voc:ROOT | folder:ROOT (without ROOT/train and ROOT/val, every 5th image is "
                             "held out for validation) | nuclei[:tl|tr|bl|br] (a real nuclei image, one quadrant "
                             "held out)")
    parser.add_argument("--num-classes", type=int, help="number of classes (required for folder: data)")
    parser.add_argument("--patch", type=int, default=64, help="side of the square training patches (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size (default 16)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default 1000 when --epochs is not given)")
    length.add_argument("--epochs", type=int, help="passes over the training images")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 3e-3 for adamw, 0.01 for sgd)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="onecycle",
                        help="learning-rate schedule after the warm-up: onecycle (cosine after a 30%% warm-up, the "
                             "default), cosine or poly (5%% warm-up)")
    parser.add_argument("--warmup", type=int, metavar="STEPS", help="warm-up steps (default: see --schedule)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (bf16 autocast where the CPU/GPU computes bf16 natively, else fp32; the default), "
                             "fp32 or bf16")
    mirror = parser.add_mutually_exclusive_group()
    mirror.add_argument("--mirror", action="store_true", default=None,
                        help="flip training patches left-right (default: only for mirror-safe data, e.g. photos)")
    mirror.add_argument("--no-mirror", dest="mirror", action="store_false", help="never flip training patches")
    parser.add_argument("--class-weights", type=parse_class_weights, metavar="balanced|W0,W1,...",
                        help="per-class loss weights: balanced (sqrt of median frequency / class frequency, measured "
                             "on the first training batches) or one number per class (default: unweighted)")
    parser.add_argument("--backbone", metavar="CKPT",
                        help="trained classifier for the transfer models fcn32s_on/fcn16s_on/fcn8s_on")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                        help="adamw, or sgd with momentum 0.9 (default adamw)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default 1e-4)")
    parser.add_argument("--width", type=float, help="channel multiplier of the model (default: the model's, 1.0)")
    parser.add_argument("--model-option", action="append", default=[], type=_model_option, metavar="NAME=VALUE",
                        help="another option of the model's builder, e.g. window=48 for digit_classifier "
                             "(repeatable; an unknown NAME is refused with the list of the model's options)")
    parser.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last.pt (its --width and model options come from "
                             "the checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available)")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start from the matching weights of another checkpoint (fcn32s -> fcn16s -> fcn8s)")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (default steps/5; 0 = at the end)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between last.pt saves (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the patch stream (default 0)")
    parser.add_argument("--val-size", type=int, help="side of the validation scenes (scenes only; default 256)")
    parser.add_argument("--val-count", type=int, help="number of validation images (default: all)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                        help="auto: a bar on a terminal, a line every 10 s when redirected (the default)")
    output.add_argument("--no-progress", action="store_true",
                        help="no step progress; the validation scores are still printed")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _model_option(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {text!r}; pass e.g. --model-option window=48")
    if name == "width":
        raise argparse.ArgumentTypeError(f"expected an option other than width, found {text!r}; pass --width {value}")
    for parse in (int, float):
        try:
            return name, parse(value)
        except ValueError:
            pass
    return name, {"true": True, "false": False}.get(value.lower(), value)


def parse_class_weights(text: str) -> str | list[float]:
    """``--class-weights``: "balanced", "none", or comma-separated numbers (one weight per class) as a list."""
    if text in ("balanced", "none"):
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced', 'none' or comma-separated numbers (one per class), "
                                         f"found {text!r}; pass e.g. --class-weights balanced") from None


MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which the trainer uses too, takes no larger seed


def check_flags(args: argparse.Namespace) -> None:
    """The flags whose bad values would otherwise fail deep inside a library (numpy's seeding) or under another
    name (the scene size of ``--data``), refused before anything loads."""
    from fcnkit.errors import InputError
    from fcnkit.training.setup import MIN_SCENE_SIDE

    if not 0 <= args.seed <= MAX_SEED:
        raise InputError(f"--seed: expected an integer from 0 to {MAX_SEED} (2**32 - 1), found {args.seed}; pass "
                         f"e.g. --seed 0.")
    if args.val_size is not None and args.val_size < MIN_SCENE_SIDE:
        raise InputError(f"--val-size: expected a side of at least {MIN_SCENE_SIDE} pixels for the validation "
                         f"scenes, found {args.val_size}; pass e.g. --val-size 256 (the default).")


def run(args: argparse.Namespace) -> int:
    from fcnkit.training.loop import TrainConfig, train

    check_flags(args)
    steps = 1000 if args.steps is None and args.epochs is None else args.steps
    config = TrainConfig(
        model=args.model, data=args.data, num_classes=args.num_classes, patch=args.patch,
        batch_size=args.batch_size, steps=steps, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, width=args.width, model_options=dict(args.model_option),
        out=args.out or f"runs/{args.model}", resume=args.resume, overwrite=args.overwrite,
        device=args.device, init_from=args.init_from, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed, val_size=args.val_size, val_count=args.val_count,
        schedule=args.schedule, warmup=args.warmup, precision=args.precision, mirror=args.mirror,
        class_weights=args.class_weights, backbone=args.backbone,
        progress="off" if args.no_progress else args.progress, quiet=args.quiet,
    )
    result = train(config)
    if not result.is_main or args.quiet:
        return 0
    if args.init_from:
        print(f"init-from {args.init_from}: copied every matching weight; new: "
              f"{', '.join(result.new_parameters) or '(none)'}")
    m = result.metrics or {}
    accuracy = "window accuracy" if result.kind == "classifier" else "pixel accuracy"
    print(f"step {result.step}: mean IU {m.get('mean_iu')}, {accuracy} {m.get('pixel_accuracy')}; "
          f"best mean IU {result.best_mean_iu}; checkpoints in {result.out}")
    return 0
