"""The pieces a training run is assembled from: its data, its batch stream, its optimizer, staged initialisation.

Kept apart from the step loop in :mod:`fcnkit.training.loop` so each reads on its own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnkit.training.config import DEFAULT_LR, TrainConfig
from fcnkit.training.ddp import Dist
from fcnkit.checkpoint import read_checkpoint
from fcnkit.errors import CheckpointError, DataError, InputError

# Classifier training windows, 800 per class: held-out window accuracy 0.905 after 1,500 steps of 64, against 0.864
# with 2,200 windows (which the classifier had seen 44 times each by then).
TRAIN_WINDOWS = 8800
VAL_WINDOWS = 550
MIN_SCENE_SIDE = 8  # the smallest side fcnkit.data.scenes draws
_COLOUR_STREAM = 11  # keeps the colour augmentation's random numbers apart from the window order's


class _First:
    """The first ``count`` items of a dataset (validation on a budget), keeping its class metadata."""

    def __init__(self, dataset: Any, count: int):
        self.dataset, self.count = dataset, min(count, len(dataset))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.dataset[index]


@dataclass
class TrainData:
    """The training set, the validation set (whole images) and, for classifiers, labelled windows."""

    train: Any
    val: Any
    num_classes: int
    class_names: list[str]
    palette: np.ndarray
    train_windows: tuple[torch.Tensor, torch.Tensor] | None = None  # (N, 3, h, w) float, (N,) int64
    note: str = ""  # what the user should know about the split (folder: data holding out its own validation images)
    sixteen_bit: str = "scaled"  # how the data made 16-bit pixels 8-bit ("kept" as stored, or "scaled" by /257)
    val_windows: tuple[torch.Tensor, torch.Tensor] | None = None


def _windows(split: str, count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fcnkit.data.scenes import classification_windows

    images, labels = classification_windows(split, count, seed=seed, size=size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous(), torch.from_numpy(labels)


def open_data(cfg: TrainConfig) -> TrainData:
    """Open ``cfg.data`` for training (images to cut patches from) and validation (whole images)."""
    from fcnkit.data import open_dataset

    train = open_dataset(cfg.data, split="train", num_classes=cfg.num_classes)
    scenes = str(cfg.data).partition(":")[0] == "scenes"
    val_options = {}
    if scenes and cfg.val_size is not None and cfg.val_size < MIN_SCENE_SIDE:
        raise InputError(f"val_size: expected a side of at least {MIN_SCENE_SIDE} pixels for the validation scenes, "
                         f"found {cfg.val_size}; pass e.g. --val-size 256, the default (val_size=256 from Python).")
    if scenes:
        val_options = {k: v for k, v in (("size", cfg.val_size), ("count", cfg.val_count)) if v is not None}
    elif cfg.val_size is not None:
        raise InputError(f"val_size: only the built-in scenes are made at a chosen size, found --data {cfg.data}; "
                         f"leave --val-size out (validation uses the dataset's own images, whole).")
    val = open_dataset(cfg.data, split="val", num_classes=cfg.num_classes, **val_options)
    if cfg.val_count is not None and not scenes:
        val = _First(val, cfg.val_count)
    if len(val) == 0:
        raise DataError(f"data {cfg.data}: expected validation images, found none; add images to the val split.")
    _check_patch_fits(train, cfg.patch)
    return TrainData(train, val, train.num_classes, list(train.class_names), np.asarray(train.palette),
                     note=getattr(train, "note", ""), sixteen_bit=getattr(train, "sixteen_bit", "scaled"))


def resume_model_options(cfg: TrainConfig, path: Any, given: dict) -> dict:
    """The model options of a resumed run: those saved in its ``last.pt``, so ``--resume`` needs no ``--width``
    (or other option) repeated. ``given`` holds the options passed explicitly; one that differs from the saved value
    is refused by name, as is another ``--model``."""
    spec = read_checkpoint(path, map_location="cpu")["model"]
    if spec.get("name") != cfg.model:
        raise CheckpointError(f"resume: '{path}' holds a {spec.get('name')} model, found --model {cfg.model}; "
                              f"resume with --model {spec.get('name')}, or pass --overwrite to start a new run.")
    saved = dict(spec.get("options") or {})
    conflicts = [k for k in given if k not in saved or saved[k] != given[k]]
    if conflicts:
        found = ", ".join(f"{_flag(k)} {given[k]}" for k in conflicts)
        had = ", ".join(f"{k}={saved[k]}" if k in saved else f"{k} at its default" for k in conflicts)
        raise CheckpointError(f"resume: '{path}' was trained with {had}, found {found}; leave "
                              f"{'it' if len(conflicts) == 1 else 'them'} out (a resumed run takes its model options "
                              f"from the checkpoint), or pass --overwrite to start over.")
    return saved


def _flag(option: str) -> str:
    return "--width" if option == "width" else f"model_options[{option!r}]"


def _check_patch_fits(train: Any, patch: int, probe: int = 16) -> None:
    """Refuse a patch larger than every image: its patches would be mostly ignore padding (checks a few images)."""
    sides = [np.asarray(train[i][1]).shape for i in range(min(len(train), probe))]
    if sides and all(patch > h and patch > w for h, w in sides):
        h, w = max(sides, key=lambda s: s[0] * s[1])
        raise DataError(f"patch: expected at most the image size, found --patch {patch} larger than every training "
                        f"image (largest {h}x{w}), so patches would be mostly padding; pass --patch {min(h, w)} "
                        f"or smaller.")


def check_patch_multiple(model: Any, cfg: TrainConfig) -> None:
    """Refuse patches smaller than the model's input multiple: the model would pad every patch up to it, so most of
    what it trains on would be padding (unet's multiple is 16: --patch 3 trained on 3x3 patches padded to 16x16)."""
    from fcnkit.geometry import analyze

    multiple = int(analyze(model).input_multiple)
    if cfg.patch < multiple:
        raise InputError(f"patch: expected at least {multiple} px, the input multiple of {cfg.model}, found --patch "
                         f"{cfg.patch}; pass --patch {max(64, multiple)} or larger.")


def add_windows(data: TrainData, cfg: TrainConfig, size: int) -> None:
    """Give a classifier run its labelled ``size``×``size`` training and validation windows."""
    if str(cfg.data).partition(":")[0] != "scenes":
        raise DataError(f"data {cfg.data}: classifier models train on labelled windows, which only the built-in "
                        f"scenes provide; pass --data scenes, or train a dense model on this data.")
    data.train_windows = _windows("train", cfg.windows or TRAIN_WINDOWS, size, cfg.seed)
    data.val_windows = _windows("val", cfg.val_count or VAL_WINDOWS, size, cfg.seed)


class Batches:
    """The batch of every step, a pure function of (seed, step): patches for dense models, windows for classifiers.

    ``batch_size`` is the global batch; under DDP rank r gets its contiguous share, and the shares of all ranks
    together are exactly the single-process batch.
    """

    def __init__(self, data: TrainData, cfg: TrainConfig, dist: Dist, *, start_step: int):
        if cfg.batch_size % dist.world_size:
            fitting = cfg.batch_size + dist.world_size - cfg.batch_size % dist.world_size
            raise InputError(f"batch_size: expected a multiple of the {dist.world_size} processes, found "
                             f"{cfg.batch_size}; pass --batch-size {fitting}.")
        self.local = cfg.batch_size // dist.world_size
        self.dist, self.seed, self.step = dist, cfg.seed, start_step
        self.windows = data.train_windows
        self.colour_jitter = bool(cfg.colour_jitter)
        self._epoch_order: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))
        if self.windows is None:
            from fcnkit.data import PatchSampler

            self.sampler = PatchSampler(data.train, cfg.patch, seed=cfg.seed, flips=cfg.mirror)

    def _window_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.windows
        n = len(images)
        first = (self.step * self.dist.world_size + self.dist.rank) * self.local
        picks, orders, inverted = [], [], []
        for sample in range(first, first + self.local):
            epoch, position = divmod(sample, n)
            # every window once per epoch, in an order drawn from (seed, epoch) alone
            picks.append(int(self._order(epoch)[position]))
            # colour augmentation, drawn from (seed, sample): the scenes' colours are random, so a window with its
            # channels permuted or its colours inverted is another window of the same class
            rng = np.random.default_rng([self.seed, _COLOUR_STREAM, sample])
            orders.append(rng.permutation(3))
            inverted.append(rng.random() < 0.5)
        x = images[picks]  # (B, 3, h, w) 0-255
        if self.colour_jitter and x.shape[1] == 3:
            x = x[torch.arange(len(picks))[:, None], torch.as_tensor(np.stack(orders))]
            flip = torch.as_tensor(inverted)
            x[flip] = 255.0 - x[flip]
        return x, labels[picks]

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.windows[0])))
        return self._epoch_order[1]

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.windows is not None:
            x, y = self._window_batch()
        else:
            x, y = self.sampler.batch(self.local, self.step, rank=self.dist.rank, world_size=self.dist.world_size)
        self.step += 1
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=True)


