"""The paper's training-degradation settings, read from the config files (their only home),
for tests and benchmarks that build degradations without composing a Hydra config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

CONF = Path(__file__).resolve().parent.parent / "conf"


def _load(name: str) -> dict:
    with open(CONF / name) as f:
        return yaml.safe_load(f)


def paper_realesrgan_params() -> dict:
    """conf/degradation/realesrgan.yaml as ``build_degradation("realesrgan", ...)`` takes it:
    every key but ``name`` and ``gt_size``."""
    return {k: v for k, v in _load("degradation/realesrgan.yaml").items() if k not in ("name", "gt_size")}


def paper_geometry() -> dict:
    """The paper job's ``scale`` (conf/config.yaml) and HR training patch ``gt_patch``
    (train.patch_size of conf/train/paper.yaml, times scale), as a job passes them."""
    scale = _load("config.yaml")["scale"]
    return {"scale": scale, "gt_patch": _load("train/paper.yaml")["patch_size"] * scale}


def paper_realesrgan(backend: str = "torch", gt_patch: int = 64, **over):
    """The paper's realesrgan degradation at x4 with ``backend`` and any parameter overridden."""
    from srcore.degrade import build_degradation
    return build_degradation("realesrgan", 4, gt_patch, **{**paper_realesrgan_params(), "backend": backend, **over})


def photo_batch(n: int = 4, size: int = 128) -> torch.Tensor:
    """n float (N, 3, size, size) crops of the built-in training photographs, in [0, 1]."""
    from srcore.data import builtin_images
    ims = [im for _, im in builtin_images("train")]
    crops = [np.ascontiguousarray(ims[i % len(ims)][:size, :size]) for i in range(n)]
    return torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c in crops]).float() / 255


_A = torch.ops.aten
# ops whose result the host must read, or whose output size depends on the data
HOST_READS = frozenset({_A._local_scalar_dense.default, _A.nonzero.default, _A.bincount.default,
                        _A.masked_select.default, _A._unique2.default, _A.unique_consecutive.default,
                        _A.repeat_interleave.Tensor, _A.argwhere.default})


class OpLog(TorchDispatchMode):
    """Every aten op dispatched inside the block (``ops``) and how many were host reads."""

    def __init__(self):
        super().__init__()
        self.ops = []

    @property
    def host_reads(self) -> int:
        return sum(op in HOST_READS for op in self.ops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def degradation_params(name: str) -> dict:
    """conf/degradation/<name>.yaml as ``build_degradation(name, ...)`` takes it: every key but
    ``name`` and ``gt_size``."""
    return {k: v for k, v in _load(f"degradation/{name}.yaml").items() if k not in ("name", "gt_size")}


def photo_batches(k: int, n: int = 4, size: int = 128) -> list[torch.Tensor]:
    """k float batches (n, 3, size, size) of crops of the built-in training photographs, every
    crop a different place of one of them (so no two batches are alike)."""
    from srcore.data import builtin_images
    ims = [im for _, im in builtin_images("train")]
    out = []
    for b in range(k):
        crops = []
        for i in range(n):
            j = b * n + i
            im = ims[j % len(ims)]
            top = (37 * j) % (im.shape[0] - size + 1)
            left = (53 * j) % (im.shape[1] - size + 1)
            crops.append(torch.from_numpy(np.ascontiguousarray(im[top:top + size, left:left + size])).permute(2, 0, 1))
        out.append(torch.stack(crops).float() / 255)
    return out


class PipelineOps(OpLog):
    """``OpLog`` of a degradation's image pipeline only: the ops it dispatches while drawing its
    parameters on the host (``sample_params``, ``draw_crop``: the host generator's numbers, read
    there by design) are counted apart, in ``draws``."""

    def __init__(self, deg):
        super().__init__()
        self.deg, self.draws, self._inside, self._saved = deg, 0, 0, []

    def _paused(self, fn):
        def inner(*args, **kwargs):
            self._inside += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside -= 1
        return inner

    def __enter__(self):
        import srcore.degrade.base as base
        import srcore.degrade.common as common
        import srcore.degrade.realesrgan_many as many
        targets = [(mod, "draw_crop") for mod in (base, common, many)]
        if hasattr(self.deg, "sample_params"):
            targets.append((self.deg, "sample_params"))
        for obj, name in targets:
            self._saved.append((obj, name, obj.__dict__.get(name)))
            setattr(obj, name, self._paused(getattr(obj, name)))
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        for obj, name, old in reversed(self._saved):
            if old is None:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        self._saved.clear()
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._inside:
            self.draws += 1
        else:
            self.ops.append(func)
        return func(*args, **(kwargs or {}))
