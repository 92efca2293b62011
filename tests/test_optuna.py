"""The Optuna sweeper on real studies of smoke jobs: failures recorded and survived, a rerun
adds to the same study, pruning stops trials early, concurrent trials share one storage."""
import json
import math
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.sr_sweeper.optuna_sweeper import (SearchSpaceError, distribution, make_pruner, make_sampler,
                                                      objective_values, tell)
from tests.conftest import TINY, run_sweeper

OPTUNA = ["hydra/sweeper=optuna", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=3"]


def load(out):
    sweep = next((out / "sweeps").iterdir())
    return sweep, optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_a_study_survives_a_nan_and_a_raising_trial_and_a_rerun_adds_trials(tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    enqueue = f"hydra.sweeper.enqueue=[['dropout.p=0.5','train.lr=1e30'],['dropout.p=0.3','data.train={corrupt}']]"
    args = ["-m", *OPTUNA, *TINY, "dropout.p=interval(0.05,0.95)", "hydra.sweeper.n_trials=8", enqueue]
    proc = run_sweeper(args, tmp_path / "out")
    sweep, study = load(tmp_path / "out")
    states = [t.state for t in study.trials]
    assert len(states) == 8
    assert states.count(optuna.trial.TrialState.FAIL) == 2 and states.count(optuna.trial.TrialState.COMPLETE) == 6
    reasons = " | ".join(t.user_attrs.get("fail_reason", "") for t in study.trials)
    assert "loss is nan" in reasons and "broken.png" in reasons
    assert all(math.isfinite(t.value) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params:" in results and "fail: 2" in results and "param_importances" in results
    assert "trial 0 failed" in proc.stderr + proc.stdout

    run_sweeper([*args[:-2], "hydra.sweeper.n_trials=2"], tmp_path / "out")
    _, study = load(tmp_path / "out")
    assert len(study.trials) == 10
    assert (sweep / "trials.csv").read_text().count("\n") == 11


@pytest.mark.slow  # make test-slow: the default suite stays under ~15 min (CI: 2 cores)
def test_pruning_stops_hopeless_trials_early(tmp_path):
    args = ["-m", *OPTUNA, *TINY, "train.iterations=40", "train.val_every=4", "train.log_every=20",
            "train.ckpt_every=20", "dropout.p=interval(0.05,0.95)", "train.lr=tag(log,interval(1e-4,3e-2))",
            "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=1",
            "hydra.sweeper.objectives=[test/*/clean/psnr]"]
    run_sweeper(args, tmp_path)
    sweep, study = load(tmp_path)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [t.state for t in study.trials]
    for t in pruned:
        last_step = max(t.intermediate_values)
        assert last_step < 40  # stopped before the end
    statuses = [json.loads(p.read_text()) for p in sweep.glob("*/status.json")]
    assert any(s["state"] == "pruned" and s["iteration"] < 40 for s in statuses)
    assert not list(sweep.glob("*/results.json")) or len(list(sweep.glob("*/results.json"))) < 6


@pytest.mark.slow  # make test-slow: the default suite stays under ~15 min (CI: 2 cores)
def test_two_trials_run_concurrently_under_local_parallel_on_one_storage(tmp_path):
    args = ["-m", *OPTUNA, *TINY, "train.iterations=24", "train.val_every=4", "dropout.p=interval(0.05,0.95)",
            "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "launcher=local_parallel",
            "hydra.launcher.max_parallel=2", "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=10"]
    run_sweeper(args, tmp_path)
    sweep, study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    for t in study.trials:  # every job reported its validation PSNR through the shared storage
        assert sorted(t.intermediate_values) == [4, 8, 12, 16, 20, 24]
    assert study.metric_names == ["test/*/blur+noise+jpeg/psnr"]  # optuna-dashboard names the value
    for t in study.trials:  # each trial leads to its job folder and its wandb run
        results = json.loads((Path(t.user_attrs["job_dir"]) / "results.json").read_text())
        assert Path(t.user_attrs["job_dir"]).parent == sweep.absolute()
        assert t.user_attrs["wandb_run_id"] == results["run_id"]
        assert list(Path(t.user_attrs["wandb_dir"]).glob(f"run-{results['run_id']}.wandb"))
    spans = [json.loads(p.read_text()) for p in sweep.glob("*/status.json")]
    spans = sorted((s["attempt_started"], s["updated"]) for s in spans)
    assert spans[1][0] < spans[0][1], "the first two trials did not overlap"


def test_search_space_syntax_and_objectives():
    parse = OverridesParser.create().parse_overrides
    a, b, c, d, e = parse(["x=interval(0.1,0.9)", "y=tag(log,interval(1e-4,1e-2))", "z=choice(a,b)",
                           "w=range(1,4)", "v=3"])
    assert distribution(a) == optuna.distributions.FloatDistribution(0.1, 0.9)
    assert distribution(b) == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert distribution(c) == optuna.distributions.CategoricalDistribution(["a", "b"])
    assert distribution(d) == optuna.distributions.IntDistribution(1, 3)
    assert distribution(e) is None
    metrics = {"test/Set5/noise/psnr": 20.0, "test/Set14/noise/psnr": 22.0, "test/Set5/clean/psnr": 30.0}
    assert objective_values(metrics, ["test/*/noise/psnr", "test/Set5/clean/psnr"]) == [21.0, 30.0]
    with pytest.raises(KeyError, match="matches none"):
        objective_values(metrics, ["test/*/jpeg/psnr"])
    with pytest.raises(SearchSpaceError, match="allowed: tpe, gp, random, grid, cmaes"):
        make_sampler("bayes", 0, {})
    with pytest.raises(SearchSpaceError, match="needs choice"):
        make_sampler("grid", 0, {"x": distribution(a)})
    with pytest.raises(SearchSpaceError, match="allowed: none, median"):
        make_pruner("early", 1, 0)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random", "cmaes", "grid"])
def test_every_sampler_runs_a_study(sampler):
    space = {"x": optuna.distributions.FloatDistribution(-2, 2)} if sampler != "grid" else \
        {"x": optuna.distributions.CategoricalDistribution([-1.0, 0.0, 1.0])}
    study = optuna.create_study(sampler=make_sampler(sampler, 0, space), direction="minimize")
    over = False
    while not over and len(study.trials) < 6:
        trial = study.ask(space)
        over = tell(study, trial, (trial.params["x"] - 0.5) ** 2)
    assert len(study.trials) == (6 if sampler != "grid" else 3)
    assert over == (sampler == "grid")  # the grid sampler ends the search after its 3 points
    assert study.best_value <= 0.25


def test_pip_check_is_clean():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_objective_study_on_journal_storage(tmp_path):
    args = ["-m", *OPTUNA, *TINY, "dropout.p=interval(0.05,0.95)", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.storage=journal", "hydra.sweeper.objectives=[test/*/clean/psnr,test/*/noise/psnr]",
            "hydra.sweeper.directions=[maximize,maximize]"]
    run_sweeper(args, tmp_path)
    sweep = next((tmp_path / "sweeps").iterdir())
    from sweeper.optuna_report import open_storage
    study = optuna.load_study(study_name=sweep.name, storage=open_storage(f"journal:{sweep / 'optuna.journal'}"))
    assert len(study.trials) == 3 and all(len(t.values) == 2 for t in study.trials)
    assert "pareto_front:" in (sweep / "optimization_results.yaml").read_text()


def test_bad_search_settings_fail_before_any_trial(tmp_path):
    proc = run_sweeper(["-m", *OPTUNA, *TINY, "dropout.p=interval(0.1,0.9)", "hydra.sweeper.sampler=bayes"],
                       tmp_path, check=False)
    assert proc.returncode == 2 and "hydra.sweeper.sampler='bayes' is unknown; allowed: tpe, gp" in proc.stderr
    proc = run_sweeper(["-m", *OPTUNA, *TINY, "dropout.p=0.5"], tmp_path, check=False)
    assert proc.returncode == 2 and "no search space" in proc.stderr
    assert not list(tmp_path.glob("sweeps/*/*/results.json"))