def class_weights(cfg: TrainConfig, batches: Batches, num_classes: int, *, sample: int = 16) -> torch.Tensor | None:
    """The per-class loss weights of ``cfg.class_weights``: None (unweighted), a list of K numbers, or "balanced".

    "balanced" counts the labels of the first ``sample`` training batches (a pure function of the seed, so a resumed
    run computes the same weights) and weighs class c by sqrt(median frequency / frequency of c): a rare class
    counts more, but only by the square root of its rarity, and a class absent from the sample gets the largest
    weight of those present. Classifier runs (balanced windows) get None for "balanced".
    """
    given = cfg.class_weights
    if given is None or given == "none":
        return None
    if not isinstance(given, str):
        weights = torch.tensor([float(w) for w in given])
        if weights.numel() != num_classes:
            raise InputError(f"class_weights: expected {num_classes} numbers (one per class), found "
                             f"{weights.numel()}; pass --class-weights balanced or {num_classes} comma-separated "
                             f"weights.")
        return weights
    if batches.windows is not None:
        return None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for step in range(sample):
        _, y = batches.sampler.batch(cfg.batch_size, step)  # the whole batch: every DDP rank gets the same weights
        y = y[y < num_classes]  # the ignore label is no class
        counts += torch.bincount(y.flatten().long(), minlength=num_classes)[:num_classes].double()
    present = counts > 0
    frequency = counts / counts.sum()
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = (frequency[present].median() / frequency[present]).sqrt()
    weights[~present] = weights[present].max()
    return weights.float()


