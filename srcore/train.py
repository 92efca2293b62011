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
"""
from __future__ import annotations

import copy
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
from srcore.models.checkpoint import CheckpointError
from srcore.schedule import CosineAnnealingRestartLR, ema_update
from srcore.train_batches import Batch, Degrade, Resume, TrainingBatches, degraded_views  # noqa: F401 (public)
from srcore.train_checkpoint import (
    previous_checkpoint,
    read_latest_checkpoint,
    reseed_value,  # noqa: F401  (re-exported: srcore.train.reseed_value is public)
    restore_rng_states,
    rng_states,
    write_checkpoint,
)
from srcore.train_step import CudaGraphStep, EagerStep, SiteOutputs, regularized_loss  # noqa: F401 (public)

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on request (a preemption or timeout notice) after saving its state."""

    def __init__(self, iteration: int, checkpoint: Path):
        super().__init__(f"stopped on request at iteration {iteration}; state saved to {checkpoint}")
        self.iteration = iteration
        self.checkpoint = checkpoint


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
    """Model, EMA, optimizer, scheduler and the degradation's generator: what a checkpoint holds."""

    def __init__(self, model: torch.nn.Module, cfg: TrainSettings, gen: torch.Generator):
        self.model, self.gen, self.seed = model, gen, cfg.seed
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
        state, path = read_latest_checkpoint(checkpoint)
        if state is None:
            return 0, None
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            if self.scaler.is_enabled() and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            restore_rng_states(state["rng"], self.gen, self.seed, state["iteration"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # written for another network or optimizer
            raise CheckpointError(f"{path}: does not fit this job's model and optimizer "
                                  f"({str(e).strip().splitlines()[0][:200]}); delete {checkpoint.name} and "
                                  f"{previous_checkpoint(checkpoint).name} to train from scratch") from None
        log.info("resumed from %s at iteration %d", path, state["iteration"])
        return state["iteration"], state["rng"].get("degradation_from")

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
        state = {"iteration": iteration, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "rng": rng}
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
                first: Batch):
    """The step: eager, or on CUDA with ``cuda_graph`` its forward and backward replayed from a
    CUDA graph (``srcore.train_step``); ``first`` gives the static buffers' shapes."""
    forward = torch.compile(model) if cfg.compile else model
    autocast = dict(device_type=device.type, dtype=PRECISIONS[cfg.precision] or torch.float32,
                    enabled=PRECISIONS[cfg.precision] is not None)
    eager = EagerStep(state, forward, getattr(model, "regularizers", ()), taps, autocast, device, cfg.tf32)
    if device.type == "cuda" and cfg.cuda_graph:
        return CudaGraphStep(eager, (first.hr, first.lr))
    return eager


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
) -> torch.nn.Module:
    """Train ``model`` (and its ``model.regularizers``) in place and return its EMA copy (or the
    model if ema_decay is 0).

    ``should_stop`` is polled after every iteration: when it says so, the state is saved
    and ``Interrupted`` is raised, so a rerun continues exactly where this one stopped."""
    device = resolve_device(cfg.device)
    gen = _seed(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    state = TrainingState(model, cfg, gen)
    start, degradation_from = state.resume(checkpoint)
    regularizers = tuple(getattr(model, "regularizers", ()))
    taps = SiteOutputs(model, sorted({s for r in regularizers for s in r.tapped_sites}))
    _place_images(patches, cfg, device)
    batches = TrainingBatches(patches, degrade, gen, batch_size=cfg.batch_size, iterations=cfg.iterations,
                              start=start, device=device, views=max((r.views for r in regularizers), default=1),
                              channels_last=cfg.channels_last, superbatch=cfg.superbatch, prefetch=cfg.prefetch,
                              num_workers=cfg.num_workers, seed=cfg.seed, resume_from=degradation_from)
    window = LossWindow(device, start, min(cfg.log_every, cfg.iterations))
    model.train()
    step, t0, seen = None, time.perf_counter(), 0
    try:
        for batch in batches:
            iteration = batch.iteration
            for r in regularizers:
                r.set_iteration(iteration)
            step = step or _model_step(state, model, cfg, device, taps, batch)
            loss, terms = step(batch.hr, batch.lr)
            state.degradation_resume = batch.resume
            window.add(iteration, loss)  # on the device: no wait for the step to finish
            seen += 1
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                window.check(iteration)
                _log_progress(state, cfg, iteration, loss.item(), terms, seen / (time.perf_counter() - t0),
                              log_metrics)
            _validate_save_stop(state, cfg, Path(checkpoint), iteration, log_metrics, validate, on_iteration,
                                should_stop, window)
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
    reads it once and raises ``FloatingPointError`` naming the first non-finite iteration."""

    def __init__(self, device: torch.device, start: int, capacity: int):
        self.losses = torch.zeros(max(1, capacity), dtype=torch.float32, device=device)
        self.since, self.count = start + 1, 0

    def add(self, iteration: int, loss: torch.Tensor) -> None:
        if self.count == len(self.losses):
            self.check(iteration - 1)
        self.losses[self.count].copy_(loss.detach())
        self.count += 1

    def check(self, iteration: int) -> None:
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
                        log_metrics, validate, on_iteration, should_stop, window: LossWindow) -> None:
    """What follows an optimisation step: validation, checkpoint, progress report, stop request.
    Each of them first checks the losses since the last check (``LossWindow.check``)."""
    saved = _validate_and_save(state, cfg, checkpoint, iteration, log_metrics, validate, window)
    on_iteration(iteration)
    if should_stop() and iteration < cfg.iterations:
        if not saved:
            window.check(iteration)
            state.save(checkpoint, iteration)
        raise Interrupted(iteration, checkpoint)


def _validate_and_save(state: TrainingState, cfg: TrainSettings, checkpoint: Path, iteration: int, log_metrics,
                       validate, window: LossWindow) -> bool:
    """Validation and the checkpoint where their steps fall; whether a checkpoint was written."""
    if validate is not None and (iteration % cfg.val_every == 0 or iteration == cfg.iterations):
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
