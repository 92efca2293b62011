"""Cluster-grade reliability (issue 19): each defect found by fault injection, reproduced."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

from analysis.runs import runs_frame
from analysis.tables import main as tables_main
from hydra_plugins.sr_sweeper.slurm_queue import QueueWatch
from hydra_plugins.sr_sweeper.sweep_lock import STALE_S, SweepLock
from srcore.data import TrainPatches, builtin_images
from srcore.degrade import Bicubic
from srcore.imageio import write_image
from srcore.models import build_model, load_model
from srcore.models.checkpoint import CheckpointError
from srcore.train import Interrupted, train
from sweeper.compose import compose
from sweeper.jobstate import is_done, job_state, write_json
from sweeper.preflight import PreflightError, check_slurm_request, validate_config
from sweeper.status import main as status_main
from sweeper.status import record_slurm_tasks
from tests.conftest import TINY, run_sweeper
from tests.test_fault_tolerance import start_sweeper
from tests.test_train import tiny_settings


def _job_dirs(root):
    return sorted(p.parent for p in root.glob("sweeps/*/*/.hydra"))


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", r"train.lr=-1 must be a number in \(0, inf\)"),
    ("train.lr=nan", r"train.lr=nan"),
    ("train.betas=[0.9,1.2]", r"train.betas\[1\]=1.2 must be a number in \[0, 1\)"),
    ("train.betas=[0.9]", r"train.betas=\[0.9\] must be two numbers"),
    ("train.weight_decay=-0.1", r"train.weight_decay=-0.1"),
    ("train.ema_decay=1.0", r"train.ema_decay=1.0 must be a number in \[0, 1\)"),
    ("train.scheduler.eta_min=0.1", r"train.scheduler.eta_min=0.1 must be a number in \[0, 0.0002\]"),
    ("train.scheduler.periods=[100]", r"train.scheduler.periods=\[100\] and restart_weights"),
    ("train.scheduler.periods=[100,0]", r"train.scheduler.periods\[1\]=0 must be a positive integer"),
    ("train.scheduler.restart_weights=[1,-1]", r"restart_weights\[1\]=-1"),
    ("train.batch_size=0", r"train.batch_size=0 must be a positive integer"),
    ("train.patch_size=-4", r"train.patch_size=-4"),
    ("train.threads=0", r"train.threads=0 must be a positive integer"),
    ("data.num_workers=-1", r"data.num_workers=-1"),
])
def test_every_numeric_training_key_is_checked_before_launch(override, message):
    """G: a bad number stops the job in pre-flight, with the key, the value and the range."""
    with pytest.raises(PreflightError, match=message):
        validate_config(compose([override]))


def test_periods_must_cover_the_run():
    with pytest.raises(PreflightError, match=r"cover 100 iterations but train.iterations=200"):
        validate_config(compose(["train.iterations=200", "train.scheduler.periods=[100]",
                                 "train.scheduler.restart_weights=[1]"]))


def test_a_test_image_too_small_for_the_protocol_fails_in_preflight(tmp_path):
    """F: found from the image headers before training, not after 500k iterations."""
    folder = tmp_path / "tiny_test"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_image(folder / "fine.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    write_image(folder / "small.png", rng.integers(0, 256, (12, 30, 3), dtype=np.uint8))
    with pytest.raises(PreflightError, match=r"data.test_sets.mine: image 'small.png' is 30x12 px; .* at least 19x19"):
        validate_config(compose([f"+data.test_sets.mine={folder}"]))
    validate_config(compose([f"+data.test_sets.mine={folder}", "eval.max_images=1"]))  # only fine.png


@pytest.mark.slow  # make test-slow: the default suite stays under ~15 min (CI: 2 cores)
def test_a_truncated_results_file_does_not_mark_a_job_done(tmp_path):
    """D: an empty or truncated results.json is a job to run again, for the sweep, the status
    reader and a single run alike."""
    run_sweeper(["-m", *TINY, "dropout.position=none,last"], tmp_path)
    first, second = _job_dirs(tmp_path)
    good = json.loads((first / "results.json").read_text())
    (first / "results.json").write_text((first / "results.json").read_text()[:40])
    (second / "results.json").write_text("")
    assert not is_done(first) and not is_done(second)
    assert job_state(first)[0] != "done"

    run_sweeper(["-m", *TINY, "dropout.position=none,last"], tmp_path)
    again = json.loads((first / "results.json").read_text())
    assert again["metrics"] == good["metrics"] and is_done(second)
    assert job_state(first)[0] == job_state(second)[0] == "done"

    (tmp_path / "runs").mkdir()
    run_sweeper([*TINY], tmp_path)
    (single,) = [p.parent for p in tmp_path.glob("runs/*/results.json")]
    (single / "results.json").write_text("{")
    proc = run_sweeper([*TINY], tmp_path)
    assert "JSONDecodeError" not in proc.stderr and is_done(single)


def test_partial_writes_of_a_killed_attempt_are_removed(tmp_path):
    """I: the temporary files of interrupted atomic writes do not pile up in the job folder."""
    run_sweeper([*TINY, "train.iterations=4"], tmp_path)
    (job,) = [p.parent for p in tmp_path.glob("runs/*/results.json")]
    (job / "results.json").unlink()
    for name in (".checkpoint.pt.k2j4.tmp", ".model.pt.a8x1.tmp", ".status.json.zz.tmp"):
        (job / name).write_bytes(b"\0" * 1000)
    run_sweeper([*TINY, "train.iterations=4"], tmp_path)
    assert not list(job.glob(".*.tmp")) and is_done(job)


# --- E: a damaged checkpoint falls back to the previous one --------------------------------

class _Payload:
    """A pickle that would run a command when loaded unsafely."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _train_tiny(checkpoint, stop_at=None):
    """12 iterations of a tiny SRResNet with dropout, checkpoints every 4; stopped on request
    after ``stop_at`` (the state is saved)."""
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2,
                        regularizers=[{"name": "dropout", "position": "last", "p": 0.5, "kind": "channel"}])
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=0)
    seen = []
    ema = train(model, patches, Bicubic(4), tiny_settings(), checkpoint, on_iteration=seen.append,
                should_stop=lambda: stop_at is not None and seen[-1] >= stop_at)
    return {k: v.clone() for k, v in ema.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_bit_identically(tmp_path, caplog):
    """E: the latest checkpoint cut short (or empty, or refused) is set aside with a warning naming
    it and the previous one; training resumes from that one to the uninterrupted weights."""
    reference = _train_tiny(tmp_path / "ref.pt")
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        _train_tiny(ckpt, stop_at=10)
    previous = tmp_path / "checkpoint.prev.pt"
    assert torch.load(ckpt, weights_only=True)["iteration"] == 10
    assert torch.load(previous, weights_only=True)["iteration"] == 8
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="srcore.train"):
        assert _same(_train_tiny(ckpt), reference)
    warning = caplog.records[-1].getMessage() if caplog.records else ""
    assert str(ckpt) in warning and str(previous) in warning and "iteration 8" in warning, warning
    assert (tmp_path / "checkpoint.pt.corrupt").exists()


