"""Several jobs trained together as one stacked model: a fused group (docs/cluster.md).

An ablation study is many small jobs that differ in a seed, a probability, a learning rate. Jobs
whose networks have the same structure (backbone, regulariser sites, batch, patch, schedule
length, precision) train here as one: their weights are stacked along a new first dimension and
one forward / backward runs all K networks -- on a GPU vmapped (``torch.func``: K times larger
kernels instead of K small ones), on a CPU one network after the other on its slice of the stack
(``KERNELS``; bit-identical there to the jobs alone). Each job keeps everything that makes it a job:

- its own weights (its model's parameters are views of its slice of the stack), Adam state,
  learning-rate schedule, fp16 scaler and EMA (its own ``TrainingState``), so its checkpoint is
  exactly a single job's, and resumes alone or in another group;
- its own data: crops, degradation draws (its own ``TrainingBatches``);
- its own random masks: before each step every job's masks are drawn from its own generator
  state, as its network would draw them alone (``srcore.noise``), and the vmapped forward
  multiplies by them; its loss terms (Simple Align's draws) are computed with its own state too;
- its own callbacks: logging, validation, checkpoints, progress.

A job whose loss turns non-finite fails alone (``FloatingPointError``: its slice is masked, its
optimizer no longer steps); the others go on. A stop request saves every job and raises
``Interrupted``; a rerun resumes every job from its own checkpoint (jobs may start from
different iterations: a job waits, masked, until the group reaches its iteration).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, vmap

from srcore import noise
from srcore.data import TrainPatches
from srcore.tf32 import cuda_tf32
from srcore.train import (PRECISIONS, Interrupted, LossWindow, TrainingState, TrainSettings, _log_progress,
                          _place_images, _seed, _validate_and_save, resolve_device)
from srcore.train_batches import Degrade, TrainingBatches
from srcore.train_step import CudaGraphStep, SiteOutputs, capture_key, regularized_loss

log = logging.getLogger("srcore.train")

# How the stacked networks run, per device type: "vmap" (one network K times wider: grouped
# convolutions, batched matmuls -- a GPU's larger kernels) or "loop" (the K networks one after the
# other on their slices of the stack: on this CPU vmap's grouped convolutions trained a 4-job demo
# group at 0.70x the speed of the jobs alone, benchmarks/bench_fused.py). Either way one backward
# for the group, each job's own masks and streams.
KERNELS = {"cuda": "vmap", "cpu": "loop"}

# TrainSettings fields every job of a group must share (the stacked step's shape and arithmetic)
SHARED = ("iterations", "batch_size", "device", "precision", "tf32", "channels_last", "compile")


@dataclass
class GroupJob:
    """One job of a group: what ``srcore.train.train`` takes."""

    model: nn.Module
    patches: TrainPatches
    degrade: Degrade
    cfg: TrainSettings
    checkpoint: Path
    log_metrics: Callable[[dict, int], None] = lambda metrics, step: None
    validate: Callable[[nn.Module], dict] | None = None
    on_iteration: Callable[[int], None] = lambda iteration: None


def check_group(jobs: Sequence[GroupJob]) -> None:
    """Raise ValueError when the jobs cannot be stacked: settings of ``SHARED`` that differ, or
    networks of another structure (parameter names and shapes, regulariser sites)."""
    first = jobs[0]
    for job in jobs[1:]:
        for key in SHARED:
            if getattr(job.cfg, key) != getattr(first.cfg, key):
                raise ValueError(f"jobs with train.{key} {getattr(first.cfg, key)!r} and {getattr(job.cfg, key)!r} "
                                 "cannot be fused")
        shapes = [(n, p.shape) for n, p in job.model.named_parameters()]
        if shapes != [(n, p.shape) for n, p in first.model.named_parameters()]:
            raise ValueError("networks with other parameters cannot be fused")
        if _structure(job.model) != _structure(first.model):
            raise ValueError("networks with regularisers at other sites cannot be fused")
    if first.cfg.compile:
        raise ValueError("train.compile=true jobs are not fused")


def _structure(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in model.named_modules()]


class _Member:
    """One job in the group: its state, batches, loss window and random streams."""

    def __init__(self, index: int, job: GroupJob, device: torch.device):
        self.index, self.job, self.cfg = index, job, job.cfg
        self.gen = _seed(job.cfg.seed)
        job.model.to(device)
        if job.cfg.channels_last:
            job.model.to(memory_format=torch.channels_last)
        self.state = TrainingState(job.model, job.cfg, self.gen)
        self.start, degradation_from = self.state.resume(job.checkpoint)
        self.rng = _rng_state(device)  # this job's global streams (seeded, or restored by the resume)
        self.regularizers = tuple(getattr(job.model, "regularizers", ()))
        self.views = max((r.views for r in self.regularizers), default=1)
        _place_images(job.patches, job.cfg, device)
        self.batches = TrainingBatches(job.patches, job.degrade, self.gen, batch_size=job.cfg.batch_size,
                                       iterations=job.cfg.iterations, start=self.start, device=device,
                                       views=self.views, channels_last=job.cfg.channels_last,
                                       superbatch=job.cfg.superbatch, prefetch=job.cfg.prefetch,
                                       num_workers=job.cfg.num_workers, seed=job.cfg.seed,
                                       resume_from=degradation_from)
        self.batch_iter = None
        self.window = LossWindow(device, self.start, min(job.cfg.log_every, job.cfg.iterations))
        self.failed: BaseException | None = None
        self.plan: list[noise.Draw] | None = None
        self.key = None
        self.seen, self.t0 = 0, time.perf_counter()

    def active(self, iteration: int) -> bool:
        return self.failed is None and iteration > self.start

    @contextlib.contextmanager
    def streams(self, device: torch.device):
        """This job's global random streams in place for the block (and kept after it)."""
        _set_rng_state(self.rng, device)
        try:
            yield
        finally:
            self.rng = _rng_state(device)


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors stacked along a new first dimension, each slice in its tensor's memory layout
    (a channels_last weight stays channels_last in its slice)."""
    t = tensors[0]
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        o, i, kh, kw = t.shape
        out = torch.empty((len(tensors), o, kh, kw, i), dtype=t.dtype, device=t.device).permute(0, 1, 4, 2, 3)
        for k, x in enumerate(tensors):
            out[k].copy_(x)
        return out
    return torch.stack(tensors)


class _Stack:
    """The members' weights as (K, ...) leaves; each member's parameters alias its slice."""

    def __init__(self, models: Sequence[nn.Module]):
        names = [n for n, _ in models[0].named_parameters()]
        per_model = [dict(m.named_parameters()) for m in models]
        self.params = {n: _stacked([p[n].detach() for p in per_model]).requires_grad_() for n in names}
        for k, p in enumerate(per_model):
            for n in names:
                p[n].data = self.params[n].data[k]
        self.per_model = per_model
        self.buffers = dict(models[0].named_buffers())  # the same in every member (the structure's)
        self.template = copy.deepcopy(models[0]).to("meta").train()

    def link_grads(self) -> None:
        """After a backward: each member's ``.grad`` is its slice of the stacked gradient."""
        for n, stacked in self.params.items():
            for k, p in enumerate(self.per_model):
                if p[n].grad is None or p[n].grad.data_ptr() != stacked.grad[k].data_ptr():
                    p[n].grad = stacked.grad[k]


