"""Faults of a job's lifecycle (issue 26), each the way a user met it: the sweep folder deleted
while a job trains, one run's empty per-image table, a full disk while the tables are written,
Ctrl-C during training; and a job with ``logger.mode=disabled`` on a machine without wandb
(issue 25). The fault suite (benchmarks/fault_injection.py, cases L-O) runs each end to end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sweeper.job as job_module
from analysis.tables import main as tables_main
from srcore.train import Interrupted
from sweeper.compose import compose
from sweeper.jobstate import JobStatus, is_done, job_state, read_json, write_json
from sweeper.preemption import StopRequest
from tests.conftest import ROOT, TINY, run_sweeper

HOOKS = ROOT / "benchmarks" / "fault_hooks"


# --- the sweep folder deleted while a job trains ----------------------------------------------

def _tiny_job(tmp_path, *overrides):
    cfg = compose([*TINY, "logger.mode=disabled", "sweep_name=s", *overrides])
    job_dir = tmp_path / "sweeps" / "s" / "job"
    job_dir.mkdir(parents=True)
    return cfg, job_dir


def test_a_job_whose_folder_is_deleted_while_it_trains_fails_saying_so_and_the_rerun_starts_over(tmp_path,
                                                                                                monkeypatch):
    """It used to write its results into a folder its writes recreated and end 'done', without its
    wandb run, log or .hydra/; now it fails at the next iteration, naming the deletion, leaves no
    checkpoint of the lost run behind, and the rerun trains it from iteration 0."""
    cfg, job_dir = _tiny_job(tmp_path)
    heartbeat = JobStatus.heartbeat

    def delete_the_sweep(self, iteration):
        if iteration == 4:  # right after the checkpoint of iteration 4
            shutil.rmtree(job_dir.parent)
        heartbeat(self, iteration)
    monkeypatch.setattr(JobStatus, "heartbeat", delete_the_sweep)
    with pytest.raises(RuntimeError, match="its folder was deleted while the job ran"):
        job_module.run_job(cfg, job_dir, "job", [])
    status = read_json(job_dir / "status.json")
    assert status["state"] == "failed" and "was deleted while the job ran (noticed after iteration" in status["reason"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["status.json"]  # no checkpoint of a run whose start is gone
    state, details = job_state(job_dir)
    assert state == "failed" and "deleted" in details["reason"]

    monkeypatch.setattr(JobStatus, "heartbeat", heartbeat)
    job_module.run_job(cfg, job_dir, "job", [])
    assert is_done(job_dir) and read_json(job_dir / "results.json")["attempt"] == 2


def _finished_job(folder: Path, mode: str = "offline", with_run: bool = True) -> Path:
    """A job folder as a finished job leaves it: results.json (with the logger mode it ran
    with), status.json, and its offline wandb run (or not)."""
    folder.mkdir(parents=True)
    write_json(folder / "results.json", {"run_id": "abc123", "config": {"logger": {"mode": mode}},
                                         "metrics": {"test/x/clean/psnr": 30.0}, "per_image": []})
    write_json(folder / "status.json", {"state": "done", "wandb_finished": True})
    (folder / "checkpoint.pt").write_bytes(b"state")
    if with_run:
        run = folder / "wandb" / "offline-run-20260101_000000-abc123"
        run.mkdir(parents=True)
        (run / "run-abc123.wandb").write_bytes(b"")
    return folder


def test_a_finished_job_whose_wandb_run_is_gone_is_not_done_and_the_rerun_runs_it_again(tmp_path, monkeypatch):
    """The rerun after the deletion said 'finished earlier' and repaired nothing: a job that logged
    to wandb but has lost its run is failed for sweeper.status, launched again by the sweep, and
    run_job trains it anew (not from its last checkpoint: the curves start at iteration 1)."""
    kept = _finished_job(tmp_path / "kept")
    lost = _finished_job(tmp_path / "lost")
    shutil.rmtree(lost / "wandb")
    silent = _finished_job(tmp_path / "silent", mode="disabled", with_run=False)
    assert is_done(kept) and is_done(silent) and not is_done(lost)
    state, details = job_state(lost)
    assert state == "failed" and "its wandb run abc123 is missing" in details["reason"]

    trained = []
    monkeypatch.setattr(job_module, "_train_and_evaluate",
                        lambda cfg, job_dir, *a: trained.append(sorted(p.name for p in job_dir.iterdir())) or {})
    monkeypatch.setattr(job_module, "validate_config", lambda cfg: None)
    cfg = compose([*TINY, "logger.mode=offline"])
    assert job_module.run_job(cfg, kept, "kept", []) == {"test/x/clean/psnr": 30.0} and not trained
    job_module.run_job(cfg, lost, "lost", [])
    assert trained == [["status.json"]]  # results and checkpoint removed before it ran


# --- one run's empty per-image table ----------------------------------------------------------

@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A finished 2-job sweep (seeds 0 and 1 of one setting)."""
    root = tmp_path_factory.mktemp("finished_sweep")
    run_sweeper(["-m", *TINY, "seed=0,1"], root)
    return next((root / "sweeps").iterdir())


