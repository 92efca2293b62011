"""Loading and saving network weights in BasicSR's checkpoint layout.

Accepted inputs: a BasicSR / official checkpoint (``params_ema`` preferred, else ``params``),
this project's training checkpoint (``ema`` preferred, else ``model``), or a bare state dict.
``save_weights`` adds ``model_args`` (plain data) to BasicSR's layout, so ``load_model``
rebuilds the network from the file alone; BasicSR tools ignore the extra entry.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from srcore.atomic import atomic_write

from .build import backbone_class, build_model

# Tried in this order when no key is given: EMA weights are what gets evaluated.
PREFERRED_KEYS = ("params_ema", "params", "ema", "model")


class LoadedWeights(NamedTuple):
    key: str | None  # the checkpoint entry used; None for a bare state dict
    missing_keys: list[str]
    unexpected_keys: list[str]


def _first(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _select(ckpt, key: str | None, source: str) -> tuple[str | None, Mapping]:
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{source}: expected a dict (checkpoint or state dict), got {type(ckpt).__name__}")
    present = _first(map(str, ckpt.keys()), 10)
    if key is not None:
        if not isinstance(ckpt.get(key), Mapping):
            raise ValueError(f"{source}: no state dict under key {key!r}; keys present: {present}")
        return key, ckpt[key]
    for k in PREFERRED_KEYS:
        if isinstance(ckpt.get(k), Mapping):  # an entry may be None (e.g. training without EMA)
            return k, ckpt[k]
    if _is_state_dict(ckpt):
        return None, ckpt
    raise ValueError(f"{source}: found no weights (looked for {', '.join(PREFERRED_KEYS)} or a bare "
                     f"state dict); keys present: {present}")


class CheckpointError(ValueError):
    """A file that cannot be loaded as a checkpoint; the message is one line naming the file."""


def _refusal(error: Exception) -> str | None:
    """What torch's safe loader objected to (e.g. "unsupported GLOBAL posix.system"), without its
    advice to load the file unsafely; None when the file is no pickle at all (garbage)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith(("Trying to load", "Unsupported", "Unpickler found"))), "")
    if not detail or "operand" in detail:  # an unknown opcode: bytes that are no pickle
        return None
    return detail.removeprefix("Trying to load ").rstrip(".")


def read_torch_file(path) -> object:
    """``torch.load`` restricted to tensors and plain data (never arbitrary code), with a
    one-line ``CheckpointError`` naming the file when it is missing, empty, truncated,
    corrupted or holds other Python objects."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"checkpoint file not found: {source}")
    size = os.path.getsize(source)
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the safe loader refused it, or it is not a pickle at all
        refused = _refusal(e)
        if refused is not None:
            raise CheckpointError(f"{source}: refused: it holds Python objects other than tensors and plain data "
                                  f"({refused}), which are never loaded (they could run code); use a checkpoint "
                                  "written by this project or BasicSR") from None
        why = "not a torch file"
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        why = str(e).split(". ")[0].strip() or type(e).__name__
    why = "empty file" if size == 0 else f"{why}; {size} bytes"
    raise CheckpointError(f"{source}: not a readable checkpoint ({why}): truncated or damaged, e.g. by a copy or "
                          "a write that was cut short")


def _read(path) -> tuple[str, Mapping]:
    return os.fspath(path), read_torch_file(path)


def load_weights(model: nn.Module, path_or_state, key: str | None = None, strict: bool = True) -> LoadedWeights:
    """Load weights into ``model`` from a file path or an already loaded checkpoint / state dict."""
    if isinstance(path_or_state, (str, os.PathLike)):
        source, ckpt = _read(path_or_state)
    else:
        source, ckpt = "checkpoint", path_or_state
    return _load(model, ckpt, source, key, strict)


def _load(model: nn.Module, ckpt, source: str, key: str | None, strict: bool) -> LoadedWeights:
    used, state = _select(ckpt, key, source)
    # DataParallel / DistributedDataParallel save their keys with a "module." prefix
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise ValueError(f"{source}{f' [{used}]' if used else ''} does not match {type(model).__name__}: "
                         f"missing keys: {_first(missing) or 'none'}; unexpected keys: {_first(unexpected) or 'none'}")
    bad_shape = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if bad_shape:  # load_state_dict refuses these even with strict=False
        raise ValueError(f"{source}: shape mismatch for {len(bad_shape)} keys: {'; '.join(bad_shape[:5])}")
    model.load_state_dict(state, strict=strict)
    return LoadedWeights(used, missing, unexpected)


def load_model(path) -> nn.Module:
    """The network a ``save_weights`` file describes, with its weights (EMA preferred), in eval mode."""
    source, ckpt = _read(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model_args"), Mapping):
        raise ValueError(f"{source} holds weights but no model_args (a BasicSR / official weights file?), so "
                         "the network cannot be rebuilt from it alone: name its backbone "
                         "(srcore.models.load_official(path, backbone), --backbone on the command line)")
    try:
        model = build_model(**ckpt["model_args"])
    except (TypeError, ValueError) as e:  # e.g. written by a version with other backbones
        raise ValueError(f"{source}: its model_args do not build a network: {e}") from None
    _load(model, ckpt, source, key=None, strict=True)
    return model.eval()


def load_official(path, backbone: str, upscale: int = 4, **overrides) -> nn.Module:
    """A BasicSR / official weights file (``params_ema`` preferred, else ``params``) loaded strictly
    into ``backbone``, built with the settings its weights imply (widths, depths, heads, window,
    upsampler, SwinIR's img_size: ``settings_from_weights``) and ``overrides`` (what the weights do
    not say, e.g. EDSR-L's res_scale=0.1), in eval mode."""
    source, ckpt = _read(path)
    _, state = _select(ckpt, None, source)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    settings = {**backbone_class(backbone).settings_from_weights(state), **overrides}
    try:
        model = build_model(backbone, upscale, **settings)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: not a {backbone} at x{upscale} ({e})") from None
    _load(model, ckpt, source, key=None, strict=True)
    return model.eval()


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DataParallel / DDP so keys stay BasicSR's
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path, ema_model: nn.Module | None = None) -> None:
    """Write ``{"params": ..., "params_ema": ..., "model_args": ...}`` (BasicSR layout plus the
    build arguments of a ``build_model`` network) atomically: a reader never sees a half-written
    file, even if the process dies mid-save."""
    ckpt = {"params": _cpu_state(model)}
    if ema_model is not None:
        ckpt["params_ema"] = _cpu_state(ema_model)
    model_args = getattr(getattr(model, "module", model), "model_args", None)
    if model_args is not None:  # a network constructed without build_model has none
        ckpt["model_args"] = model_args
    atomic_write(path, lambda f: torch.save(ckpt, f))
