"""The training loop: L1 plus the regularisers' terms, Adam, cosine annealing with restarts,
EMA of weights.

Plain Python, no framework: a job builds the model (with its regularisers, see
``srcore.models.build_model``), the patch dataset and the degradation, then calls ``train``.
A checkpoint holds everything needed to continue bit-identically (on CPU): model, EMA,
optimizer, scheduler, iteration and the RNG states; ``train`` resumes from it when it exists.
The one before it is kept (``checkpoint.prev.pt``): a damaged latest one (a write cut short by
a full disk, a truncated copy) falls back to it instead of failing every rerun.
Regularisers add nothing to it: their state is a function of the iteration, set before every
forward pass (``Regularizer.set_iteration``), and their random draws come from torch's global
RNG (in the checkpoint). A regulariser asking for k ``views`` makes every GT patch of a batch
k LR views (view-major, GT repeated): k times the network compute per GT image.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from srcore.atomic import atomic_write
from srcore.data import KeyRange, TrainPatches
from srcore.models.checkpoint import CheckpointError, read_torch_file
from srcore.regularizers import Regularizer
from srcore.schedule import CosineAnnealingRestartLR, ema_update

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _rng_states(gen: torch.Generator) -> dict:
    # Plain tensors and numbers only, so the checkpoint loads with weights_only=True.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "degradation": gen.get_state(),
    }


def _restore_rng_states(states: dict, gen: torch.Generator) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    gen.set_state(states["degradation"])


class TrainingState:
    """Model, EMA, optimizer, scheduler and the degradation's generator: what a checkpoint holds."""

    def __init__(self, model: torch.nn.Module, cfg: TrainSettings, gen: torch.Generator):
        self.model, self.gen = model, gen
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                    weight_decay=cfg.weight_decay)
        self.sched = CosineAnnealingRestartLR(self.opt, cfg.periods, cfg.restart_weights, cfg.eta_min)

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
            _restore_rng_states(state["rng"], self.gen)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # written for another network or optimizer
            raise CheckpointError(f"{path}: does not fit this job's model and optimizer "
                                  f"({str(e).strip().splitlines()[0][:200]}); delete {checkpoint.name} and "
                                  f"{previous_checkpoint(checkpoint).name} to train from scratch") from None
        log.info("resumed from %s at iteration %d", path, state["iteration"])
        return state["iteration"]

    def save(self, checkpoint: Path, iteration: int) -> None:
        state = {"iteration": iteration, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "rng": _rng_states(self.gen)}
        checkpoint = Path(checkpoint)
        if checkpoint.exists():
            _keep_as_previous(checkpoint)
        atomic_write(checkpoint, lambda f: torch.save(state, f))


# --- Checkpoint files: the latest and the one before it -------------------------------------

CHECKPOINT_KEYS = ("iteration", "model", "ema", "optimizer", "scheduler", "rng")


def previous_checkpoint(checkpoint: Path) -> Path:
    """Where the checkpoint before the latest is kept (``checkpoint.prev.pt``)."""
    return checkpoint.with_name(f"{checkpoint.stem}.prev{checkpoint.suffix}")


def _keep_as_previous(checkpoint: Path) -> None:
    """Make the current checkpoint the previous one, atomically and without ever removing the
    current one: a hard link renamed onto ``previous_checkpoint`` (a copy where the filesystem
    has no hard links). The new checkpoint then replaces the current one by its own rename."""
    previous = previous_checkpoint(checkpoint)
    tmp = checkpoint.with_name(f".{previous.name}.{os.getpid()}.tmp")  # a partial write to a job's start
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoint, tmp)
    except OSError:
        shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, previous)


