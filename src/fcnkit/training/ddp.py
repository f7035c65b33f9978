"""Multi-process data parallelism for ``torchrun --nproc_per_node N -m fcnkit train …``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything here is a single-process no-op,
so the trainer has one code path. gloo on CPU, NCCL on CUDA (one GPU per local rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process sits: ``rank`` of ``world_size`` processes, and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and shows a progress bar."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This rank's share of ``n`` items taken in a strided split (rank, rank + world, …), like DistributedSampler."""
        return slice(self.rank, n, self.world_size)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all processes (the value itself when single-process)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def setup(device: str | None) -> Dist:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    ``device`` is "cpu", "cuda", "cuda:K" or None (CUDA when available). Under torchrun with CUDA, rank r of a node
    uses GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda" and world > 1:
        want = torch.device("cuda", local)
    if want.type == "cuda":
        torch.cuda.set_device(want)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, device=want)


def teardown(d: Dist) -> None:
    """Leave the process group so torchrun sees a clean exit."""
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
