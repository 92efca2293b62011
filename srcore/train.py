"""The training loop: L1 plus the regularisers' terms, Adam, cosine annealing with restarts,
EMA of weights.

Plain Python, no framework: a job builds the model (with its regularisers, see
``srcore.models.build_model``), the patch dataset and the degradation, then calls ``train``.
A checkpoint holds everything needed to continue bit-identically (on CPU): model, EMA,
optimizer, scheduler, iteration and the RNG states; ``train`` resumes from it when it exists.
The one before it is kept (``checkpoint.prev.pt``): a damaged latest one (a write cut short by
a full disk, a truncated copy) falls back to it instead of failing every rerun (the files and
random states: ``srcore.train_checkpoint``).
Regularisers add nothing to it: their state is a function of the iteration, set before every
forward pass (``Regularizer.set_iteration``), and their random draws come from torch's global
RNG (in the checkpoint). A regulariser asking for k ``views`` makes every GT patch of a batch
k LR views (view-major, GT repeated): k times the network compute per GT image.

Speed (docs/speed.md): ``precision`` runs the model's forward pass and loss under
``torch.autocast`` (bf16, or fp16 with a ``GradScaler`` whose state the checkpoint keeps);
``tf32`` lets CUDA matmuls and convolutions of the model step use TF32 (only inside the model
step: the degradation keeps full fp32); ``channels_last`` stores the network's activations
NHWC; ``compile`` runs the model through ``torch.compile``. The loop never waits for the
device between log steps: the loss and a non-finite flag stay on the device and are read at
log, validation and checkpoint steps, where a non-finite loss raises ``FloatingPointError``
naming its iteration; a checkpoint is never written with non-finite weights.

A job on several GPUs (``ranks``: ``srcore.distributed``) runs this loop in each of its N
processes: the batch is the global one (each rank takes its share of every iteration's crops),
the gradients are averaged over the ranks (DistributedDataParallel; under a CUDA graph one
all-reduce after the replay), the losses checked and logged are the ranks' mean, the ranks agree
on a stop request at every iteration, and rank 0 alone writes the checkpoint, which holds every
rank's random states. Without ``ranks`` nothing of this runs: a 1-GPU job is unchanged.
"""
from __future__ import annotations

