"""The CPU path of the batched degradations: one image per worker thread.

On CPU tensors the degradation steps (filters, USM, resizing, noise, JPEG) run per image
plane through OpenCV / NumPy / Pillow, which release the GIL, spread over
``torch.get_num_threads()`` worker threads. The results never depend on the number of
threads. ``backend`` arguments throughout ``srcore.degrade`` choose between this path ("cv2")
and batched tensor operations ("torch"); "auto" picks the CPU path for CPU tensors.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

BACKENDS = ("auto", "torch", "cv2")

_POOL: dict = {}
_POOL_LOCK = threading.Lock()


def cpu_map(fn, items) -> list:
    """``[fn(i) for i in items]``, spread over ``torch.get_num_threads()`` threads (OpenCV and
    NumPy release the GIL, and OpenCV runs these small filters on one thread). The results do
    not depend on the number of threads."""
    items = list(items)
    workers = max(1, min(torch.get_num_threads(), len(items)))
    if workers == 1:
        return [fn(i) for i in items]
    key = (os.getpid(), workers)  # a pool does not survive a fork
    with _POOL_LOCK:
        if key not in _POOL:
            for (pid, _), old in list(_POOL.items()):
                if pid == os.getpid():
                    old.shutdown(wait=False)
            _POOL.clear()
            _POOL[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srcore-cpu")
        pool = _POOL[key]
    return list(pool.map(fn, items))


def use_cv2(x: torch.Tensor, backend: str) -> bool:
    """Whether ``backend`` sends the batch ``x`` down the per-image CPU path."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; allowed: auto, cv2, torch")
    return backend == "cv2" or (backend == "auto" and x.device.type == "cpu" and not x.requires_grad)


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous NumPy copy (or view) of a tensor, for the worker threads."""
    return x.detach().to("cpu", torch.float32).contiguous().numpy()
