"""The training config: everything a run depends on, its defaults and its checks.

Kept apart from :mod:`fcnkit.training.loop` so that :mod:`fcnkit.training.setup` can read it without importing the
loop that imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fcnkit.errors import InputError
from fcnkit.training.precision import PRECISIONS

DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.01}
SCHEDULES = ("onecycle", "cosine", "poly")
PROGRESS_MODES = ("auto", "bar", "lines", "off")


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``steps`` or ``epochs`` (one pass = len(train) / batch_size steps)."""

    model: str
    data: str = "scenes"
    num_classes: int | None = None
    patch: int = 64
    batch_size: int = 16
    steps: int | None = None
    epochs: int | None = None
    lr: float | None = None  # None: DEFAULT_LR of the optimizer (the peak of the schedule)
    schedule: str = "onecycle"  # onecycle | cosine | poly (training.setup.lr_factor)
    warmup: int | None = None  # warm-up steps; None: 30% of the run for onecycle, 5% for cosine and poly
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 5.0  # max global gradient norm; None or 0 disables clipping
    width: float | None = None  # channel multiplier; None: the model's default
    model_options: dict = field(default_factory=dict)
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False
    device: str | None = None  # None: CUDA when available
    init_from: str | None = None
    eval_every: int | None = None  # None: 5 evaluations over the run; 0: only at the end
    checkpoint_every: int = 100
    seed: int = 0
    val_size: int | None = None  # side of the built-in validation scenes (scenes only)
    val_count: int | None = None  # evaluate on the first val_count validation images (None: all)
    windows: int | None = None  # labelled training windows of a classifier (None: training.setup.TRAIN_WINDOWS)
    precision: str = "auto"  # auto (bf16 autocast where the device has native bf16) | fp32 | bf16
    mirror: bool | None = None  # flip patches left-right; None: if the dataset is mirror_safe
    class_weights: str | list[float] | None = None  # None | "balanced" | one weight per class (dense models)
    colour_jitter: bool = True  # classifier windows: permute the colour channels, invert colours (scenes only)
    backbone: str | None = None  # a classifier checkpoint for the *_on transfer models (fcn8s_on, ...)
    progress: bool | str = "auto"  # auto (a bar on a terminal, else a line every few seconds) | bar | lines | off
    quiet: bool = False  # print nothing, not even the validation scores


def _positive(value: Any, name: str, kind: type = int) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or (kind is int and int(value) != value) or (isinstance(value, float) and not math.isfinite(value)):
        what = "a positive integer" if kind is int else "a positive number"
        example = {"val_size": 256, "val_count": 16}.get(name, 1) if kind is int else 0.01
        raise InputError(f"{name}: expected {what}, found {value!r}; pass e.g. --{name.replace('_', '-')} {example} "
                         f"({name}={example} from Python).")


def check_config(cfg: TrainConfig) -> None:
    """Raise :class:`InputError` for any number or choice that cannot train."""
    if (cfg.steps is None) == (cfg.epochs is None):
        raise InputError(f"steps/epochs: expected exactly one of them, found steps={cfg.steps!r}, "
                         f"epochs={cfg.epochs!r}; pass --steps N or --epochs N.")
    _positive(cfg.steps if cfg.steps is not None else cfg.epochs, "steps" if cfg.steps is not None else "epochs")
    _positive(cfg.patch, "patch")
    _positive(cfg.batch_size, "batch_size")
    _positive(cfg.checkpoint_every, "checkpoint_every")
    if cfg.lr is not None:
        _positive(cfg.lr, "lr", float)
    if cfg.width is not None:
        _positive(cfg.width, "width", float)
    if cfg.optimizer not in DEFAULT_LR:
        raise InputError(f"optimizer: expected one of {', '.join(DEFAULT_LR)}, found {cfg.optimizer!r}; "
                         f"pass --optimizer sgd or --optimizer adamw.")
    if cfg.eval_every is not None and (isinstance(cfg.eval_every, bool) or cfg.eval_every < 0):
        raise InputError(f"eval_every: expected 0 (only at the end) or a positive number of steps, found "
                         f"{cfg.eval_every!r}.")
    for name in ("val_size", "val_count", "windows"):
        if getattr(cfg, name) is not None:
            _positive(getattr(cfg, name), name)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise InputError(f"seed: expected an integer from 0 to 2**32 - 1 (numpy's and torch's seed range), found "
                         f"{cfg.seed!r}; pass e.g. --seed 0 (seed=0 from Python).")
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"schedule: expected one of {', '.join(SCHEDULES)}, found {cfg.schedule!r}; pass "
                         f"--schedule onecycle (the default), cosine or poly.")
    if cfg.warmup is not None and (isinstance(cfg.warmup, bool) or not isinstance(cfg.warmup, int)
                                   or cfg.warmup < 0):
        raise InputError(f"warmup: expected a number of steps >= 0, found {cfg.warmup!r}; pass e.g. --warmup 100.")
    if isinstance(cfg.class_weights, str) and cfg.class_weights not in ("none", "balanced"):
        raise InputError(f"class_weights: expected 'balanced', 'none' or one weight per class, found "
                         f"{cfg.class_weights!r}; pass --class-weights balanced or e.g. --class-weights 1,4,4.")
    if cfg.class_weights is not None and not isinstance(cfg.class_weights, str):
        for w in cfg.class_weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise InputError(f"class_weights: expected numbers >= 0, found {w!r} in {list(cfg.class_weights)}; "
                                 f"pass e.g. --class-weights 1,4,4.")
        if not any(w > 0 for w in cfg.class_weights):
            raise InputError("class_weights: expected at least one weight above 0, found all zero; pass e.g. "
                             "--class-weights 1,4,4.")
    if cfg.precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, found {cfg.precision!r}; pass "
                         f"--precision auto (bf16 where the hardware has it), fp32 or bf16.")
    if progress_mode(cfg) not in PROGRESS_MODES:
        raise InputError(f"progress: expected one of {', '.join(PROGRESS_MODES)} (or True/False), found "
                         f"{cfg.progress!r}.")
    if cfg.resume and cfg.init_from:
        raise InputError("resume and init_from: expected one of them, found both; --resume continues this run's "
                         "own last.pt, --init-from starts a new run from another checkpoint.")
    if cfg.device and torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: expected an available device, found {cfg.device!r} without CUDA on this "
                         f"machine; pass --device cpu.")


def progress_mode(cfg: TrainConfig) -> str:
    """``cfg.progress`` as one of PROGRESS_MODES (True means "auto", False "off")."""
    if isinstance(cfg.progress, bool):
        return "auto" if cfg.progress else "off"
    return cfg.progress
