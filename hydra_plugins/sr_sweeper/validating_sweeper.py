"""Hydra's grid sweeper, made safe for long sweeps.

Before anything is launched it checks that the sweep folder can be written, composes and
validates every job (one bad combination fails the sweep, naming the job and the value),
asks the launcher's own pre-flight (SLURM: does a task fit on a node?), takes the sweep's
lock (one driver per sweep folder: ``sweep_lock``), writes the sweep's job list for
``python -m sweeper.status`` and leaves out jobs that already have results. After the
launch, a failed job does not hide the others: every failure is recorded with its
reason, listed, and the sweep exits non-zero. Running the same command again runs only
the failed and missing jobs.

Hydra only discovers plugins inside the ``hydra_plugins`` namespace, so this class lives
here; the checks themselves are ``sweeper.preflight``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

# What this project still uses of Hydra's private API (hydra 1.3), in full:
# - hydra._internal's BasicSweeper, below: the grid expansion (sweep syntax,
#   hydra.sweeper.params, batching); hydra has no public base class for it;
# - hydra._internal's BasicLauncher: the base of launchers.LocalLauncher (one job after the other
#   in this process, fused groups too);
# - hydra.core.utils._save_config, in sweeper.group: a fused group's jobs' .hydra/ files, as
#   Hydra's run_job writes them for a job alone;
# - JobReturn._return_value, read by worker_slots.job_error: a failed job's exception (the
#   public JobReturn.return_value re-raises it).
# (Optuna's private Trial._trial_id, in optuna_sweeper.trial_overrides, is the other private read.)
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from hydra_plugins.sr_sweeper.launchers import LocalParallelLauncher
from hydra_plugins.sr_sweeper.worker_slots import job_error
from hydra_plugins.sr_sweeper.sweep_lock import SweepLock
from sweeper.background import relaunch_in_background
from sweeper.fusion import parse_fuse, plan_groups, signature
from sweeper.jobstate import MANIFEST, is_done, job_labels, read_json, record_failure, write_json
from sweeper.naming import result_overrides
from sweeper.preflight import PreflightError, check_output_folder, job_fingerprint, validate_config
from sweeper.sweep_progress import SweepProgress

log = logging.getLogger(__name__)


def failure_reason(ret) -> str:
    err = job_error(ret)
    return f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)


def refuse(message: str) -> None:
    """A user error, not a crash: one line without a traceback, a non-zero exit, nothing launched."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class ValidatingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: dict | None = None, dry_run: bool = False) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.dry_run = bool(dry_run)

    def sweep(self, arguments: list[str]) -> Any:
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        try:
            parse_fuse(self.fuse)
        except ValueError as e:
            refuse(str(e))
        if self.dry_run:
            jobs, job_dirs = self.validated_jobs(arguments, sweep_dir)
            labels = job_labels([result_overrides(o) for o in jobs])
            done = [is_done(d) for d in job_dirs]
            todo = [i for i, d in enumerate(done) if not d]
            group_of = {i: g for g, members in enumerate(self.groups(todo), 1) for i in members if len(members) > 1}
            sizes = [len([i for i in group_of if group_of[i] == g]) for g in sorted(set(group_of.values()))]
            print(f"dry run: {len(jobs)} jobs in {sweep_dir} ({sum(done)} done, {len(jobs) - sum(done)} to run); "
                  "nothing launched")
            if self.fuse_supported:
                print(f"fused (hydra.launcher.fuse={self.fuse}): " + (
                    f"{sum(sizes)} jobs in {len(sizes)} groups ({', '.join(map(str, sizes))}), "
                    f"{len(todo) - sum(sizes)} alone" if sizes else "none of the jobs to run can train together"))
            print("\n".join(f"  {'done ' if d else 'to run'}  {label}"
                            + (f"  [group {group_of[i]}]" if i in group_of else "")
                            for i, (d, label) in enumerate(zip(done, labels))))
            return []
        try:
            check_output_folder(sweep_dir)
        except PreflightError as e:
            refuse(str(e))
        jobs, job_dirs = self.validated_jobs(arguments, sweep_dir)
        if isinstance(self.launcher, LocalParallelLauncher) and self.launcher.detach:
            # a local driver in the background (SLURM's detach is its own: submit and return)
            try:  # refused here, not in the background, if another driver holds the sweep
                probe = SweepLock(sweep_dir)
                probe.acquire()
                probe.release()
            except PreflightError as e:
                refuse(str(e))
            self.write_manifest(sweep_dir, jobs, job_dirs)
            pid, log_path = relaunch_in_background(sweep_dir)
            log.info("sweep: the driver runs in the background (pid %d; log %s). Follow it with `python -m "
                     "sweeper.status %s`", pid, log_path, sweep_dir)
            return []
        lock = SweepLock(sweep_dir)
        try:
            if hasattr(self.launcher, "preflight"):  # e.g. SLURM: does a task fit on a node?
                self.launcher.preflight()
            lock.acquire()  # one driver per sweep folder, or every job would run twice
        except PreflightError as e:  # SweepLocked too
            refuse(str(e))
        try:
            self.write_manifest(sweep_dir, jobs, job_dirs)
            return self.launch_unfinished(sweep_dir, jobs, job_dirs)
        finally:
            lock.release()

    def validated_jobs(self, arguments: list[str], sweep_dir: Path) -> tuple[list[list[str]], list[Path]]:
        """Every job of the grid and its folder, each composed and validated; exits naming every
        job whose settings are invalid."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        jobs = [list(job) for batch in self.split_arguments(parser.parse_overrides(params), None) for job in batch]
        problems, job_dirs, same = [], [], {}
        self.signatures = []
        for overrides in jobs:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            job_dirs.append(sweep_dir / str(job_cfg.hydra.sweep.subdir))
            try:
                validate_config(job_cfg)
                self.signatures.append(signature(job_cfg))
                same.setdefault(job_fingerprint(job_cfg), []).append(" ".join(result_overrides(overrides)))
            except PreflightError as e:
                self.signatures.append(None)
                problems.append(f"job [{' '.join(result_overrides(overrides))}]: {e}")
        if problems:
            print(f"error: {len(problems)} of {len(jobs)} jobs have invalid settings; nothing was launched.\n  "
                  + "\n  ".join(problems), file=sys.stderr)
            raise SystemExit(2)
        for labels in (labels for labels in same.values() if len(labels) > 1):
            log.warning("pre-flight: these jobs train the same model on the same data (their settings resolve to "
                        "the same sites); all will run: %s", " | ".join(f"[{label}]" for label in labels))
        log.info("pre-flight: %d jobs validated", len(jobs))
        return jobs, job_dirs

    @property
    def fuse(self):
        return getattr(self.launcher, "fuse", "off")

    @property
    def fuse_supported(self) -> bool:
        return hasattr(self.launcher, "launch_groups")

    def groups(self, todo: list[int]) -> list[list[int]]:
        """The jobs ``todo`` (indices) as the launcher runs them: fused groups and jobs alone."""
        fuse = self.fuse if self.fuse_supported else "off"
        return [[todo[k] for k in g] for g in plan_groups([self.signatures[i] for i in todo], fuse)]

    def write_manifest(self, sweep_dir: Path, jobs: list[list[str]], job_dirs: list[Path]) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        # Several commands may share a sweep folder (same sweep_name): the manifest keeps them all.
        previous = (read_json(sweep_dir / MANIFEST) or {}).get("jobs", [])
        names = {j["name"] for j in previous}
        new = [{"name": d.name, "overrides": result_overrides(o)}
               for d, o in zip(job_dirs, jobs) if d.name not in names]
        write_json(sweep_dir / MANIFEST, {"sweep": str(self.config.get("sweep_name")), "updated": time.time(),
                                          "jobs": previous + new})

    def launch_unfinished(self, sweep_dir: Path, jobs: list[list[str]], job_dirs: list[Path]) -> list:
        """Launch the jobs without results, batch by batch; record and list the failures."""
        todo = [i for i, d in enumerate(job_dirs) if not is_done(d)]
        if len(todo) < len(jobs):
            log.info("%d of %d jobs finished earlier; launching the other %d", len(jobs) - len(todo), len(jobs),
                     len(todo))
        # the local launcher runs a batch in this process: one job (or fused group) per batch, so each gets its line
        in_process = isinstance(self.launcher, BasicLauncher)
        units = self.groups(todo)
        if any(len(g) > 1 for g in units):
            log.info("fused: %d of %d jobs train in %d groups (hydra.launcher.fuse=%s)",
                     sum(len(g) for g in units if len(g) > 1), len(todo), sum(len(g) > 1 for g in units), self.fuse)
        batch_size = 1 if in_process else self.max_batch_size or len(units) or 1
        labels = job_labels([result_overrides(o) for o in jobs])
        failures, returns = [], []
        progress = SweepProgress(job_dirs)
        self.launcher.progress = progress  # launchers that wait for many jobs report as each ends
        for start in range(0, len(units), batch_size):
            batch_units = units[start:start + batch_size]
            batch = [i for g in batch_units for i in g]
            first = sum(len(g) for g in units[:start])
            if self.fuse_supported:
                results = [r for rets in self.launcher.launch_groups([[jobs[i] for i in g] for g in batch_units],
                                                                     initial_job_idx=first) for r in rets]
            else:
                results = self.launcher.launch([jobs[i] for i in batch], initial_job_idx=first)
            returns.append(results)
            for i, ret in zip(batch, results):
                if ret.status == JobStatus.FAILED and is_done(job_dirs[i]):
                    log.warning("job %s: its process ended badly after the job had finished; results kept",
                                labels[i])
                elif ret.status == JobStatus.FAILED:
                    reason = failure_reason(ret)
                    record_failure(job_dirs[i], reason)
                    failures.append((labels[i], reason))
            if in_process:
                progress.report()
        if not (sweep_dir / MANIFEST).exists():  # the sweep folder was deleted while its jobs ran
            log.warning("sweep: %s was deleted while the sweep ran; written again", sweep_dir / MANIFEST)
            self.write_manifest(sweep_dir, jobs, job_dirs)
        if getattr(self.launcher, "detach", False):
            log.info("sweep: submitted; nothing waits for the jobs here. `python -m sweeper.status %s` shows where "
                     "they stand; `python -m analysis.tables %s` tables the finished ones", sweep_dir, sweep_dir)
            return returns
        if not failures:
            log.info("sweep: all %d jobs done (this run: %s). Tables: python -m analysis.tables %s", len(jobs),
                     progress.elapsed(), sweep_dir)
        if failures:
            lines = [f"job [{label}]: {reason.splitlines()[0][:300]}" for label, reason in failures]
            print(f"error: {len(failures)} of {len(jobs)} jobs failed ({len(jobs) - len(failures)} done):\n  "
                  + "\n  ".join(lines)
                  + f"\nDetails: <job>/status.json; `python -m sweeper.status {sweep_dir}`."
                  "\nRun the same command again to rerun only the failed and missing jobs.", file=sys.stderr)
            raise SystemExit(1)
        return returns
