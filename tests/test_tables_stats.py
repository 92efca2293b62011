"""Golden tests of the ablation tables on real tiny runs (real offline wandb files): two
seeds, a requeued duplicate, a crashed run; the de-duplication, the failure marking,
mean ± std, Δ vs the baseline and the paired bootstrap interval (checked against an exact
enumeration of the bootstrap distribution)."""
import itertools
import json
import signal

import numpy as np
import pytest

from analysis.runs import per_image_frame, runs_frame
from analysis.stats import ablation_stats, bootstrap_ci
from analysis.tables import formatted_table, main as tables_main
from tests.conftest import TINY, run_sweeper
from tests.test_fault_tolerance import start_sweeper

SWEEP = "golden"
ARGS = [*TINY, f"sweep_name={SWEEP}", "hydra/launcher=basic"]


def job_dir(sweep, *overrides):
    """The folder of the job launched with all these overrides (names are shortened slugs)."""
    dirs = [sweep / j["name"] for j in json.loads((sweep / "jobs.json").read_text())["jobs"]
            if set(overrides) <= set(j["overrides"])]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    run_sweeper(["-m", *ARGS, "dropout.position=none,last", "seed=0,1"], out)
    sweep = out / "sweeps" / SWEEP
    # A requeued job: its results are gone, it runs again into the same wandb run id.
    requeued = job_dir(sweep, "dropout.position=last", "seed=1")
    (requeued / "results.json").unlink()
    run_sweeper(["-m", *ARGS, "dropout.position=last", "seed=1"], out)
    # A crashed job: killed as soon as its wandb run exists (before wandb wrote any record).
    proc = start_sweeper(["-m", *ARGS, "dropout.position=first", "seed=0"], out)
    import time
    deadline = time.monotonic() + 120
    while not list(sweep.glob("*/wandb/offline-run-*/run-*.wandb")) or len(list(
            sweep.glob("*/wandb/offline-run-*/run-*.wandb"))) < 6:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (job_dir(sweep, "dropout.position=first") / "results.json").exists(), "finished before the kill"
    results = {d.name: json.loads((d / "results.json").read_text()) for d in sweep.iterdir()
               if (d / "results.json").exists()}
    return sweep, requeued, results


def test_dedup_and_failure_marking(fixture_runs):
    sweep, requeued, _ = fixture_runs
    assert len(list(requeued.glob("wandb/offline-run-*"))) == 2  # the requeue left two run folders
    runs = runs_frame(sweep)
    assert len(runs) == 5 and runs["run_id"].is_unique
    assert sorted(runs["state"]) == ["finished"] * 4 + ["unfinished"]
    crashed = runs[runs["state"] != "finished"]
    assert crashed["swept.dropout.position"].tolist() == ["first"]


def test_mean_std_delta_and_interval_match_the_job_results(fixture_runs):
    sweep, _, results = fixture_runs
    runs = runs_frame(sweep)
    stats = ablation_stats(runs, per_image_frame(runs))
    by = {(r["config"]["dropout"]["position"], r["config"]["seed"]): r for r in results.values()}
    key = "test/builtin/noise/psnr"
    last = [by[("last", s)]["metrics"][key] for s in (0, 1)]
    none = [by[("none", s)]["metrics"][key] for s in (0, 1)]
    row = stats[(stats["dropout.position"] == "last") & (stats["degradation"] == "noise")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(np.mean(last), abs=1e-12)
    assert row["std"] == pytest.approx(np.std(last, ddof=1), abs=1e-12)
    assert row["delta"] == pytest.approx(np.mean(last) - np.mean(none), abs=1e-12)
    # Paired per (seed, image): one test image here, so two differences; the exact bootstrap
    # distribution of their mean puts 1/4 on each difference: the 95% interval is [min, max].
    d = []
    for s in (0, 1):
        img = {(p["image"], p["degradation"]): p["psnr"] for p in by[("last", s)]["per_image"]}
        ref = {(p["image"], p["degradation"]): p["psnr"] for p in by[("none", s)]["per_image"]}
        d += [img[k] - ref[k] for k in img if k[1] == "noise"]
    assert len(d) == 2
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((min(d), max(d)), abs=1e-12)
    base = stats[(stats["dropout.position"] == "none") & (stats["degradation"] == "noise")].iloc[0]
    assert bool(base["baseline"]) and np.isnan(base["delta"])
    first = stats[stats["dropout.position"] == "first"].iloc[0]
    assert first["status"] == "unfinished" and first["n"] == 0


def test_bootstrap_interval_matches_exact_enumeration():
    d = np.array([0.3, -0.1, 0.5, 0.2])
    means = np.array([np.mean(c) for c in itertools.product(d, repeat=len(d))])
    exact = np.quantile(means, [0.025, 0.975])
    lo, hi = bootstrap_ci(d, n_boot=200_000, seed=1)
    assert lo == pytest.approx(exact[0], abs=0.026) and hi == pytest.approx(exact[1], abs=0.026)
    assert lo <= np.mean(d) <= hi


def test_table_cells_best_marks_and_missing(fixture_runs):
    sweep, _, results = fixture_runs
    runs = runs_frame(sweep)
    stats = ablation_stats(runs, per_image_frame(runs))
    table = formatted_table(stats)
    assert list(table.index) == ["none", "last", "first"]
    assert (table.loc["first"] == "unfinished").all()
    for deg in ["clean", "noise"]:
        col = stats[stats["degradation"] == deg].dropna(subset=["mean"])
        best = col.loc[col["mean"].idxmax(), "dropout.position"]
        assert table.loc[best, ("builtin", deg)].startswith("**")
        other = "none" if best == "last" else "last"
        assert not table.loc[other, ("builtin", deg)].startswith("**")
    row = stats[(stats["dropout.position"] == "last") & (stats["degradation"] == "clean")].iloc[0]
    expected = f"{row['mean']:.2f} ± {row['std']:.2f}"
    cell = table.loc["last", ("builtin", "clean")]
    assert expected in cell and f"({row['delta']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}])" in cell


def test_tables_cli_writes_markdown_latex_and_csv(fixture_runs, capsys):
    sweep, _, _ = fixture_runs
    assert tables_main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "(4/5 runs finished" in out and "unfinished" in out
    for name in ("psnr.md", "psnr.tex", "psnr.csv", "psnr_stats.csv"):
        assert (sweep / "tables" / name).exists()
    assert (sweep / "tables" / "figures" / "bars.png").stat().st_size > 10_000
    assert (sweep / "tables" / "figures" / "gain_by_position.pdf").exists()
    tex = (sweep / "tables" / "psnr.tex").read_text()
    assert r"\textbf{" in tex and r"$\pm$" in tex
