"""One job on N GPUs (``train.gpus=N``): who starts its N ranks and how they meet.

The training loop's side (the global batch split over the ranks, DDP, rank 0's checkpoint) is
``srcore.distributed`` / ``srcore.train``; this module starts the ranks and joins them.

- **Rank 0 is the job's own process** (the plain run, ``launcher=local``, a ``local_parallel``
  worker, or SLURM task 0): it does the whole job life (``sweeper.job.run_job``: status, wandb,
  validation, checkpoints, evaluation, results). It hosts the ranks' meeting point, a
  ``torch.distributed.TCPStore``, and publishes there the job (its resolved config and folder).
- **The other N-1 ranks only train** (``serve``): they read the job from the store, build the
  same job (``sweeper.job._build_job``) and run ``srcore.train.train(..., ranks=...)``; they
  write nothing. Locally rank 0 starts them (``python -m sweeper.ranks``, one process each, in
  its process group); on SLURM they are the job's other tasks (``submitit.JobEnvironment``).
- **A helper never outlives its job**: locally the kernel kills it when rank 0's process dies
  (``PR_SET_PDEATHSIG``); everywhere a watchdog thread ends it when the store stops answering
  (rank 0 gone) or rank 0 says ``abort`` (it failed out of step with the others). A local store
  listens on a port the system picks at each start, so a rerun never meets a stale one.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# How long a helper waits for rank 0 to publish its job (rank 0 first reads its config, builds its
# job, opens wandb), and how often its watchdog asks the store whether rank 0 is still there.
PUBLISH_TIMEOUT = datetime.timedelta(minutes=30)
WATCH_EVERY_S = 2.0
# A helper that does not end this long after rank 0's training ended is killed (locally).
HELPER_EXIT_S = 120.0


def job_gpus(cfg) -> int:
    """The job's number of ranks (``train.gpus``; 1 when absent)."""
    return int(cfg.train.get("gpus") or 1)


# --- SLURM: every task of the array task runs the launcher's function ------------------------

_slurm: dict | None = None  # set in SLURM task 0 while it runs a job on several tasks


def slurm_port(job_id: str) -> int:
    """The store's port of a SLURM job: a function of its id (every task computes it alone), in
    the unprivileged range above the usual services. A requeued job gets a fresh process and
    listens on the same port again (the old process is gone with its socket)."""
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


@contextmanager
def slurm_task(env):
    """Around what one SLURM task runs (``SlurmLauncher.__call__``) when the job has several tasks:
    task 0 hosts the store and runs the job (``job_ranks`` finds it here); yields True on task 0,
    False on the others, which then call ``serve_slurm``."""
    global _slurm
    if env.global_rank != 0:
        yield False
        return
    import torch.distributed as dist

    store = dist.TCPStore(env.hostnames[0], slurm_port(env.job_id), env.num_tasks, True, timeout=PUBLISH_TIMEOUT,
                          wait_for_workers=False)
    _slurm = {"store": store, "world": env.num_tasks, "published": False}
    try:
        yield True
    finally:
        if not _slurm["published"]:  # the job ended without training (done earlier, refused): the helpers leave
            store.set("job", "none")
        _slurm = None
        _linger(store)


def serve_slurm(env) -> None:
    """A SLURM task other than 0: one rank of the job task 0 runs."""
    import torch.distributed as dist

    master = env.hostnames[0]
    store = dist.TCPStore(master, slurm_port(env.job_id), env.num_tasks, False, timeout=PUBLISH_TIMEOUT)
    serve(store, env.global_rank, env.num_tasks, env.local_rank, (master, slurm_port(env.job_id)))


# --- Rank 0: the ranks of the job around its training -------------------------------------------

@contextmanager
def job_ranks(cfg, job_dir: Path):
    """Around a job's training in its own process: None for a 1-rank job (nothing runs), else this
    process's ``srcore.distributed.Ranks`` as rank 0 of ``train.gpus`` ranks, the others started
    (locally) or met (SLURM). On leaving, the ranks disconnect and the local helpers have ended;
    if training failed here out of step with them (not a stop they agreed on), they are told to
    abort."""
    n = job_gpus(cfg)
    if n == 1:
        yield None
        return
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from srcore.distributed import connect, disconnect, rank_device
    from srcore.train import Interrupted

    helpers: list[subprocess.Popen] = []
    if _slurm is not None:
        store, where = _slurm["store"], None
        if _slurm["world"] != n:
            raise RuntimeError(f"train.gpus={n} but this SLURM job has {_slurm['world']} tasks")
        _slurm["published"] = True
    else:
        store = dist.TCPStore("127.0.0.1", 0, n, True, timeout=PUBLISH_TIMEOUT, wait_for_workers=False)
        where = ("127.0.0.1", store.port)
    threads = rank_threads(cfg, n, shared_cores=_slurm is None)
    store.set("job", json.dumps({"config": OmegaConf.to_yaml(cfg, resolve=True), "job_dir": str(job_dir),
                                 "threads": threads}))
    if where is not None:
        helpers = [start_helper(where, rank, n, job_dir) for rank in range(1, n)]
        log.info("%d ranks: rank 0 here (pid %d), helpers %s; store 127.0.0.1:%d", n, os.getpid(),
                 ", ".join(f"rank {r} pid {p.pid}" for r, p in enumerate(helpers, 1)), store.port)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    ok = False
    try:
        ranks = connect(0, n, dist.PrefixStore("ranks", store), rank_device(str(cfg.train.device), 0))
        yield ranks
        ok = True
    except Interrupted:
        ok = True  # every rank agreed on the stop and saved together
        raise
    finally:
        torch.set_num_threads(before)
        if not ok:
            store.set("abort", "1")
        disconnect()
        end_helpers(helpers, wait_s=HELPER_EXIT_S if ok else 5.0)


