"""Which jobs of a grid can train together as a fused group (``srcore.train_group``), and the
groups (docs/cluster.md, "Fused groups").

Jobs fuse when everything that shapes the stacked step is equal: the backbone and scale, the
batch, patch and budget, the schedule's length, the precision and device settings, the
regularisers trained with and dropout's position and kind (their sites). Everything a job does
on its own may differ: seed, dropout ``p`` and every other regulariser's settings, learning
rate, Adam's betas and weight decay, the schedule's shape, EMA, the training data and
degradation, evaluation, logging. ``train.compile`` jobs, jobs on several GPUs (``train.gpus`` > 1) and Optuna trials are never
fused.
"""
from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

# top-level keys a job may set for itself in a group
FREE = {"seed", "sweep_name", "data", "degradation", "eval", "logger", "interpret", "optuna", "paths", "dropout",
        "regularizers"}
FREE_TRAIN = {"lr", "betas", "weight_decay", "scheduler", "ema_decay", "log_every", "val_every", "ckpt_every",
              "threads", "hflip", "superbatch", "prefetch"}
AUTO_MAX = 8  # fuse=auto: at most this many jobs in a group


def signature(cfg: DictConfig) -> str | None:
    """What a job must share with the others of its group (a string to compare), or None for a
    job that never fuses."""
    if cfg.train.get("compile") or (cfg.get("optuna") and cfg.optuna.get("trial") is not None) or \
            (cfg.train.get("gpus") or 1) > 1:  # a job on several GPUs (DistributedDataParallel) runs alone
        return None
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
             for k in cfg if k != "hydra"}  # a job's hydra node needs its runtime to resolve
    shared = {k: v for k, v in plain.items() if k not in FREE}
    shared["train"] = {k: v for k, v in plain["train"].items() if k not in FREE_TRAIN}
    shared["regularizers"] = sorted(plain.get("regularizers") or {})
    if "dropout" in shared["regularizers"]:
        shared["dropout"] = {k: plain["dropout"][k] for k in ("position", "kind")}
    return json.dumps(shared, sort_keys=True, default=str)


def parse_fuse(fuse) -> int | None:
    """``hydra.launcher.fuse`` as the largest group (None: off; true and false are auto and off)."""
    if isinstance(fuse, bool):
        return AUTO_MAX if fuse else None
    if fuse in (None, "off", 1):
        return None
    if fuse == "auto":
        return AUTO_MAX
    if isinstance(fuse, int) and not isinstance(fuse, bool) and fuse > 1:
        return fuse
    raise ValueError(f"hydra.launcher.fuse={fuse!r} is invalid; allowed: auto, off, or a group size K >= 2")


def plan_groups(signatures: list[str | None], fuse) -> list[list[int]]:
    """The jobs (indices into ``signatures``) as groups in launch order: jobs with one signature in
    groups of at most ``fuse``'s size, split evenly (9 jobs at most 8: 5 + 4); a job that never
    fuses, or has no partner, alone."""
    largest = parse_fuse(fuse)
    by_signature: dict[str, list[int]] = {}
    order: list[tuple[int, str | None]] = []
    for i, sig in enumerate(signatures):
        if largest is None or sig is None:
            order.append((i, None))
            continue
        if sig not in by_signature:
            order.append((i, sig))
        by_signature.setdefault(sig, []).append(i)
    groups = []
    for i, sig in order:
        if sig is None:
            groups.append([i])
            continue
        members = by_signature[sig]
        n = -(-len(members) // largest)  # as few groups as the size allows, as even as possible
        size = -(-len(members) // n)
        groups.extend(members[k:k + size] for k in range(0, len(members), size))
    return groups
