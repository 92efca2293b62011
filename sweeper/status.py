"""`python -m sweeper.status <sweep dir>`: where a sweep stands, one line per job.

Reads only the files jobs leave behind (``jobs.json``, ``status.json``, ``results.json``),
so it works while the sweep runs, after a crash, and on a login node for SLURM jobs. Under
SLURM it also asks the queue (``squeue``) about the tasks the driver submitted
(``slurm_tasks.json``): a job that has not started shows how long it has been pending and
why, and a reason that will not clear by itself (a request no node can meet, a partition
limit, a hold) says so and what to do. The driver reports the same while it waits.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sweeper.background import driver_line
from sweeper.jobstate import MANIFEST, STATES, job_labels, job_state, read_json, write_json

SLURM_TASKS = "slurm_tasks.json"  # in the sweep folder: {"jobs": {overrides: {task, submitted}}, "request"}


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


# --- SLURM: the queue's word on tasks that have not started ----------------------------------

# Pending reasons that do not clear by themselves: the request breaks a limit, or someone must act.
NEVER_CLEARS = {
    "PartitionConfig": "the partition's configuration refuses the request",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "its time limit (hydra.launcher.timeout_min) is above the partition's",
    "BadConstraints": "no node has the requested features",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "DependencyNeverSatisfied": "a job it depends on failed",
    "InvalidAccount": "its account is invalid", "InvalidQOS": "its QOS is invalid",
    "JobHeldAdmin": "an administrator holds it", "JobHeldUser": "it is held (scontrol release <job>)",
}
PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)\w*PerJob")  # e.g. QOSMaxCpuPerJobLimit: above a per-job limit


def job_key(overrides) -> str:
    """How a job is found in ``slurm_tasks.json``: its result overrides (as in ``jobs.json``)."""
    return " ".join(overrides)


def record_slurm_tasks(sweep_dir: Path, tasks: dict[str, str], request: dict) -> None:
    """The driver's note of which array task runs each job (``job_key`` -> "<array>_<index>")."""
    path = Path(sweep_dir) / SLURM_TASKS
    data = read_json(path) or {}
    now = time.time()
    data.setdefault("jobs", {}).update({key: {"task": task, "submitted": now} for key, task in tasks.items()})
    write_json(path, {**data, "request": request})


def queue_states(tasks) -> dict[str, tuple[str, str]]:
    """squeue's (state, reason) of each task still known to it, e.g. {"123_4": ("PENDING",
    "Resources")}; {} when squeue cannot answer (no SLURM here, tasks long gone)."""
    return _squeue(tasks) or {}


def _squeue(tasks) -> dict[str, tuple[str, str]] | None:
    """``queue_states``, or None when squeue did not answer."""
    arrays = sorted({str(t).split("_")[0] for t in tasks})
    if not arrays:
        return {}
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T %r"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:  # (squeue's word for "all of them are over")
        return None
    fields = (line.split(None, 2) for line in proc.stdout.splitlines())
    return {f[0]: (f[1], f[2] if len(f) > 2 else "") for f in fields if len(f) >= 2}


def accounting_states(tasks) -> dict[str, str]:
    """sacct's state of each task, e.g. {"123_4": "CANCELLED"} (the word only), for tasks squeue no
    longer lists (finished, cancelled, failed); {} when sacct cannot answer (no accounting)."""
    arrays = sorted({str(t).split("_")[0] for t in tasks})
    if not arrays:
        return {}
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(arrays), "-o", "JobID,State"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = (line.split("|") for line in proc.stdout.splitlines())
    return {f[0]: f[1].split()[0].upper() for f in fields if len(f) >= 2 and f[1].strip()}


# squeue/sacct states of a task that is not over (a requeued task passes through several of them)
NOT_OVER = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING",
            "RESIZING", "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY"}


def cluster_states(tasks) -> dict[str, tuple[str, str]]:
    """(state, reason) of each task: squeue's while it is queued or running, sacct's once it is over
    (reason ""), and GONE for a task neither knows (SLURM keeps no record of an array task
    cancelled before it started). Empty when squeue does not answer."""
    tasks = list(tasks)
    states = _squeue(tasks)
    if states is None:
        return {}
    gone = [t for t in tasks if t not in states]
    if gone:
        accounted = accounting_states(gone)
        states.update({t: (accounted.get(t, "GONE"), "") for t in gone})
    return states


def live_tasks(sweep_dir: Path) -> dict[str, tuple[str, str]]:
    """The jobs of the sweep (by ``job_key``) whose SLURM task is queued or running on the cluster
    now, with (task, state): a second driver must wait for them, not submit them again."""
    submitted = (read_json(Path(sweep_dir) / SLURM_TASKS) or {}).get("jobs", {})
    if not submitted:
        return {}
    states = cluster_states({t["task"] for t in submitted.values()})
    return {key: (t["task"], states[t["task"]][0]) for key, t in submitted.items()
            if t["task"] in states and states[t["task"]][0] in NOT_OVER}


