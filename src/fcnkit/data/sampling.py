"""An endless, seeded, resumable stream of training patches cut from a dataset of whole images.

Sample ``n`` of the stream is a pure function of ``(seed, n)``: its source image is position ``n mod len`` of a
permutation drawn for epoch ``n // len`` (every image once per epoch), and its crop, scale and flip come from a
generator seeded with ``(seed, n)``. Batch ``k`` of size ``B`` is samples ``kB … kB + B - 1``. So a run resumed at
step ``k`` sees exactly the batches an uninterrupted run would have seen, and ``world_size`` processes that each
take their slice of the global batch together see the batches of one process with ``B × world_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from fcnkit.data.transforms import random_patch
from fcnkit.errors import DataError

__all__ = ["PatchSampler"]

_ORDER_STREAM, _PATCH_STREAM = 0, 1


def _patch_size(patch: Any) -> tuple[int, int]:
    try:
        ph, pw = (int(patch), int(patch)) if np.ndim(patch) == 0 else (int(v) for v in patch)
    except (TypeError, ValueError):
        ph = pw = 0
    if ph < 1 or pw < 1:
        raise DataError(f"patch must be a positive size N or (H, W), got {patch!r}; pass for example --patch 64.")
    return ph, pw


class PatchSampler:
    """Random ``patch``-sized (image, label) crops of ``dataset``, with joint flips and scale jitter.

    Args:
        dataset: items ``(image (H, W, 3) uint8, label (H, W) uint8)`` of any size; smaller ones are padded
            (image 0, label 255 = ignore).
        patch: N or (H, W).
        seed: the stream's seed (a non-negative integer).
        flips: mirror left-right with probability 1/2; None (the default): only if the dataset says it is
            ``mirror_safe`` (photos are; handwriting is not: a mirrored 2 is half a 5). A dataset without that
            attribute counts as mirror-safe.
        scale_jitter: ``(low, high)`` range of the zoom factor (labels resized with nearest), or None.
        focus: probability that a patch is centred on a foreground pixel (label not 0 and not 255), which keeps
            mostly-background data from teaching "background everywhere" first; 0 for uniform crops.

    Iterating yields ``(image (h, w, 3) uint8, label (h, w) uint8)`` numpy pairs forever; :meth:`batches` yields
    tensors ready for a model.

    Example:
        >>> from fcnkit.data import open_dataset
        >>> sampler = PatchSampler(open_dataset("scenes:64", count=4), 32, seed=0)
        >>> images, labels = next(sampler.batches(2))
        >>> tuple(images.shape), images.dtype, tuple(labels.shape), labels.dtype
        ((2, 3, 32, 32), torch.float32, (2, 32, 32), torch.int64)
    """

    def __init__(
        self,
        dataset: Any,
        patch: Any,
        *,
        seed: int = 0,
        flips: bool | None = None,
        scale_jitter: tuple[float, float] | None = (0.75, 1.25),
        focus: float = 0.5,
    ) -> None:
        if len(dataset) == 0:
            raise DataError("the dataset to sample patches from is empty; give it at least one image and label.")
        if int(seed) < 0:
            raise DataError(f"seed must be a non-negative integer, got {seed}; pass seed=0 or another integer >= 0.")
        if scale_jitter is not None:
            low, high = (float(v) for v in scale_jitter)
            if not 0 < low <= high:
                raise DataError(
                    f"scale_jitter must be (low, high) with 0 < low <= high, got {scale_jitter!r}; "
                    f"pass for example (0.75, 1.25), or None for no scaling."
                )
            scale_jitter = (low, high)
        if not 0.0 <= float(focus) <= 1.0:
            raise DataError(f"focus must be a probability in [0, 1], got {focus!r}; pass for example 0.5, or 0.")
        self.focus = float(focus)
        self.dataset = dataset
        self.patch = _patch_size(patch)
        self.seed = int(seed)
        self.flips = bool(getattr(dataset, "mirror_safe", True) if flips is None else flips)
        self.scale_jitter = scale_jitter
        self._epoch_order: tuple[int, np.ndarray] | None = None

    def _source(self, n: int) -> int:
        """Which dataset item sample ``n`` is cut from: every item once per epoch, in a seeded order."""
        epoch, position = divmod(n, len(self.dataset))
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order = np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(len(self.dataset))
            self._epoch_order = (epoch, order)
        return int(self._epoch_order[1][position])

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``n`` of the stream (``n >= 0``): a pure function of ``(seed, n)``."""
        image, label = self.dataset[self._source(n)]
        rng = np.random.default_rng([self.seed, _PATCH_STREAM, n])
        return random_patch(
            np.asarray(image), np.asarray(label), self.patch, rng, flips=self.flips, scale_jitter=self.scale_jitter,
            focus=self.focus,
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = 0
        while True:
            yield self.sample(n)
            n += 1

    def batch(
        self, batch_size: int, step: int, *, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` for process ``rank`` of ``world_size``: images ``(B, 3, h, w)`` float32 in 0–255 and
        labels ``(B, h, w)`` int64 (255 = ignore)."""
        if batch_size < 1 or step < 0 or not 0 <= rank < world_size:
            raise DataError(
                f"need batch_size >= 1, step >= 0 and 0 <= rank < world_size, got batch_size={batch_size}, "
                f"step={step}, rank={rank}, world_size={world_size}."
            )
        first = (step * world_size + rank) * batch_size
        pairs = [self.sample(first + j) for j in range(batch_size)]
        images = torch.from_numpy(np.stack([image for image, _ in pairs]))
        labels = torch.from_numpy(np.stack([label for _, label in pairs]))
        return images.permute(0, 3, 1, 2).float().contiguous(), labels.long()

    def batches(
        self, batch_size: int, start_step: int = 0, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_step, start_step + 1, …`` forever (see :meth:`batch`); resuming at step ``k`` gives
        exactly what an uninterrupted run gave from step ``k``."""
        step = int(start_step)
        while True:
            yield self.batch(batch_size, step, rank=rank, world_size=world_size)
            step += 1