def test_with_no_readable_checkpoint_training_starts_over_saying_so(tmp_path, caplog):
    reference = _train_tiny(tmp_path / "ref.pt")
    ckpt, marker = tmp_path / "checkpoint.pt", tmp_path / "payload-ran"
    ckpt.write_bytes(b"")
    torch.save({"x": _Payload(marker)}, tmp_path / "checkpoint.prev.pt")
    with caplog.at_level(logging.WARNING, logger="srcore.train"):
        assert _same(_train_tiny(ckpt), reference)
    warning = caplog.records[-1].getMessage()
    assert "checkpoint.pt: not a readable checkpoint (empty file)" in warning
    assert "checkpoint.prev.pt: refused" in warning and "starts over from iteration 0" in warning
    assert "weights_only" not in warning and not marker.exists()


def test_a_refused_weights_file_is_one_line_that_never_suggests_unsafe_loading(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"params": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "model.pt")
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'model.pt'}: refused") and "\n" not in message
    assert "weights_only" not in message and not marker.exists()


def test_a_checkpoint_of_another_network_names_the_file(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        _train_tiny(ckpt, stop_at=4)
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k + ".x": v for k, v in state["model"].items()}
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError,
                       match=rf"{ckpt}: does not fit this job's model .* delete checkpoint.pt and checkpoint.prev.pt"):
        _train_tiny(ckpt)