def never_clears(reason: str, request: dict | None) -> str | None:
    """Why a task pending for ``reason`` cannot start as it is, or None for an ordinary wait.
    ``Resources`` is ordinary unless no node of the partition can hold the request."""
    word = reason.split(",")[0].strip()
    if word in NEVER_CLEARS:
        return NEVER_CLEARS[word]
    if PER_JOB_LIMIT.match(word):
        return f"it is above a per-job limit of its QOS or association ({word})"
    if word == "Resources" and request:
        from sweeper.preflight import PreflightError, unmet_request  # sinfo; heavy imports only here
        try:
            unmet = unmet_request(request)
        except PreflightError:  # sinfo cannot answer: nothing to say
            return None
        return f"no node can ever run it: {unmet[0]}" if unmet else None
    return None


def pending_note(task: str, state: str, reason: str, since: float | None, request: dict | None) -> tuple[str, bool]:
    """One line on a queued task (how long it has waited and why, what to do if it will not start
    as it is), and whether it will not."""
    waited = f" for {_duration(time.time() - since)}" if since else ""
    note = f"slurm {task} {state.lower()}{waited} ({reason or 'no reason given'})"
    why = never_clears(reason, request) if state == "PENDING" else None
    if why:
        note += f": will not start as it is: {why}; scancel {task.split('_')[0]} and fix the request"
    return note, why is not None


def cluster_notes(sweep_dir: Path) -> dict[str, tuple[str, str]]:
    """What the cluster says of every job (by folder name) that has a SLURM task: (its state, a
    line). Queued tasks get ``pending_note`` (how long and why); tasks that are over get their
    final accounting state, e.g. ("CANCELLED", "slurm 12_3 CANCELLED")."""
    submitted = read_json(Path(sweep_dir) / SLURM_TASKS) or {}
    manifest = read_json(Path(sweep_dir) / MANIFEST) or {}
    tasks = {j["name"]: submitted.get("jobs", {}).get(job_key(j["overrides"])) for j in manifest.get("jobs", [])}
    tasks = {name: t for name, t in tasks.items() if t}
    states = cluster_states(t["task"] for t in tasks.values())
    notes = {}
    for name, t in tasks.items():
        if t["task"] not in states:
            continue
        state, reason = states[t["task"]]
        if state in NOT_OVER:
            notes[name] = (state, pending_note(t["task"], state, reason, t.get("submitted"), submitted.get("request"))[0])
        elif state == "GONE":
            notes[name] = (state, f"slurm {t['task']} left the queue without a record (cancelled before it started?)")
        else:
            notes[name] = (state, f"slurm {t['task']} {state}")
    return notes


def job_line(job_dir: Path, label: str, cluster: tuple[str, str] | None = None) -> tuple[str, dict]:
    state, d = job_state(job_dir)
    queued = None
    if cluster:
        slurm_state, note = cluster
        if slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED"):
            queued = note
        elif slurm_state not in NOT_OVER and slurm_state != "COMPLETED" and state not in ("done", "failed"):
            # over on the cluster without a result (cancelled, timed out, out of memory...), whatever
            # the job's own files last said: no process of it is left to finish
            state, d = "failed", {**d, "reason": f"{note}; no result: run the same command again to resubmit it"}
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
    if queued and state in ("pending", "interrupted"):  # waiting in the SLURM queue: since when and why
        extra = f"{extra}, {queued}" if extra else queued
    if d.get("attempt", 1) > 1:
        extra = f"{extra}, attempt {d['attempt']}" if extra else f"attempt {d['attempt']}"
    val_text = f"{val:.2f}" if isinstance(val, (int, float)) else "-"
    line = f"{state:<11} {progress:>15} {val_text:>8} {_duration(elapsed):>9}  {label}"
    return state, {"line": line + (f"  [{extra}]" if extra else ""), "state": state}


def sweep_status(sweep_dir: Path) -> tuple[list[str], Counter]:
    counts: Counter = Counter()
    lines = [f"{'state':<11} {'iteration':>15} {'val PSNR':>8} {'elapsed':>9}  job"]
    cluster = cluster_notes(sweep_dir) if (sweep_dir / SLURM_TASKS).exists() else {}
    for d, label in sweep_jobs(sweep_dir):
        state, info = job_line(d, label, cluster.get(d.name))
        counts[state] += 1
        lines.append(info["line"])
    total = sum(counts.values())
    lines.append(f"{total} jobs: " + ", ".join(f"{counts[s]} {s}" for s in reversed(STATES) if counts[s]))
    driver = driver_line(sweep_dir)
    if driver:
        lines.append(driver)
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
            running += counts["running"] + (driver_line(sweep) is not None)  # a driver still launches jobs
            failed += counts["failed"]
        if not args.watch or not running:
            return 1 if failed else 0
        time.sleep(args.watch)
        print()


if __name__ == "__main__":
    sys.exit(main())
