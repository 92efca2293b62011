"""Fault injection (issue 19): every reliability defect found so far, and kill -9 at exact points of
a job's life, each against the real command line; then a rerun of the same command must end as an
uninterrupted run does.

    python benchmarks/fault_injection.py              # every case (make faults), a few minutes
    python benchmarks/fault_injection.py --list       # the cases
    python benchmarks/fault_injection.py kill:checkpoint-write D:empty-results

One line per case, then "N of M faults survived, nothing lost" (exit 0), or the cases that lost
something and what (exit 1). A case survives when the fault was really injected (the process died
at its point, or the bad input was refused before anything ran) and, where a rerun follows, the
rerun of the same command ends with
- ``results.json`` whose metrics and per-image scores equal the uninterrupted reference run's
  (the same command, same thread count, its own output folder), and a ``model.pt`` whose tensors
  are bit-identical to the reference's;
- the job ``done`` for ``python -m sweeper.status`` and its wandb run finished: the sweep's row
  in ``python -m analysis.tables`` is ``finished`` (not failed / unfinished / missing);
- no temporary file of an interrupted write left in the job folder.

The kills come from ``benchmarks/fault_hooks/sitecustomize.py``: that folder first on PYTHONPATH
and ``SR_FAULT=<point>`` make the job's process SIGKILL itself at that point (its docstring lists
them). A point whose function no longer exists is reported as such, never passed.

Faults of a job's lifecycle (issue 26), as a user meets them: L, the sweep folder ``rm -rf``-ed
while its job trains (the job pauses itself with SIGSTOP at iteration 11, the harness deletes the
folder and continues it), and a finished job's ``wandb/`` deleted; M, one run's empty
``per_image_*.table.json``; N, the disk full while the tables are written (a full 64 MB tmpfs
when this process may mount one, i.e. root; else a file-size limit, RLIMIT_FSIZE, on the tables
command); O, Ctrl-C: SIGINT to the command's whole process group, started in its own session as
a terminal's foreground job, at iteration 11. P: the same command over two seeds trains as one
fused group: killed, Ctrl-C'd, one job's folder deleted, one job's loss NaN; each job must end as
in the uninterrupted group (bit for bit where the group resumes; within 1e-3 dB for a job that
reruns alone).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "benchmarks" / "fault_hooks"
sys.path.insert(0, str(ROOT))

# One small job: 16 iterations, a checkpoint every 4 and a validation every 8, 1 test image x 8
# degradations. Every case runs this command (plus a fault), so one reference run serves them all.
COMMAND = ["-m", "preset=smoke", "train.iterations=16", "train.log_every=4", "train.val_every=8",
           "train.ckpt_every=4", "backbone.num_feat=8", "backbone.num_block=2", "eval.max_images=1",
           "data.val_max_images=1", "train.threads=1"]
TIMEOUT_S = 300


class Lost(Exception):
    """The case did not survive: what was lost or differs."""


# --- running the command line ----------------------------------------------------------------

@dataclass
class Run:
    code: int
    out: str
    events: list[dict]  # the fault hook's log

    @property
    def fired(self) -> bool:
        return any(e["event"] == "fired" for e in self.events)


def _env(out_root: Path, fault: str | None, at: int, sig: str, log: Path | None, group: bool = False) -> dict:
    env = {**os.environ, "SR_OUTPUT_ROOT": str(out_root), "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}
    for key in ("SR_FAULT", "SR_FAULT_AT", "SR_FAULT_SIGNAL", "SR_FAULT_LOG", "SR_FAULT_TARGET", "WANDB_SERVICE"):
        env.pop(key, None)
    if fault:
        env.update(SR_FAULT=fault, SR_FAULT_AT=str(at), SR_FAULT_SIGNAL=sig, SR_FAULT_LOG=str(log),
                   PYTHONPATH=os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])]))
        if group:
            env["SR_FAULT_TARGET"] = "group"
    return env


def _as_in_a_terminal() -> None:
    """The child's Ctrl-C as in an interactive shell: SIGINT not ignored (a background job of a
    script inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], out_root: Path, fault: str | None = None, at: int = 1, sig: str = "KILL",
          module: str = "sweeper", group: bool = False) -> tuple[subprocess.Popen, Path | None]:
    """``group``: the command in its own session (a terminal's foreground process group), and the
    fault's signal sent to that whole group, as Ctrl-C is."""
    log = out_root.with_name(out_root.name + ".faults.jsonl") if fault else None
    if log:
        log.unlink(missing_ok=True)  # this run's events only
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                            env=_env(out_root, fault, at, sig, log, group), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=group,
                            preexec_fn=_as_in_a_terminal if group else None)
    return proc, log


def finish(proc: subprocess.Popen, log: Path | None) -> Run:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise Lost(f"the command did not end within {TIMEOUT_S} s:\n{out[-1500:]}") from None
    events = [json.loads(line) for line in log.read_text().splitlines()] if log and log.exists() else []
    return Run(proc.returncode, out, events)


def sweep(args: list[str], out_root: Path, **fault) -> Run:
    return finish(*start(args, out_root, **fault))


