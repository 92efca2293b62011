"""The training batches: GT crops, degraded on the training device, in iteration order.

``TrainingBatches`` yields ``Batch(iteration, hr, lr, resume)`` for iterations ``start + 1 ..
iterations``. Three ways to keep a GPU from waiting for them (docs/speed.md), none of which
changes a batch:

- **crops cut on the device** when the training images live there (``TrainPatches.to``): one
  gather per batch from host-drawn positions, instead of a DataLoader collating per-sample crops;
- **super-batches**: ``superbatch`` = K consecutive batches degraded in one call
  (``Degradation.many``: the same draws, in the same order, as K calls), so the degradation's
  launches are paid once per K batches. Super-batches start at iterations 1, K + 1, 2K + 1, ...
  whatever the run's start, so a resumed run groups its batches as the uninterrupted one did;
- **prefetch**: the batches are made by a background thread ``prefetch`` batches ahead of the
  step (on CUDA on a stream of its own, so the degradation's kernels run while the step's do).

The degradation's generator runs ahead of the step by up to a super-batch plus the prefetch
depth, so the state a checkpoint must hold is not the generator's current one: each batch
carries ``resume`` = (the first iteration still to draw, the generator's state before it), the
state of the super-batch that holds the next iteration (the state after this one's draws when
it ends a super-batch). A resumed run restores it and draws from that iteration on, dropping
the batches it has already trained on (at most K - 1).
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader

from srcore.data import KeyRange, TrainPatches, shard_keys

Degrade = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class Resume(NamedTuple):
    """Where the degradation's stream restarts after an iteration: the first iteration whose
    draws come next, and the generator's state before them."""

    iteration: int
    state: torch.Tensor


class Batch(NamedTuple):
    iteration: int
    hr: torch.Tensor
    lr: torch.Tensor
    resume: Resume  # what a checkpoint taken after this iteration holds for the degradation


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


def degrade_batches(degrade: Degrade, hrs: list[torch.Tensor], gen: torch.Generator, views: int):
    """``degraded_views`` of each batch of ``hrs``, in order: one call of the degradation's
    ``many`` where it has one (a super-batch), else one call per batch."""
    if len(hrs) > 1 and hasattr(degrade, "many"):
        return degrade.many(hrs, gen, views)
    return [degraded_views(degrade, hr, gen, views) for hr in hrs]


class TrainingBatches:
    """The batches of iterations ``start + 1 .. iterations`` (see the module doc).

    ``resume_from``: the first iteration whose draws the degradation's generator (``gen``, already
    restored) starts at; None: ``start + 1``. ``rank`` of ``world_size`` (a job on several GPUs):
    ``batch_size`` is the global batch, and this rank's batches hold its share of each
    iteration's crops (``srcore.data.shard_keys``), degraded by this rank's ``gen``."""

    def __init__(self, patches: TrainPatches, degrade: Degrade, gen: torch.Generator, *, batch_size: int,
                 iterations: int, start: int, device: torch.device, views: int = 1, channels_last: bool = False,
                 superbatch: int = 1, prefetch: int = 0, num_workers: int = 0, seed: int = 0,
                 resume_from: int | None = None, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"the batch of {batch_size} does not split over {world_size} ranks")
        self.patches, self.degrade, self.gen = patches, degrade, gen
        self.batch_size, self.last, self.start = batch_size, iterations, start
        self.rank, self.world_size = rank, world_size
        self.first = start + 1 if resume_from is None else resume_from
        if not 1 <= self.first <= start + 1:
            raise ValueError(f"the degradation's state resumes at iteration {self.first}, after the run's "
                             f"iteration {start + 1}")
        self.device, self.views, self.channels_last = torch.device(device), views, channels_last
        self.superbatch, self.prefetch, self.num_workers, self.seed = max(1, superbatch), prefetch, num_workers, seed
        self._thread: Prefetch | None = None

    def __iter__(self) -> Iterator[Batch]:
        crops = self._crops()  # here, not in the prefetch thread: a DataLoader's workers are forked now
        if self.prefetch <= 0:
            return self._make(crops)
        self._thread = Prefetch(lambda: self._make(crops), self.prefetch, self.device)
        return iter(self._thread)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()

    def _make(self, crops: Iterator[torch.Tensor]) -> Iterator[Batch]:
        it = self.first
        while it <= self.last:
            k = min(self.superbatch - (it - 1) % self.superbatch, self.last - it + 1)  # up to the next boundary
            its = range(it, it + k)
            hrs = [next(crops).to(self.device, non_blocking=True).float().div_(255) for _ in its]
            before = self.gen.get_state()
            pairs = degrade_batches(self.degrade, hrs, self.gen, self.views)
            after = self.gen.get_state()
            for i, (hr, lr) in zip(its, pairs):
                if i <= self.start:
                    continue  # trained on before the resume; drawn again only to reach the next batch
                if self.channels_last:
                    lr = lr.contiguous(memory_format=torch.channels_last)
                yield Batch(i, hr, lr, Resume(i + 1, after) if i == its[-1] else Resume(its[0], before))
            it += k

    def _crops(self) -> Iterator[torch.Tensor]:
        """uint8 GT crops of each iteration from ``self.first`` on: gathered on the device when the
        images are packed there, else collated by a DataLoader (as before: bit-identical)."""
        b, n = self.batch_size, self.world_size
        if getattr(self.patches, "packed", False) and self.patches.device == self.device:
            if n == 1:
                return (self.patches.batch(range((i - 1) * b, i * b)) for i in range(self.first, self.last + 1))
            return (self.patches.batch(shard_keys(range((i - 1) * b, i * b), b, self.rank, n))
                    for i in range(self.first, self.last + 1))
        on_host = getattr(self.patches, "device", torch.device("cpu")).type == "cpu"
        return iter(DataLoader(self.patches, batch_size=b // n,
                               sampler=KeyRange(self.first - 1, self.last, b, self.rank, n),
                               num_workers=self.num_workers, pin_memory=self.device.type == "cuda" and on_host,
                               drop_last=True, persistent_workers=False,
                               # its own generator: creating the iterator must not consume the global RNG
                               # that drives dropout (a resumed run would be shifted by one draw)
                               generator=torch.Generator().manual_seed(self.seed)))


_END = object()


class _Failed(NamedTuple):
    error: BaseException


class Prefetch:
    """Run ``make()``'s iterator in a background thread, up to ``depth`` items ahead. On CUDA the
    thread works on a stream of its own; an item reaches the consumer's stream only after the
    work that made it (an event), and its tensors are marked as used there (``record_stream``),
    so the allocator does not hand their memory back to the producer too early. An exception in
    the thread is raised in the consumer; ``close`` stops the thread."""

    def __init__(self, make: Callable[[], Iterator], depth: int, device: torch.device):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.device = device
        self.thread = threading.Thread(target=self._run, args=(make,), name="training-batches", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make) -> None:
        try:
            if self.stream is not None:
                torch.cuda.set_device(self.device)
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                for item in make():
                    event = None
                    if self.stream is not None:
                        event = torch.cuda.Event()
                        event.record(self.stream)
                    if not self._put((item, event)):
                        return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            self._put(_Failed(e))

    def __iter__(self):
        while True:
            got = self.queue.get()
            if got is _END:
                return
            if isinstance(got, _Failed):
                raise got.error
            item, event = got
            if event is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(event)
                for t in item:
                    if isinstance(t, torch.Tensor):
                        t.record_stream(stream)
            yield item

    def close(self) -> None:
        self.stopped.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self.thread.join(timeout=30)
