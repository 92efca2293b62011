"""Pre-flight of a job on N GPUs (`train.gpus=N`, issue 27): each refusal is one line naming the
value and what is allowed, before any work starts."""
import subprocess

import pytest
import torch

from hydra_plugins.sr_sweeper.launchers import rank_params
from sweeper.compose import compose
from sweeper.preflight import PreflightError, check_slurm_request, validate_config
from tests.conftest import TINY, run_sweeper


@pytest.mark.parametrize("overrides, message", [
    (["train.gpus=0"], r"^train.gpus=0 must be a positive integer$"),
    (["train.gpus=3", "train.device=cpu"], r"^train.gpus=3 does not divide the global batch train.batch_size=4 .*a "
                                           r"multiple of 3$"),
    (["train.gpus=2", "train.device=cpu", "train.compile=true"], r"^train.compile=true is not supported with "
                                                                  r"train.gpus=2 .*train.compile=false or train.gpus=1$"),
])
def test_bad_rank_settings_are_named(overrides, message):
    with pytest.raises(PreflightError, match=message):
        validate_config(compose(["preset=smoke", *overrides]))


def test_two_cpu_ranks_and_a_dividing_batch_are_valid():
    validate_config(compose(["preset=smoke", "train.gpus=2", "train.device=cpu"]))
    validate_config(compose(["preset=smoke", "train.gpus=4", "train.device=cpu"]))


def test_more_ranks_than_visible_gpus_or_one_named_gpu_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PreflightError, match=r"^train.gpus=2 but this machine shows 1 GPU\(s\) \(train.device=auto\); "
                                             r"allowed: 1..1, or train.device=cpu for 2 CPU ranks$"):
        validate_config(compose(["preset=smoke", "train.gpus=2"]))
    with pytest.raises(PreflightError, match=r"^train.device='cuda:1' names one GPU but train.gpus=2"):
        validate_config(compose(["preset=smoke", "train.gpus=2", "train.device=cuda:1"]))
    validate_config(compose(["preset=smoke", "train.gpus=2", "train.device=cpu"]))  # CPU ranks need no GPU


def test_a_partition_without_n_gpus_per_node_is_refused(monkeypatch):
    """The N tasks of a job on N GPUs share one node: a partition of 1-GPU nodes cannot hold it."""
    def sinfo(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, stdout="gpu* 16 64000 gpu:a100:1 idle\n", stderr="")
    monkeypatch.setattr("sweeper.preflight.subprocess.run", sinfo)
    params = {"partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 16, "tasks_per_node": 1}
    check_slurm_request(rank_params(params, 1))
    assert rank_params(params, 2) == {**params, "nodes": 1, "tasks_per_node": 2, "gpus_per_node": 2}
    with pytest.raises(PreflightError, match=r"each task asks for 8 CPUs, 16384 MB, 2 GPUs but no node of partition "
                                             r"'gpu' has that much .*gpus_per_node=1"):
        check_slurm_request(rank_params(params, 2))
    cpu_params = {**params, "gpus_per_node": None}  # a CPU partition: N tasks, no GPUs asked
    assert rank_params(cpu_params, 2)["gpus_per_node"] is None


def test_local_parallel_with_fewer_gpus_than_ranks_launches_nothing(tmp_path):
    proc = run_sweeper(["-m", *TINY, "train.gpus=2", "train.device=cpu", "launcher=local_parallel",
                        "hydra.launcher.gpus=[3]"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line == ("error: train.gpus=2 but launcher=local_parallel has 1 GPU(s) to hand out (3; hydra.launcher.gpus "
                    "or CUDA_VISIBLE_DEVICES): allowed: 1..1"), line
    assert not list(tmp_path.glob("sweeps/*/*/status.json"))


def test_a_single_run_with_a_batch_the_ranks_cannot_split_stops_in_one_line(tmp_path):
    proc = run_sweeper([*TINY, "train.gpus=3", "train.device=cpu"], tmp_path, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: train.gpus=3 does not divide the global batch train.batch_size=4"), line
    assert not list(tmp_path.glob("runs/*/status.json"))
