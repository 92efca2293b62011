"""Runs -> one pandas row per run, read from the wandb logs (offline run files; no server).

Columns: ``sweep``, ``sweep_dir``, ``run_dir``, ``run_id``, ``name``, ``state``
(finished | failed | unfinished | corrupt: its file cannot be read, the row still shows the
job's settings), ``runtime`` (s), ``config`` (the resolved config), one
``swept.<key>`` column per override the job was launched with, and one
``test/<set>/<degradation>/<metric>`` column per final metric. ``per_image_frame`` gives the
per-image metrics of those runs.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from analysis.wandb_offline import OfflineRun, read_runs


def _sweep_dir(run: OfflineRun) -> Path:
    # <sweep_dir>/<job>/wandb/offline-run-<stamp>-<id>/run-<id>.wandb
    return run.path.parents[3]


def parse_tags(tags: list[str]) -> dict[str, str]:
    """The job's overrides, stored as wandb tags 'key=value'."""
    return {f"swept.{k.lstrip('+~')}": v for k, _, v in (t.partition("=") for t in tags) if _}


def _job_overrides(job_dir: Path) -> list[str]:
    """The job's overrides from what the sweep wrote (for runs whose wandb record never got
    written: a job killed early leaves a .wandb file with no run record, a damaged file has
    none that can be read): the sweep's
    ``jobs.json``, else the job's ``status.json``, else Hydra's ``.hydra/overrides.yaml``."""
    manifest = _read_json(job_dir.parent / "jobs.json") or {}
    for job in manifest.get("jobs", []):
        if job.get("name") == job_dir.name:
            return list(job.get("overrides", []))
    status = _read_json(job_dir / "status.json") or {}
    if status.get("overrides"):
        return list(status["overrides"])
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    import yaml
    return sorted(o for o in yaml.safe_load(path.read_text()) or [] if "=" in o)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def runs_frame(root: str | Path) -> pd.DataFrame:
    rows = []
    for run in read_runs(Path(root), history=False, keep_corrupt=True):
        metrics = {k: v for k, v in run.summary.items()
                   if k.startswith(("test/", "seal/")) and isinstance(v, (int, float))}
        job_dir = run.path.parents[2]
        tags = run.tags or _job_overrides(job_dir)
        rows.append({"sweep": run.group or _sweep_dir(run).name, "sweep_dir": str(_sweep_dir(run)),
                     "run_dir": str(run.path.parent), "run_id": run.run_id, "name": run.name or job_dir.name,
                     "state": run.state, "runtime": run.runtime, "config": run.config, **parse_tags(tags),
                     **metrics})
    return pd.DataFrame(rows)


def read_per_image(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-image metrics of the runs (the ``test/per_image`` wandb table each job logs, saved
    by wandb under ``files/media/table/``): run_id, set, image, degradation, metrics; and
    {run_id: why} for each run whose table cannot be read (empty, truncated, not a table),
    naming the file. One such run never costs the others their rows."""
    frames, corrupt = [], {}
    for run_id, run_dir in zip(runs["run_id"], runs["run_dir"]):
        tables = sorted(Path(run_dir).glob("files/media/table/test/per_image_*.table.json"))
        if not tables:
            continue
        try:
            data = json.loads(tables[-1].read_text())
            frame = pd.DataFrame(data["data"], columns=data["columns"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            corrupt[run_id] = f"{tables[-1]}: {'empty file' if _empty(tables[-1]) else why}"
            continue
        frames.append(frame.assign(run_id=run_id))
    if not frames:
        return pd.DataFrame(columns=["run_id", "set", "image", "degradation"]), corrupt
    return pd.concat(frames, ignore_index=True), corrupt


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def per_image_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """``read_per_image``'s frame; a run whose table cannot be read is left out, with a warning."""
    frame, corrupt = read_per_image(runs)
    for run_id, why in corrupt.items():
        warnings.warn(f"corrupt per-image table of run {run_id}, left out: {why}", stacklevel=2)
    return frame


def with_per_image(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs, their per-image metrics), a run whose per-image table cannot be read marked
    ``corrupt`` (its row stays, its scores are left out of every mean and interval), with a
    warning naming the file."""
    frame, corrupt = read_per_image(runs)
    for run_id, why in corrupt.items():
        warnings.warn(f"corrupt per-image table, run {run_id} shown as corrupt: {why}", stacklevel=2)
    if corrupt:
        runs = runs.assign(state=runs["state"].where(~runs["run_id"].isin(list(corrupt)), "corrupt"))
    return runs, frame
