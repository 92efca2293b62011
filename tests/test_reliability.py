"""Cluster-grade reliability (issue 19): each defect found by fault injection, reproduced."""
from __future__ import annotations

import json

import numpy as np
import pytest

from srcore.imageio import write_image
from sweeper.compose import compose
from sweeper.jobstate import is_done, job_state
from sweeper.preflight import PreflightError, validate_config
from tests.conftest import TINY, run_sweeper


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
