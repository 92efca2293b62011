"""A real SLURM cluster (`make slurm-up`): a 4-job smoke sweep as one job array; one job is
preempted (SIGUSR2), saves its state, is requeued by submitit and resumes to the result of
an uninterrupted run; one job is cancelled and reported as failed while the others finish.

Skipped when no cluster answers, unless SR_REQUIRE_SLURM=1 (CI sets it)."""
import json
import os
import subprocess
import time

import pytest

from tests.conftest import TINY, run_sweeper
from tests.test_fault_tolerance import results, same_weights, start_sweeper, sweep_dir

pytestmark = pytest.mark.slurm


def cluster_up() -> bool:
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "allocated", "completing"))


@pytest.fixture(scope="module", autouse=True)
def slurm():
    if not cluster_up():
        if os.environ.get("SR_REQUIRE_SLURM") == "1":
            pytest.fail("SR_REQUIRE_SLURM=1 but no SLURM cluster answers (make slurm-up)")
        pytest.skip("no SLURM cluster answers: `make slurm-up` starts one")


def task_id(status: dict) -> str:
    """The SLURM id to signal: an array task's, or the job's when submitit sent one task alone."""
    task = status["slurm_array_task_id"]
    return status["slurm_job_id"] if task is None else f"{status['slurm_job_id']}_{task}"