def warmup_steps(cfg: TrainConfig, steps: int) -> int:
    """The warm-up length: ``cfg.warmup`` if given, else 30% of the run for one-cycle and 5% for cosine and poly."""
    if cfg.warmup is not None:
        return min(int(cfg.warmup), steps)
    return int(round(steps * (0.3 if cfg.schedule == "onecycle" else 0.05)))


def lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """The learning rate at ``step`` (0-based) as a fraction of the peak: a linear warm-up from peak/25 over
    ``warmup`` steps, then a cosine (``cosine``, ``onecycle``) or ``(1 - t)^0.9`` (``poly``) decay to 0.

    One-cycle (Smith & Topin 2018) is this cosine decay after a long warm-up; poly is DeepLab/FCN practice.
    """
    if step < warmup:
        return 0.04 + 0.96 * step / warmup
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * t))


_FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused AdamW and SGD kernels


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """AdamW (or SGD with momentum) and the learning-rate schedule ``cfg.schedule`` (see :func:`lr_factor`)."""
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel over all parameters instead of a loop of small ops per parameter (torch's CPU default):
    # SegNet ×0.25's AdamW step took 9.4 ms of a 0.102 s step that way, 4.0 ms of 0.089 s fused.
    fused = {"fused": True} if params and all(p.device.type in _FUSED_DEVICES for p in params) else {}
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, **fused)
    warmup = warmup_steps(cfg, steps)
    # A partial, not a lambda: LambdaLR's state_dict then stays plain data (a checkpoint holds no code).
    schedule = functools.partial(lr_factor, steps=steps, warmup=warmup, schedule=cfg.schedule)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def init_from_checkpoint(model: nn.Module, path: str) -> list[str]:
    """Copy every tensor of checkpoint ``path`` whose name and shape match ``model``'s; return the names left new.

    This is the paper's staged training: FCN-16s starts from FCN-32s (only ``score_pool4`` and the upsamplers are
    new), FCN-8s from FCN-16s.
    """
    ckpt = read_checkpoint(path)
    source = ckpt["state_dict"]
    own = model.state_dict()
    copied = {k: v for k, v in source.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    # Normalisation buffers match between any two fcnkit models; only shared learned weights make a real start.
    if not set(copied) & {name for name, _ in model.named_parameters()}:
        raise CheckpointError(
            f"init_from: '{path}' holds model {ckpt['model'].get('name')!r} whose weights share no name and shape "
            f"with {model.fcnkit_spec['name']!r}; start from a checkpoint of a related model (fcn32s -> fcn16s -> "
            f"fcn8s) with the same --width and --num-classes.")
    model.load_state_dict(copied, strict=False)
    return sorted(k for k in own if k not in copied)


def transfer_model(cfg: TrainConfig, num_classes: int, options: dict) -> nn.Module:
    """``cfg.model`` (fcn32s_on, fcn16s_on or fcn8s_on) built on the trained classifier in ``cfg.backbone``."""
    from fcnkit.checkpoint import load_checkpoint
    from fcnkit.models.transfer import TRANSFER_MODELS, fcn_on

    if cfg.model not in TRANSFER_MODELS:
        raise InputError(f"backbone: only the transfer models {', '.join(TRANSFER_MODELS)} start from a classifier, "
                         f"found --model {cfg.model}; pass --model fcn8s_on, or leave --backbone out.")
    if options:
        raise InputError(f"backbone: the architecture comes from '{cfg.backbone}', found options {options} as well "
                         f"(e.g. --width); leave them out.")
    classifier = load_checkpoint(cfg.backbone)
    return fcn_on(classifier, num_classes=num_classes, skips=TRANSFER_MODELS[cfg.model]).train()
