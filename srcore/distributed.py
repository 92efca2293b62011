"""One job on several devices: N processes ("ranks") training one model with PyTorch's
DistributedDataParallel, NCCL between GPUs, gloo between CPU processes. Plain torch: who starts
the processes and how they meet is the caller's (``sweeper.ranks``); ``srcore.train`` takes the
``Ranks`` this module connects.

What is global and what is per rank (docs/cluster.md, "One job on N GPUs"):

- **the batch is global**: ``batch_size`` is the job's batch; rank r takes samples r*b .. (r+1)*b - 1
  of each iteration's keys (b = batch_size / N). A crop is a function of (seed, key)
  (``srcore.data.TrainPatches``), so the N ranks together train on the crops a 1-rank job trains on;
- **the gradients are averaged** over the ranks (DDP's all-reduce), so an N-rank job follows the
  schedule (iterations, learning rate, EMA) of a 1-rank job with the same global batch;
- **per rank**: the degradation's generator and the global streams (Python, NumPy, torch: dropout
  masks) are seeded by (seed, rank) (``rank_seed``; rank 0 keeps ``seed``, so rank 0's streams are a
  1-rank job's);
- rank 0 alone writes the checkpoint, which holds every rank's random states (``gather``); every
  rank reads it to resume (the file rank 0 chose: ``broadcast``).

Host-side agreement (a stop request, the random states, the checkpoint's file) goes through a
second, gloo, group (``control``), so that a GPU job never waits for its device to agree on
them; the training loop's loss check averages the losses on the device (``average_``).
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("srcore.train")

# How long a rank waits for the others in one collective: rank 0 validates and writes checkpoints
# while the others wait in their next all-reduce.
TIMEOUT = datetime.timedelta(minutes=30)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams: ``seed`` itself on rank 0 (a 1-rank job's), a
    pure function of (seed, rank) elsewhere (< 2**32: NumPy's global seed takes it too)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, 0xDD9]).generate_state(1, np.uint32)[0])


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of the rank with ``local_rank`` on its machine: the CPU for ``cpu`` (gloo), else
    GPU ``local_rank`` of those visible, or the only one when each rank's process sees one (a
    launcher pinned it with CUDA_VISIBLE_DEVICES, or SLURM bound one GPU per task)."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError(f"train.device={name!r} but this rank sees no GPU")
    if count == 1:
        return torch.device("cuda", 0)
    if local_rank >= count:
        raise RuntimeError(f"rank {local_rank} of this machine has no GPU of its own ({count} visible)")
    return torch.device("cuda", local_rank)


@dataclass
class Ranks:
    """This process's place in a job of ``world_size`` ranks (the default process group is the
    job's): its ``rank``, its ``device``, and ``control``, a gloo group for host-side agreement."""

    rank: int
    world_size: int
    device: torch.device
    control: Any

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes the job's files."""
        return self.rank == 0

    def agree(self, value: int) -> int:
        """The largest of every rank's ``value`` (e.g. a stop request's signal number, 0 for none),
        known to all ranks: they stop at the same iteration."""
        t = torch.tensor([int(value)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return int(t.item())

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the others."""
        out = [None] * self.world_size if self.leader else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.leader else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (on the training device) averaged over the ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.div_(self.world_size)


def connect(rank: int, world_size: int, store, device: torch.device, timeout: datetime.timedelta = TIMEOUT) -> Ranks:
    """Join the job's process group through ``store`` (a ``torch.distributed`` store every rank
    reaches): NCCL on GPUs, gloo on the CPU; and its gloo ``control`` group."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout)
    log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return Ranks(rank, world_size, device, control)


def disconnect() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class AverageGradients:
    """The gradients of ``model`` averaged over the ranks by one all-reduce of all of them
    (flattened in the parameters' order): DistributedDataParallel's average, for a step whose
    backward runs outside DDP (a CUDA graph's replay: DDP's hooks cannot be captured)."""

    def __init__(self, model: torch.nn.Module, ranks: Ranks):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ranks = ranks

    def __call__(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch._utils._flatten_dense_tensors(grads)
        self.ranks.average_(flat)
        for p, g, mean in zip(self.params, grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            if p.grad is None:
                p.grad = torch.empty_like(p).copy_(mean)
            else:
                g.copy_(mean)
