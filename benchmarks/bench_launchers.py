"""Orchestration overhead of the launchers: one 9-job smoke sweep under each.

    python benchmarks/bench_launchers.py                 # local, local_parallel, slurm (if a cluster answers)
    python benchmarks/bench_launchers.py --launchers local local_parallel

Each launcher runs the same 9-job grid (`preset=smoke`, 9 dropout positions) into a fresh
output folder, as a user types it (`python -m sweeper -m ...` in a subprocess). Printed per
launcher: wall time of the whole command, the sum of the jobs' training time and of their
evaluation time (each job measures its own, in results.json), and the per-job overhead:

    overhead per job = (wall x slots - sum(train + eval) - tail idle) / jobs

i.e. the slot-seconds not spent in a job's own training and evaluation, divided by the
number of jobs: process start-up, imports, config composition, data loading, model build,
wandb init/finish, submission, scheduling and polling. ``slots`` is the number of jobs
that run at once (1 for local; the cap for local_parallel; the CPUs / cpus_per_task for
slurm). ``slurm_packed`` packs the 9 jobs into one array task per slot
(``hydra.launcher.jobs_per_task``). ``tail idle`` is the slot-time left empty because the grid had no job left to
start (after the last job started, slots minus running jobs, integrated from the jobs'
own start/end stamps in status.json); 9 jobs on 2 slots always leave one slot idle at
the end, which is not the launcher's doing. The raw figure (without that correction) is
printed too. Target: <= 2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ["preset=smoke", "dropout.p=0.7", "dropout.position=none,first,b2,middle,up1,hr,last,half,all"]
CPUS = os.cpu_count() or 1
LAUNCHERS = {
    "local": ([], 1),
    "local_parallel": (["launcher=local_parallel", f"hydra.launcher.max_parallel={CPUS}"], CPUS),
    "slurm": (["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30"], CPUS),
    "slurm_packed": (["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
                      "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30",
                      f"hydra.launcher.jobs_per_task={-(-9 // CPUS)}"], CPUS),
}


def slurm_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return "idle" in out or "mixed" in out


def run(name: str, out_root: Path) -> dict:
    extra, slots = LAUNCHERS[name]
    env = {**os.environ, "SR_OUTPUT_ROOT": str(out_root), "WANDB_MODE": "offline",
           "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sweeper", "-m", *GRID, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    results = [json.loads(p.read_text()) for p in out_root.glob("sweeps/*/*/results.json")]
    assert len(results) == 9, f"{name}: {len(results)} results"
    train = sum(r["train_seconds"] for r in results)
    evaluate = sum(r["eval_seconds"] for r in results)
    spans = [json.loads(p.read_text()) for p in out_root.glob("sweeps/*/*/status.json")]
    spans = [(s["attempt_started"], s["updated"]) for s in spans]
    raw = wall * slots - train - evaluate
    idle = tail_idle(spans, slots)
    return {"launcher": name, "jobs": len(results), "slots": slots, "wall": wall, "train": train, "eval": evaluate,
            "raw": raw / len(results), "tail": idle, "overhead": (raw - idle) / len(results)}


def tail_idle(spans: list[tuple[float, float]], slots: int) -> float:
    """Slot-seconds with nothing to run: after the last job started, until the last job ended."""
    last_start = max(s for s, _ in spans)
    end = max(e for _, e in spans)
    times = sorted({last_start, end, *(e for _, e in spans if e > last_start)})
    idle = 0.0
    for a, b in zip(times, times[1:]):
        running = sum(1 for s, e in spans if s <= a and e >= b)
        idle += max(0, slots - running) * (b - a)
    return idle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--launchers", nargs="+", default=list(LAUNCHERS), choices=list(LAUNCHERS))
    args = ap.parse_args()
    names = [n for n in args.launchers if not n.startswith("slurm") or slurm_up()]
    if any(n.startswith("slurm") for n in args.launchers) and not any(n.startswith("slurm") for n in names):
        print("slurm: no cluster answers (make slurm-up); skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"running the 9-job smoke sweep under {name} ...", flush=True)
            rows.append(run(name, Path(tmp) / name))
    print(f"\n{CPUS} CPUs; overhead per job = (wall x slots - sum(train + eval) - tail idle) / jobs; target <= 2 s")
    print(f"{'launcher':<16}{'jobs':>5}{'slots':>6}{'wall s':>9}{'sum train s':>13}{'sum eval s':>12}"
          f"{'tail idle s':>12}{'raw/job s':>11}{'overhead/job s':>16}")
    for r in rows:
        print(f"{r['launcher']:<16}{r['jobs']:>5}{r['slots']:>6}{r['wall']:>9.1f}{r['train']:>13.1f}{r['eval']:>12.1f}"
              f"{r['tail']:>12.1f}{r['raw']:>11.2f}{r['overhead']:>16.2f}")


if __name__ == "__main__":
    main()