def train_group(jobs: Sequence[GroupJob], should_stop: Callable[[], bool] = lambda: False, kernel: str | None = None
                ) -> list[nn.Module | BaseException]:
    """Train the jobs together; per job its EMA copy (or its model when ema_decay is 0), or the
    exception that failed it. A stop request saves every job and raises ``Interrupted``.
    ``kernel``: how the stacked networks run (``KERNELS``; None: the device's default)."""
    check_group(jobs)
    device = resolve_device(jobs[0].cfg.device)
    members = [_Member(k, job, device) for k, job in enumerate(jobs)]
    stack = _Stack([job.model for job in jobs])
    sites = sorted({s for m in members for r in m.regularizers for s in r.tapped_sites})
    taps = SiteOutputs(stack.template, sites)
    cfg = jobs[0].cfg
    autocast = dict(device_type=device.type, dtype=PRECISIONS[cfg.precision] or torch.float32,
                    enabled=PRECISIONS[cfg.precision] is not None)

    def forward(params, multipliers, lr):
        with noise.replaying(multipliers):
            sr = functional_call(stack.template, (params, stack.buffers), (lr,))
        features = dict(taps.features)
        taps.features.clear()
        return sr, features

    def one_by_one(params, multipliers, lr):
        """The same as ``vmap(forward)``, the networks run one after the other (``KERNELS``)."""
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        outs = [forward({n: p[k] for n, p in params.items()}, [m[k] for m in multipliers],
                        lr[k].contiguous(memory_format=fmt)) for k in range(len(members))]
        return torch.stack([sr for sr, _ in outs]), {s: torch.stack([f[s] for _, f in outs]) for s in outs[0][1]}

    kernel = KERNELS.get(device.type, "vmap") if kernel is None else kernel
    step = FusedStep(members, stack, vmap(forward) if kernel == "vmap" else one_by_one, autocast, device, cfg.tf32)
    first = min(m.start for m in members)
    log.info("fused group of %d jobs: iterations %d-%d", len(members), first + 1, cfg.iterations)
    for job in jobs:
        job.model.train()
    for m in members:
        m.batch_iter = iter(m.batches)
    graphed = None
    try:
        for iteration in range(first + 1, cfg.iterations + 1):
            active = [m for m in members if m.active(iteration)]
            if not active:
                break
            batches = {}
            for m in active:
                for r in m.regularizers:
                    r.set_iteration(iteration)
                batch = next(m.batch_iter)
                assert batch.iteration == iteration, (batch.iteration, iteration)
                batches[m.index] = batch
            step.active = active
            multipliers = _multipliers(members, active, batches, device)
            like = batches[active[0].index]
            lr = torch.stack([batches[m.index].lr if m.index in batches else torch.zeros_like(like.lr) for m in members])
            hr = torch.stack([batches[m.index].hr if m.index in batches else torch.zeros_like(like.hr) for m in members])
            if graphed is None:
                graphed = CudaGraphStep(step, (lr, hr, *multipliers)) if device.type == "cuda" and cfg.cuda_graph \
                    else step
            losses = graphed(lr, hr, *multipliers)
            for m in active:
                m.state.degradation_resume = batches[m.index].resume
                _after_step(m, iteration, *losses[m.index])
            if should_stop() and iteration < cfg.iterations:
                for m in members:
                    if m.active(iteration) and iteration % m.cfg.ckpt_every:
                        try:
                            with m.streams(device):
                                m.window.check(iteration)
                                m.state.save(m.job.checkpoint, iteration)
                        except FloatingPointError as e:
                            _fail(m, iteration, e)
                raise Interrupted(iteration, jobs[0].checkpoint)
    finally:
        taps.close()
        for m in members:
            m.batches.close()
    return [m.failed if m.failed is not None else _finish(m) for m in members]