def read_status(job_dir) -> dict:
    try:
        return json.loads((job_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def squeue_state(job: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout.split()
    return (out[0], out[1]) if len(out) >= 2 else ("", "")


def preempt_until_restarted(job_dir, task: str, while_waiting=lambda: None, timeout: float = 180) -> None:
    """Preempt a running task as SLURM does (SIGUSR2 through submitit: the job saves, then
    ``scontrol requeue``) and wait until ``job_dir``'s job runs its second attempt. The signaller
    is stopped once the job says it was interrupted (scancel keeps retrying its other steps, which
    would signal the restarted job too); then the requeued task, which SLURM holds ~2 min
    (BeginTime), is released so the test stays short."""
    signaller = subprocess.Popen(["scancel", "--signal=USR2", task], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while read_status(job_dir).get("attempt") != 2:
            assert time.monotonic() < deadline, f"{job_dir.name}: the preempted task {task} was never restarted"
            while_waiting()
            if read_status(job_dir).get("state") == "interrupted":
                signaller.kill()
                signaller.wait()
            state, reason = squeue_state(task)
            # released only once the signaller is gone: the job may requeue between the two reads
            if state == "PENDING" and reason == "BeginTime" and signaller.poll() is not None:
                subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=False)
            time.sleep(0.1)
    finally:
        if signaller.poll() is None:
            signaller.kill()
            signaller.wait()


# log_every=1: a wandb call in every iteration, so a signal that ends wandb's service hits one
SCHEDULE = ["train.iterations=300", "train.scheduler.periods=[150,150]", "train.log_every=1", "train.val_every=100",
            "train.ckpt_every=50"]
SLURM = ["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10", "hydra.launcher.fuse=off"]  # a task per job


def test_job_array_with_a_requeued_and_a_cancelled_job(tmp_path):
    proc = start_sweeper(["-m", *TINY, *SCHEDULE, "dropout.p=0.1,0.2,0.3,0.4", *SLURM], tmp_path / "slurm")
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "slurm").glob("sweeps/*/jobs.json")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        sweep = sweep_dir(tmp_path / "slurm")
        jobs = {o.split("=")[1]: sweep / j["name"] for j in json.loads((sweep / "jobs.json").read_text())["jobs"]
                for o in j["overrides"] if o.startswith("dropout.p=")}
        assert sorted(jobs) == ["0.1", "0.2", "0.3", "0.4"]

        # Cancel p=0.4 as soon as it runs, whenever that is (it may start while p=0.1 waits to be
        # requeued, and finish before that wait ends): it must be reported as failed.
        cancelled = None

        def cancel_once_running():
            nonlocal cancelled
            status = read_status(jobs["0.4"])
            if cancelled is None and status.get("state") == "running" and status.get("iteration", 0) >= 1:
                cancelled = task_id(status)
                subprocess.run(["scancel", cancelled], check=True)
            assert cancelled is not None or status.get("state") != "done", "p=0.4 finished before it was cancelled"

        # Preempt p=0.1 mid-training: submitit's SIGUSR2 -> the job saves -> scontrol requeue.
        deadline = time.monotonic() + 180
        while read_status(jobs["0.1"]).get("iteration", 0) < 20:
            assert time.monotonic() < deadline, "p=0.1 never reached iteration 20"
            cancel_once_running()
            time.sleep(0.05)
        preempted = task_id(read_status(jobs["0.1"]))
        preempt_until_restarted(jobs["0.1"], preempted, while_waiting=cancel_once_running)

        deadline = time.monotonic() + 300
        while cancelled is None:
            assert time.monotonic() < deadline, "p=0.4 never started"
            cancel_once_running()
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:]
    assert "error: 1 of 4 jobs failed (3 done)" in out
    assert "job [dropout.p=0.4]" in out and "CANCELLED" in out, out[-3000:]
    done = results(sweep)
    assert sorted(r["config"]["dropout"]["p"] for r in done.values()) == [0.1, 0.2, 0.3]
    status = json.loads((jobs["0.4"] / "status.json").read_text())
    assert status["state"] == "failed" and "CANCELLED" in status["reason"]
    sacct = subprocess.run(["sacct", "-n", "-X", "-j", cancelled, "-o", "State"], capture_output=True, text=True)
    assert "CANCELLED" in sacct.stdout  # accounting sees it

    resumed = json.loads((jobs["0.1"] / "results.json").read_text())
    assert resumed["attempt"] == 2 and resumed["ran_on"]["slurm_job_id"] == preempted.split("_")[0]
    log = "".join(p.read_text() for p in jobs["0.1"].glob("*.log"))
    assert "resumed from" in log

    # The same job, uninterrupted and with the same thread count, ends identically.
    run_sweeper(["-m", *TINY, *SCHEDULE, "dropout.p=0.1", "train.threads=1"], tmp_path / "ref")
    (ref,) = results(sweep_dir(tmp_path / "ref")).values()
    assert resumed["metrics"] == ref["metrics"]
    assert same_weights(jobs["0.1"], sweep_dir(tmp_path / "ref") / ref["job"])


def test_packed_tasks_run_several_jobs_each(tmp_path):
    proc = run_sweeper(["-m", *TINY, "dropout.p=0.1,0.2,0.3", *SLURM, "hydra.launcher.jobs_per_task=2"], tmp_path)
    assert "slurm: submitted 3 jobs as array" in proc.stdout + proc.stderr and "(2 tasks)" in proc.stdout + proc.stderr
    done = results(sweep_dir(tmp_path))
    assert len(done) == 3
    tasks = {(r["ran_on"]["slurm_job_id"], r["ran_on"]["slurm_array_task_id"]) for r in done.values()}
    assert len(tasks) == 2


def test_optuna_trials_run_as_slurm_jobs_on_a_journal_study(tmp_path):
    import optuna

    from sweeper.optuna_report import open_storage
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler=random", *TINY, "dropout.p=interval(0.05,0.95)",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *SLURM]
    proc = run_sweeper(args, tmp_path)
    sweep = sweep_dir(tmp_path)
    assert "optuna.journal" in proc.stdout + proc.stderr  # journal storage by default under slurm
    study = optuna.load_study(study_name=sweep.name, storage=open_storage(f"journal:{sweep / 'optuna.journal'}"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    ran = {r["ran_on"]["slurm_job_id"] for r in results(sweep).values()}
    assert len(ran) == 1 and None not in ran  # both trials were tasks of one job array


def test_a_request_no_node_can_meet_fails_in_preflight_and_submits_nothing(tmp_path):
    """Issue 19 K: the launcher's default request (4 CPUs, 16 GB) on a smaller cluster used to be
    submitted and then wait for ever, silently."""
    cpus = max(int(line.split()[0].rstrip("+")) for line in subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split("\n")
        if line.strip())
    proc = run_sweeper(["-m", *TINY, *SLURM, f"hydra.launcher.cpus_per_task={cpus + 1}"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: launcher=slurm: each task asks for {cpus + 1} CPUs") and \
        f"lower it, e.g. hydra.launcher.cpus_per_task={cpus}" in line
    assert not list(tmp_path.glob("sweeps/*/.submitit"))


def test_a_held_task_is_reported_pending_with_its_reason_until_released(tmp_path, capsys):
    """Issue 19 K: the driver and `python -m sweeper.status` say a task is pending, for how long
    and why, and that this reason does not clear by itself."""
    from sweeper.status import main as status_main

    args = ["-m", *TINY, "dropout.p=0.1", *SLURM, "+hydra.launcher.additional_parameters.hold=true",
            "hydra.launcher.queue_poll_s=1"]
    proc = start_sweeper(args, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("sweeps/*/slurm_tasks.json")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        sweep = sweep_dir(tmp_path)
        (task,) = [t["task"] for t in json.loads((sweep / "slurm_tasks.json").read_text())["jobs"].values()]
        time.sleep(3)
        status_main([str(sweep)])
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pending")]
        assert f"slurm {task} pending for " in line and "(JobHeldUser): will not start as it is" in line
        subprocess.run(["scontrol", "release", task.split("_")[0]], check=True)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert f"1 of 1 tasks waiting: slurm {task} pending for" in out and "(JobHeldUser): will not start" in out
    assert len(results(sweep)) == 1


def test_a_detached_sweep_survives_a_cancel_and_a_requeue_and_the_next_run_resubmits_only_the_cancelled(
        tmp_path, capsys):
    """Issue 19: submit and walk away. While no driver runs, one task is cancelled and one is
    preempted (requeued); `sweeper.status` shows each state; the same command again submits only
    the cancelled job, waits for the others where they are, and the tables end complete."""
    from sweeper.status import main as status_main

    args = ["-m", *TINY, *SCHEDULE, "dropout.p=0.1,0.2,0.3,0.4", *SLURM, "hydra.launcher.queue_poll_s=1"]
    # held, so that the test decides what runs when
    first = run_sweeper([*args, "hydra.launcher.detach=true", "+hydra.launcher.additional_parameters.hold=true"],
                        tmp_path, timeout=120)
    assert "slurm: submitted 4 jobs as array" in first.stderr + first.stdout
    sweep = sweep_dir(tmp_path)
    tasks = {o.split("=")[1]: t["task"] for key, t in json.loads((sweep / "slurm_tasks.json").read_text())["jobs"].items()
             for o in key.split() if o.startswith("dropout.p=")}
    jobs = {o.split("=")[1]: sweep / j["name"] for j in json.loads((sweep / "jobs.json").read_text())["jobs"]
            for o in j["overrides"] if o.startswith("dropout.p=")}
    subprocess.run(["scancel", tasks["0.4"]], check=True)  # cancelled before it ever ran
    for p in ("0.1", "0.2", "0.3"):
        subprocess.run(["scontrol", "release", tasks[p]], check=True)

    deadline = time.monotonic() + 180
    while read_status(jobs["0.1"]).get("iteration", 0) < 20:
        assert time.monotonic() < deadline, "p=0.1 never reached iteration 20"
        time.sleep(0.05)
    signaller = subprocess.Popen(["scancel", "--signal=USR2", tasks["0.1"]], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while read_status(jobs["0.1"]).get("state") != "interrupted" or squeue_state(tasks["0.1"])[0] != "PENDING":
            assert time.monotonic() < deadline, "p=0.1 was never requeued"
            time.sleep(0.2)
    finally:
        signaller.kill()
        signaller.wait()

    status_main([str(sweep)])
    out = capsys.readouterr().out.splitlines()
    lines = {p: next(ln for ln in out if f"  dropout.p={p}" in ln) for p in jobs}
    # (SLURM keeps no record of an array task cancelled while pending: the files and the queue tell)
    assert lines["0.4"].startswith("failed") and f"slurm {tasks['0.4']} left the queue" in lines["0.4"], lines["0.4"]
    assert lines["0.1"].startswith("interrupted") and f"slurm {tasks['0.1']} pending for" in \
        lines["0.1"], lines["0.1"]

    # The same command again (attached): only p=0.4 is submitted; the requeued p=0.1 is waited for.
    second = start_sweeper(args, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while squeue_state(tasks["0.1"])[0] == "PENDING":
            assert time.monotonic() < deadline and second.poll() is None
            if squeue_state(tasks["0.1"])[1] == "BeginTime":  # SLURM holds a requeued job ~2 min
                subprocess.run(["scontrol", "update", f"JobId={tasks['0.1']}", "StartTime=now"], check=False)
            time.sleep(0.5)
        out, _ = second.communicate(timeout=600)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, out[-3000:]
    assert "slurm: submitted 1 jobs as array" in out and "are already queued or running on the cluster" in out, out
    assert "sweep: all 4 jobs done" in out
    done = results(sweep)
    assert sorted(r["config"]["dropout"]["p"] for r in done.values()) == [0.1, 0.2, 0.3, 0.4]
    assert json.loads((jobs["0.1"] / "results.json").read_text())["attempt"] == 2

    from analysis.tables import main as tables_main
    tables_main([str(sweep)])
    table = capsys.readouterr().out
    assert "unfinished" not in table and "missing" not in table and "0.4" in table, table


def test_a_fused_group_is_one_task_preempted_requeued_and_resumed(tmp_path):
    """Issue 26: two jobs fuse into one array task; SIGUSR2 to that task saves both, submitit
    requeues it, and both resume to the result of the same group run uninterrupted."""
    fused = [s for s in SLURM if not s.startswith("hydra.launcher.fuse")]
    proc = start_sweeper(["-m", *TINY, *SCHEDULE, "dropout.p=0.1,0.2", *fused], tmp_path / "slurm")
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "slurm").glob("sweeps/*/jobs.json")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        sweep = sweep_dir(tmp_path / "slurm")
        jobs = [sweep / j["name"] for j in json.loads((sweep / "jobs.json").read_text())["jobs"]]
        deadline = time.monotonic() + 180
        while read_status(jobs[0]).get("iteration", 0) < 20:
            assert time.monotonic() < deadline, "the group never reached iteration 20"
            time.sleep(0.05)
        task = task_id(read_status(jobs[0]))
        assert task_id(read_status(jobs[1])) == task  # one array task runs both
        preempt_until_restarted(jobs[0], task)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "1 fused groups" in out and "sweep: all 2 jobs done" in out, out[-3000:]
    done = results(sweep)
    assert all(r["attempt"] == 2 for r in done.values())
    # the same group uninterrupted, with the same thread count, ends identically
    run_sweeper(["-m", *TINY, *SCHEDULE, "dropout.p=0.1,0.2", "train.threads=1"], tmp_path / "ref")
    ref = sweep_dir(tmp_path / "ref")
    for name, r in results(ref).items():
        assert done[name]["metrics"] == r["metrics"], name
        assert same_weights(sweep / name, ref / name)


def test_a_job_on_two_ranks_is_one_array_task_of_two_tasks_preempted_requeued_and_resumed(tmp_path):
    """Issue 27: train.gpus=2 (gloo ranks on the CPU) is one array task of 2 SLURM tasks (task 0 the
    job, task 1 its helper rank); SIGUSR2 reaches both, they stop at the same iteration, task 0
    saves and submitit requeues; the requeued job resumes to the result of the same 2-rank job run
    uninterrupted on this machine."""
    two = ["degradation=bicubic", "train.gpus=2", "train.device=cpu", "train.iterations=120",
           "train.scheduler.periods=[60,60]", "train.log_every=10", "train.val_every=60", "train.ckpt_every=20"]
    proc = start_sweeper(["-m", *TINY, *two, *SLURM], tmp_path / "slurm")
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "slurm").glob("sweeps/*/jobs.json")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        sweep = sweep_dir(tmp_path / "slurm")
        (job,) = [sweep / j["name"] for j in json.loads((sweep / "jobs.json").read_text())["jobs"]]
        deadline = time.monotonic() + 180
        while read_status(job).get("iteration", 0) < 10:
            assert time.monotonic() < deadline, "the job never reached iteration 10"
            time.sleep(0.05)
        task = task_id(read_status(job))
        steps = subprocess.run(["squeue", "-h", "-s", "-j", task.split("_")[0], "-o", "%i %N"], capture_output=True,
                               text=True).stdout
        preempt_until_restarted(job, task)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "each a job on 2 ranks, 2 SLURM tasks" in out and "sweep: all 1 jobs done" in out, out[-3000:]
    logs = {p.name: p.read_text() for p in (sweep / ".submitit").rglob("*_log.*")}
    task1 = "".join(text for name, text in logs.items() if "_1_log." in name)  # the helper rank's task
    assert "received SIGUSR2" in task1, (sorted(logs), steps)
    (done,) = results(sweep).values()
    assert done["attempt"] == 2
    log = "".join(p.read_text() for p in job.glob("*.log"))
    assert "rank 0 of 2 on cpu (gloo)" in log and "resumed from" in log, log[-3000:]
    # the same 2-rank job uninterrupted on this machine, 1 thread per rank as on SLURM: the same end
    run_sweeper(["-m", *TINY, *two, "train.threads=1"], tmp_path / "ref")
    (ref,) = results(sweep_dir(tmp_path / "ref")).values()
    assert done["metrics"] == ref["metrics"]
    assert same_weights(job, sweep_dir(tmp_path / "ref") / ref["job"])


def test_a_job_on_more_ranks_than_a_node_has_cpus_for_fails_in_preflight(tmp_path):
    """train.gpus=N asks one node for N tasks of cpus_per_task each: the 2-CPU node cannot run 3."""
    proc = run_sweeper(["-m", *TINY, *SLURM, "train.gpus=3", "train.batch_size=6", "train.device=cpu"], tmp_path,
                       check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: train.gpus=3 (one task per rank, on one node): launcher=slurm: each task asks for "
                           "3 CPUs"), line
    assert not list(tmp_path.glob("sweeps/*/.submitit"))