def _read_training_state(path: Path) -> dict:
    state = read_torch_file(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    return state


def read_latest_checkpoint(checkpoint: Path) -> tuple[dict | None, Path | None]:
    """The newest readable training state and its file: ``checkpoint``, else the previous one.

    A file that cannot be read (empty, truncated, damaged, or refused because it holds more than
    tensors) is renamed ``<name>.corrupt`` (kept for a look, and out of the next rotation) with a
    warning naming it; with no readable file left, training starts over, saying so.
    ``(None, None)``: start from iteration 0."""
    problems = []
    for path in (checkpoint, previous_checkpoint(checkpoint)):
        if not path.exists():
            continue
        try:
            state = _read_training_state(path)
        except CheckpointError as e:
            os.replace(path, path.with_name(path.name + ".corrupt"))
            problems.append(f"{e} (kept as {path.name}.corrupt)")
            continue
        if problems:
            log.warning("%s; resuming from the previous checkpoint %s (iteration %d)", problems[0], path,
                        state["iteration"])
        return state, path
    if problems:
        log.warning("%s; no readable checkpoint is left: training starts over from iteration 0", "; ".join(problems))
    return None, None


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
    """L1 plus every regulariser's extra term; ``(loss, {"<name>_loss": term})``."""
    loss = F.l1_loss(sr, hr)
    terms = {}
    for r in regularizers:
        term = r.extra_loss(sr, hr, taps.features)
        if term is not None:
            terms[f"{r.name}_loss"] = term
            loss = loss + term
    return loss, terms


def _seed(seed: int, device: torch.device) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # dropout masks come from torch's global RNG
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)  # the degradation's own stream
    return gen


def _loader(patches: TrainPatches, cfg: TrainSettings, start: int, device: torch.device) -> DataLoader:
    return DataLoader(patches, batch_size=cfg.batch_size, sampler=KeyRange(start, cfg.iterations, cfg.batch_size),
                      num_workers=cfg.num_workers, pin_memory=device.type == "cuda", drop_last=True,
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
    gen = _seed(cfg.seed, device)
    model.to(device)
    state = TrainingState(model, cfg, gen)
    start = state.resume(checkpoint)
    regularizers = tuple(getattr(model, "regularizers", ()))
    views = max((r.views for r in regularizers), default=1)
    taps = SiteOutputs(model, sorted({s for r in regularizers for s in r.tapped_sites}))
    loader = _loader(patches, cfg, start, device)
    model.train()
    t0, seen = time.perf_counter(), 0
    try:
        for iteration, hr_uint8 in enumerate(loader, start=start + 1):
            for r in regularizers:
                r.set_iteration(iteration)
            hr = hr_uint8.to(device, non_blocking=True).float().div_(255)
            hr, lr_img = degraded_views(degrade, hr, gen, views)
            loss, terms = regularized_loss(model(lr_img), hr, regularizers, taps)
            state.opt.zero_grad(set_to_none=True)
            loss.backward()
            state.opt.step()
            state.sched.step()
            ema_update(state.ema, model, cfg.ema_decay)

            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at iteration {iteration}")
            seen += 1
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                _log_progress(state, cfg, iteration, loss_value, terms, seen / (time.perf_counter() - t0),
                              log_metrics)
            _validate_save_stop(state, cfg, Path(checkpoint), iteration, log_metrics, validate, on_iteration,
                                should_stop)
    finally:
        taps.close()
    return state.ema if cfg.ema_decay > 0 else model


def _log_progress(state: TrainingState, cfg: TrainSettings, iteration: int, loss_value: float, terms: dict,
                  it_per_s: float, log_metrics) -> None:
    lr = state.opt.param_groups[0]["lr"]
    log_metrics({"train/loss": loss_value, **{f"train/{k}": v.item() for k, v in terms.items()},
                 "train/lr": lr, "train/iter_per_s": it_per_s}, iteration)
    log.info("iter %d/%d  loss %.4f  lr %.2e  %.1f it/s", iteration, cfg.iterations, loss_value, lr, it_per_s)


def _validate_save_stop(state: TrainingState, cfg: TrainSettings, checkpoint: Path, iteration: int,
                        log_metrics, validate, on_iteration, should_stop) -> None:
    """What follows an optimisation step: validation, checkpoint, progress report, stop request."""
    if validate is not None and (iteration % cfg.val_every == 0 or iteration == cfg.iterations):
        val = validate(state.ema if cfg.ema_decay > 0 else state.model)
        state.model.train()
        log_metrics(val, iteration)
        log.info("iter %d  %s", iteration, "  ".join(f"{k} {v:.3f}" for k, v in val.items()))
    saved = iteration % cfg.ckpt_every == 0 or iteration == cfg.iterations
    if saved:
        state.save(checkpoint, iteration)
    on_iteration(iteration)
    if should_stop() and iteration < cfg.iterations:
        if not saved:
            state.save(checkpoint, iteration)
        raise Interrupted(iteration, checkpoint)
