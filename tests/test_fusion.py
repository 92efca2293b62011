"""Fused groups through the command line (issue 26): which jobs fuse, the dry run, a fused grid
against the same jobs run one by one (each job still a job: its folder, status, checkpoint,
model.pt, results, wandb run and table row; metrics within 1e-3 dB), and a rerun that finds 2 of
4 done and regroups the other two."""
import json

import pytest

from sweeper.compose import compose
from sweeper.fusion import parse_fuse, plan_groups, signature
from tests.conftest import TINY, run_sweeper
from tests.test_fault_tolerance import results, sweep_dir


def sig(*overrides):
    return signature(compose(["preset=smoke", *overrides]))


def test_what_a_job_may_set_for_itself_in_a_group():
    base = sig()
    for own in ("seed=3", "dropout.p=0.2", "train.lr=5e-4", "degradation=bicubic", "train.ema_decay=0.5",
                "eval.max_images=1", "train.scheduler.periods=[20,40]", "regularizers.dropout.p=0.3"):
        assert sig(own) == base, own
    for shared in ("dropout.position=middle", "dropout.kind=element", "backbone.num_feat=8", "train.batch_size=2",
                   "train.iterations=80", "train.precision=bf16", "scale=2", "regularizer=[dropout,droppath]"):
        assert sig(shared) != base, shared
    assert sig("train.compile=true") is None


def test_groups_are_as_even_as_the_size_allows():
    assert plan_groups(["a"] * 9, "auto") == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    assert plan_groups(["a", "b", "a", None, "b"], 3) == [[0, 2], [1, 4], [3]]
    assert plan_groups(["a"] * 3, "off") == [[0], [1], [2]]
    assert parse_fuse(True) == parse_fuse("auto") == 8 and parse_fuse(False) is None and parse_fuse(4) == 4
    for bad in ("1x", -2, 0, 1.5):
        with pytest.raises(ValueError, match="hydra.launcher.fuse"):
            parse_fuse(bad)


def test_a_bad_fuse_value_is_one_line_before_anything_runs(tmp_path):
    proc = run_sweeper(["-m", *TINY, "seed=0,1", "hydra.launcher.fuse=many"], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: hydra.launcher.fuse='many' is invalid; allowed: auto, off, or a group size K >= 2" in proc.stderr
    assert not list(tmp_path.glob("sweeps/*/*/status.json"))


def test_the_dry_run_shows_the_groups(tmp_path):
    proc = run_sweeper(["-m", *TINY, "seed=0,1", "dropout.position=last,middle", "hydra.sweeper.dry_run=true"],
                       tmp_path)
    out = proc.stdout
    assert "fused (hydra.launcher.fuse=auto): 4 jobs in 2 groups (2, 2), 0 alone" in out
    lines = [line for line in out.splitlines() if line.startswith("  to run")]
    assert len(lines) == 4 and all("[group " in line for line in lines)
    by_position = {line.split("dropout.position=")[1].split()[0]: line.split("[group ")[1] for line in lines}
    assert len(set(by_position.values())) == 2  # a position's jobs share a group


GRID = ["seed=0,1", "dropout.p=0.1,0.5", "train.iterations=12", "train.scheduler.periods=[6,6]",
        "train.val_every=12", "train.threads=1"]


def test_a_fused_grid_is_the_same_jobs_as_one_by_one_and_a_rerun_regroups_the_unfinished(tmp_path):
    fused = run_sweeper(["-m", *TINY, *GRID, "sweep_name=grid"], tmp_path / "fused")
    assert "fused group of 4" in fused.stdout + fused.stderr
    alone = run_sweeper(["-m", *TINY, *GRID, "sweep_name=grid", "hydra.launcher.fuse=off"], tmp_path / "alone")
    assert "fused group" not in alone.stdout + alone.stderr
    a, b = sweep_dir(tmp_path / "fused"), sweep_dir(tmp_path / "alone")
    ra, rb = results(a), results(b)
    assert sorted(ra) == sorted(rb) and len(ra) == 4
    for name in ra:
        job = a / name
        for f in ("results.json", "model.pt", "checkpoint.pt", "status.json", ".hydra/config.yaml"):
            assert (job / f).exists(), (name, f)
        assert list(job.glob("wandb/offline-run-*/run-*.wandb")), name
        status = json.loads((job / "status.json").read_text())
        assert status["state"] == "done" and status["wandb_finished"], status
        gap = max(abs(v - rb[name]["metrics"][k]) for k, v in ra[name]["metrics"].items())
        assert gap <= 1e-3, (name, gap)
        own = [{k: v for k, v in r[name]["config"].items() if k not in ("paths", "eval")} for r in (ra, rb)]
        assert own[0] == own[1]  # the same job (output folders apart)
    assert len({json.dumps(r["metrics"], sort_keys=True) for r in ra.values()}) == 4  # four different jobs

    # two jobs lose their results: the rerun trains exactly those two, as a group of two
    for name in sorted(ra)[:2]:
        (a / name / "results.json").unlink()
        for f in ("checkpoint.pt", "checkpoint.prev.pt"):
            (a / name / f).unlink(missing_ok=True)
    rerun = run_sweeper(["-m", *TINY, *GRID, "sweep_name=grid"], tmp_path / "fused")
    out = rerun.stdout + rerun.stderr
    assert "2 of 4 jobs finished earlier; launching the other 2" in out and "fused group of 2" in out
    again = results(a)
    for name in sorted(ra)[:2]:
        gap = max(abs(v - ra[name]["metrics"][k]) for k, v in again[name]["metrics"].items())
        assert gap <= 1e-3 and again[name]["attempt"] == 2, (gap, again[name]["attempt"])
