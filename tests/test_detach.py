"""Submit and walk away on one machine (issue 19): `launcher=local_parallel
hydra.launcher.detach=true` validates, starts its driver in the background and returns; a second
start is refused while that driver runs; `python -m sweeper.status` follows it to the end."""
import time

from sweeper.status import sweep_status
from tests.conftest import TINY, run_sweeper
from tests.test_fault_tolerance import sweep_dir

ARGS = ["-m", *TINY, "dropout.p=0.1,0.2", "launcher=local_parallel", "hydra.launcher.max_parallel=2",
        "hydra.launcher.detach=true"]


def test_a_detached_local_sweep_runs_in_the_background_and_status_follows_it(tmp_path):
    first = run_sweeper(ARGS, tmp_path, timeout=120)
    assert "sweep: the driver runs in the background (pid " in first.stderr + first.stdout
    sweep = sweep_dir(tmp_path)

    deadline = time.monotonic() + 120
    while not (sweep / ".driver.lock").exists():  # the background driver has taken the sweep
        assert time.monotonic() < deadline, "the background driver never took the sweep's lock"
        time.sleep(0.1)
    again = run_sweeper(ARGS, tmp_path, check=False, timeout=120)  # while the first driver runs
    assert again.returncode == 2 and again.stderr.strip().startswith("error: this sweep is already being run by")
    assert len(again.stderr.strip().splitlines()) == 1

    deadline, seen_driver = time.monotonic() + 300, False
    while True:
        lines, counts = sweep_status(sweep)
        seen_driver |= any(ln.startswith("driver: ") for ln in lines)
        if counts["done"] == 2 and not any(ln.startswith("driver: ") for ln in lines):
            break
        assert counts["failed"] == 0 and time.monotonic() < deadline, "\n".join(lines)
        time.sleep(0.5)
    assert seen_driver
    log = (sweep / "driver.log").read_text()
    assert "sweep: all 2 jobs done" in log and "Traceback" not in log


def test_the_workers_of_a_killed_local_parallel_driver_save_and_stop(tmp_path):
    """A driver killed with -9 used to leave its workers running their jobs unseen; the next
    driver, finding the lock stale, would start the same jobs again beside them."""
    import json
    import os
    import signal

    from tests.test_fault_tolerance import start_sweeper, wait_for_iteration

    tiny = [a for a in TINY if not a.startswith(("train.iterations=", "train.ckpt_every="))]
    args = ["-m", *tiny, "train.iterations=2000", "train.scheduler.periods=[1000,1000]", "train.ckpt_every=500",
            "dropout.p=0.1,0.2", "launcher=local_parallel", "hydra.launcher.max_parallel=2"]
    driver = start_sweeper(args, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("sweeps/*/jobs.json")):
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.1)
        sweep = sweep_dir(tmp_path)
        jobs = [sweep / j["name"] for j in json.loads((sweep / "jobs.json").read_text())["jobs"]]
        pids = [wait_for_iteration(j, 2, timeout=180)["pid"] for j in jobs]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    deadline = time.monotonic() + 60
    for job, pid in zip(jobs, pids):
        while json.loads((job / "status.json").read_text())["state"] != "interrupted":
            assert time.monotonic() < deadline, f"{job.name}: its worker went on after the driver died"
            time.sleep(0.2)
        while os.path.exists(f"/proc/{pid}"):
            assert time.monotonic() < deadline, f"worker {pid} outlived its driver"
            time.sleep(0.2)
    # (the rerun resuming them is tests/test_fault_tolerance.py's)


def test_local_parallel_runs_k_jobs_per_gpu_with_the_threads_split(tmp_path):
    """Issue 20: jobs_per_gpu=2 on two (fake) GPUs: four slots, two per GPU, cores / 4 threads."""
    import json

    from hydra_plugins.sr_sweeper.launchers import LocalParallelLauncher
    from tests.test_fault_tolerance import results

    launcher = LocalParallelLauncher(gpus=[3, 5], jobs_per_gpu=2, threads_per_job=None)
    cap, gpus, threads = launcher.plan()
    assert cap == 4 and gpus == ["3", "5"] and threads >= 1
    proc = run_sweeper(["-m", *TINY, "dropout.p=0.1,0.2,0.3", "launcher=local_parallel", "hydra.launcher.fuse=off",
                        "hydra.launcher.gpus=[7]",
                        "hydra.launcher.jobs_per_gpu=2"], tmp_path)
    assert "at most 2 at once, GPUs 7," in proc.stdout + proc.stderr
    runs = results(sweep_dir(tmp_path))
    assert len(runs) == 3 and {r["ran_on"]["cuda_visible_devices"] for r in runs.values()} == {"7"}
    assert len({r["ran_on"]["pid"] for r in runs.values()}) == 2  # two workers shared GPU 7
    assert all(json.loads((sweep_dir(tmp_path) / name / "status.json").read_text())["state"] == "done" for name in runs)