def test_one_runs_empty_per_image_table_shows_that_run_as_corrupt_and_the_rest_is_tabulated(finished_sweep,
                                                                                              tmp_path):
    """It stopped the whole sweep's tables with a JSONDecodeError that named no file."""
    import pandas as pd

    sweep = shutil.copytree(finished_sweep, tmp_path / "sweep", symlinks=True)
    table = sorted(sweep.glob("*seed=0*/wandb/offline-run-*/files/media/table/test/per_image_*.table.json"))[-1]
    table.write_bytes(b"")
    with pytest.warns(UserWarning, match=rf"corrupt per-image table, run \w+ shown as corrupt: {table}: empty file"):
        assert tables_main([str(sweep)]) == 0
    stats = pd.read_csv(sweep / "tables" / "psnr_stats.csv")
    assert set(stats["status"]) == {"corrupt"} and set(stats["n"]) == {1}  # seed 1's scores, seed 0 left out
    assert "(corrupt runs left out)" in (sweep / "tables" / "psnr.md").read_text()


# --- the disk full while the tables are written -----------------------------------------------

def _file_size_limit(limit: int = 256):
    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_while_the_tables_are_written_leaves_no_empty_file_and_keeps_the_earlier_tables(
        finished_sweep, tmp_path):
    """It left an empty tables/psnr.md. Every table and figure file is written atomically: a write
    that fails (here: a 256-byte file-size limit, as a full disk or quota does) leaves the earlier
    file, or none, and the error names the file."""
    root = tmp_path / "sweeps"  # two sweeps of one job each (distinct wandb runs): one tabulated before
    sweep = shutil.copytree(finished_sweep, root / "sweep", symlinks=True,
                            ignore=shutil.ignore_patterns("tables", "*seed=1*"))
    fresh = shutil.copytree(finished_sweep, root / "fresh", symlinks=True,
                            ignore=shutil.ignore_patterns("tables", "*seed=0*"))
    assert tables_main([str(sweep)]) == 0
    before = {p: p.read_bytes() for p in (sweep / "tables").rglob("*") if p.is_file()}
    assert (sweep / "tables" / "psnr.md") in before and (sweep / "tables" / "figures" / "bars.png") in before

    proc = subprocess.run([sys.executable, "-m", "analysis.tables", str(root)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=_file_size_limit())
    assert proc.returncode == 1
    assert sorted(proc.stderr.strip().splitlines()) == [
        f"error: sweep {folder}: no tables (OSError: [Errno 27] File too large: '{folder / 'tables' / 'psnr.md'}')"
        for folder in (fresh, sweep)]
    assert {p: p.read_bytes() for p in (sweep / "tables").rglob("*") if p.is_file()} == before
    assert not [p for p in (fresh / "tables").rglob("*") if p.is_file()]  # nothing empty, partial or temporary
    assert (sweep / "tables" / "psnr.md").stat().st_mode & 0o044  # as readable as a plain write made it


# --- Ctrl-C during training ---------------------------------------------------------------------

def test_ctrl_c_asks_the_job_to_stop_and_a_second_ctrl_c_stops_at_once():
    """SIGINT takes SIGTERM's path (a flag the loop polls; exit 130 once the state is saved); a
    second Ctrl-C is the usual KeyboardInterrupt."""
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # local_parallel's driver follows with SIGTERM: still Ctrl-C
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(SystemExit) as e:
            stop.hand_over()
    assert e.value.code == 130
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_during_training_saves_the_state_and_the_resume_is_bit_identical(tmp_path):
    from tests.test_reliability import _same, _train_tiny

    reference = _train_tiny(tmp_path / "ref.pt")
    with StopRequest() as stop, pytest.raises(Interrupted) as e:
        _train_interrupted(tmp_path / "checkpoint.pt", stop)
    assert e.value.iteration == 5 and stop.signum == signal.SIGINT
    assert _same(_train_tiny(tmp_path / "checkpoint.pt"), reference)


def _train_interrupted(checkpoint, stop):
    """``_train_tiny`` with Ctrl-C arriving during iteration 5, the job's should_stop polled."""
    import torch

    from srcore.data import TrainPatches, builtin_images
    from srcore.degrade import Bicubic
    from srcore.models import build_model
    from srcore.train import train
    from tests.test_train import tiny_settings

    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2,
                        regularizers=[{"name": "dropout", "position": "last", "p": 0.5, "kind": "channel"}])
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=0)

    def on_iteration(iteration):
        if iteration == 5:
            os.kill(os.getpid(), signal.SIGINT)
    train(model, patches, Bicubic(4), tiny_settings(), checkpoint, on_iteration=on_iteration,
          should_stop=lambda: stop.requested)