import copy
import inspect
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srcore.data import TrainPatches
from srcore.distributed import AverageGradients, Ranks, rank_seed
from srcore.models.checkpoint import CheckpointError
from srcore.schedule import CosineAnnealingRestartLR, ema_update
from srcore.train_batches import Batch, Degrade, Resume, TrainingBatches, degraded_views  # noqa: F401 (public)
from srcore.train_checkpoint import (
    previous_checkpoint,
    rank_rng_states,
    read_latest_checkpoint,
    read_training_state,
    reseed_streams,
    reseed_value,  # noqa: F401  (re-exported: srcore.train.reseed_value is public)
    restore_rng_states,
    rng_states,
    write_checkpoint,
)
from srcore.train_step import CudaGraphStep, EagerStep, SiteOutputs, regularized_loss  # noqa: F401 (public)

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on request (a preemption or timeout notice) after saving its state.
    ``request``: on several ranks, the request they agreed on (the largest of their
    ``should_stop`` values: a rank that got no signal itself learns which one stopped the job)."""

    def __init__(self, iteration: int, checkpoint: Path, request: int | None = None):
        super().__init__(f"stopped on request at iteration {iteration}; state saved to {checkpoint}")
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.request = request


@dataclass
class TrainSettings:
    """No defaults: the job config (``conf/``) states every value, once."""

    iterations: int
    batch_size: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    periods: tuple[int, ...]
    restart_weights: tuple[float, ...]
    eta_min: float
    ema_decay: float
    seed: int
    log_every: int
    val_every: int
    ckpt_every: int
    num_workers: int
    device: str
    # The speed options (docs/speed.md); like every key, their defaults live in conf/train/*.yaml.
    precision: str                # fp32 | bf16 | fp16
    tf32: bool                    # CUDA only: TF32 matmuls/convolutions in the model step
    channels_last: bool
    compile: bool
    cuda_graph: bool              # CUDA only: forward + loss + backward replayed from one CUDA graph
    superbatch: int               # batches degraded per call of the degradation
    prefetch: int                 # batches made ahead of the step by a background thread (0: none)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TrainingState:
    """Model, EMA, optimizer, scheduler and the degradation's generator: what a checkpoint holds.
    With ``ranks`` (a job on several GPUs) rank 0 chooses the file every rank resumes from, and
    writes the checkpoint with every rank's random states."""

    def __init__(self, model: torch.nn.Module, cfg: TrainSettings, gen: torch.Generator, ranks: Ranks | None = None):
        self.ranks = ranks
        self.model, self.gen, self.seed = model, gen, cfg.seed if ranks is None else rank_seed(cfg.seed, ranks.rank)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        device = next(model.parameters()).device
        # CUDA: the fused Adam (one kernel for all parameters, and it takes the fp16 scaler's
        # inf check on the device instead of a host read per step). CPU: today's Adam, bit for bit.
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                    weight_decay=cfg.weight_decay, **fused)
        self.sched = CosineAnnealingRestartLR(self.opt, cfg.periods, cfg.restart_weights, cfg.eta_min)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.ema_decay = cfg.ema_decay
        self.degradation_resume: Resume | None = None  # set by the loop after each iteration

    def apply_gradients(self) -> None:
        """The optimizer step (through the fp16 scaler, which skips a step with non-finite
        gradients), the learning-rate schedule and the EMA of the weights."""
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        ema_update(self.ema, self.model, self.ema_decay)

    def resume(self, checkpoint: Path) -> tuple[int, int | None]:
        """Load the newest readable checkpoint (``read_latest_checkpoint``): (the iteration it was
        taken at, 0 if there is none; the first iteration the degradation's restored generator
        draws for, None when that is the next one)."""
        checkpoint = Path(checkpoint)
        state, path = read_latest_checkpoint(checkpoint) if self.ranks is None else self._read_shared(checkpoint)
        if state is None:
            return 0, None
        rng = state["rng"] if self.ranks is None else rank_rng_states(state, self.ranks.rank, self.ranks.world_size)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            if self.scaler.is_enabled() and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if rng is None:  # a rank the checkpoint holds nothing for (written by a job on fewer ranks)
                reseed_streams(self.gen, self.seed, state["iteration"])
            else:
                restore_rng_states(rng, self.gen, self.seed, state["iteration"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # written for another network or optimizer
            raise CheckpointError(f"{path}: does not fit this job's model and optimizer "
                                  f"({str(e).strip().splitlines()[0][:200]}); delete {checkpoint.name} and "
                                  f"{previous_checkpoint(checkpoint).name} to train from scratch") from None
        log.info("resumed from %s at iteration %d", path, state["iteration"])
        return state["iteration"], (rng or {}).get("degradation_from")

    def _read_shared(self, checkpoint: Path) -> tuple[dict | None, Path | None]:
        """Rank 0 picks the newest readable checkpoint (renaming damaged ones), the other ranks
        read the file it picked."""
        if self.ranks.leader:
            state, path = read_latest_checkpoint(checkpoint)
            self.ranks.broadcast(None if path is None else str(path))
            return state, path
        path = self.ranks.broadcast(None)
        return (None, None) if path is None else (read_training_state(Path(path)), Path(path))

    def save(self, checkpoint: Path, iteration: int) -> None:
        """Write the state; refuses (``FloatingPointError``) when a weight of the model or its
        EMA is not finite, so the last good checkpoint stays the one a rerun resumes from. The
        degradation's generator is saved as the batches left it for the next iteration
        (``srcore.train_batches``: it may have drawn ahead)."""
        if not weights_finite(self.model, self.ema):
            raise FloatingPointError(f"the weights are not finite after iteration {iteration}; no checkpoint "
                                     f"written (the last one kept)")
        rng = rng_states(self.gen)
        if self.degradation_resume is not None:
            rng["degradation"] = self.degradation_resume.state
            rng["degradation_from"] = self.degradation_resume.iteration
        ranks = {}
        if self.ranks is not None:  # every rank's random states, written by rank 0 alone
            every = self.ranks.gather(rng)
            if not self.ranks.leader:
                return
            rng, ranks = every[0], {"ranks": self.ranks.world_size, "rng_ranks": every[1:]}
        state = {"iteration": iteration, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "rng": rng, **ranks}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        write_checkpoint(checkpoint, state)


def weights_finite(*models: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of the models is finite (one host read)."""
    tensors = [t for m in models for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def _seed(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # dropout masks come from torch's global RNG
    # The degradation's own stream, on the host whatever the training device: its draws are a
    # few hundred numbers per batch, read by the host without waiting for the device, and the
    # state in a checkpoint is the same on every machine (a CPU run resumes exactly on a GPU).
    return torch.Generator().manual_seed(seed)


# Training images move to the GPU (uint8) when they take at most this share of its free memory.
RESIDENT_SHARE = 0.25


def _place_images(patches: TrainPatches, cfg: TrainSettings, device: torch.device) -> None:
    """On a GPU, with no loader workers (they cannot share CUDA tensors), keep the training images
    on the device when they fit: the crops are cut there, nothing is copied per batch."""
    if device.type != "cuda" or cfg.num_workers or not hasattr(patches, "to") or patches.device == device:
        return
    free, _ = torch.cuda.mem_get_info(device)
    if patches.nbytes() <= RESIDENT_SHARE * free:
        patches.to(device)
        log.info("training images resident on %s (%.2f GB uint8)", device, patches.nbytes() / 1e9)
    else:
        log.info("training images stay on the host (%.2f GB > %.0f%% of the %.2f GB free on %s); batches are "
                 "copied from pinned memory", patches.nbytes() / 1e9, 100 * RESIDENT_SHARE, free / 1e9, device)


def _model_step(state: TrainingState, model: torch.nn.Module, cfg: TrainSettings, device: torch.device, taps,
                first: Batch, ranks: Ranks | None = None):
    """The step: eager, or on CUDA with ``cuda_graph`` its forward and backward replayed from a
    CUDA graph (``srcore.train_step``); ``first`` gives the static buffers' shapes."""
    if ranks is not None:
        return _distributed_step(state, model, cfg, device, taps, first, ranks)
    forward = torch.compile(model) if cfg.compile else model
    autocast = dict(device_type=device.type, dtype=PRECISIONS[cfg.precision] or torch.float32,
                    enabled=PRECISIONS[cfg.precision] is not None)
    eager = EagerStep(state, forward, getattr(model, "regularizers", ()), taps, autocast, device, cfg.tf32)
    if device.type == "cuda" and cfg.cuda_graph:
        return CudaGraphStep(eager, (first.hr, first.lr))
    return eager


# The networks' buffers are constants: DDP need not broadcast them before every forward pass (the
# keyword changed name in torch 2.13).
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})


def _distributed_step(state: TrainingState, model: torch.nn.Module, cfg: TrainSettings, device: torch.device, taps,
                      first: Batch, ranks: Ranks):
    """A job on several ranks: the eager step through DistributedDataParallel (its all-reduce
    overlaps the backward); on CUDA with ``cuda_graph``, each rank's forward and backward replayed
    from its graph and the gradients averaged by one all-reduce after the replay (DDP's hooks
    cannot be captured), outside the graph, as the optimizer is."""
    if cfg.compile:
        raise ValueError("train.compile with several ranks is not supported")
    autocast = dict(device_type=device.type, dtype=PRECISIONS[cfg.precision] or torch.float32,
                    enabled=PRECISIONS[cfg.precision] is not None)
    regularizers = getattr(model, "regularizers", ())
    if device.type == "cuda" and cfg.cuda_graph:
        log.info("%d ranks: each replays its forward and backward from a CUDA graph; the gradients are averaged "
                 "by one all-reduce after each replay, outside the graph", ranks.world_size)
        return CudaGraphStep(averaging_step(state, model, regularizers, taps, autocast, device, cfg, ranks),
                             (first.hr, first.lr))
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  **_NO_BUFFER_SYNC)
    ddp.register_comm_hook(ranks.world_size, average_each_gradient)
    return EagerStep(state, ddp, regularizers, taps, autocast, device, cfg.tf32)