def faulted(args: list[str], out_root: Path, point: str, at: int = 1, sig: str = "KILL", worker: bool = False,
            group: bool = False) -> Run:
    """Run with a fault at ``point``; raise Lost unless it struck there. ``worker``: the job runs
    in a worker process (launcher=local_parallel), whose death the driver survives and reports.
    ``group``: the signal goes to the command's whole process group (see ``start``)."""
    run = sweep(args, out_root, fault=point, at=at, sig=sig, group=group)
    missing = [e["where"] for e in run.events if e["event"] == "missing"]
    if missing:
        raise Lost(f"patch point not found: {', '.join(missing)} (the harness must follow the code)")
    if not run.fired:
        raise Lost(f"fault point {point} (call {at}) was never reached; exit code {run.code}:\n{run.out[-1500:]}")
    if worker:
        if run.code != 1 or f"job process died (exit code -{int(signal.SIGKILL)})" not in run.out:
            raise Lost(f"the driver did not report its killed worker (exit code {run.code}):\n{run.out[-1500:]}")
    elif sig == "KILL" and run.code != -signal.SIGKILL:
        raise Lost(f"the process was not killed at {point} (exit code {run.code}):\n{run.out[-1500:]}")
    return run


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP), from /proc (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def paused(args: list[str], out_root: Path, point: str, at: int = 1) -> tuple[subprocess.Popen, Path]:
    """Start the command and wait until it has stopped itself (SIGSTOP) at ``point``: the harness
    acts on it there (``os.kill(proc.pid, signal.SIGCONT)`` then ``finish``)."""
    proc, log = start(args, out_root, fault=point, at=at, sig="STOP")
    deadline = time.monotonic() + TIMEOUT_S
    while not _stopped(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, _ = proc.communicate()
            raise Lost(f"the command never stopped at {point} (exit code {proc.returncode}):\n{out[-1500:]}")
        time.sleep(0.02)
    return proc, log


# --- what a finished job must look like --------------------------------------------------------

def the_sweep(out_root: Path) -> Path:
    sweeps = [p for p in (out_root / "sweeps").iterdir() if p.is_dir()] if (out_root / "sweeps").is_dir() else []
    if len(sweeps) != 1:
        raise Lost(f"expected one sweep folder under {out_root}/sweeps, found {len(sweeps)}")
    return sweeps[0]


def the_job(out_root: Path) -> Path:
    jobs = [p.parent for p in the_sweep(out_root).glob("*/.hydra")]
    if len(jobs) != 1:
        raise Lost(f"expected one job folder, found {len(jobs)}")
    return jobs[0]


def leftovers(job: Path) -> list[str]:
    return sorted(p.name for p in (*job.glob(".*.tmp"), *job.glob("*/.*.tmp")))


def same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = (torch.load(p, weights_only=True) for p in (a, b))
    return wa.get("model_args") == wb.get("model_args") and wa.keys() == wb.keys() and all(
        torch.equal(wa[k][n], wb[k][n]) for k in wa if k != "model_args" for n in wa[k])


def table_states(sweep_dir: Path) -> tuple[int, list[str], str]:
    """``python -m analysis.tables <sweep>`` (in this process): exit code, the ``status`` of every
    row of psnr_stats.csv, and what it printed."""
    import warnings

    import pandas as pd

    from analysis.tables import main as tables_main

    shutil.rmtree(sweep_dir / "tables", ignore_errors=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = tables_main([str(sweep_dir)])
    stats = sweep_dir / "tables" / "psnr_stats.csv"
    states = sorted(set(pd.read_csv(stats)["status"])) if stats.exists() else []
    return code, states, buf.getvalue()


def status_line(sweep_dir: Path) -> tuple[int, str]:
    from sweeper.status import main as status_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = status_main([str(sweep_dir)])
    from sweeper.jobstate import STATES

    jobs = [line for line in buf.getvalue().splitlines() if line.split(" ", 1)[0] in STATES]
    return code, jobs[0] if len(jobs) == 1 else buf.getvalue()


def check_complete(out_root: Path, ref: Reference) -> str:
    """The job of ``out_root`` ended as the reference did; raise Lost with every difference."""
    from sweeper.jobstate import read_json, read_results

    job = the_job(out_root)
    problems = []
    results = read_results(job)
    if results is None:
        raise Lost("no complete results.json after the rerun")
    if results["metrics"] != ref.results["metrics"]:
        diff = [k for k in ref.results["metrics"] if results["metrics"].get(k) != ref.results["metrics"][k]]
        problems.append(f"metrics differ from the uninterrupted run ({len(diff)} keys, e.g. {diff[:2]})")
    if results["per_image"] != ref.results["per_image"]:
        problems.append("per-image scores differ from the uninterrupted run")
    if not (job / "model.pt").exists() or not same_weights(job / "model.pt", ref.job / "model.pt"):
        problems.append("model.pt differs from the uninterrupted run's")
    status = read_json(job / "status.json") or {}
    if not status.get("wandb_finished"):
        problems.append(f"the wandb run is not finished (status.json: wandb_finished {status.get('wandb_finished')})")
    code, line = status_line(job.parent)
    if code != 0 or not line.startswith("done"):
        problems.append(f"sweeper.status: exit {code}, '{line.strip()}'")
    code, states, printed = table_states(job.parent)
    if code != 0 or states != ["finished"]:
        problems.append(f"analysis.tables: exit {code}, row status {states or 'none'}: {printed.strip()[-300:]}")
    junk = leftovers(job)
    if junk:
        problems.append(f"partial writes left behind: {', '.join(junk)}")
    if problems:
        raise Lost("; ".join(problems))
    return f"rerun = reference (attempt {results['attempt']})"


def rerun_and_check(out_root: Path, ref: Reference, args: list[str] = COMMAND) -> tuple[Run, str]:
    run = sweep(args, out_root)
    if run.code != 0:
        raise Lost(f"the rerun failed (exit code {run.code}):\n{run.out[-1500:]}")
    return run, check_complete(out_root, ref)


@dataclass
class Reference:
    root: Path
    job: Path
    results: dict


def reference(work: Path) -> Reference:
    root = work / "reference"
    run = sweep(COMMAND, root)
    if run.code != 0:
        raise SystemExit(f"the reference run failed (exit code {run.code}):\n{run.out[-3000:]}")
    from sweeper.jobstate import read_results

    job = the_job(root)
    return Reference(root, job, read_results(job))


def copy_of_reference(ref: Reference, out_root: Path) -> Path:
    shutil.copytree(ref.root, out_root, symlinks=True)
    return the_job(out_root)


def job_logs(job: Path, run: Run) -> str:
    return run.out + "".join(p.read_text(errors="replace") for p in job.glob("*.log"))


# --- the cases ----------------------------------------------------------------------------------

# kill -9 at points across a job's life (benchmarks/fault_hooks/sitecustomize.py): (point, call, what).
KILL_POINTS = [
    ("startup", 1, "start-up: status.json written, before training"),
    ("train-early", 1, "early training: iteration 2, before the first checkpoint"),
    ("checkpoint-rotate", 1, "checkpoint rotation: iteration 8, checkpoint.pt linked, not yet renamed to .prev"),
    ("checkpoint-write", 2, "checkpoint write: iteration 8, tmp file written, before os.replace"),
    ("after-checkpoint", 2, "right after the checkpoint of iteration 8"),
    ("validation", 1, "validation at iteration 8, before the checkpoint"),
    ("train-mid", 1, "mid training: iteration 11, between checkpoints"),
    ("weights-write", 1, "model.pt write: tmp file written, before os.replace"),
    ("evaluation", 6, "evaluation, between test images 5 and 6 of 8"),
    ("results-write", 1, "results.json write: tmp file written, before os.replace"),
    ("wandb-finish-start", 1, "results written, wandb finish entered"),
    ("wandb-exit-sent", 1, "during wandb finish: exit record sent, not yet acknowledged"),
    ("wandb-finish-unrecorded", 1, "wandb finished, status.json not yet told"),
]


def saved_iteration(checkpoint: Path) -> str:
    import torch

    if not checkpoint.exists():
        return "none"
    return f"iteration {torch.load(checkpoint, weights_only=True)['iteration']}"


def kill_case(point: str, at: int, launcher: list[str] = ()):
    def case(work: Path, ref: Reference) -> str:
        out, command = work / "run", [*COMMAND, *launcher]
        faulted(command, out, point, at, worker=bool(launcher))
        jobs = list(out.glob("sweeps/*/*/.hydra"))
        junk = leftovers(jobs[0].parent) if jobs else []
        left = f"checkpoint.pt at the kill: {saved_iteration(jobs[0].parent / 'checkpoint.pt')}" if jobs else \
            "killed before the job folder existed"
        _, verdict = rerun_and_check(out, ref, command)
        return f"{left}; {verdict}" + (f"; cleaned {', '.join(junk)}" if junk else "")
    return case


def case_a(work: Path, ref: Reference) -> str:
    """A: SIGUSR2 (a stop signal) between two test images."""
    from sweeper.jobstate import is_done, read_json

    out = work / "run"
    run = faulted(COMMAND, out, "evaluation", at=6, sig="USR2")
    job = the_job(out)
    status = read_json(job / "status.json") or {}
    kept = (read_json(job / "eval_partial.json") or {}).get("rows", [])
    if run.code != 128 + signal.SIGUSR2 or is_done(job) or status.get("state") != "interrupted":
        raise Lost(f"the job did not stop during evaluation: exit {run.code}, state {status.get('state')}, "
                   f"done {is_done(job)}")
    if "during evaluation" not in (status.get("reason") or "") or not 0 < len(kept) < len(ref.results["per_image"]):
        raise Lost(f"stopped, but reason '{status.get('reason')}' and {len(kept)} images kept")
    _, verdict = rerun_and_check(out, ref)
    if (job / "eval_partial.json").exists():
        raise Lost("eval_partial.json left behind after the rerun")
    return f"stopped after {len(kept)} images (exit {run.code}), kept them; {verdict}"


def case_b(work: Path, ref: Reference) -> str:
    """B: kill -9 after results.json, before wandb finished: the rerun completes the wandb run only."""
    from sweeper.jobstate import read_results

    out = work / "run"
    faulted(COMMAND, out, "after-results")
    job = the_job(out)
    before = (job / "results.json").read_bytes()
    if read_results(job) is None:
        raise Lost("results.json was written but is not complete")
    run, verdict = rerun_and_check(out, ref)
    if (job / "results.json").read_bytes() != before:
        raise Lost("the rerun trained or evaluated again (results.json rewritten)")
    if "completing it from results.json" not in job_logs(job, run):
        raise Lost("the rerun did not say it completed the wandb run")
    return f"not trained again, wandb run completed; {verdict}"


def case_c(work: Path, ref: Reference) -> str:
    """C: a sweep with no test metrics (its only job failed) beside a finished one."""
    out = work / "run"
    shutil.copytree(ref.root, out, symlinks=True)
    good = the_sweep(out)
    bad = sweep([*COMMAND, "train.lr=1e30"], out)
    if bad.code != 1:
        raise Lost(f"the NaN sweep should fail (exit 1), got {bad.code}")
    bad_dir = next(p for p in (out / "sweeps").iterdir() if p != good)
    proc = subprocess.run([sys.executable, "-m", "analysis.tables", str(out / "sweeps")], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0 or not (good / "tables" / "psnr.md").exists():
        raise Lost(f"analysis.tables: exit {proc.returncode}, good sweep's table "
                   f"{'written' if (good / 'tables' / 'psnr.md').exists() else 'missing'}: {proc.stderr[-500:]}")
    status = bad_dir / "tables" / "status.md"
    if not status.exists() or "| failed" not in status.read_text():
        raise Lost("the sweep without scores got no status.md naming its failed run")
    return "tables of the good sweep written; the other's run listed as failed in status.md"


def results_damaged(damage: Callable[[bytes], bytes], what: str):
    def case(work: Path, ref: Reference) -> str:
        """D: a damaged results.json does not mark the job done; the rerun redoes it."""
        out = work / "run"
        job = copy_of_reference(ref, out)
        (job / "results.json").write_bytes(damage((job / "results.json").read_bytes()))
        _, line = status_line(job.parent)
        if line.startswith("done"):
            raise Lost(f"sweeper.status says done with {what} results.json")
        run, verdict = rerun_and_check(out, ref)
        if "finished earlier" in run.out and "launching" not in run.out:
            raise Lost("the rerun launched nothing")
        return f"status said '{line.split()[0]}'; {verdict}"
    return case


def checkpoint_damaged(damage: Callable[[bytes], bytes], what: str):
    def case(work: Path, ref: Reference) -> str:
        """E: a damaged checkpoint.pt: the rerun falls back to checkpoint.prev.pt, naming the file."""
        out = work / "run"
        faulted(COMMAND, out, "train-mid")
        job = the_job(out)
        ckpt = job / "checkpoint.pt"
        ckpt.write_bytes(damage(ckpt.read_bytes()))
        run, verdict = rerun_and_check(out, ref)
        logs = job_logs(job, run)
        if f"{ckpt}: not a readable checkpoint" not in logs or "resuming from the previous checkpoint" not in logs:
            raise Lost(f"no warning naming {ckpt} and the fallback")
        return f"{what} checkpoint.pt set aside, resumed from checkpoint.prev.pt; {verdict}"
    return case


def _small_image_folder(folder: Path) -> Path:
    import numpy as np

    from srcore.imageio import write_image

    folder.mkdir(parents=True)
    write_image(folder / "small.png", np.full((12, 30, 3), 128, dtype=np.uint8))
    return folder


def refused_before_launch(extra: Callable[[Path], list[str]], expect: str):
    def case(work: Path, ref: Reference) -> str:
        """F, G, K: a bad input stops the sweep in pre-flight, in one line, before anything runs."""
        out = work / "run"
        run = sweep([*COMMAND, *extra(work)], out)
        errors = [line for line in run.out.strip().splitlines() if line.startswith("error:")]
        said = [line.strip() for line in run.out.splitlines() if expect in line]
        started = list(out.glob("sweeps/*/*/status.json")) + list(out.glob("sweeps/*/*/wandb"))
        if run.code != 2 or not errors or not said or "Traceback" in run.out:
            raise Lost(f"expected exit 2 and an error saying '{expect}', got exit {run.code}: {run.out.strip()[-600:]}")
        if started:
            raise Lost(f"something was launched: {started[0]}")
        return f"refused in pre-flight, nothing launched: ...{said[0][said[0].index(expect):][:90]}"
    return case


def case_h(work: Path, ref: Reference) -> str:
    """H: a damaged .wandb file keeps its row, shown as corrupt."""
    out = work / "run"
    job = copy_of_reference(ref, out)
    (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
    run_file.write_bytes(b":W&B\xe1\xbe\x00" + b"\xff" * 200)
    proc = subprocess.run([sys.executable, "-m", "analysis.tables", str(job.parent)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    tables = "".join(p.read_text() for p in (job.parent / "tables").glob("*.md"))
    rows = [line for line in tables.splitlines() if "corrupt" in line and line.startswith("|")]
    if proc.returncode != 0 or not rows:
        raise Lost(f"analysis.tables: exit {proc.returncode}, no row shows the run as corrupt: {proc.stderr[-400:]}")
    return "the run's row is shown as corrupt"


def case_i(work: Path, ref: Reference) -> str:
    """I: two interrupted writes (a checkpoint, then model.pt) leave .tmp files; the rerun removes them."""
    out = work / "run"
    faulted(COMMAND, out, "checkpoint-write", at=2)
    first = leftovers(the_job(out))
    faulted(COMMAND, out, "weights-write")
    second = leftovers(the_job(out))
    if not first or not second or set(first) & set(second):
        raise Lost(f"partial writes after the first kill: {first}, after the second: {second} (expected the "
                   "first attempt's to be removed when the second started)")
    _, verdict = rerun_and_check(out, ref)
    return f"{first[0]} removed by attempt 2, {second[0]} by attempt 3; {verdict}"


def case_j(work: Path, ref: Reference) -> str:
    """J: the same sweep started twice at once trains its job once."""
    from sweeper.jobstate import read_json

    out = work / "run"
    procs = [start(COMMAND, out) for _ in range(2)]
    runs = [finish(*p) for p in procs]
    codes = sorted(r.code for r in runs)
    job = the_job(out)
    wandb_runs = list(job.glob("wandb/offline-run-*"))
    attempt = (read_json(job / "status.json") or {}).get("attempt")
    if codes not in ([0, 0], [0, 2]) or len(wandb_runs) != 1 or attempt != 1:
        raise Lost(f"exit codes {codes}, {len(wandb_runs)} wandb runs, attempt {attempt}")
    refused = [r.out.strip().splitlines()[-1] for r in runs if r.code == 2]
    if refused and "already being run by" not in refused[0]:
        raise Lost(f"the second driver's message: {refused[0]}")
    verdict = check_complete(out, ref)
    return f"exit codes {codes}: trained once; {verdict}"


def slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], check=False, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Skipped(Exception):
    pass


def case_k(work: Path, ref: Reference) -> str:
    """K: launcher=slurm with its defaults on nodes too small: refused in pre-flight."""
    if not slurm_answers():
        raise Skipped("no SLURM cluster answers sinfo (make slurm-up)")
    return refused_before_launch(lambda w: ["launcher=slurm"], "no node of partition")(work, ref)


# --- faults of a job's lifecycle (issue 26) ------------------------------------------------------

def case_folder_deleted(work: Path, ref: Reference) -> str:
    """L: ``rm -rf`` of the sweep folder while its job trains (paused at iteration 11): the job fails,
    saying its folder was deleted, instead of ending "done" without its wandb run; the rerun runs
    it from the start."""
    from sweeper.jobstate import read_json

    out = work / "run"
    proc, log = paused(COMMAND, out, "train-mid")
    sweep_dir = the_sweep(out)
    shutil.rmtree(sweep_dir)
    os.kill(proc.pid, signal.SIGCONT)
    run = finish(proc, log)
    said = [line.strip() for line in run.out.splitlines() if "was deleted while the job ran" in line]
    if run.code != 1 or not said or "Traceback" in run.out:
        raise Lost(f"expected exit 1 and the job failed for its deleted folder, got exit {run.code}: "
                   f"{run.out.strip()[-800:]}")
    job = the_job_dir(out)
    status = read_json(job / "status.json") or {}
    code, line = status_line(sweep_dir)
    if status.get("state") != "failed" or code != 1 or not line.startswith("failed"):
        raise Lost(f"after the run: status.json state {status.get('state')}, sweeper.status exit {code} '{line}'")
    strays = sorted(p.name for p in job.iterdir() if p.name != "status.json")
    if strays:
        raise Lost(f"files of the failed attempt left in the recreated folder: {strays}")
    rerun, verdict = rerun_and_check(out, ref)
    if "finished earlier" in rerun.out:
        raise Lost("the rerun took the job for finished")
    return f"failed: '...{said[0][said[0].index('was deleted'):][:60]}...'; {verdict}"


def the_job_dir(out_root: Path) -> Path:
    """The one job folder of the sweep, with or without its .hydra/ (a deleted one has none)."""
    jobs = [p for p in the_sweep(out_root).iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "tables"]
    if len(jobs) != 1:
        raise Lost(f"expected one job folder, found {[p.name for p in jobs]}")
    return jobs[0]


def case_wandb_run_deleted(work: Path, ref: Reference) -> str:
    """L: a finished job whose wandb/ folder was deleted is not done; the rerun runs it again."""
    out = work / "run"
    job = copy_of_reference(ref, out)
    shutil.rmtree(job / "wandb")
    code, line = status_line(job.parent)
    if line.startswith("done") or code != 1:
        raise Lost(f"sweeper.status says '{line.strip()}' (exit {code}) for a job without its wandb run")
    run, verdict = rerun_and_check(out, ref)
    if "running the job again from the start" not in run.out:
        raise Lost(f"the rerun did not say it runs the job again: {run.out.strip()[-600:]}")
    return f"status said '{line.split()[0]}'; {verdict}"


def case_empty_per_image_table(work: Path, ref: Reference) -> str:
    """M: one run's empty per_image_*.table.json: that run shows as corrupt, naming the file; the
    sweep's other run is tabulated."""
    import pandas as pd

    out = work / "run"
    job = copy_of_reference(ref, out)
    sweep_dir = job.parent
    second = sweep([*COMMAND, "seed=1", f"sweep_name='{sweep_dir.name}'"], out)  # a second job, same sweep
    if second.code != 0:
        raise Lost(f"the second job failed (exit {second.code}): {second.out[-800:]}")
    (table,) = job.glob("wandb/offline-run-*/files/media/table/test/per_image_*.table.json")
    table.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "analysis.tables", str(sweep_dir)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    stats = sweep_dir / "tables" / "psnr_stats.csv"
    named = [line for line in proc.stderr.splitlines() if str(table) in line]
    if proc.returncode != 0 or not stats.exists() or not named or "Traceback" in proc.stderr:
        raise Lost(f"analysis.tables: exit {proc.returncode}, stats {'written' if stats.exists() else 'missing'}, "
                   f"file named: {bool(named)}: {proc.stderr.strip()[-600:]}")
    frame = pd.read_csv(stats)
    md = (sweep_dir / "tables" / "psnr.md").read_text()
    if set(frame["status"]) != {"corrupt"} or set(frame["n"]) != {1} or "corrupt" not in md:
        raise Lost(f"the table does not keep the good run and show the other as corrupt: status "
                   f"{sorted(set(frame['status']))}, n {sorted(set(frame['n']))}")
    return f"tabulated the other run (n=1 per cell), this one shown as corrupt: '{named[0].strip()[:70]}...'"


@contextlib.contextmanager
def full_disk(folder: Path):
    """A small filesystem at ``folder`` that ``fill()`` fills up: a tmpfs when this process may
    mount one (root), else this process's children get a file-size limit (RLIMIT_FSIZE) of 0
    bytes past what exists (``limit`` for ``subprocess``'s ``preexec_fn``). Yields
    (fill, free, preexec_fn, what)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], check=False,
                             capture_output=True).returncode == 0 if hasattr(os, "geteuid") and os.geteuid() == 0 \
        else False
    filler = folder / "filler"

    def fill() -> None:
        with open(filler, "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096, 1):  # down to the last byte
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass

    def free() -> None:
        filler.unlink(missing_ok=True)

    def limit() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

    try:
        if mounted:
            yield fill, free, None, "a full 64 MB tmpfs"
        else:
            yield (lambda: None), (lambda: None), limit, "a 256-byte file-size limit (RLIMIT_FSIZE; not root)"
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def case_disk_full_tables(work: Path, ref: Reference) -> str:
    """N: the disk fills up while the tables are written: one line naming the file, the earlier
    tables intact, no empty or partial file; with space again, the tables are written."""
    disk = work / "disk"

    def tables(sweep_dir: Path, preexec=None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "analysis.tables", str(sweep_dir)], check=False, cwd=ROOT,
                              capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=preexec)

    with full_disk(disk) as (fill, free, limit, what):
        shutil.copytree(ref.job.parent, disk / "sweep", symlinks=True,
                        ignore=shutil.ignore_patterns("*.pt", "tables"))  # the weights take room the tables need
        shutil.copytree(ref.job.parent, disk / "fresh", symlinks=True, ignore=shutil.ignore_patterns("*.pt", "tables"))
        first = tables(disk / "sweep")
        if first.returncode != 0:
            raise Lost(f"the tables failed with room to spare: {first.stderr[-600:]}")
        before = {p.relative_to(disk): p.read_bytes() for p in (disk / "sweep" / "tables").rglob("*") if p.is_file()}
        fill()
        runs = {name: tables(disk / name, limit) for name in ("sweep", "fresh")}
        free()
        problems = []
        for name, proc in runs.items():
            lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("warning:")]
            if proc.returncode != 1 or len(lines) != 1 or not lines[0].startswith("error:") or "psnr" not in lines[0]:
                problems.append(f"{name}: exit {proc.returncode}, said {proc.stderr.strip()[-400:]!r}")
        after = {p.relative_to(disk): p.read_bytes() for p in (disk / "sweep" / "tables").rglob("*") if p.is_file()}
        if after != before:
            problems.append(f"the earlier tables changed: {sorted(str(k) for k in set(after) ^ set(before))}")
        junk = [str(p.relative_to(disk)) for p in (disk / "fresh").rglob("tables/**/*") if p.is_file()]
        if junk:
            problems.append(f"files left by the failed first write: {junk}")
        if problems:
            raise Lost("; ".join(problems))
        again = tables(disk / "fresh")
        written = (disk / "fresh" / "tables" / "psnr.md").is_file()
        if again.returncode != 0 or not written:
            raise Lost(f"with room again: exit {again.returncode}, psnr.md {'written' if written else 'missing'}")
    said = runs["fresh"].stderr.strip().splitlines()[-1]
    return f"{what}: '{said[:110]}'; earlier tables intact, nothing partial, written once there was room"


def case_ctrl_c(work: Path, ref: Reference) -> str:
    """O: Ctrl-C (SIGINT to the command's process group, as a terminal sends it) at iteration 11:
    the job saves its state and stops, exit 130, interrupted; the rerun resumes it bit-identically."""
    from sweeper.jobstate import read_json

    out = work / "run"
    run = faulted(COMMAND, out, "train-mid", sig="INT", group=True)
    job = the_job(out)
    status = read_json(job / "status.json") or {}
    code, line = status_line(job.parent)
    said = [line.strip() for line in run.out.splitlines() if "stopped on request" in line]
    if run.code != 130 or "Traceback" in run.out or "KeyboardInterrupt" in run.out or not said:
        raise Lost(f"expected exit 130 and a saved state, no traceback; got exit {run.code}: {run.out.strip()[-800:]}")
    if status.get("state") != "interrupted" or not (status.get("reason") or "").startswith("SIGINT") or \
            not line.startswith("interrupted"):
        raise Lost(f"status.json: {status.get('state')} ({status.get('reason')}); sweeper.status: '{line.strip()}'")
    saved = saved_iteration(job / "checkpoint.pt")
    _, verdict = rerun_and_check(out, ref)
    return f"exit 130, interrupted, checkpoint.pt at {saved}; {verdict}"


# --- fused groups (issue 26): the same command over two seeds trains as one group of two ---------

FUSED = [*COMMAND, "seed=0,1"]


def fused_reference(ref: Reference) -> Path:
    """The uninterrupted fused run of ``FUSED`` (made once, beside the reference)."""
    root = ref.root.with_name("reference_fused")
    if not list(root.glob("sweeps/*/*/results.json")):
        shutil.rmtree(root, ignore_errors=True)
        run = sweep(FUSED, root)
        if run.code != 0 or "fused group of 2" not in run.out.replace("Launching a fused group of 2", "fused group of 2"):
            raise Lost(f"the fused reference did not run as one group of two (exit {run.code}):\n{run.out[-1500:]}")
    return the_sweep(root)


def check_group(out_root: Path, ref_sweep: Path, exact: set[str] | None = None) -> str:
    """Every job of ``out_root``'s sweep ended as in the fused reference: done, its wandb run
    finished, its table row finished, no partial write; metrics and model.pt bit-identical for the
    jobs in ``exact`` (job names; all when None), else within 1e-3 dB (a job that ran alone after
    the group: the same arithmetic in another order)."""
    from sweeper.jobstate import read_json, read_results

    sweep_dir, problems, worst = the_sweep(out_root), [], 0.0
    names = sorted(p.parent.name for p in ref_sweep.glob("*/results.json"))
    for name in names:
        job, ref_job = sweep_dir / name, ref_sweep / name
        results, ref_results = read_results(job), read_results(ref_job)
        if results is None:
            problems.append(f"{name[-12:]}: no complete results.json")
            continue
        if exact is None or name in exact:
            if results["metrics"] != ref_results["metrics"] or not same_weights(job / "model.pt", ref_job / "model.pt"):
                problems.append(f"{name[-12:]}: metrics or model.pt differ from the uninterrupted fused run")
        else:
            gap = max(abs(v - ref_results["metrics"][k]) for k, v in results["metrics"].items())
            worst = max(worst, gap)
            if gap > 1e-3:
                problems.append(f"{name[-12:]}: metrics {gap:.2e} dB from the fused run's")
        if not (read_json(job / "status.json") or {}).get("wandb_finished"):
            problems.append(f"{name[-12:]}: wandb run not finished")
        if leftovers(job):
            problems.append(f"{name[-12:]}: partial writes left: {leftovers(job)}")
    code, states, printed = table_states(sweep_dir)
    if code != 0 or states != ["finished"]:
        problems.append(f"analysis.tables: exit {code}, row status {states}: {printed.strip()[-300:]}")
    if problems:
        raise Lost("; ".join(problems))
    return f"{len(names)} jobs = the fused reference" + (f" (one alone, {worst:.1e} dB off)" if exact is not None else "")


def fused_kill_case(launcher: list[str] = ()):
    def case(work: Path, ref: Reference) -> str:
        """P: kill -9 of a fused group mid training: the rerun resumes the group."""
        ref_sweep = fused_reference(ref)
        out, command = work / "run", [*FUSED, *launcher]
        faulted(command, out, "train-mid", worker=bool(launcher))
        saved = [saved_iteration(p) for p in sorted(the_sweep(out).glob("*/checkpoint.pt"))]
        rerun = sweep(command, out)
        if rerun.code != 0 or "fused group of 2" not in rerun.out.replace("Launching a fused group of 2",
                                                                              "fused group of 2"):
            raise Lost(f"the rerun did not resume the group (exit {rerun.code}):\n{rerun.out[-1500:]}")
        return f"checkpoints at the kill: {saved}; {check_group(out, ref_sweep)}"
    return case


def case_fused_ctrl_c(work: Path, ref: Reference) -> str:
    """P: Ctrl-C to a fused group: every job saves and shows as interrupted, exit 130; the rerun
    resumes the group."""
    from sweeper.jobstate import read_json

    ref_sweep = fused_reference(ref)
    out = work / "run"
    run = faulted(FUSED, out, "train-mid", sig="INT", group=True)
    states = [(read_json(p) or {}).get("state") for p in sorted(the_sweep(out).glob("*/status.json"))]
    if run.code != 130 or "Traceback" in run.out or states != ["interrupted", "interrupted"]:
        raise Lost(f"expected exit 130 and both jobs interrupted; got exit {run.code}, states {states}: "
                   f"{run.out.strip()[-800:]}")
    rerun = sweep(FUSED, out)
    if rerun.code != 0:
        raise Lost(f"the rerun failed (exit {rerun.code}):\n{rerun.out[-1500:]}")
    return f"exit 130, both interrupted; {check_group(out, ref_sweep)}"


def case_fused_folder_deleted(work: Path, ref: Reference) -> str:
    """P: one job's folder deleted while its group trains: that job fails alone, saying so; the
    other finishes as in the uninterrupted group; the rerun runs the first again (alone)."""
    from sweeper.jobstate import read_json

    ref_sweep = fused_reference(ref)
    out = work / "run"
    proc, log = paused(FUSED, out, "train-mid")
    jobs = sorted(p.parent for p in the_sweep(out).glob("*/.hydra"))
    shutil.rmtree(jobs[0])
    os.kill(proc.pid, signal.SIGCONT)
    run = finish(proc, log)
    first = (read_json(jobs[0] / "status.json") or {}).get("state")
    second = (read_json(jobs[1] / "status.json") or {}).get("state")
    if run.code != 1 or "was deleted while the job ran" not in run.out or (first, second) != ("failed", "done"):
        raise Lost(f"expected the deleted job failed and the other done (exit 1); got exit {run.code}, states "
                   f"{first}, {second}: {run.out.strip()[-800:]}")
    rerun = sweep(FUSED, out)
    if rerun.code != 0 or "1 of 2 jobs finished earlier" not in rerun.out:
        raise Lost(f"the rerun did not run the failed job only (exit {rerun.code}):\n{rerun.out[-1500:]}")
    return f"one failed, one done; {check_group(out, ref_sweep, exact={jobs[1].name})}"


def case_fused_nan(work: Path, ref: Reference) -> str:
    """P: a job of a fused group whose loss turns NaN (train.lr=1e9) fails alone; the other is done."""
    from sweeper.jobstate import read_json

    out = work / "run"
    run = sweep([*COMMAND, "train.lr=0.001,1e9"], out)
    states = {p.parent.name: (read_json(p) or {}) for p in the_sweep(out).glob("*/status.json")}
    failed = [s for s in states.values() if s.get("state") == "failed"]
    done = [s for s in states.values() if s.get("state") == "done"]
    if run.code != 1 or len(failed) != 1 or len(done) != 1 or "loss is nan" not in (failed[0].get("reason") or ""):
        raise Lost(f"expected one job failed for its NaN loss and one done; exit {run.code}, "
                   f"{[(s.get('state'), s.get('reason')) for s in states.values()]}")
    code, line = status_line(the_sweep(out))
    return f"failed alone: '{failed[0]['reason'][:60]}'; the other done"


@dataclass
class Case:
    name: str
    title: str
    run: Callable[[Path, Reference], str]


CASES = [
    Case("A:stop-in-evaluation", "A  SIGUSR2 during evaluation (between test images 5 and 6)", case_a),
    Case("B:kill-after-results", "B  kill -9 after results.json, before wandb finished", case_b),
    Case("C:sweep-without-scores", "C  tables of a sweep with no test metrics beside a good one", case_c),
    Case("D:truncated-results", "D  truncated results.json", results_damaged(lambda b: b[:40], "a truncated")),
    Case("D:empty-results", "D  empty results.json", results_damaged(lambda b: b"", "an empty")),
    Case("E:truncated-checkpoint", "E  truncated checkpoint.pt (killed at iteration 11)",
         checkpoint_damaged(lambda b: b[: len(b) // 2], "truncated")),
    Case("E:empty-checkpoint", "E  zero-byte checkpoint.pt (killed at iteration 11)",
         checkpoint_damaged(lambda b: b"", "zero-byte")),
    Case("F:small-test-image", "F  a test image smaller than the protocol needs", refused_before_launch(
        lambda w: [f"+data.test_sets.mine={_small_image_folder(w / 'small_set')}"], "image 'small.png' is 30x12 px")),
    Case("G:negative-lr", "G  train.lr=-1", refused_before_launch(lambda w: ["train.lr=-1"], "train.lr=-1 must be")),
    Case("H:corrupt-wandb-file", "H  a corrupt .wandb file", case_h),
    Case("I:leftover-tmp-files", "I  partial writes of two killed attempts (checkpoint.pt, then model.pt)", case_i),
    Case("J:same-sweep-twice", "J  the same sweep started twice at once", case_j),
    Case("K:slurm-request-too-big", "K  launcher=slurm asking more than any node has", case_k),
    *[Case(f"kill:{point}", f"kill -9, {what}", kill_case(point, at)) for point, at, what in KILL_POINTS],
    Case("L:folder-deleted-in-training", "L  the sweep folder deleted while its job trains (iteration 11)",
         case_folder_deleted),
    Case("L:wandb-run-deleted", "L  a finished job's wandb/ folder deleted", case_wandb_run_deleted),
    Case("M:empty-per-image-table", "M  one run's empty per_image_*.table.json", case_empty_per_image_table),
    Case("N:disk-full-tables", "N  the disk full while the tables are written", case_disk_full_tables),
    Case("O:ctrl-c-in-training", "O  Ctrl-C (SIGINT to the process group) at iteration 11", case_ctrl_c),
    # the same harness in a worker process (spawned) of launcher=local_parallel; the driver lives on
    Case("kill:train-mid@local_parallel", "kill -9 of a local_parallel worker, mid training (iteration 11)",
         kill_case("train-mid", 1, ["launcher=local_parallel", "hydra.launcher.max_parallel=1"])),
    # a fused group of two jobs (the command over seeds 0 and 1)
    Case("P:fused-kill-mid", "P  kill -9 of a fused group of 2, mid training (iteration 11)", fused_kill_case()),
    Case("P:fused-kill@local_parallel", "P  kill -9 of the local_parallel worker running a fused group",
         fused_kill_case(["launcher=local_parallel", "hydra.launcher.max_parallel=1"])),
    Case("P:fused-ctrl-c", "P  Ctrl-C to a fused group (iteration 11)", case_fused_ctrl_c),
    Case("P:fused-folder-deleted", "P  one job's folder deleted while its fused group trains", case_fused_folder_deleted),
    Case("P:fused-nan", "P  one job of a fused group with a NaN loss (train.lr=1e9)", case_fused_nan),
]


def run_case(case: Case, work: Path, ref: Reference) -> tuple[str, str, float]:
    """('survived' | 'LOST' | 'skipped', detail, seconds)."""
    folder = work / case.name.replace(":", "_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        detail, verdict = case.run(folder, ref), "survived"
    except Skipped as e:
        detail, verdict = str(e), "skipped"
    except Lost as e:
        detail, verdict = " ".join(str(e).split())[:800], "LOST"
    return verdict, detail, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help="case names or prefixes (default: all; see --list)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--work", type=Path, help="keep every case's folders here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:<28} {case.title}")
        return 0
    chosen = [c for c in CASES if not args.cases or any(c.name == n or c.name.startswith(n) for n in args.cases)]
    if not chosen:
        print(f"error: no case matches {args.cases} (see --list)", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="sr_faults_"))
    t0 = time.monotonic()
    ref = reference(work)
    print(f"reference run: {time.monotonic() - t0:.1f} s ({' '.join(COMMAND)})", flush=True)
    outcomes = []
    for case in chosen:
        verdict, detail, seconds = run_case(case, work, ref)
        outcomes.append((case, verdict))
        print(f"{verdict:<8} {seconds:5.1f} s  {case.title} -- {detail}", flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    counted = [(c, v) for c, v in outcomes if v != "skipped"]
    survived = sum(v == "survived" for _, v in counted)
    skipped = len(outcomes) - len(counted)
    tail = f" ({skipped} skipped)" if skipped else ""
    total = f"{time.monotonic() - t0:.0f} s"
    if survived == len(counted):
        print(f"{survived} of {len(counted)} faults survived, nothing lost{tail}; {total}")
        return 0
    lost = ", ".join(c.name for c, v in counted if v == "LOST")
    print(f"{survived} of {len(counted)} faults survived; lost or different: {lost}{tail}; {total}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