def test_a_job_whose_checkpoint_is_empty_reruns_from_the_previous_one(tmp_path):
    """E, the way it was found: a zero-byte checkpoint.pt failed every rerun with a bare EOFError."""
    run_sweeper([*TINY], tmp_path)
    (job,) = [p.parent for p in tmp_path.glob("runs/*/results.json")]
    first = json.loads((job / "results.json").read_text())
    (job / "results.json").unlink()
    (job / "checkpoint.pt").write_bytes(b"")
    proc = run_sweeper([*TINY], tmp_path)
    log = proc.stdout + proc.stderr + "".join(p.read_text() for p in job.glob("*.log"))
    assert "checkpoint.pt: not a readable checkpoint (empty file)" in log
    assert "resuming from the previous checkpoint" in log
    assert json.loads((job / "results.json").read_text())["metrics"] == first["metrics"]


# --- C and H: tables of every sweep, whatever state one of them is in ----------------------

@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """A finished 2-job sweep and a sweep whose only job failed (NaN loss), under one root."""
    root = tmp_path_factory.mktemp("two_sweeps")
    run_sweeper(["-m", *TINY, "dropout.position=none,last"], root)
    run_sweeper(["-m", *TINY, "train.lr=1e30"], root, check=False)
    return root


def _copy(root, tmp_path):
    shutil.copytree(root, tmp_path / "out", symlinks=True)
    sweeps = tmp_path / "out" / "sweeps"
    bad, good = sorted(sweeps.iterdir(), key=lambda p: any(p.glob("*/results.json")))
    return sweeps, good, bad


