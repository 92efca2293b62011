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
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from srcore.data import KeyRange, TrainPatches
from srcore.models.checkpoint import CheckpointError
from srcore.regularizers import Regularizer
from srcore.schedule import CosineAnnealingRestartLR, ema_update
from srcore.tf32 import cuda_tf32
from srcore.train_checkpoint import (
    previous_checkpoint,
    read_latest_checkpoint,
    reseed_value,  # noqa: F401  (re-exported: srcore.train.reseed_value is public)
    restore_rng_states,
    rng_states,
    write_checkpoint,
)

log = logging.getLogger(__name__)

Degrade = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


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

    def apply_gradients(self) -> None:
        """The optimizer step (through the fp16 scaler, which skips a step with non-finite
        gradients), the learning-rate schedule and the EMA of the weights."""
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        ema_update(self.ema, self.model, self.ema_decay)

    def resume(self, checkpoint: Path) -> int:
        """Load the newest readable checkpoint (``read_latest_checkpoint``); the iteration it was
        taken at, 0 if there is none."""
        checkpoint = Path(checkpoint)
        state, path = read_latest_checkpoint(checkpoint)
        if state is None:
            return 0
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
        return state["iteration"]

    def save(self, checkpoint: Path, iteration: int) -> None:
        """Write the state; refuses (``FloatingPointError``) when a weight of the model or its
        EMA is not finite, so the last good checkpoint stays the one a rerun resumes from."""
        if not weights_finite(self.model, self.ema):
            raise FloatingPointError(f"the weights are not finite after iteration {iteration}; no checkpoint "
                                     f"written (the last one kept)")
        state = {"iteration": iteration, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "rng": rng_states(self.gen)}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        write_checkpoint(checkpoint, state)


