"""A job's folder while it runs: noticing it deleted (``JobFolder``, ``FolderVanished``), and
starting a job over (``start_over``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sweeper.jobstate import RESULTS

# the files that make a job done or resumable (sweeper.job writes them)
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.pt"
EVAL_PARTIAL = "eval_partial.json"  # the images scored before a stop request during evaluation


def start_over(job_dir: Path) -> None:
    """Remove what makes a job done or resumable (results, weights, checkpoints, kept evaluation
    rows), so that it runs again from its first iteration, and wandb run folders left without
    their ``.wandb`` file (written into after it was deleted)."""
    for name in (RESULTS, WEIGHTS, CHECKPOINT, f"{Path(CHECKPOINT).stem}.prev.pt", EVAL_PARTIAL):
        (job_dir / name).unlink(missing_ok=True)
    for run_dir in job_dir.glob("wandb/*run-*"):
        if run_dir.is_dir() and not run_dir.is_symlink() and not any(run_dir.glob("run-*.wandb")):
            shutil.rmtree(run_dir, ignore_errors=True)


class FolderVanished(RuntimeError):
    """The job's folder, or its wandb run file, was deleted while the job ran: the run's history
    (and, with the folder, the log, ``.hydra/`` and checkpoints) went with it, so this attempt
    cannot end as a complete job."""

    def __init__(self, folder: JobFolder, when: str, what: str | None = None):
        self.folder, self.run_only = folder, what is not None
        if what is None:
            message = (f"its folder was deleted while the job ran (noticed {when}), and with it its wandb run, log and "
                       f"checkpoints; run the same command again to run the job from the start ({folder.job_dir})")
        else:
            message = (f"its wandb run file was deleted while the job ran (noticed {when}); run the same command "
                       "again: the job resumes from its checkpoint into a new folder of the same wandb run, without "
                       f"the curves before it ({folder.job_dir / what})")
        super().__init__(message)

    def remove_strays(self) -> None:
        """What this attempt wrote after the deletion: into a folder recreated by its writes, a
        checkpoint from the middle of a run whose start is gone (the rerun starts over); and the
        wandb run's folder of files without its ``.wandb`` file."""
        job_dir, run_dir = self.folder.job_dir, self.folder.run_dir
        if not self.run_only and _identity(job_dir) not in (None, self.folder.identity):
            start_over(job_dir)
        if run_dir is not None and run_dir.is_dir() and not self.folder.run_file.exists():
            shutil.rmtree(run_dir, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class JobFolder:
    """Notices the job's folder vanishing while the job runs (``rm -rf`` of the sweep, a cleanup
    script): the folder is no longer there, or is another one with the same name (recreated by
    a write), or the job's wandb run file is gone. ``check`` raises ``FolderVanished``; it is
    called after every training iteration and before the job writes its weights and results,
    so such an attempt fails, saying why, instead of finishing as a job without its run.

    A context manager: inside it, an open descriptor keeps the folder's inode, so that a folder
    recreated under the same name can never be given the same inode number."""

    def __init__(self, job_dir: Path):
        self.job_dir = Path(job_dir)
        self.identity: tuple[int, int] | None = None
        self._fd: int | None = None
        self.run_dir: Path | None = None  # the wandb run's folder, once it has one
        self.run_file: Path | None = None  # its .wandb file
        self._run_seen = False

    def __enter__(self) -> JobFolder:
        self._fd = os.open(self.job_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        st = os.fstat(self._fd)
        self.identity = st.st_dev, st.st_ino
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def watch_run(self, run) -> None:
        """Also watch the job's wandb run (its ``.wandb`` file, once wandb has written it)."""
        self.run_dir = run.files_dir
        if self.run_dir is not None:
            self.run_file = self.run_dir / f"run-{run.id}.wandb"
            self._run_seen = self.run_file.exists()

    def check(self, when: str) -> None:
        if _identity(self.job_dir) != self.identity:
            raise FolderVanished(self, when)
        if self.run_file is not None:
            exists = self.run_file.exists()
            if self._run_seen and not exists:
                raise FolderVanished(self, when, str(self.run_file.relative_to(self.job_dir)))
            self._run_seen = self._run_seen or exists

    def on_iteration(self, iteration: int) -> None:
        self.check(f"after iteration {iteration}")
