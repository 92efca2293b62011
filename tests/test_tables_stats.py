"""Golden tests of the ablation tables on real tiny runs (real offline wandb files): two
seeds, a requeued duplicate, a crashed run; the de-duplication, the failure marking,
mean ± std, Δ vs the baseline, the paired interval, test and marks (checked by hand; the
statistics themselves: tests/test_stats.py)."""
import itertools
import json
import signal

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.runs import per_image_frame, runs_frame
from analysis.stats import ablation_stats
from analysis.tables import format_cell, formatted_table, main as tables_main, to_latex
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
    row = stats[(stats["dropout.position"] == "last") & (stats["test_degradation"] == "noise")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(np.mean(last), abs=1e-12)
    assert row["std"] == pytest.approx(np.std(last, ddof=1), abs=1e-12)
    assert row["delta"] == pytest.approx(np.mean(last) - np.mean(none), abs=1e-12)
    # Paired per (seed, image): one test image here, so two differences, one per seed: the
    # interval is the t interval over the seeds (1 df), the test the exact Wilcoxon of the two.
    d = []
    for s in (0, 1):
        img = {(p["image"], p["degradation"]): p["psnr"] for p in by[("last", s)]["per_image"]}
        ref = {(p["image"], p["degradation"]): p["psnr"] for p in by[("none", s)]["per_image"]}
        d += [img[k] - ref[k] for k in img if k[1] == "noise"]
    assert len(d) == 2
    half = scipy_stats.t.ppf(0.975, 1) * np.std(d, ddof=1) / np.sqrt(2)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((np.mean(d) - half, np.mean(d) + half), abs=1e-12)
    assert (row["n_seeds"], row["n_images"], row["df"]) == (2, 1, 1)
    assert row["p"] == pytest.approx(scipy_stats.wilcoxon(d).pvalue) and row["p_improve"] == np.mean(np.array(d) > 0)
    base = stats[(stats["dropout.position"] == "none") & (stats["test_degradation"] == "noise")].iloc[0]
    assert bool(base["baseline"]) and np.isnan(base["delta"])
    first = stats[stats["dropout.position"] == "first"].iloc[0]
    assert first["status"] == "unfinished" and first["n"] == 0


def test_table_cells_best_marks_and_missing(fixture_runs):
    sweep, _, results = fixture_runs
    runs = runs_frame(sweep)
    stats = ablation_stats(runs, per_image_frame(runs))
    table = formatted_table(stats)
    assert list(table.index) == ["none", "last", "first"]
    assert (table.loc["first"] == "unfinished").all()
    for deg in ["clean", "noise"]:
        col = stats[stats["test_degradation"] == deg].dropna(subset=["mean"])
        best = col.loc[col["mean"].idxmax(), "dropout.position"]
        assert table.loc[best, ("builtin", deg)].startswith("**")
        other = "none" if best == "last" else "last"
        assert not table.loc[other, ("builtin", deg)].startswith("**")
    row = stats[(stats["dropout.position"] == "last") & (stats["test_degradation"] == "clean")].iloc[0]
    expected = f"{row['mean']:.2f} ± {row['std']:.2f}"
    cell = table.loc["last", ("builtin", "clean")]
    assert expected in cell and f"({row['delta']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}])" in cell
    marks = ("†" if row["p_holm"] < 0.05 else "") + ("‡" if row["seed_decides"] else "")
    assert cell.rsplit(")", 1)[1] == marks


def test_cell_marks_and_their_latex():
    row = {"mean": 25.0, "std": 0.1, "best": False, "status": "finished", "delta": 0.2, "ci_low": 0.05,
           "ci_high": 0.35, "p_holm": 0.01, "seed_decides": True}
    assert format_cell(row) == "25.00 ± 0.10 (+0.20 [+0.05, +0.35])†‡"
    assert format_cell({**row, "p_holm": 0.05, "seed_decides": False}) == "25.00 ± 0.10 (+0.20 [+0.05, +0.35])"
    assert format_cell({**row, "p_holm": np.nan, "seed_decides": np.nan}).endswith(")")
    import pandas as pd
    table = pd.DataFrame([[format_cell(row)]], index=pd.Index(["last"], name="position"),
                         columns=pd.MultiIndex.from_tuples([("Set5", "clean")]))
    assert r"(+0.20 [+0.05, +0.35])$^\dagger$$^\ddagger$" in to_latex(table, "caption")


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
    import pandas as pd
    written = pd.read_csv(sweep / "tables" / "psnr_stats.csv")
    tests = int(written["p"].notna().sum())
    assert tests > 0 and f"over the table's {tests} comparisons" in (sweep / "tables" / "psnr.md").read_text()
    columns = set(written.columns)
    assert {"ci_low", "ci_high", "df", "method", "p", "p_holm", "p_improve", "var_seed", "var_image", "var_resid",
            "seed_decides"} <= columns


class FakeApiRun:
    """A stand-in for wandb.apis.public.Run with the attributes api_runs_frame reads (no
    server is reachable here); built from what the job logged."""

    def __init__(self, offline, job_dir):
        # a server keeps the group and tags of a run killed early (sent at init); the
        # offline file of that run has none: take them from the job folder as runs_frame does
        from analysis.runs import _job_overrides
        self.id, self.name, self.group = offline.run_id, offline.name, offline.group or SWEEP
        self.tags = offline.tags or _job_overrides(job_dir)
        self.state = {"finished": "finished", "failed": "failed"}.get(offline.state, "crashed")
        self.summary = {**offline.summary, "_runtime": offline.runtime}
        self.config = offline.config
        self._files = sorted(offline.path.parent.glob("files/media/table/test/per_image_*.table.json"))

    def files(self):
        class File:
            def __init__(self, path):
                self.name, self._path = f"media/table/test/{path.name}", path

            def download(self, root, replace=True):
                import shutil
                from pathlib import Path
                target = Path(root) / self.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(self._path, target)
                return open(target)
        return [File(p) for p in self._files]


def test_server_runs_give_the_same_frame_and_table(fixture_runs):
    from analysis.wandb_api import api_filters, api_runs_frame, per_image_frame_api
    from analysis.wandb_offline import read_runs
    sweep, _, _ = fixture_runs
    seen = {}

    class FakeApi:
        def runs(self, path, filters=None):
            seen.update(path=path, filters=filters)
            return [FakeApiRun(r, r.path.parents[2]) for r in read_runs(sweep, history=False)]

    online = api_runs_frame("me/proj", group=SWEEP, api=FakeApi())
    assert seen == {"path": "me/proj", "filters": {"group": SWEEP}}
    assert api_filters(tags=["seed=0"], state="finished") == {"tags": {"$in": ["seed=0"]}, "state": "finished"}
    offline = runs_frame(sweep)
    offline = offline[offline["sweep"] == SWEEP]
    cols = [c for c in offline.columns if c.startswith(("swept.", "test/")) or c in ("run_id", "state")]
    a = offline[cols].sort_values("run_id").reset_index(drop=True)
    b = online[cols].sort_values("run_id").reset_index(drop=True)
    import pandas as pd
    assert (a["state"] == "finished").tolist() == (b["state"] == "finished").tolist()
    assert online.set_index("run_id")["config"].to_dict() == offline.set_index("run_id")["config"].to_dict()
    pd.testing.assert_frame_equal(a[a["state"] == "finished"], b[b["state"] == "finished"], check_dtype=False)
    s_off = ablation_stats(offline, per_image_frame(offline))
    s_on = ablation_stats(online, per_image_frame_api(online))
    pd.testing.assert_frame_equal(s_off.drop(columns="status"), s_on.drop(columns="status"))


def test_runs_frame_holds_the_resolved_config(fixture_runs):
    sweep, _, results = fixture_runs
    runs = runs_frame(sweep).set_index("run_id")
    for r in results.values():
        assert runs.loc[r["run_id"], "config"]["train"]["iterations"] == r["config"]["train"]["iterations"] == 8
        assert runs.loc[r["run_id"], "config"]["swept"]["dropout.position"] == r["config"]["dropout"]["position"]


def test_experiment_presets_compose_their_grids():
    """Each preset, composed as the CLI does, yields its grid (with an extra CLI axis)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sweeper.compose import compose
    sizes = {"fig1": 4, "position": 7, "inblock": 4, "probability": 10, "kind": 4, "bicubic_vs_multi": 4,
             "regularizers": 5, "backbones": 18, "droppath": 8}
    for name, size in sizes.items():
        cfg = compose([f"+experiment={name}"], return_hydra_config=True)
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + ["seed=0,1"]
        parsed = OverridesParser.create().parse_overrides(params)
        n = 1
        for o in parsed:
            n *= len(list(o.sweep_iterator())) if o.is_sweep_override() else 1
        assert n == 2 * size, name


def test_a_sweep_over_the_training_degradation_keeps_its_rows(tmp_path):
    """`degradation` is both a config key (the training degradation, a row) and a test axis
    (a column): sweeping it, as experiment=bicubic_vs_multi does, must give one row per
    training degradation and every test column, with Δ against each one's own baseline."""
    import pandas as pd
    from analysis.tables import write_tables
    rows = []
    for i, (train_deg, pos) in enumerate(itertools.product(["realesrgan", "bicubic"], ["none", "last"])):
        psnr = {f"test/Set5/{d}/psnr": 20.0 + i + 0.1 * j for j, d in enumerate(["clean", "noise", "jpeg"])}
        rows.append({"run_id": f"r{i}", "run_dir": str(tmp_path / f"r{i}"), "state": "finished",
                     "swept.degradation": train_deg, "swept.dropout.position": pos, **psnr})
    runs = pd.DataFrame(rows)
    stats = ablation_stats(runs)
    assert set(stats["degradation"]) == {"realesrgan", "bicubic"}
    assert set(stats["test_degradation"]) == {"clean", "noise", "jpeg"}
    row = stats[(stats["degradation"] == "bicubic") & (stats["dropout.position"] == "last")
                & (stats["test_degradation"] == "jpeg")].iloc[0]
    assert row["mean"] == pytest.approx(23.2) and row["delta"] == pytest.approx(1.0)
    table = formatted_table(stats)
    assert list(table.index) == [("realesrgan", "none"), ("realesrgan", "last"), ("bicubic", "none"),
                                 ("bicubic", "last")]
    assert table.loc[("realesrgan", "none"), ("Set5", "noise")] == "20.10"
    md = write_tables(runs, tmp_path / "tables", "train degradation", per_image=pd.DataFrame(
        columns=["run_id", "set", "image", "degradation", "psnr"]))
    lines = [ln for ln in md.splitlines() if ln.startswith("| realesrgan") or ln.startswith("| bicubic")]
    assert len(lines) == 4 and "20.20" in lines[0]
    assert (tmp_path / "tables" / "figures" / "bars.png").exists()


def test_a_chosen_baseline_compares_along_its_key_with_the_other_settings_alike():
    """`analysis.tables --baseline degradation=bicubic`: Δ of each setting against the run of that
    value with the same other swept keys (here dropout), not against no regulariser."""
    import pandas as pd
    import pytest

    from analysis.stats import ablation_stats

    rows = []
    for deg, base in (("bicubic", 27.0), ("realesrgan", 25.0)):
        for pos, bump in (("none", 0.0), ("last", 0.3)):
            for seed in (0, 1):
                rows.append({"run_id": f"{deg}{pos}{seed}", "state": "finished", "swept.degradation": deg,
                             "swept.dropout.position": pos, "swept.seed": str(seed),
                             "test/builtin/clean/psnr": base + bump + 0.01 * seed})
    runs = pd.DataFrame(rows)
    stats = ablation_stats(runs, None, "psnr", baseline="degradation=bicubic").set_index(
        ["degradation", "dropout.position"])
    assert stats.loc[("realesrgan", "last"), "delta"] == pytest.approx(-2.0)
    assert stats.loc[("realesrgan", "none"), "delta"] == pytest.approx(-2.0)
    assert stats.loc[("bicubic", "last"), "baseline"] and pd.isna(stats.loc[("bicubic", "last")].get("delta"))
    default = ablation_stats(runs, None, "psnr").set_index(["degradation", "dropout.position"])
    assert default.loc[("realesrgan", "last"), "delta"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no run has degradation=div2k"):
        ablation_stats(runs, None, "psnr", baseline="degradation=div2k")
    with pytest.raises(ValueError, match="must be key=value with a swept key"):
        ablation_stats(runs, None, "psnr", baseline="scale=4")


def test_the_summary_sentence_says_only_what_the_intervals_say():
    import pandas as pd

    from analysis.summary import sentences

    def row(deg, delta, lo, hi, base=False):
        return {"degradation": "bicubic" if base else "realesrgan", "test_set": "builtin", "test_degradation": deg,
                "n": 4, "mean": 25.0, "baseline": base, "status": "finished", "delta": None if base else delta,
                "ci_low": lo, "ci_high": hi, "n_seeds": 4, "n_images": 4}
    stats = pd.DataFrame([row("clean", None, None, None, base=True), row("clean", -1.2, -1.6, -0.8),
                          row("noise", 0.6, 0.2, 1.0), row("jpeg", -0.1, -0.5, 0.3)])
    (text,) = sentences(stats, "degradation=bicubic", iterations=400)
    assert text.startswith("In PSNR against degradation=bicubic, degradation=realesrgan is better on noise "
                           "(+0.60 dB [+0.20, +1.00]) and worse on clean (-1.20 dB [-1.60, -0.80])")
    assert "(1 other columns undecided" in text and "4 builtin images with 4 seeds of 400 iterations" in text
    assert "jpeg" not in text
