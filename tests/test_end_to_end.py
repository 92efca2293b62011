"""The mission path for real: a Hydra multirun trains, evaluates and logs to offline wandb;
the aggregator reads those wandb files back into the table; a rerun trains nothing."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from analysis.runs import runs_frame
from analysis.tables import ablation_table
from analysis.wandb_offline import read_runs
from srcore.evaluation import TEST_DEGRADATIONS
from tests.conftest import ROOT, TINY, run_sweeper

GRID = ["dropout.position=none,last", "dropout.p=0.1,0.9"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc = run_sweeper(["-m", *TINY, *GRID], out)
    sweep_dir = next((out / "sweeps").iterdir())
    return out, sweep_dir, proc


def test_grid_runs_every_job_as_typed(sweep):
    _, sweep_dir, proc = sweep
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert len(jobs) == 4
    assert "dropout.p=0.9,dropout.position=last," in ",".join(jobs) + ","
    for job in jobs:
        assert (sweep_dir / job / "results.json").exists() and (sweep_dir / job / "model.pt").exists()
        assert (sweep_dir / job / ".hydra" / "config.yaml").exists()


def test_wandb_runs_carry_group_name_tags_config_and_metrics(sweep):
    _, sweep_dir, _ = sweep
    runs = read_runs(sweep_dir)
    assert len(runs) == 4
    assert {r.group for r in runs} == {sweep_dir.name}
    for run in runs:
        result = json.loads((sweep_dir / run.name / "results.json").read_text())
        assert run.state == "finished" and run.job_type == "train" and run.run_id == result["run_id"]
        assert set(result["tags"]) <= set(run.tags)
        assert any(t.startswith("dropout.position=") for t in run.tags)
        assert run.config["dropout"]["position"] in ("none", "last")
        assert run.config["backbone"]["num_feat"] == 8
        for key, value in result["metrics"].items():
            assert run.summary[key] == pytest.approx(value, abs=1e-12)
        steps = [h for h in run.history if "train/loss" in h]
        assert [h["_step"] for h in steps] == [4, 8]
        assert any("val/builtin/clean/psnr" in h for h in run.history)


def test_table_from_wandb_logs_matches_job_results(sweep):
    _, sweep_dir, _ = sweep
    table = ablation_table(runs_frame(sweep_dir))
    assert table.shape == (4, 8)
    assert list(table.index.names) == ["dropout.p", "dropout.position"]
    assert list(table.columns.get_level_values(1)) == list(TEST_DEGRADATIONS)
    assert table.notna().all().all()
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    result = next(r for r in results if r["config"]["dropout"] == {"position": "last", "p": 0.9, "kind": "channel"})
    for deg in TEST_DEGRADATIONS:
        assert table.loc[("0.9", "last"), ("builtin", deg)] == pytest.approx(result["metrics"][f"test/builtin/{deg}/psnr"])


def test_make_tables_cli_prints_and_writes_all_formats(sweep):
    _, sweep_dir, _ = sweep
    proc = subprocess.run([sys.executable, "-m", "analysis.tables", str(sweep_dir)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert "blur+noise+jpeg" in proc.stdout and "4/4 runs finished" in proc.stdout
    csv = pd.read_csv(sweep_dir / "tables" / "psnr.csv", header=[0, 1], index_col=[0, 1])
    assert csv.shape == (4, 8)
    tex = (sweep_dir / "tables" / "psnr.tex").read_text()
    assert r"\toprule" in tex and r"blur+noise+jpeg" in tex and tex.count(r"\\") >= 6


def test_rerunning_the_sweep_trains_nothing(sweep):
    out, sweep_dir, _ = sweep
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")}
    proc = run_sweeper(["-m", *TINY, *GRID], out)
    log = proc.stdout + proc.stderr
    assert "4 of 4 jobs finished earlier; launching the other 0" in log
    assert "Launching" not in log  # not even a job process is started
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")} == before
    assert len(list(sweep_dir.glob("*/wandb/offline-run-*"))) == 4  # no new wandb runs either