def test_ctrl_c_in_a_terminal_saves_the_state_and_exits_130_interrupted(tmp_path):
    """It was a bare KeyboardInterrupt traceback and 'failed ... killed or crashed'. Here Ctrl-C is
    SIGINT to the command's whole process group (its own session), at iteration 2."""
    env = {**os.environ, "SR_OUTPUT_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "0", "SR_FAULT": "train-early",
           "SR_FAULT_SIGNAL": "INT", "SR_FAULT_TARGET": "group", "SR_FAULT_LOG": str(tmp_path / "faults.jsonl"),
           "PYTHONPATH": os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "sweeper", "-m", *TINY], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = proc.stdout + proc.stderr
    assert '"event": "fired"' in (tmp_path / "faults.jsonl").read_text()
    assert proc.returncode == 130, out[-2000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "Ctrl-C (SIGINT): saving state at the next iteration" in out and "stopped on request at iteration" in out
    (job,) = [p.parent for p in tmp_path.glob("sweeps/*/*/status.json")]
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "interrupted" and status["reason"].startswith("SIGINT at iteration")
    assert job_state(job)[0] == "interrupted"


# --- issue 25: logger.mode=disabled needs no wandb ------------------------------------------------

def test_a_job_with_the_logger_disabled_runs_where_wandb_cannot_be_imported(tmp_path):
    """A GPU machine with only PyTorch: every job failed at JobRun.__init__ importing wandb."""
    (tmp_path / "no_wandb").mkdir()
    (tmp_path / "no_wandb" / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None  # import fails\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "no_wandb"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    probe = subprocess.run([sys.executable, "-c", "import wandb"], env={**os.environ, **env}, capture_output=True)
    assert probe.returncode != 0  # the stand-in for a machine without wandb works
    run_sweeper([*TINY, "logger.mode=disabled"], tmp_path / "out", env=env)
    (job,) = [p.parent for p in (tmp_path / "out").glob("runs/*/results.json")]
    results = json.loads((job / "results.json").read_text())
    assert results["metrics"] and not (job / "wandb").exists() and is_done(job)