def weights_finite(*models: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of the models is finite (one host read)."""
    tensors = [t for m in models for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def degraded_views(degrade: Degrade, hr: torch.Tensor, gen: torch.Generator, views: int):
    """``(hr, lr)`` for a batch of GT patches: ``views`` independently degraded LR views of each,
    view-major along the batch, with ``hr`` repeated to match. Views of one GT patch share its
    crop (``srcore.degrade.Degradation.views``); all draws come from ``gen``, so resume is exact."""
    if views == 1:
        return degrade(hr, gen)
    if not hasattr(degrade, "views"):
        raise TypeError(f"{views} degraded views per GT patch need a srcore.degrade.Degradation "
                        f"(its views method shares one crop between them), got {degrade!r}")
    return degrade.views(hr, gen, views)


def _training_batch(hr_uint8: torch.Tensor, degrade: Degrade, gen: torch.Generator, views: int,
                    device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hr, lr)`` on the device for a loader batch of uint8 GT patches: scaled to [0, 1] and
    degraded (``degraded_views``); the LR batch NHWC when the network trains channels_last."""
    hr = hr_uint8.to(device, non_blocking=True).float().div_(255)
    hr, lr_img = degraded_views(degrade, hr, gen, views)
    if channels_last:
        lr_img = lr_img.contiguous(memory_format=torch.channels_last)
    return hr, lr_img


class SiteOutputs:
    """Keeps the outputs of the named sites from each forward pass (for regularisers' losses)."""

    def __init__(self, model: torch.nn.Module, sites: Sequence[str]):
        self.features: dict[str, torch.Tensor] = {}
        modules = model.site_modules() if sites else {}
        self.handles = [modules[s].register_forward_hook(
            lambda module, inputs, output, s=s: self.features.__setitem__(s, output)) for s in sites]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def regularized_loss(sr, hr, regularizers: Sequence[Regularizer], taps: SiteOutputs):
    """L1 plus every regulariser's extra term; ``(loss, {"<name>_loss": term})``. The L1 is taken
    in fp32 whatever the precision of ``sr``."""
    loss = F.l1_loss(sr.float(), hr)
    terms = {}
    for r in regularizers:
        term = r.extra_loss(sr, hr, taps.features)
        if term is not None:
            terms[f"{r.name}_loss"] = term
            loss = loss + term
    return loss, terms


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


def _loader(patches: TrainPatches, cfg: TrainSettings, start: int, device: torch.device) -> DataLoader:
    on_host = getattr(patches, "device", torch.device("cpu")).type == "cpu"
    return DataLoader(patches, batch_size=cfg.batch_size, sampler=KeyRange(start, cfg.iterations, cfg.batch_size),
                      num_workers=cfg.num_workers, pin_memory=device.type == "cuda" and on_host, drop_last=True,
                      persistent_workers=False,
                      # its own generator: creating the iterator must not consume the global RNG
                      # that drives dropout (a resumed run would be shifted by one draw)
                      generator=torch.Generator().manual_seed(cfg.seed))


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
    start = state.resume(checkpoint)
    regularizers = tuple(getattr(model, "regularizers", ()))
    views = max((r.views for r in regularizers), default=1)
    taps = SiteOutputs(model, sorted({s for r in regularizers for s in r.tapped_sites}))
    _place_images(patches, cfg, device)
    loader = _loader(patches, cfg, start, device)
    forward = torch.compile(model) if cfg.compile else model
    autocast = dict(device_type=device.type, dtype=PRECISIONS[cfg.precision] or torch.float32,
                    enabled=PRECISIONS[cfg.precision] is not None)
    window = LossWindow(device, start)
    model.train()
    t0, seen = time.perf_counter(), 0
    try:
        for iteration, hr_uint8 in enumerate(loader, start=start + 1):
            for r in regularizers:
                r.set_iteration(iteration)
            hr, lr_img = _training_batch(hr_uint8, degrade, gen, views, device, cfg.channels_last)
            # TF32 (train.tf32) inside the model step only: the degradation's JPEG codec must not round through it
            with cuda_tf32(device, cfg.tf32):
                with torch.autocast(**autocast):
                    loss, terms = regularized_loss(forward(lr_img), hr, regularizers, taps)
                state.opt.zero_grad(set_to_none=True)
                state.scaler.scale(loss).backward()
            state.apply_gradients()

            window.add(iteration, loss)  # on the device: no wait for the step to finish
            seen += 1
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                window.check(iteration)
                _log_progress(state, cfg, iteration, loss.item(), terms, seen / (time.perf_counter() - t0),
                              log_metrics)
            _validate_save_stop(state, cfg, Path(checkpoint), iteration, log_metrics, validate, on_iteration,
                                should_stop, window)
    finally:
        taps.close()
    if cfg.channels_last:  # what the job saves and evaluates: the usual layout, whatever trained it
        model.to(memory_format=torch.contiguous_format)
        state.ema.to(memory_format=torch.contiguous_format)
    return state.ema if cfg.ema_decay > 0 else model


class LossWindow:
    """Finiteness of the losses since the last check, kept on the training device: the loop
    never waits for the device to know it. ``check`` (at log, validation and checkpoint steps)
    reads it once and raises ``FloatingPointError`` naming the first non-finite iteration."""

    def __init__(self, device: torch.device, start: int):
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: every loss finite
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)
        self.since = start + 1

    def add(self, iteration: int, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        new = torch.logical_and(~torch.isfinite(loss), self.first_bad == 0)
        self.first_bad = torch.where(new, iteration, self.first_bad)
        self.bad_value = torch.where(new, loss, self.bad_value)

    def check(self, iteration: int) -> None:
        first = int(self.first_bad)
        if first:
            raise FloatingPointError(f"loss is {float(self.bad_value)} at iteration {first} (found at iteration "
                                     f"{iteration}, checking iterations {self.since}-{iteration})")
        self.since = iteration + 1


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
    on_iteration(iteration)
    if should_stop() and iteration < cfg.iterations:
        if not saved:
            window.check(iteration)
            state.save(checkpoint, iteration)
        raise Interrupted(iteration, checkpoint)