class FusedStep:
    """The group's step, as ``srcore.train_step.CudaGraphStep`` drives a step: called with the
    stacked (K, ...) LR and HR batches and the members' stacked multipliers it runs eagerly;
    ``losses`` is its forward, the members' losses (each with its own streams) and the backward;
    ``active`` (the members that train this step, set before each call) is part of its capture
    key."""

    def __init__(self, members, stack: _Stack, fused_forward, autocast: dict, device: torch.device, tf32: bool):
        self.members, self.stack, self.fused_forward = members, stack, fused_forward
        self.autocast, self.device, self.tf32 = autocast, device, tf32
        self.active: list[_Member] = []

    def losses(self, lr: torch.Tensor, hr: torch.Tensor, *multipliers: torch.Tensor, cache_enabled: bool = True):
        with cuda_tf32(self.device, self.tf32):
            with torch.autocast(**self.autocast, cache_enabled=cache_enabled):
                sr, features = self.fused_forward(self.stack.params, list(multipliers), lr)
                out = {}
                for m in self.active:
                    own = m.streams(self.device) if _draws_in_loss(m) else contextlib.nullcontext()
                    with own:  # a loss term's own draws (Simple Align) from the job's stream
                        out[m.index] = regularized_loss(sr[m.index], hr[m.index], m.regularizers,
                                                        _Features(features, m.index))
            total = sum(m.state.scaler.scale(out[m.index][0]) for m in self.active)
            total.backward()
        return out

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor, *multipliers: torch.Tensor):
        self.zero_grad()
        out = self.losses(lr, hr, *multipliers)
        self.apply_gradients()
        return out

    def zero_grad(self) -> None:
        for p in self.stack.params.values():
            p.grad = None

    def apply_gradients(self) -> None:
        self.stack.link_grads()
        for m in self.active:
            m.state.apply_gradients()

    def capture_key(self):
        """The members training and their regularisers' keys; None when a member's loss term draws
        (the graph cannot switch to its stream) or a key cannot be trusted."""
        keys = []
        for m in self.active:
            key = capture_key(m.regularizers)
            if key is None or _draws_in_loss(m):
                return None
            keys.append(key)
        return tuple(m.index for m in self.active), tuple(keys)