def rank_threads(cfg, n: int, shared_cores: bool = True) -> int:
    """CPU threads of each rank: ``train.threads`` if set, else this process's, split over the N
    ranks when they train on the CPU and share the cores one job had (locally; a SLURM task has
    its own ``cpus_per_task``)."""
    import torch

    if cfg.train.get("threads"):
        return int(cfg.train.threads)
    cpu = str(cfg.train.device) == "cpu" or (str(cfg.train.device) == "auto" and not torch.cuda.is_available())
    if cpu and shared_cores:
        return max(1, torch.get_num_threads() // n)
    return torch.get_num_threads()


def start_helper(where: tuple[str, int], rank: int, world: int, job_dir: Path) -> subprocess.Popen:
    """Rank ``rank`` of a local job: ``python -m sweeper.ranks`` in this process group (a kill of
    the group reaches it; Ctrl-C in a terminal too, and the ranks agree on it), with this
    process's environment (its GPUs: CUDA_VISIBLE_DEVICES). Its output joins this process's."""
    cmd = [sys.executable, "-m", "sweeper.ranks", "--host", where[0], "--port", str(where[1]), "--rank", str(rank),
           "--world", str(world), "--job-dir", str(job_dir)]
    return subprocess.Popen(cmd, cwd=os.getcwd(), stdin=subprocess.DEVNULL)


def end_helpers(helpers: list[subprocess.Popen], wait_s: float) -> None:
    """Wait for the local helpers to end (at most ``wait_s``), then kill what is left."""
    deadline = time.monotonic() + wait_s
    for proc in helpers:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("rank helper pid %d did not end: killing it", proc.pid)
            proc.kill()
            proc.wait()


def _linger(store, seconds: float = 2.0) -> None:
    """Keep the store up a moment after the job: helpers read ``job`` or ``abort`` from it."""
    time.sleep(seconds)


# --- The other ranks -----------------------------------------------------------------------------

def serve(store, rank: int, world: int, local_rank: int, where: tuple[str, int]) -> None:
    """Rank ``rank`` of the job rank 0 publishes in ``store``: build it, train it, write nothing."""
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from srcore.distributed import connect, disconnect, rank_device
    from srcore.train import Interrupted, train
    from sweeper.job import _build_job
    from sweeper.job_folder import CHECKPOINT
    from sweeper.preemption import StopRequest

    message = store.get("job").decode()
    if message == "none":
        log.info("rank %d: the job did not train (done earlier or refused); nothing to do", rank)
        return
    job = json.loads(message)
    cfg = OmegaConf.create(job["config"])
    torch.set_num_threads(job["threads"])
    watch_rank0(where, rank)
    with StopRequest() as stop:
        settings, _, degrade, patches, model = _build_job(cfg)
        ranks = connect(rank, world, dist.PrefixStore("ranks", store), rank_device(str(cfg.train.device), local_rank))
        try:
            train(model, patches, degrade, settings, Path(job["job_dir"]) / CHECKPOINT,
                  should_stop=lambda: stop.signum or 0, ranks=ranks)
        except Interrupted as e:
            log.info("rank %d: stopped with the others at iteration %d", rank, e.iteration)
            if stop.signum is not None:
                stop.hand_over()  # SLURM: submitit's handler does nothing on tasks > 0; then exit 128 + signal
        finally:
            disconnect()


def watch_rank0(where: tuple[str, int], rank: int) -> None:
    """A daemon thread ending this process when rank 0 is gone (its store stops answering) or says
    ``abort``: a helper is never left waiting in a collective for a rank that will not come."""
    import torch.distributed as dist

    def watch() -> None:
        try:
            store = dist.TCPStore(where[0], where[1], is_master=False, timeout=datetime.timedelta(seconds=30))
            while not store.check(["abort"]):
                time.sleep(WATCH_EVERY_S)
            why = "rank 0 aborted the job"
        except Exception as e:  # noqa: BLE001 - the store is gone with rank 0
            why = f"rank 0's store stopped answering ({type(e).__name__})"
        print(f"rank {rank}: {why}; ending", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="rank0-watch", daemon=True).start()


def die_with_parent() -> None:
    """SIGKILL this process when its parent (rank 0) dies (Linux): a helper without its rank 0 has
    nothing left to do, and must not hold the job's cores or GPUs."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one helper rank of a local job on several ranks "
                                                 "(started by the job's rank 0; not for direct use)")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--job-dir", required=True)  # only to tell the job's helpers apart (ps)
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.WARNING, format=f"[rank {args.rank}] %(asctime)s %(name)s %(levelname)s %(message)s")
    import torch.distributed as dist

    store = dist.TCPStore(args.host, args.port, args.world, False, timeout=PUBLISH_TIMEOUT)
    try:
        serve(store, args.rank, args.world, args.rank, (args.host, args.port))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - one line; rank 0 reports the job's failure
        print(f"rank {args.rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