def test_a_sweep_without_test_scores_gets_its_runs_states_and_the_others_their_tables(two_sweeps, tmp_path, capsys):
    """C: it raised KeyError in analysis.stats, which stopped the tables of every later sweep."""
    sweeps, good, bad = _copy(two_sweeps, tmp_path)
    assert tables_main([str(sweeps)]) == 0
    out = capsys.readouterr().out
    assert "No finished run has test psnr scores yet" in out and (good / "tables" / "psnr.md").exists()
    status = (bad / "tables" / "status.md").read_text()
    assert "| failed " in status and "No finished run has test psnr scores yet" in status

    (good / "tables" / "psnr.md").unlink()
    shutil.rmtree(bad / "tables")
    (bad / "tables").write_text("in the way")  # this sweep's tables cannot be written
    assert tables_main([str(sweeps)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: sweep {bad}: no tables (")
    assert (good / "tables" / "psnr.md").exists()


def test_a_corrupt_wandb_file_shows_as_corrupt_in_its_row(two_sweeps, tmp_path, capsys):
    """H: its setting vanished from the table, with only a warning."""
    _, good, _ = _copy(two_sweeps, tmp_path)
    (damaged,) = good.glob("*dropout.position=last*/wandb/offline-run-*/run-*.wandb")
    damaged.write_bytes(b":W&B\xe1\xbe\x00" + b"\xff" * 200)  # a good header, then garbage
    with pytest.warns(UserWarning, match="corrupt wandb run file"):
        runs = runs_frame(good)
    assert sorted(runs["state"]) == ["corrupt", "finished"]
    corrupt = runs[runs["state"] == "corrupt"].iloc[0]
    assert corrupt["swept.dropout.position"] == "last" and corrupt["sweep_dir"] == str(good)
    with pytest.warns(UserWarning):
        assert tables_main([str(good)]) == 0
    table = (good / "tables" / "psnr.md").read_text()
    (row,) = [line for line in table.splitlines() if line.startswith("| last")]
    assert "corrupt" in row


# --- An unwritable output root --------------------------------------------------------------

def test_an_unwritable_output_root_is_one_line_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    root = tmp_path / "a_file" / "outputs"
    # (the callback is registered in conf/config.yaml; given here too, so this test holds either way)
    check = "++hydra.callbacks.output_folder._target_=hydra_plugins.sr_sweeper.callbacks.OutputFolderCheck"
    for args in (["-m", *TINY, "dropout.p=0.1,0.2"], [*TINY, check]):
        proc = run_sweeper(args, root, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: cannot write the output folder {root}/")
        assert f"({tmp_path / 'a_file'} is a file); set paths.output_root (or SR_OUTPUT_ROOT)" in line


# --- J: one driver per sweep ------------------------------------------------------------------

def test_the_same_sweep_started_twice_at_once_trains_each_job_once(tmp_path):
    """J: both drivers launched every job: two trainings and two wandb runs per job."""
    args = ["-m", *TINY, "dropout.position=none,last"]
    procs = [start_sweeper(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    jobs = _job_dirs(tmp_path)
    assert len(jobs) == 2 and all(is_done(j) for j in jobs), outs
    for job in jobs:
        assert len(list(job.glob("wandb/offline-run-*"))) == 1, f"{job.name} ran more than once"
        assert json.loads((job / "status.json").read_text())["attempt"] == 1
    if sorted(codes) == [0, 2]:  # the second driver came while the first ran
        refused = outs[codes.index(2)].strip().splitlines()
        assert refused[-1].startswith("error: this sweep is already being run by ")
        assert "python -m sweeper.status" in refused[-1] and ".driver.lock" in refused[-1]
    else:  # or after it had finished
        assert codes == [0, 0] and any("2 of 2 jobs finished earlier" in o for o in outs), outs
    assert not list(tmp_path.glob("sweeps/*/.driver.lock"))


def _lock_file(sweep, **holder):
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / ".driver.lock").write_text(json.dumps(holder))


def test_a_stale_sweep_lock_is_taken_over_and_a_live_one_refuses(tmp_path, caplog):
    now = time.time()
    dead = subprocess.Popen(["true"])
    dead.wait()
    _lock_file(tmp_path / "a", host=socket.gethostname(), pid=dead.pid, started=now, heartbeat=now, token="x")
    with caplog.at_level(logging.WARNING), SweepLock(tmp_path / "a"):
        assert json.loads((tmp_path / "a" / ".driver.lock").read_text())["pid"] == os.getpid()
    assert f"its process {dead.pid} is gone" in caplog.text and not (tmp_path / "a" / ".driver.lock").exists()

    _lock_file(tmp_path / "b", host="node7", pid=1, started=now - 3600, heartbeat=now - 5, token="y")
    with pytest.raises(PreflightError, match=r"already being run by node7 pid 1 since .* \(heartbeat \d s ago\).* "
                                          rf"delete {tmp_path / 'b' / '.driver.lock'}"):
        SweepLock(tmp_path / "b").acquire()
    _lock_file(tmp_path / "b", host="node7", pid=1, started=now - 3600, heartbeat=now - STALE_S - 1, token="y")
    with SweepLock(tmp_path / "b"):
        pass
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".driver.lock").write_text("")  # a driver killed between creating and writing it
    os.utime(tmp_path / "c" / ".driver.lock", (now - 60, now - 60))
    with SweepLock(tmp_path / "c"):
        pass
    assert "unreadable" in caplog.text


# --- K: SLURM requests no node can meet, and tasks that stay pending ---------------------------

@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sinfo, squeue and sbatch that print what the test puts in their files (one 2-CPU node)."""
    bin_dir = tmp_path / "fake_slurm"
    bin_dir.mkdir()
    for tool in ("sinfo", "squeue", "sbatch"):
        (bin_dir / f"{tool}.out").write_text("")
        (bin_dir / tool).write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir}/{tool}.calls\ncat {bin_dir}/{tool}.out\n")
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "sinfo.out").write_text("debug* 2 21000 (null) idle\ngpu 2 21000+ gpu:a100:1(S:0) mixed\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_a_slurm_request_no_node_can_meet_fails_in_preflight(fake_slurm, tmp_path):
    """K: the default request (4 CPUs, 16 GB) on 2-CPU nodes was submitted, then waited for ever."""
    proc = run_sweeper(["-m", *TINY, "dropout.p=0.1,0.2", "launcher=slurm", "hydra.launcher.partition=debug"],
                       tmp_path / "out", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line == ("error: launcher=slurm: each task asks for 4 CPUs, 16384 MB, 0 GPUs but no node of partition "
                    "'debug' has that much (the largest: 2 CPUs, 21000 MB, 0 GPUs), so it would wait for ever; "
                    "lower it, e.g. hydra.launcher.cpus_per_task=2")
    assert not (fake_slurm / "sbatch.calls").exists()
    with pytest.raises(PreflightError, match=r"1 GPUs but no node of partition 'debug'.*gpus_per_node=0 \(or another"):
        check_slurm_request({"partition": None, "cpus_per_task": 1, "gpus_per_node": 1})
    check_slurm_request({"partition": "gpu", "cpus_per_task": 2, "mem_gb": 20, "gpus_per_node": "a100:1"})
    with pytest.raises(PreflightError, match=r"partition='cpu': no such partition; sinfo lists debug, gpu"):
        check_slurm_request({"partition": "cpu"})


def test_status_and_the_driver_say_how_long_a_task_pends_and_why(fake_slurm, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    names = ["a", "b", "c"]
    write_json(sweep / "jobs.json", {"jobs": [{"name": n, "overrides": [f"dropout.p=0.{i}"]}
                                              for i, n in enumerate(names)]})
    record_slurm_tasks(sweep, {f"dropout.p=0.{i}": f"77_{i}" for i in range(3)},
                       {"partition": "debug", "cpus": 4, "mem_mb": 1024, "gpus": 0})
    tasks = json.loads((sweep / "slurm_tasks.json").read_text())
    for job in tasks["jobs"].values():
        job["submitted"] -= 125
    write_json(sweep / "slurm_tasks.json", tasks)
    (fake_slurm / "squeue.out").write_text("77_0 PENDING PartitionTimeLimit\n77_1 PENDING Priority\n"
                                           "77_2 PENDING Resources\n")
    assert status_main([str(sweep)]) == 0
    lines = dict(zip(names, capsys.readouterr().out.splitlines()[2:5]))
    assert "[slurm 77_0 pending for 0:02:05 (PartitionTimeLimit): will not start as it is: its time limit" in lines["a"]
    assert "scancel 77 and fix the request]" in lines["a"]
    assert lines["b"].endswith("[slurm 77_1 pending for 0:02:05 (Priority)]")
    assert "(Resources): will not start as it is: no node can ever run it: each task asks for 4 CPUs" in lines["c"]
    assert "-r -j 77 -o %i %T %r" in (fake_slurm / "squeue.calls").read_text()

    watch = QueueWatch(["77_0", "77_1", "77_2"], {"partition": "debug", "cpus": 1, "mem_mb": 1024, "gpus": 0}, 1)
    first = watch.check({"77_0": ("PENDING", "Priority"), "77_1": ("PENDING", "Priority"), "77_2": ("RUNNING", "")})
    assert first == [(logging.INFO, "2 of 3 tasks waiting: slurm 77_[0,1] pending for 0:00:00 (Priority)")]
    assert watch.check({"77_0": ("PENDING", "Priority"), "77_1": ("PENDING", "Priority")}) == []  # no news
    (stuck,) = watch.check({"77_0": ("PENDING", "ReqNodeNotAvail, UnavailableNodes:n1")})
    assert stuck[0] == logging.WARNING and "the nodes it needs are down, drained or reserved" in stuck[1]