def _draws_in_loss(m: _Member) -> bool:
    return any(r.draws_in_loss for r in m.regularizers)


class _Features:
    """The tapped sites' outputs of one member (``SiteOutputs``'s ``features``), sliced from the
    group's (K, ...) outputs."""

    def __init__(self, features: dict, k: int):
        self.features = {name: value[k] for name, value in features.items()}


def _multipliers(members, active, batches, device) -> list[torch.Tensor]:
    """Each member's random multipliers for this step, drawn from its own stream as its network
    would draw them alone, stacked per draw; ones for members that do not train this step."""
    plans = {}
    for m in active:
        key = capture_key(m.regularizers)
        if m.plan is None or key != m.key or key is None:
            m.plan, m.key = _plan(m, batches[m.index], device), key
        plans[m.index] = m.plan
    plan = next(iter(plans.values()))
    stacked = []
    per_member = {}
    for m in active:
        with m.streams(device):
            per_member[m.index] = [noise.make(d) for d in plans[m.index]]
    for i, draw in enumerate(plan):
        stacked.append(torch.stack([per_member[m.index][i] if m.index in per_member else
                                    torch.ones(draw.shape, dtype=draw.dtype, device=draw.device) for m in members]))
    return stacked


@torch.no_grad()
def _plan(member: _Member, batch, device) -> list[noise.Draw]:
    """The draws one training forward pass of this member's network makes, in order (a forward
    pass in which nothing is drawn)."""
    cfg = member.cfg
    autocast = dict(device_type=device.type, dtype=PRECISIONS[cfg.precision] or torch.float32,
                    enabled=PRECISIONS[cfg.precision] is not None)
    with noise.recording() as plan, torch.autocast(**autocast):
        member.job.model(batch.lr)
    return plan


def _after_step(m: _Member, iteration: int, loss, terms) -> None:
    """A member's bookkeeping after its optimizer step: its loss window, logs, validation,
    checkpoint and progress; an exception there (a non-finite loss, a callback's) ends it alone."""
    job, cfg = m.job, m.cfg
    m.window.add(iteration, loss)
    m.seen += 1
    try:
        if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
            m.window.check(iteration)
            _log_progress(m.state, cfg, iteration, loss.item(), terms, m.seen / (time.perf_counter() - m.t0),
                          job.log_metrics)
        with m.streams(resolve_device(cfg.device)):
            _validate_and_save(m.state, cfg, Path(job.checkpoint), iteration, job.log_metrics, job.validate, m.window)
        job.on_iteration(iteration)
    except Exception as e:  # noqa: BLE001 - this job's own end (a non-finite loss, a pruned trial, its folder gone)
        _fail(m, iteration, e)


def _fail(m: _Member, iteration: int, error: BaseException) -> None:
    m.failed = error
    log.warning("fused job %d (%s) failed at iteration %d: %s; the others go on", m.index, m.job.checkpoint.parent.name,
                iteration, error)


def _finish(m: _Member) -> nn.Module:
    """The member's model back to plain tensors of its own (no longer views of the stack), in the
    usual memory layout; its EMA copy (or the model when ema_decay is 0)."""
    with torch.no_grad():
        for p in m.job.model.parameters():
            p.data = p.data.clone()
    m.job.model.to(memory_format=torch.contiguous_format)
    m.state.ema.to(memory_format=torch.contiguous_format)
    return m.state.ema if m.cfg.ema_decay > 0 else m.job.model