def average_each_gradient(world_size: int, bucket):
    """DDP's communication hook here: each gradient of a bucket all-reduced on its own, then the
    bucket divided by the rank count. DDP regroups its buckets after the first iteration it
    trains (in the order the gradients were ready), so a resumed job's first iteration would sum
    a bucket in another layout than the uninterrupted job did at that iteration: with 3 or more
    ranks, other float roundings (measured on 4 gloo ranks: resume no longer bit-identical).
    Reduced gradient by gradient, a sum's order depends only on the gradient's size: exact
    resume with any number of ranks, still overlapping the backward."""
    futures = [torch.distributed.all_reduce(g, async_op=True).get_future()
               for g in bucket.gradients()]  # views of the bucket's buffer
    buffer = bucket.buffer()
    return torch.futures.collect_all(futures).then(lambda _: buffer.div_(world_size))


def averaging_step(state: TrainingState, model: torch.nn.Module, regularizers, taps, autocast: dict,
                   device: torch.device, cfg: TrainSettings, ranks: Ranks) -> EagerStep:
    """The eager step of a rank without DDP: its local forward and backward, then the gradients
    averaged over the ranks (``AverageGradients``) before the optimizer. Under a CUDA graph the
    graph replays the first part; a rank whose capture fails runs this step and still meets the
    others in the same all-reduce."""
    for t in model.state_dict().values():  # what DDP does at its start: every rank from rank 0's weights
        torch.distributed.broadcast(t, 0)
    return EagerStep(state, model, regularizers, taps, autocast, device, cfg.tf32, sync=AverageGradients(model, ranks))


