"""`python -m sweeper.status <sweep dir>`: where a sweep stands, one line per job.

Reads only the files jobs leave behind (``jobs.json``, ``status.json``, ``results.json``),
so it works while the sweep runs, after a crash, and on a login node for SLURM jobs.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from sweeper.jobstate import MANIFEST, STATES, job_labels, job_state, read_json


def sweep_jobs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(job folder, short label) for every job of the sweep, launched or not."""
    manifest = read_json(sweep_dir / MANIFEST)
    if manifest:
        jobs = manifest["jobs"]
        return list(zip([sweep_dir / j["name"] for j in jobs], job_labels([j["overrides"] for j in jobs])))
    # a sweep from before manifests: every job folder Hydra made
    return [(d, d.name) for d in sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml"))]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return [d for d, _ in sweep_jobs(sweep_dir)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def job_line(job_dir: Path, label: str) -> tuple[str, dict]:
    state, d = job_state(job_dir)
    it, total = d.get("iteration"), d.get("iterations")
    progress = f"{it}/{total}" if total else "-"
    val = d.get("val_psnr")
    if state == "done":
        progress = f"{total}/{total}" if total else "done"
    elapsed = None
    if d.get("started"):  # wall time since the first attempt started (queue waits of requeues included)
        elapsed = (time.time() if state == "running" else d.get("updated", d["started"])) - d["started"]
    where = d.get("slurm_job_id") and f"slurm {d['slurm_job_id']}_{d.get('slurm_array_task_id')}" or (
        d.get("host") and f"{d['host']}:{d.get('pid')}")
    extra = d.get("reason") if state in ("failed", "interrupted") else (where if state == "running" else "")
    if state == "running" and d.get("phase"):
        extra = f"{d['phase']}, {extra}"
    if d.get("attempt", 1) > 1:
        extra = f"{extra}, attempt {d['attempt']}" if extra else f"attempt {d['attempt']}"
    val_text = f"{val:.2f}" if isinstance(val, (int, float)) else "-"
    line = f"{state:<11} {progress:>15} {val_text:>8} {_duration(elapsed):>9}  {label}"
    return state, {"line": line + (f"  [{extra}]" if extra else ""), "state": state}


def sweep_status(sweep_dir: Path) -> tuple[list[str], Counter]:
    counts: Counter = Counter()
    lines = [f"{'state':<11} {'iteration':>15} {'val PSNR':>8} {'elapsed':>9}  job"]
    for d, label in sweep_jobs(sweep_dir):
        state, info = job_line(d, label)
        counts[state] += 1
        lines.append(info["line"])
    total = sum(counts.values())
    lines.append(f"{total} jobs: " + ", ".join(f"{counts[s]} {s}" for s in reversed(STATES) if counts[s]))
    return lines, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeper.status", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a sweep folder (outputs/sweeps/<name>) or a folder of sweeps")
    ap.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until nothing runs")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: sweep folder '{args.sweep_dir}' does not exist", file=sys.stderr)
        return 2
    sweeps = [args.sweep_dir] if job_dirs(args.sweep_dir) else sorted(p for p in args.sweep_dir.iterdir()
                                                                       if p.is_dir() and job_dirs(p))
    if not sweeps:
        print(f"error: no jobs found under '{args.sweep_dir}' (expected {MANIFEST} or <job>/.hydra/)",
              file=sys.stderr)
        return 2
    while True:
        running = failed = 0
        for sweep in sweeps:
            lines, counts = sweep_status(sweep)
            print(f"== {sweep}" if len(sweeps) > 1 else f"== {sweep.name}")
            print("\n".join(lines))
            running += counts["running"]
            failed += counts["failed"]
        if not args.watch or not running:
            return 1 if failed else 0
        time.sleep(args.watch)
        print()


if __name__ == "__main__":
    sys.exit(main())
