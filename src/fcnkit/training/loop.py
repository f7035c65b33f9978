"""Training: dense models on random patches with per-pixel cross-entropy, classifiers on labelled windows.

Every run is a pure function of its config: the batch of step k depends only on (seed, k), and ``last.pt`` holds
the weights, optimizer, schedule, step and every RNG state, so a run killed at any moment and resumed with
``resume=True`` ends with the same losses and the same weights as a run that was never interrupted.

Example::

    result = train(TrainConfig(model="fcn8s", data="scenes", steps=500, width=0.25, out="runs/fcn8s"))
    result.metrics["mean_iu"], result.best_checkpoint
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnkit.training import ddp as _ddp
from fcnkit.checkpoint import capture_rng, load_state_strict, read_checkpoint, restore_rng, save_checkpoint
from fcnkit.errors import CheckpointError, InputError
from fcnkit.training.evaluate import check_kind, evaluate_dense, evaluate_windows, summary
from fcnkit.io.atomic import atomic_file, check_target, make_dirs, writing
from fcnkit.io.lock import WriterLock
from fcnkit.losses import pixel_cross_entropy
from fcnkit.training.config import TrainConfig, check_config, progress_mode
from fcnkit.training.precision import autocast_dtype
from fcnkit.progress import Progress
from fcnkit.training.setup import (Batches, add_windows, build_optimizer, check_patch_multiple, class_weights,
                                   init_from_checkpoint, open_data, resume_model_options, transfer_model)
from fcnkit.signals import Interrupted, on_interrupt, requested_signal, stop_requested


@dataclass
class TrainResult:
    """What a run produced. ``losses`` maps each step this process ran (1-based) to its training loss."""

    out: Path
    step: int
    losses: dict[int, float]
    metrics: dict | None
    best_mean_iu: float | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    new_parameters: list[str] = field(default_factory=list)
    is_main: bool = True  # False on DDP ranks other than 0, which write nothing
    kind: str = "dense"  # the model's output kind: "classifier" runs score windows (pixel accuracy = window accuracy)


def _check_out(cfg: TrainConfig, out: Path) -> Path | None:
    """The last.pt to resume from (or None). Refuses, before any work and without touching anything, an --out that
    cannot hold a run (a regular file in its path, no write permission) or that holds one already (unless
    ``resume``/``overwrite``)."""
    last = check_target(out / "last.pt", overwrite=True, flag="--out")
    if cfg.resume:
        if not last.is_file():
            raise CheckpointError(f"resume: expected '{last}' from an earlier run, found none; train without "
                                  f"--resume first, or point --out at the run to continue.")
        return last
    if last.exists() and not cfg.overwrite:
        raise InputError(f"out: '{out}' holds a run already (last.pt); pass --resume to continue it, "
                         f"--overwrite to start over, or another --out.")
    return None


def _start_out(out: Path, *, fresh: bool) -> None:
    """Create the run folder; for a fresh run delete the files of the run it replaces (``overwrite``)."""
    make_dirs(out)  # its entry in the parent folder is fsynced too: a power cut must not lose the whole run
    if fresh:
        for name in ("last.pt", "best.pt", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
    _remove_stale_temporaries(out)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete half-written checkpoint temporaries left by a run killed in the middle of a save."""
    for tmp in out.glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _truncate_log(log: Path, step: int) -> None:
    """Drop evaluation lines written after ``step`` (by a run killed before it saved that step's checkpoint)."""
    if not log.is_file():
        return
    lines = [ln for ln in log.read_text().splitlines() if (n := _step_of(ln)) is not None and n <= step]
    with atomic_file(log, "w") as f:  # a kill while rewriting must not lose the lines that stay
        f.write("".join(ln + "\n" for ln in lines))


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for an empty line or one torn by a full disk or a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data``; checkpoints and ``metrics.jsonl`` go to ``config.out``.

    Under ``torchrun`` the global batch of each step is split across processes (rank r takes items r, r+N, …),
    gradients are averaged by DDP, metrics are summed over ranks, and only rank 0 writes files.
    """
    check_config(config)
    dist = _ddp.setup(config.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if dist.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible matmuls
    # Exact resume needs reproducible kernels; warn_only keeps ops without a deterministic variant usable.
    torch.use_deterministic_algorithms(True, warn_only=True)
    # ... but not torch's debugging aid that comes with them, filling every new tensor with NaN before use: no kernel
    # fcnkit runs reads memory it has not written, and the fills took 13% of a SegNet step (0.110 s vs 0.097 s).
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    run = None
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
            run = _Run(config, dist, held)
            with on_interrupt(run.saved):
                return run.run()
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        # DDP's reducer holds the process group: free it first, or the group outlives destroy_process_group and is
        # torn down with the interpreter, where gloo's threads can abort the process.
        del run
        if dist.active:
            gc.collect()
        _ddp.teardown(dist)


class _Run:
    """One training run: set up once, then ``run()`` the step loop."""

    def __init__(self, cfg: TrainConfig, dist: _ddp.Dist, held: contextlib.ExitStack):
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.out = Path(cfg.out)
        self.held, self.locked, self.saved_step = held, False, None
        if dist.is_main and self.out.is_dir():
            self._lock()  # a second run on this folder is refused before it reads anything there
        resume_from = _check_out(cfg, self.out)
        _seed_everything(cfg.seed)

        self.data = open_data(cfg)
        if self.data.note and dist.is_main and not cfg.quiet:
            print(f"fcnkit: note: {self.data.note}.", file=sys.stderr)
        self.num_classes = self.data.num_classes
        options = dict(cfg.model_options)
        if cfg.width is not None:
            options["width"] = cfg.width
        if resume_from is not None:  # the run's own width and options, unless contradicted explicitly
            options = resume_model_options(cfg, resume_from, options)
        if cfg.backbone and resume_from is None:  # a resumed run rebuilds the backbone from its own spec
            self.model = transfer_model(cfg, self.num_classes, options)
        else:
            from fcnkit.models import build_model

            self.model = build_model(cfg.model, num_classes=self.num_classes, **options)
            if cfg.model.endswith("_on") and resume_from is None and dist.is_main and not cfg.quiet:
                print(f"fcnkit: note: {cfg.model} without --backbone starts from an untrained "
                      f"{self.model.fcnkit_spec['options'].get('backbone', 'classifier')} (no transfer); pass "
                      f"--backbone CLASSIFIER.pt for the FCN paper's transfer from a trained classifier.",
                      file=sys.stderr)
        self.kind = check_kind(self.model, f"model {cfg.model!r}")
        if self.kind == "classifier":
            add_windows(self.data, cfg, int(getattr(self.model, "input_size", (cfg.patch,))[0]))
        else:
            check_patch_multiple(self.model, cfg)
        self.new_parameters: list[str] = []
        if cfg.init_from:
            self.new_parameters = init_from_checkpoint(self.model, cfg.init_from)
        self.steps = cfg.steps if cfg.steps is not None else cfg.epochs * math.ceil(
            len(self.data.train) / cfg.batch_size)
        self.eval_every = cfg.eval_every if cfg.eval_every is not None else max(1, self.steps // 5)
        # Only now, with the data, the model and --init-from checked, may an --overwrite delete the previous run.
        if dist.is_main:
            self._lock()
            _start_out(self.out, fresh=resume_from is None)
        dist.barrier()  # nobody reads last.pt before rank 0 has set up the folder

        # channels_last suits cuDNN's tensor cores, and measured 15-30% faster per training step on CPU as well
        # (fcn8s, unet, segnet at width 0.25, 16 patches of 64x64, oneDNN).
        self.model.to(self.device, memory_format=torch.channels_last)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, self.steps)
        self.autocast = autocast_dtype(cfg.precision, self.device)
        self.precision = "bf16" if self.autocast is not None else "fp32"
        self.step, self.best, self.elapsed = 0, -math.inf, 0.0
        self.window = [0.0, 0]  # training-loss sum and count since the last evaluation
        if resume_from is not None:
            self._resume(resume_from)
        self.net: nn.Module = self.model
        if dist.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _resume(self, path: Path) -> None:
        ckpt = read_checkpoint(path, map_location="cpu")
        if ckpt["model"] != self.model.fcnkit_spec:
            raise CheckpointError(
                f"resume: '{path}' holds model {ckpt['model']}, expected {self.model.fcnkit_spec} from the "
                f"arguments; resume with the same --model/--width/--data, or use --overwrite to start over.")
        load_state_strict(self.model, ckpt["state_dict"], source=f"resume from '{path}'")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = self.saved_step = int(ckpt["step"])
        extra = ckpt.get("extra", {})
        if extra.get("steps") != self.steps:
            raise CheckpointError(
                f"resume: '{path}' was written by a run of {extra.get('steps')} steps, found {self.steps} now; "
                f"the learning-rate schedule depends on it, so resume with the same --steps/--epochs.")
        before = extra.get("config", {})
        for key in ("schedule", "warmup", "lr", "batch_size"):
            if key in before and before[key] != getattr(self.cfg, key):
                raise CheckpointError(
                    f"resume: '{path}' was written with --{key.replace('_', '-')} {before[key]}, found "
                    f"{getattr(self.cfg, key)} now; resume with the same value (or --overwrite to start over).")
        if extra.get("precision", self.precision) != self.precision:
            raise CheckpointError(
                f"resume: '{path}' was trained in {extra['precision']}, this run would use {self.precision}; "
                f"pass --precision {extra['precision']} so the resumed steps compute what the first ones did.")
        self.best, self.elapsed = extra["best"], extra["elapsed"]
        self.window = list(extra["window"])
        restore_rng(ckpt["rng"])
        if self.dist.is_main:
            _truncate_log(self.out / "metrics.jsonl", self.step)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # bf16 autocast runs convolutions in bf16 where the hardware has it; weights, optimizer and loss stay fp32.
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            logits = self.net(x)
        return pixel_cross_entropy(logits.float(), y, weight=self.class_weights)

    def _evaluate(self) -> dict:
        # Evaluation must not draw from the training run's random streams, or a resumed run would diverge.
        state = capture_rng()
        try:
            return self._scores()
        finally:
            restore_rng(state)

    def _scores(self) -> dict:
        if self.kind == "classifier":
            images, labels = self.data.val_windows
            meter = evaluate_windows(self.model, images, labels, num_classes=self.num_classes,
                                     device=self.device, dist=self.dist)
        else:
            meter = evaluate_dense(self.model, self.data.val, num_classes=self.num_classes, device=self.device,
                                   dist=self.dist)
        return summary(meter)

    def _lock(self) -> None:
        """Hold the run folder's lock (once) until train() returns: a second run on it is refused, naming this one."""
        if not self.locked:
            make_dirs(self.out)
            self.held.enter_context(WriterLock.acquire(self.out / "train.lock", target=f"run folder {self.out}"))
            self.locked = True

    def saved(self) -> str | None:
        """What a stopped run leaves to resume from (None before its first last.pt)."""
        if self.saved_step is None:
            return None
        return f"step {self.saved_step} of {self.steps} is saved in {self.out / 'last.pt'}"

    def _stop(self, metrics: dict | None) -> None:
        """After SIGINT/SIGTERM: save last.pt at this step (unless it was just saved), then raise Interrupted."""
        if self.dist.is_main and self.saved_step != self.step:
            self._save("last.pt", metrics)
        self.dist.barrier()
        raise Interrupted(requested_signal() or signal.SIGTERM)

    def _save(self, name: str, metrics: dict | None) -> Path:
        extra = {"steps": self.steps, "precision": self.precision, "best": self.best, "elapsed": self.elapsed, "window": list(self.window),
                 "config": {k: v for k, v in asdict(self.cfg).items() if k not in ("progress", "quiet")}}
        resumable = name == "last.pt"  # best.pt is the file users share: weights and metadata, no optimizer state
        path = save_checkpoint(
            self.out / name, model=self.model, class_names=self.data.class_names, palette=self.data.palette,
            optimizer=self.optimizer if resumable else None, scheduler=self.scheduler if resumable else None,
            step=self.step, rng=capture_rng() if resumable else None, metrics=metrics, extra=extra,
            input_16_bit=self.data.sixteen_bit)
        if name == "last.pt":
            self.saved_step = self.step
        return path

    def run(self) -> TrainResult:
        cfg, losses, metrics = self.cfg, {}, None
        batches = Batches(self.data, cfg, self.dist, start_step=self.step)
        self.class_weights = class_weights(cfg, batches, self.num_classes)
        if self.class_weights is not None and self.dist.is_main and not cfg.quiet:
            print(f"fcnkit: class weights {', '.join(f'{w:.2f}' for w in self.class_weights.tolist())}",
                  file=sys.stderr)
        self.progress = Progress(f"train {cfg.model}", total=self.steps, initial=self.step, mode=progress_mode(cfg),
                                 quiet=cfg.quiet or not self.dist.is_main)
        self.net.train()
        while self.step < self.steps:
            started = time.perf_counter()
            x, y = batches.next(self.device)
            loss = self._loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            value = self.dist.mean(float(loss.detach()))
            if not math.isfinite(value):
                raise InputError(f"lr: training diverged at step {self.step} (loss {value}); lower --lr "
                                 f"(now {self.optimizer.param_groups[0]['initial_lr']:g}) or keep grad clipping on.")
            losses[self.step] = value
            self.window = [self.window[0] + value, self.window[1] + 1]
            self.elapsed += time.perf_counter() - started
            self.progress.update(self.step, loss=f"{value:.4f}",
                                 **{"images/s": f"{cfg.batch_size / (time.perf_counter() - started):.1f}"})
            if self.step == self.steps or (self.eval_every and self.step % self.eval_every == 0):
                metrics = self._evaluate_and_log()
            if self.step % cfg.checkpoint_every == 0 or self.step == self.steps:
                if self.dist.is_main:
                    self._save("last.pt", metrics)
                self.dist.barrier()
            if self.dist.mean(float(stop_requested())) > 0:  # SIGINT/SIGTERM: every rank stops after this step
                self._stop(metrics)
        self.progress.close()
        if metrics is None:  # resumed a run that had already finished
            metrics = self._evaluate()
        best = self.out / "best.pt"
        return TrainResult(out=self.out, step=self.step, losses=losses, metrics=metrics,
                           best_mean_iu=None if self.best == -math.inf else self.best,
                           last_checkpoint=self.out / "last.pt", best_checkpoint=best if best.exists() else None,
                           new_parameters=self.new_parameters, is_main=self.dist.is_main, kind=self.kind)

    def _evaluate_and_log(self) -> dict:
        metrics = self._evaluate()
        loss = self.window[0] / self.window[1] if self.window[1] else None
        self.window = [0.0, 0]
        record = {"step": self.step, "loss": loss, **metrics, "lr": self.optimizer.param_groups[0]["lr"],
                  "time": round(self.elapsed, 3)}
        mean_iu = metrics["mean_iu"] if metrics["mean_iu"] is not None else -math.inf
        self.progress.evaluation(self.step, metrics,
                                 accuracy="window accuracy" if self.kind == "classifier" else "pixel accuracy")
        if self.dist.is_main:
            with writing(self.out / "metrics.jsonl"), open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if mean_iu > self.best:
                self.best = mean_iu
                self._save("best.pt", metrics)
        else:
            self.best = max(self.best, mean_iu)
        return metrics