def train(
    model: torch.nn.Module,
    patches: TrainPatches,
    degrade: Degrade,
    cfg: TrainSettings,
    checkpoint: Path,
    log_metrics: Callable[[dict, int], None] = lambda metrics, step: None,
    validate: Callable[[torch.nn.Module], dict] | None = None,
    on_iteration: Callable[[int], None] = lambda iteration: None,
    should_stop: Callable[[], bool] = lambda: False,
    ranks: Ranks | None = None,
) -> torch.nn.Module:
    """Train ``model`` (and its ``model.regularizers``) in place and return its EMA copy (or the
    model if ema_decay is 0).

    ``should_stop`` is polled after every iteration: when it says so, the state is saved
    and ``Interrupted`` is raised, so a rerun continues exactly where this one stopped.

    ``ranks``: this process is one rank of a job on several (module doc; every rank calls
    ``train`` with the same settings and model). ``should_stop`` may then return an int (a
    signal number, 0 for none): the ranks stop when any asks, ``Interrupted.request`` the
    largest. ``log_metrics``, ``validate`` and ``on_iteration`` are rank 0's business (the
    others pass none)."""
    device = ranks.device if ranks is not None else resolve_device(cfg.device)
    gen = _seed(cfg.seed if ranks is None else rank_seed(cfg.seed, ranks.rank))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    state = TrainingState(model, cfg, gen, ranks)
    start, degradation_from = state.resume(checkpoint)
    regularizers = tuple(getattr(model, "regularizers", ()))
    taps = SiteOutputs(model, sorted({s for r in regularizers for s in r.tapped_sites}))
    _place_images(patches, cfg, device)
    batches = TrainingBatches(patches, degrade, gen, batch_size=cfg.batch_size, iterations=cfg.iterations,
                              start=start, device=device, views=max((r.views for r in regularizers), default=1),
                              channels_last=cfg.channels_last, superbatch=cfg.superbatch, prefetch=cfg.prefetch,
                              num_workers=cfg.num_workers, seed=cfg.seed, resume_from=degradation_from,
                              **({} if ranks is None else {"rank": ranks.rank, "world_size": ranks.world_size}))
    window = LossWindow(device, start, min(cfg.log_every, cfg.iterations), ranks)
    model.train()
    step, t0, seen = None, time.perf_counter(), 0
    try:
        for batch in batches:
            iteration = batch.iteration
            for r in regularizers:
                r.set_iteration(iteration)
            step = step or _model_step(state, model, cfg, device, taps, batch, ranks)
            loss, terms = step(batch.hr, batch.lr)
            state.degradation_resume = batch.resume
            window.add(iteration, loss)  # on the device: no wait for the step to finish
            seen += 1
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                window.check(iteration)
                if ranks is None:
                    _log_progress(state, cfg, iteration, loss.item(), terms, seen / (time.perf_counter() - t0),
                                  log_metrics)
                else:  # the ranks' means: the loss of the global batch
                    _log_progress(state, cfg, iteration, window.last, {k: ranks.average_(v.detach().float().clone())
                                                                       for k, v in terms.items()},
                                  seen / (time.perf_counter() - t0), log_metrics)
            _validate_save_stop(state, cfg, Path(checkpoint), iteration, log_metrics, validate, on_iteration,
                                should_stop, window, ranks)
    finally:
        batches.close()
        taps.close()
    if device.type == "cuda":
        log.info("peak GPU memory %.2f GB (training)", torch.cuda.max_memory_allocated(device) / 1e9)
    if cfg.channels_last:  # what the job saves and evaluates: the usual layout, whatever trained it
        model.to(memory_format=torch.contiguous_format)
        state.ema.to(memory_format=torch.contiguous_format)
    return state.ema if cfg.ema_decay > 0 else model


