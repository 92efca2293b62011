"""Stable names: sweep folders, job folders and wandb run ids, all derived from overrides.

The same command always maps to the same sweep folder (so a re-run finds its finished
jobs) and two different commands never share one. Keys that say *where or how* a job
runs, not *what* it computes, are left out of every name.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from omegaconf import OmegaConf

# Keys that do not change a job's result.
RUN_ONLY_KEYS = ("sweep_name", "paths.", "logger.", "train.device", "train.threads", "data.num_workers",
                 "launcher", "hydra.", "hydra/", "optuna.", "interpret.",
                 # evaluation speed: the same metrics, bit for bit (tests/test_eval_speed.py)
                 "eval.lr_cache", "eval.workers", "eval.batch_size")


def is_run_only(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return any(key == k or (k.endswith((".", "/")) and key.startswith(k)) for k in RUN_ONLY_KEYS)


def result_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that define what a job computes, sorted (order on the command line is noise)."""
    return sorted(o for o in overrides if "=" in o and not is_run_only(o))


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def slug(items: list[str], sep: str) -> str:
    """A folder-safe name; a hash is appended whenever characters were replaced or the
    name was shortened, so distinct inputs never end up with the same name."""
    text = sep.join(items)
    safe = re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", text)
    if safe != text or len(safe) > 120:
        safe = f"{safe[:100]}-{_digest(text)}"
    return safe or "default"


def job_dirname(overrides) -> str:
    return slug(result_overrides(list(overrides)), ",")


def sweep_name_from_argv(argv: list[str]) -> str:
    """The sweep name for a command line: its result-defining overrides, sorted."""
    return slug(result_overrides(a for a in argv if not a.startswith("-")), "__")


def run_id(sweep_name: str | None, job_name: str) -> str:
    """A deterministic wandb run id: a rerun or a requeue resumes the same run."""
    return _digest(f"{sweep_name or 'runs'}/{job_name}", 16)


if not OmegaConf.has_resolver("job_dirname"):
    OmegaConf.register_new_resolver("job_dirname", job_dirname)
