"""The training loop: L1, Adam, cosine annealing with restarts, EMA of weights.

Plain Python, no framework: a job builds the model, the patch dataset and the
degradation, then calls ``train``. A checkpoint holds everything needed to continue
bit-identically (on CPU): model, EMA, optimizer, scheduler, iteration and the RNG
states; ``train`` resumes from it when it exists.
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
import torch.nn.functional as F
from torch.utils.data import DataLoader

from srcore.atomic import atomic_write
from srcore.data import KeyRange, TrainPatches
from srcore.schedule import CosineAnnealingRestartLR, ema_update

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on request (a preemption or timeout notice) after saving its state."""

    def __init__(self, iteration: int, checkpoint: Path):
        super().__init__(f"stopped on request at iteration {iteration}; state saved to {checkpoint}")
        self.iteration = iteration
        self.checkpoint = checkpoint


@dataclass
class TrainSettings:
    iterations: int
    batch_size: int
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    periods: tuple[int, ...] = (250_000, 250_000)
    restart_weights: tuple[float, ...] = (1.0, 1.0)
    eta_min: float = 1e-7
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 100
    val_every: int = 5000
    ckpt_every: int = 5000
    num_workers: int = 0
    device: str = "cpu"


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


def train(
    model: torch.nn.Module,
    patches: TrainPatches,
    degrade: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainSettings,
    checkpoint: Path,
    log_metrics: Callable[[dict, int], None] = lambda metrics, step: None,
    validate: Callable[[torch.nn.Module], dict] | None = None,
    on_iteration: Callable[[int], None] = lambda iteration: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> torch.nn.Module:
    """Train ``model`` in place and return its EMA copy (or the model if ema_decay is 0).

    ``should_stop`` is polled after every iteration: when it says so, the state is saved
    and ``Interrupted`` is raised, so a rerun continues exactly where this one stopped."""
    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout masks come from torch's global RNG
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)  # the degradation's own stream

    model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = CosineAnnealingRestartLR(opt, cfg.periods, cfg.restart_weights, cfg.eta_min)

    start = 0
    if Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _restore_rng_states(state["rng"], gen)
        start = state["iteration"]
        log.info("resumed from %s at iteration %d", checkpoint, start)

    def save(iteration: int) -> None:
        state = {"iteration": iteration, "model": model.state_dict(), "ema": ema.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_states(gen)}
        atomic_write(checkpoint, lambda f: torch.save(state, f))

    loader = DataLoader(patches, batch_size=cfg.batch_size, sampler=KeyRange(start, cfg.iterations, cfg.batch_size),
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=False,
                        # its own generator: creating the iterator must not consume the global RNG
                        # that drives dropout (a resumed run would be shifted by one draw)
                        generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    t0, seen = time.perf_counter(), 0
    for iteration, hr_uint8 in enumerate(loader, start=start + 1):
        hr = hr_uint8.to(device, non_blocking=True).float().div_(255)
        hr, lr_img = degrade(hr, gen)
        loss = F.l1_loss(model(lr_img), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema_update(ema, model, cfg.ema_decay)

        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at iteration {iteration}")
        seen += 1
        if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
            elapsed = time.perf_counter() - t0
            log_metrics({"train/loss": loss_value, "train/lr": opt.param_groups[0]["lr"],
                         "train/iter_per_s": seen / elapsed}, iteration)
            log.info("iter %d/%d  loss %.4f  lr %.2e  %.1f it/s", iteration, cfg.iterations, loss_value,
                     opt.param_groups[0]["lr"], seen / elapsed)
        if validate is not None and (iteration % cfg.val_every == 0 or iteration == cfg.iterations):
            val = validate(ema if cfg.ema_decay > 0 else model)
            model.train()
            log_metrics(val, iteration)
            log.info("iter %d  %s", iteration, "  ".join(f"{k} {v:.3f}" for k, v in val.items()))
        saved = iteration % cfg.ckpt_every == 0 or iteration == cfg.iterations
        if saved:
            save(iteration)
        on_iteration(iteration)
        if should_stop() and iteration < cfg.iterations:
            if not saved:
                save(iteration)
            raise Interrupted(iteration, Path(checkpoint))
    return ema if cfg.ema_decay > 0 else model
