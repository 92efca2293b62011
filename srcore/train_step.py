"""One training step: forward, loss, backward, then the optimizer, the schedule and the EMA.

``EagerStep`` runs it as PyTorch does, operation by operation. ``CudaGraphStep`` (CUDA, the
default there: ``train.cuda_graph``) captures the forward, the loss (with the regularisers'
terms and random masks) and the backward once as a CUDA graph and replays it: one launch for
hundreds of kernels. The batch is copied into the graph's static input buffers; the loss, the
regularisers' terms and the gradients are the graph's static outputs, rewritten by every
replay. The optimizer (fused Adam: a few launches), the fp16 scaler, the schedule and the EMA
stay outside the graph, exactly the eager code, so the learning rate stays a Python number and
the checkpoint, resume, the NaN checks and the optimizer's state mean what they mean eagerly
(docs/speed.md says why this split and not the whole step, or ``torch.compile``'s graphs).

The first ``WARMUP`` iterations run eagerly (cuDNN and the allocator settle, the optimizer's
state exists), then the step is captured. Random draws inside the graph (dropout, DropPath,
Simple Align's Fourier features) come from CUDA's default generator, which PyTorch advances by
the graph's whole draw at every replay, so each replay draws new masks and the generator's state
in a checkpoint is where an eager run's would be. What a regulariser's ``set_iteration`` changes
is baked into a capture: the step is captured again when ``Regularizer.capture_key`` changes
(Adaptive Dropout's weights: a handful of times in a run). A capture that fails falls back to
the eager step for the rest of the job, with one line saying why.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from srcore.regularizers import Regularizer
from srcore.regularizers.base import NOT_CAPTURABLE
from srcore.tf32 import cuda_tf32

log = logging.getLogger("srcore.train")

WARMUP = 3  # eager iterations before the capture (PyTorch's recipe: a few, on a side stream)


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


class EagerStep:
    """The step operation by operation: ``step(hr, lr) -> (loss, terms)``, the state updated."""

    def __init__(self, state, forward: Callable, regularizers: Sequence[Regularizer], taps: SiteOutputs,
                 autocast: dict, device: torch.device, tf32: bool, sync: Callable[[], None] | None = None):
        self.state, self.forward, self.regularizers, self.taps = state, forward, tuple(regularizers), taps
        self.autocast, self.device, self.tf32 = autocast, device, tf32
        self.sync = sync  # a job on several GPUs whose backward is not DDP's: averages the gradients over the ranks

    def losses(self, hr: torch.Tensor, lr: torch.Tensor, cache_enabled: bool = True):
        """Forward, loss and backward (the gradients of the scaled loss; ``.grad`` written or
        accumulated as autograd does). TF32 (``train.tf32``) inside the model step only: the
        degradation's JPEG codec must not round through it."""
        with cuda_tf32(self.device, self.tf32):
            with torch.autocast(**self.autocast, cache_enabled=cache_enabled):
                loss, terms = regularized_loss(self.forward(lr), hr, self.regularizers, self.taps)
            self.state.scaler.scale(loss).backward()
        return loss, terms

    def __call__(self, hr: torch.Tensor, lr: torch.Tensor):
        self.zero_grad()
        loss, terms = self.losses(hr, lr)
        self.apply_gradients()
        return loss, terms

    # what CudaGraphStep asks of a step
    def zero_grad(self) -> None:
        self.state.opt.zero_grad(set_to_none=True)

    def apply_gradients(self) -> None:
        if self.sync is not None:
            self.sync()
        self.state.apply_gradients()

    def capture_key(self):
        """None: no capture can be trusted (``capture_key`` below)."""
        return capture_key(self.regularizers)


def capture_key(regularizers: Sequence[Regularizer]):
    """What a capture depends on beyond the network: the regularisers' ``capture_key`` values;
    None when one of them follows the iteration without saying how (no capture can be trusted)."""
    keys = tuple(r.capture_key() for r in regularizers)
    return None if any(k is NOT_CAPTURABLE for k in keys) else keys


class CudaGraphStep:
    """A step with its ``losses`` (forward, loss, backward) replayed from one CUDA graph (module
    doc). ``step`` is an ``EagerStep`` or a fused group's step: called with the batch's tensors it
    runs eagerly; it has ``losses(*inputs, cache_enabled)``, ``zero_grad()`` (gradients to None),
    ``apply_gradients()``, ``capture_key()`` and ``device``. ``example`` gives the static input
    buffers' shapes, dtypes and memory formats."""

    def __init__(self, step, example: Sequence[torch.Tensor], warmup: int = WARMUP):
        self.step = step
        self.static = tuple(torch.empty_like(t) for t in example)  # keeps each's memory format (channels_last)
        self.warmup, self.warmed = warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key, self.outputs, self.failed = None, None, None

    def __call__(self, *inputs: torch.Tensor):
        if self.failed is not None:
            return self.step(*inputs)
        if self.warmed < self.warmup:
            self.warmed += 1
            return self._warm(inputs)
        key = self.step.capture_key()
        if key is None:
            self._fall_back("a regulariser follows the iteration (set_iteration) without a capture_key, or draws "
                            "in its loss term inside a fused group")
            return self.step(*inputs)
        for buffer, x in zip(self.static, inputs):
            buffer.copy_(x)
        if self.graph is None or key != self.key:
            try:
                self._capture(again=self.graph is not None)
            except Exception as e:  # noqa: BLE001 - whatever stops a capture: this iteration and the rest eagerly
                self._fall_back(_root_cause(e))
                return self.step(*inputs)
            self.key = key
        self.graph.replay()
        self.step.apply_gradients()
        return self.outputs

    def _warm(self, inputs):
        """An eager iteration on a side stream (PyTorch's recipe before a capture)."""
        current = torch.cuda.current_stream(self.step.device)
        side = torch.cuda.Stream(self.step.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = self.step(*inputs)
        current.wait_stream(side)
        return out

    def _capture(self, again: bool) -> None:
        self.graph = self.outputs = None
        self.step.zero_grad()  # the capture's backward puts .grad in the graph's pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: the batch-making thread may allocate and launch while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self.step.losses(*self.static, cache_enabled=False)
        self.graph, self.outputs = graph, outputs
        log.info("training step captured as a CUDA graph%s", " again (what it depends on changed)" if again else "")

    def _fall_back(self, why: str) -> None:
        self.failed, self.graph, self.outputs = why, None, None
        self.step.zero_grad()
        log.warning("CUDA graph of the training step not used (%s); training eagerly", why)


def _root_cause(error: BaseException) -> str:
    """``Type: first line`` of the exception that started ``error`` (a failed capture raises again
    when its context ends)."""
    while error.__context__ is not None and error.__context__ is not error:
        error = error.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__
