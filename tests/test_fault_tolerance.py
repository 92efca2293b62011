"""Fault isolation, preemption-safe resume, a random SIGKILL, the parallel launcher and
the status command, on real sweeps (`python -m sweeper -m ...` in a subprocess)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from hydra_plugins.sr_sweeper.launchers import final_state
from sweeper.jobstate import job_labels, job_state, write_json
from sweeper.status import main as status_main
from tests.conftest import ROOT, TINY, run_sweeper

LONG = [*TINY, "train.iterations=200", "train.scheduler.periods=[100,100]", "train.log_every=50", "train.val_every=100",
        "train.ckpt_every=50"]


def sweep_dir(out):
    return next((out / "sweeps").iterdir())


def results(sweep):
    return {d.name: json.loads((d / "results.json").read_text()) for d in sweep.iterdir() if (d / "results.json").exists()}


def same_weights(a, b):
    """Bit-identical weights (params, params_ema) and the same build arguments (model_args)."""
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (a, b))
    weights = [k for k in wa if k != "model_args"]
    return wa.get("model_args") == wb.get("model_args") and wa.keys() == wb.keys() and \
        all(torch.equal(wa[k][n], wb[k][n]) for k in weights for n in wa[k])


def start_sweeper(args, out):
    env = {**os.environ, "SR_OUTPUT_ROOT": str(out), "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "sweeper", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_iteration(job_dir, at_least, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads((job_dir / "status.json").read_text())
            if status.get("iteration", 0) >= at_least:
                return status
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{job_dir} never reached iteration {at_least}")


def test_a_failing_job_is_recorded_the_others_finish_and_a_rerun_runs_only_it(tmp_path):
    args = ["-m", *TINY, "train.lr=1e-3,1e30", "dropout.p=0.1,0.5"]
    proc = run_sweeper(args, tmp_path, check=False)
    assert proc.returncode == 1
    assert "error: 2 of 4 jobs failed (2 done)" in proc.stderr
    assert proc.stderr.count("FloatingPointError: loss is nan") == 2
    assert "job [dropout.p=0.1 train.lr=1e+30]" in proc.stderr
    sweep = sweep_dir(tmp_path)
    assert len(results(sweep)) == 2
    states = sorted(job_state(d)[0] for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert states == ["done", "done", "failed", "failed"]

    again = run_sweeper(args, tmp_path, check=False)
    assert "2 of 4 jobs finished earlier; launching the other 2" in again.stderr + again.stdout
    assert again.returncode == 1
    failed = [json.loads(p.read_text()) for p in sweep.glob("*/status.json")]
    assert sorted(s["attempt"] for s in failed if s["state"] == "failed") == [2, 2]


def test_sigusr2_saves_the_state_and_the_rerun_ends_bit_identical(tmp_path):
    ref = run_sweeper(["-m", *LONG], tmp_path / "ref")
    assert ref.returncode == 0
    proc = start_sweeper(["-m", *LONG], tmp_path / "run")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "run").glob("sweeps/*/*/status.json")):
        time.sleep(0.05)
    job = next((tmp_path / "run").glob("sweeps/*/*/status.json")).parent
    wait_for_iteration(job, 20)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, out[-2000:]
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGUSR2" in status["reason"]
    stopped_at = torch.load(job / "checkpoint.pt", weights_only=True)["iteration"]
    assert 20 <= stopped_at < 200 and stopped_at == status["iteration"]

    run_sweeper(["-m", *LONG], tmp_path / "run")
    (ref_res,), (res,) = results(sweep_dir(tmp_path / "ref")).values(), results(sweep_dir(tmp_path / "run")).values()
    assert res["metrics"] == ref_res["metrics"] and res["attempt"] == 2
    assert same_weights(job, sweep_dir(tmp_path / "ref") / job.name)


@pytest.mark.slow  # make test-slow: the default suite stays under ~15 min (CI: 2 cores)
def test_sigkill_at_a_random_point_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
    grid = ["-m", *LONG, "dropout.p=0.1,0.5"]
    t0 = time.monotonic()
    run_sweeper(grid, tmp_path / "ref")
    duration = time.monotonic() - t0
    seed = random.randrange(2**32)
    delay = random.Random(seed).uniform(1.0, duration)
    print(f"killing after {delay:.2f} s of {duration:.2f} s (seed {seed})")
    proc = start_sweeper(grid, tmp_path / "run")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    run_sweeper(grid, tmp_path / "run")
    ref, got = results(sweep_dir(tmp_path / "ref")), results(sweep_dir(tmp_path / "run"))
    assert got.keys() == ref.keys() and len(got) == 2
    for name in ref:
        assert got[name]["metrics"] == ref[name]["metrics"], f"{name} differs after a kill at {delay:.2f} s"
        assert same_weights(sweep_dir(tmp_path / "run") / name, sweep_dir(tmp_path / "ref") / name)


def test_local_parallel_caps_concurrency_and_gives_each_job_its_own_gpu(tmp_path):
    args = ["-m", *TINY, "train.iterations=60", "dropout.p=0.1,0.2,0.3,0.4,0.5", "launcher=local_parallel",
            "hydra.launcher.fuse=off",
            "hydra.launcher.max_parallel=2", "hydra.launcher.gpus=[3,5]"]
    proc = run_sweeper(args, tmp_path)
    log = proc.stdout + proc.stderr
    assert "at most 2 at once, GPUs 3,5, 1 CPU threads each" in log
    assert log.count(" started (slot ") == 5 and log.count(" done") >= 5
    runs = list(results(sweep_dir(tmp_path)).values())
    assert len(runs) == 5
    spans = []
    for r in runs:
        status = json.loads((sweep_dir(tmp_path) / r["job"] / "status.json").read_text())
        spans.append((status["attempt_started"], status["updated"], r["ran_on"]["cuda_visible_devices"],
                      r["ran_on"]["pid"]))
    assert {s[2] for s in spans} == {"3", "5"}
    pids = {s[3] for s in spans}
    assert len(pids) == 2 and os.getpid() not in pids  # one worker process per slot, not the sweeper
    overlaps = 0
    for i, (a0, a1, dev_a, _) in enumerate(spans):
        concurrent = [b for j, b in enumerate(spans) if j != i and b[0] < a1 and a0 < b[1]]
        at_start = [b for b in concurrent if b[0] <= a0 < b[1]]
        assert len(at_start) <= 1, "more than 2 jobs ran at once"
        assert all(b[2] != dev_a for b in at_start), "two concurrent jobs shared a GPU"
        overlaps += bool(concurrent)
    assert overlaps >= 2, "the jobs never ran concurrently"


def test_status_reports_pending_running_failed_and_done(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    names = ["a", "b", "c", "d", "e"]
    write_json(sweep / "jobs.json", {"jobs": [{"name": n, "overrides": [f"dropout.p=0.{i}", "seed=0"]}
                                              for i, n in enumerate(names)]})
    now = time.time()
    base = {"iterations": 100, "host": os.uname().nodename, "started": now - 65, "updated": now}
    write_json(sweep / "b" / "status.json", {**base, "state": "running", "iteration": 40, "val_psnr": 25.5,
                                             "pid": os.getpid()})
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_json(sweep / "c" / "status.json", {**base, "state": "running", "iteration": 10, "pid": dead.pid})
    write_json(sweep / "d" / "status.json", {**base, "state": "failed", "iteration": 3, "pid": 1,
                                             "reason": "FloatingPointError: loss is nan at iteration 3"})
    write_json(sweep / "e" / "status.json", {**base, "state": "done", "iteration": 100, "pid": 1})
    write_json(sweep / "e" / "results.json", {"metrics": {"test/x/clean/psnr": 1.0}})
    assert status_main([str(sweep)]) == 1
    out = capsys.readouterr().out.splitlines()
    lines = dict(zip(names, out[2:7]))
    assert lines["a"].startswith("pending") and lines["a"].endswith("dropout.p=0.0")
    assert lines["b"].split()[:4] == ["running", "40/100", "25.50", "0:01:05"]
    assert lines["c"].startswith("failed") and "its process is gone" in lines["c"] and "last iteration 10" in lines["c"]
    assert lines["d"].startswith("failed") and "loss is nan at iteration 3" in lines["d"]
    assert lines["e"].startswith("done") and "100/100" in lines["e"]
    assert out[-1] == "5 jobs: 1 done, 2 failed, 1 running, 1 pending"


def test_status_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert status_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_job_labels_keep_only_the_overrides_that_vary():
    assert job_labels([["a=1", "b=2"], ["a=1", "b=3"]]) == ["b=2", "b=3"]
    assert job_labels([["a=1"]]) == ["a=1"]


@pytest.mark.slow  # make test-slow: the default suite stays under ~15 min (CI: 2 cores)
def test_local_parallel_a_killed_worker_fails_only_its_job(tmp_path):
    args = ["-m", *LONG, "dropout.p=0.1,0.2,0.3", "launcher=local_parallel", "hydra.launcher.max_parallel=1",
            "hydra.launcher.fuse=off"]
    proc = start_sweeper(args, tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("sweeps/*/*/status.json")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    first = next(tmp_path.glob("sweeps/*/*/status.json")).parent
    victim = wait_for_iteration(first, 10)["pid"]
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-2000:]
    assert "error: 1 of 3 jobs failed (2 done)" in out
    assert f"job process died (exit code -{int(signal.SIGKILL)})" in out
    assert len(results(sweep_dir(tmp_path))) == 2
    assert job_state(first)[0] == "failed"


@pytest.mark.slow  # make test-slow: the default suite stays under ~15 min (CI: 2 cores)
def test_a_job_killed_under_a_parent_that_used_wandb_reruns(tmp_path):
    """wandb exports its service's address (WANDB_SERVICE) to child processes. A job must not
    log through its launcher's service: killed, it would leave its run id registered there
    and the rerun would be refused ("run ID ... is in use")."""
    import wandb
    wandb.setup()  # this test process now owns a service and exports it
    assert os.environ.get("WANDB_SERVICE")
    try:
        proc = start_sweeper(["-m", *LONG], tmp_path)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("sweeps/*/*/checkpoint.pt")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        run_sweeper(["-m", *LONG], tmp_path)
    finally:
        wandb.teardown()
    (done,) = results(sweep_dir(tmp_path)).values()
    assert done["attempt"] == 2


def test_the_early_started_wandb_service_is_the_jobs_own():
    """The job starts wandb's service in a thread while it loads data; that service must be
    its own even when it inherited a parent's address (see the test above)."""
    code = ("import os; os.environ['WANDB_SERVICE'] = '2-1-tcp-localhost-1'\n"
            "from omegaconf import OmegaConf\n"
            "from sweeper.wandb_run import start_service\n"
            "assert start_service(OmegaConf.create({'logger': {'mode': 'disabled'}})) is None\n"
            "start_service(OmegaConf.create({'logger': {'mode': 'offline'}})).join()\n"
            "print(os.environ['WANDB_SERVICE'].split('-')[1], os.getpid())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    service_pid, pid = out.stdout.split()
    assert service_pid == pid


class SacctAnswers:
    """A SLURM job whose fresh sacct answers are ``answers`` in turn (the last one repeats),
    while submitit's cached ``state`` never moves on."""

    def __init__(self, *answers: dict):
        self.answers, self.calls = answers, 0
        self.state = "RUNNING"

    def get_info(self, mode: str = "force") -> dict:
        assert mode == "force"
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def test_a_failed_slurm_job_is_reported_with_its_final_state():
    running, cancelled = {"State": "RUNNING"}, {"State": "CANCELLED by 0"}
    job = SacctAnswers(running, running, running, cancelled)  # accounting lags 3 calls behind
    assert final_state(job, wait_s=10, poll_s=0) == "CANCELLED by 0" and job.calls == 4
    # accounting that never catches up: the last state seen, after the wait
    assert final_state(SacctAnswers(running), wait_s=0.05, poll_s=0.01) == "RUNNING"
    # no record at all: nothing to wait for
    job = SacctAnswers({})
    assert final_state(job, wait_s=10, poll_s=0) == "UNKNOWN" and job.calls == 1


def test_a_slurm_task_given_up_on_is_collected_as_its_packs_results_or_failures(monkeypatch):
    """wait_for_result can give up on a task whose result then turns up (accounting lagging a
    requeue; seen in CI): collect returns the pack's JobReturns as they are. A task with no
    result gives one failed JobReturn per job of its pack, each naming the final state."""
    import hydra_plugins.sr_sweeper.launchers as launchers
    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.sr_sweeper.worker_slots import job_error

    pack = [["dropout.p=0.1"], ["dropout.p=0.4"]]
    done = [JobReturn(overrides=o, status=JobStatus.COMPLETED) for o in pack]

    class Task:
        def __init__(self, results):
            self._results, self.paths = results, type("P", (), {"stderr": "/x/log.err"})()

        def results(self):
            if isinstance(self._results, Exception):
                raise self._results
            return [self._results]

    assert launchers.collect(Task(done), pack) is done
    monkeypatch.setattr(launchers, "final_state", lambda task: "CANCELLED by 0")
    failed = launchers.collect(Task(RuntimeError("no result")), pack)
    assert [r.overrides for r in failed] == pack and all(r.status == JobStatus.FAILED for r in failed)
    assert "state: CANCELLED by 0" in str(job_error(failed[1]))


def test_a_task_that_looks_over_while_being_requeued_is_waited_for(tmp_path):
    """Seen in CI: right after a preempted attempt's `scontrol requeue`, sacct reported the task
    over (no result file yet) and the driver failed both jobs of a fused group that the requeued
    attempt then finished. wait_for_result asks sacct afresh before giving up: a task back in the
    queue is waited for; one that stays over without a result still fails, after the grace."""
    import submitit

    from hydra_plugins.sr_sweeper.launchers import wait_for_result

    class Task:
        job_id = "14_0"

        def __init__(self, fresh_states, result_after):
            self.fresh, self.calls, self.result_after = list(fresh_states), 0, result_after
            self.paths = type("P", (), {"result_pickle": tmp_path / "none.pkl"})()
            self.state = "FAILED"  # what submitit's cached sacct says: the old attempt

        def results(self):
            self.calls += 1
            if self.calls > self.result_after:
                return ["done"]
            raise submitit.core.utils.UncompletedJobError("has not produced any output")

        def get_info(self, mode="force"):
            return {"State": self.fresh.pop(0) if len(self.fresh) > 1 else self.fresh[0]}

    requeued = Task(["FAILED", "PENDING"], result_after=1)
    assert wait_for_result(requeued, poll_s=0, grace_s=5) == "done" and requeued.calls == 2
    over = Task(["COMPLETED"], result_after=99)
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        wait_for_result(over, poll_s=0, grace_s=0.05)
    assert over.calls == 1
    cancelled = Task(["PENDING"], result_after=99)
    cancelled.state = "CANCELLED by 0"  # a scancel is final: no grace, no fresh sacct call
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        wait_for_result(cancelled, poll_s=0, grace_s=60)
