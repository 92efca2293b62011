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


def _env(out_root: Path, fault: str | None, at: int, sig: str, log: Path | None) -> dict:
    env = {**os.environ, "SR_OUTPUT_ROOT": str(out_root), "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}
    for key in ("SR_FAULT", "SR_FAULT_AT", "SR_FAULT_SIGNAL", "SR_FAULT_LOG", "WANDB_SERVICE"):
        env.pop(key, None)
    if fault:
        env.update(SR_FAULT=fault, SR_FAULT_AT=str(at), SR_FAULT_SIGNAL=sig, SR_FAULT_LOG=str(log),
                   PYTHONPATH=os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def start(args: list[str], out_root: Path, fault: str | None = None, at: int = 1, sig: str = "KILL",
          module: str = "sweeper") -> tuple[subprocess.Popen, Path | None]:
    log = out_root.with_name(out_root.name + ".faults.jsonl") if fault else None
    if log:
        log.unlink(missing_ok=True)  # this run's events only
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                            env=_env(out_root, fault, at, sig, log), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
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


def faulted(args: list[str], out_root: Path, point: str, at: int = 1, sig: str = "KILL", worker: bool = False) -> Run:
    """Run with a fault at ``point``; raise Lost unless it struck there. ``worker``: the job runs
    in a worker process (launcher=local_parallel), whose death the driver survives and reports."""
    run = sweep(args, out_root, fault=point, at=at, sig=sig)
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
    # the same harness in a worker process (spawned) of launcher=local_parallel; the driver lives on
    Case("kill:train-mid@local_parallel", "kill -9 of a local_parallel worker, mid training (iteration 11)",
         kill_case("train-mid", 1, ["launcher=local_parallel", "hydra.launcher.max_parallel=1"])),
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