class LossWindow:
    """Finiteness of the losses since the last check, kept on the training device: the loop
    never waits for the device to know it. Each loss is copied into a buffer (one launch per
    iteration); ``check`` (at log, validation and checkpoint steps, and when the buffer is full)
    reads it once and raises ``FloatingPointError`` naming the first non-finite iteration.

    With ``ranks`` the buffer is first averaged over the ranks (one all-reduce on the device): the
    losses checked are the global batch's, a non-finite loss on any rank stops every rank at the
    same check, and ``last`` is the global loss of the last iteration checked."""

    def __init__(self, device: torch.device, start: int, capacity: int, ranks: Ranks | None = None):
        self.losses = torch.zeros(max(1, capacity), dtype=torch.float32, device=device)
        self.since, self.count = start + 1, 0
        self.ranks, self._last = ranks, None

    @property
    def last(self) -> float:
        """The (global) loss of the last iteration checked (``ranks`` only)."""
        return self._last.item()

    def add(self, iteration: int, loss: torch.Tensor) -> None:
        if self.count == len(self.losses):
            self.check(iteration - 1)
        self.losses[self.count].copy_(loss.detach())
        self.count += 1

    def check(self, iteration: int) -> None:
        if self.ranks is not None and self.count:
            self.ranks.average_(self.losses[:self.count])
            self._last = self.losses[self.count - 1].clone()
        if self.count and not bool(torch.isfinite(self.losses[:self.count]).all()):  # the one host read
            values = self.losses[:self.count].tolist()
            bad = next(k for k, v in enumerate(values) if not math.isfinite(v))
            raise FloatingPointError(f"loss is {values[bad]} at iteration {self.since + bad} (found at iteration "
                                     f"{iteration}, checking iterations {self.since}-{iteration})")
        self.since, self.count = iteration + 1, 0


def _log_progress(state: TrainingState, cfg: TrainSettings, iteration: int, loss_value: float, terms: dict,
                  it_per_s: float, log_metrics) -> None:
    lr = state.opt.param_groups[0]["lr"]
    log_metrics({"train/loss": loss_value, **{f"train/{k}": v.item() for k, v in terms.items()},
                 "train/lr": lr, "train/iter_per_s": it_per_s}, iteration)
    log.info("iter %d/%d  loss %.4f  lr %.2e  %.1f it/s", iteration, cfg.iterations, loss_value, lr, it_per_s)


def _validate_save_stop(state: TrainingState, cfg: TrainSettings, checkpoint: Path, iteration: int,
                        log_metrics, validate, on_iteration, should_stop, window: LossWindow,
                        ranks: Ranks | None = None) -> None:
    """What follows an optimisation step: validation, checkpoint, progress report, stop request.
    Each of them first checks the losses since the last check (``LossWindow.check``). Several
    ranks agree on the stop request (any rank's), so they stop, and save, at the same iteration."""
    saved = _validate_and_save(state, cfg, checkpoint, iteration, log_metrics, validate, window, ranks)
    on_iteration(iteration)
    stop = should_stop() if ranks is None else ranks.agree(int(should_stop() or 0))
    if stop and iteration < cfg.iterations:
        if not saved:
            window.check(iteration)
            state.save(checkpoint, iteration)
        raise Interrupted(iteration, checkpoint, None if ranks is None else stop)


def _validate_and_save(state: TrainingState, cfg: TrainSettings, checkpoint: Path, iteration: int, log_metrics,
                       validate, window: LossWindow, ranks: Ranks | None = None) -> bool:
    """Validation and the checkpoint where their steps fall; whether a checkpoint was written.
    (Several ranks check their losses at every validation step, whoever validates.)"""
    val_step = iteration % cfg.val_every == 0 or iteration == cfg.iterations
    if val_step and validate is None and ranks is not None:
        window.check(iteration)
    if validate is not None and val_step:
        window.check(iteration)
        val = validate(state.ema if cfg.ema_decay > 0 else state.model)
        state.model.train()
        log_metrics(val, iteration)
        log.info("iter %d  %s", iteration, "  ".join(f"{k} {v:.3f}" for k, v in val.items()))
    saved = iteration % cfg.ckpt_every == 0 or iteration == cfg.iterations
    if saved:
        window.check(iteration)
        state.save(checkpoint, iteration)
    return saved
