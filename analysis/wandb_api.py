"""Runs from a wandb server (online logging) into the same frame as ``analysis.runs``.

    frame = api_runs_frame("entity/project", group="<sweep name>")
    python -m analysis.tables --wandb entity/project [--group G] [--tag T] [--out DIR]

Uses wandb's public API: ``wandb.Api().runs(path, filters=...)``; per run its tags, state,
summary (the final ``test/<set>/<degradation>/<metric>`` keys) and the per-image table file
the job logged. Needs network access and a wandb login; the offline reader
(``analysis.runs.runs_frame``) needs neither.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from analysis.runs import parse_tags

# the server's run states -> the offline reader's
STATES = {"finished": "finished", "failed": "failed", "crashed": "unfinished", "killed": "unfinished",
          "running": "unfinished", "preempted": "unfinished", "preempting": "unfinished"}


def api_filters(group: str | None = None, tags: list[str] | None = None, state: str | None = None) -> dict:
    filters: dict = {}
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$in": list(tags)}
    if state:
        filters["state"] = state
    return filters


def api_runs_frame(path: str, group: str | None = None, tags: list[str] | None = None, state: str | None = None,
                   api=None) -> pd.DataFrame:
    """One row per run, the columns of ``analysis.runs.runs_frame`` (sweep_dir/run_dir empty)."""
    if api is None:
        import wandb
        api = wandb.Api()
    rows = []
    for run in api.runs(path, filters=api_filters(group, tags, state)):
        summary = dict(run.summary)
        metrics = {k: v for k, v in summary.items() if k.startswith("test/") and isinstance(v, (int, float))}
        rows.append({"sweep": run.group, "sweep_dir": None, "run_dir": None, "run_id": run.id, "name": run.name,
                     "state": STATES.get(run.state, run.state), "runtime": summary.get("_runtime"),
                     "config": dict(run.config),
                     **parse_tags(list(run.tags)), **metrics, "_api_run": run})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # keep the API objects aside (per_image_frame_api needs them), out of the shared schema
    frame.attrs["api_runs"] = dict(zip(frame["run_id"], frame.pop("_api_run")))
    return frame


def per_image_frame_api(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-image tables of the runs, downloaded from the server."""
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id, run in frame.attrs.get("api_runs", {}).items():
            files = [f for f in run.files() if "media/table/test/per_image_" in f.name]
            if not files:
                continue
            local = Path(files[-1].download(root=str(Path(tmp) / run_id), replace=True).name)
            data = json.loads(local.read_text())
            frames.append(pd.DataFrame(data["data"], columns=data["columns"]).assign(run_id=run_id))
    if not frames:
        return pd.DataFrame(columns=["run_id", "set", "image", "degradation"])
    return pd.concat(frames, ignore_index=True)
