"""SEAL's Set14-SE suite: its AR / RPR metrics reproduce the published table, its scoring
convention (Y, crop 0) matches an independent computation, the batched evaluator gives the
per-image numbers, the degradation strings decode, and the command writes its results.
Everything that reads ../shared/data/SEAL skips cleanly without it."""
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis import seal as seal_cli
from analysis.seal_cases import case_frame, gain_figure, parse_degradation
from srcore.evaluation import SUITES
from srcore.evaluation.scoring import EvaluationStopped, super_resolve
from srcore.evaluation.seal import (HR_DIR, LINES_CSV, LR_DIR, NUM_CASES, SealSuite, case_means, check_seal_root,
                                    evaluate_cases, evaluate_seal, published_summaries, score_image)
from srcore.evaluation.seal_scores import PAPER_NAMES, Lines, seal_stats, seal_summary
from srcore.imageio import write_image
from srcore.models import build_model, save_weights

# SEAL's README (XPixelGroup/SEAL@64b81a6), "SysTest Set14": PSNR-S, AR, RPR_I, RPR_A, RPR_U.
PUBLISHED = {
    "SRResNet": (20.95, 0.00, 0.02, 0.00, 0.03),
    "DASR": (21.08, 0.00, 0.01, 0.00, 0.02),
    "BSRNet": (22.77, 0.59, 0.42, 0.72, 0.27),
    "RealESRNet": (22.67, 0.27, 0.28, 0.63, 0.28),
    "RDSR": (22.44, 0.08, 0.23, 0.63, 0.21),
    "RealESRNet-GD": (22.82, 0.43, 0.37, 0.74, 0.33),
    "SwinIR": (22.61, 0.41, 0.24, 0.58, 0.29),
}
# Case 0 of degradation_center_100.txt, and case 1 with dp1 / dp4 / dp5 changed to take the
# anisotropic-blur, correlated-noise and no-JPEG branches.
REALESRGAN_CASE = (
    "FisrtOrder_Blur_1_1_17_5_1.46_0.21_0.92_1.78_-1.3_2.76_Resize_1_1.16_bilinear_Noise_1_0_1_3.43_0.96_JPEG_1_50.46_"
    "SecondOrder_Blur_1_1_15_2_1.28_0.65_2.93_1.92_-0.19_2.77_Resize_1_0.6_bicubic_Noise_1_0_1_10.6_3.15_"
    "FinalOrder_Final_1_0_0_0_Resize_bilinear_JPEG_64.5_.png")
BSRGAN_CASE = (
    "shuffleorder_[1, 0, 2, 4, 3, 6, 5]|dppre_rnum1_0.1950097962261581_rnum2_0.5618335821941504_interptype_2|"
    "dp0_rnum_0.8760505434779766_ksize_7_theta_2.10432531732895_l1_0_l2_0_l3_1.0345662105098155|"
    "dp1_rnum_0.1_ksize_21_theta_2.111806099334665_l1_4_l2_1_l3_1.8614006353945842|"
    "dp2_rnum_0.81675425545463_sf1_0_interptype_2_blursigma_0.8055972814165084        |dp3_interptype_1|"
    "dp4_rnum_0.5_noiselevel_5_D_0.25_0.0_0.0_0.0_0.25_0.0_0.0_0.0_0.25_U_0.3_0.5_0.5_0.6_0.1_0.4_0.7_0.7_0.3|"
    "dp5_rnum_0.95_jpegfactor_50|dp7_jpegfactor_91")


@pytest.fixture
def seal_root(shared_data):
    root = shared_data / "SEAL"
    if not root.is_dir():
        pytest.skip("../shared/data/SEAL is absent")
    return root


def test_published_table_reproduced(seal_root):
    """With the line filter, model.csv gives SEAL's published Set14-SE table to two decimals."""
    got = {PAPER_NAMES[name]: s for name, s in published_summaries(seal_root).items()}
    assert set(got) == set(PUBLISHED)
    for name, expected in PUBLISHED.items():
        values = tuple(round(got[name][f"psnr_y/{k}"], 2) for k in ("S", "AR", "RPR_I", "RPR_A", "RPR_U"))
        assert values == expected, name
        assert got[name]["psnr_y/cases"] == 93 and got[name]["ssim_y/cases"] == 67


@pytest.mark.parametrize("metric, csv_name", [("psnr_y", "psnr"), ("ssim_y", "ssim")])
def test_authors_csv_is_the_unfiltered_computation(seal_root, metric, csv_name):
    """SEAL's own AR_RPR_on_*.csv: every case kept (their filter compared 'psnr' with 'PSNR')."""
    authors = pd.read_csv(seal_root / "metrics" / f"AR_RPR_on_{csv_name}.csv", index_col=1).drop(columns="Unnamed: 0")
    ours = published_summaries(seal_root, line_filter=False)
    for model in authors.columns:
        s = ours[model]
        assert s[f"{metric}/cases"] == NUM_CASES
        for stat, row in (("AR", "AR"), ("RPR_I", "IQR"), ("RPR_A", "RPRA"), ("RPR_U", "RPRU")):
            assert round(s[f"{metric}/{stat}"], 2) == pytest.approx(authors.loc[row, model]), (model, stat)
    rdsr = published_summaries(seal_root)["Real-RRDB_withdropout"]
    assert round(ours["Real-RRDB_withdropout"]["psnr_y/AR"], 2) == 0.09 != round(rdsr["psnr_y/AR"], 2)


def test_seal_stats_definitions():
    lines = Lines(np.array([20.0, 20.0, 20.0, 20.0, 30.0]), np.array([21.0, 22.0, 21.0, 21.0, 30.05]))
    scores = [21.0, 20.0, 19.0, 20.5, 10.0]  # the last case's lines are 0.05 dB apart: dropped
    s = seal_stats(scores, lines, min_gap=0.1)
    rpr = 1 / (1 + np.exp(-np.array([1.0, 0.0, -1.0, 0.5])))
    assert s["cases"] == 4 and s["S"] == pytest.approx(np.mean(scores))
    assert s["AR"] == 0.75
    assert s["RPR_A"] == pytest.approx(np.mean(rpr[[0, 1, 3]])) and s["RPR_U"] == pytest.approx(rpr[2])
    assert s["RPR_I"] == pytest.approx(np.quantile(rpr, 0.75) - np.quantile(rpr, 0.25))
    assert seal_stats(scores, lines, min_gap=None)["cases"] == 5
    none_accepted = seal_stats([0.0] * 5, lines, min_gap=0.1)
    assert none_accepted["AR"] == 0.0 and none_accepted["RPR_A"] == 0.0  # SEAL reports 0 for an empty group
    summary = seal_summary({"psnr_y": scores}, {"psnr_y": lines})
    assert summary["psnr_y/AR"] == 0.75 and set(summary) == {f"psnr_y/{k}" for k in s}
    with pytest.raises(ValueError, match="one score per case"):
        seal_stats(scores[:3], lines, 0.1)


def test_check_seal_root_names_what_is_missing(tmp_path):
    root = tmp_path / "SEAL"
    with pytest.raises(FileNotFoundError, match="SEAL folder .*SEAL' does not exist"):
        check_seal_root(root)
    (root / HR_DIR).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"has no {LR_DIR}/"):
        check_seal_root(root)
    (root / LR_DIR).mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        check_seal_root(root)
    write_image(root / HR_DIR / "a.png", np.zeros((8, 8, 3), np.uint8))
    for i in range(NUM_CASES):
        if i != 57:
            write_image(root / LR_DIR / f"deg_{i}" / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="deg_57/a.png' is missing"):
        check_seal_root(root)
    write_image(root / LR_DIR / "deg_57" / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="line.csv"):
        check_seal_root(root)
    (root / LINES_CSV).parent.mkdir()
    (root / LINES_CSV).write_text("")
    assert check_seal_root(root) == ["a.png"]
    assert SUITES["seal"] is SealSuite
    with pytest.raises(ValueError, match="cases \\[100\\]"):
        SealSuite(root, cases=[100])


def test_psnr_y_crop0_matches_independent_computation(seal_root):
    """A SEAL LR image upscaled with Pillow's bicubic, scored as SEAL scores (Y, crop 0), and by
    scikit-image on its own BT.601 Y."""
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    case = next(c for c in SealSuite(seal_root, cases=[57]) if c.image == "face")
    h, w = case.hr.shape[:2]
    sr = np.asarray(Image.fromarray(case.lr).resize((w, h), Image.Resampling.BICUBIC))
    y_sr, y_hr = rgb2ycbcr(sr)[..., 0], rgb2ycbcr(case.hr)[..., 0]
    got = score_image(sr, case.hr)
    assert got["psnr_y"] == pytest.approx(peak_signal_noise_ratio(y_hr, y_sr, data_range=255), abs=1e-9)
    assert got["ssim_y"] == pytest.approx(structural_similarity(
        y_hr, y_sr, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False), abs=1e-9)
    assert 15 < got["psnr_y"] < 40


def test_batched_evaluation_equals_one_image_at_a_time(seal_root):
    torch.manual_seed(0)
    model = build_model("srresnet", upscale=4, num_feat=8, num_block=1)
    # bridge and lenna share their LR size: one batch of four across the two cases
    cases = [c for c in SealSuite(seal_root, cases=[0, 57]) if c.image in ("bridge", "face", "lenna")]
    batched = evaluate_cases(model, cases, batch_size=5, workers=1)
    single = [{"set": c.set, "image": c.image, "degradation": c.degradation,
               **score_image(super_resolve(model, c.lr, torch.device("cpu")), c.hr)} for c in cases]
    assert batched == single
    assert [(r["degradation"], r["image"]) for r in batched] == [(d, i) for d in ("deg_0", "deg_57")
                                                                  for i in ("bridge", "face", "lenna")]
    assert evaluate_cases(model, cases[:2], batch_size=1, workers=0) == single[:2]


def test_evaluate_seal_on_some_cases(seal_root):
    torch.manual_seed(0)
    model = build_model("srresnet", upscale=4, num_feat=8, num_block=1)
    rows, summary = evaluate_seal(model, seal_root, cases=[3, 1])
    cases, means = case_means(rows)
    assert cases == [1, 3] and len(rows) == 28
    assert means["psnr_y"][0] == pytest.approx(np.mean([r["psnr_y"] for r in rows if r["degradation"] == "deg_1"]))
    assert summary["psnr_y/S"] == pytest.approx(means["psnr_y"].mean())
    assert {k.split("/")[1] for k in summary} == {"S", "AR", "RPR_I", "RPR_A", "RPR_U", "cases"}


def test_parse_both_degradation_families():
    r = parse_degradation(REALESRGAN_CASE)
    assert r["family"] == "realesrgan" and r["blur1_kernel"] == "sinc" and r["blur1_size"] == 17
    assert r["blur1_omega_c"] == 2.76 and math.isnan(r["blur1_sigma_x"])
    assert (r["resize1_scale"], r["resize1_mode"]) == (1.16, "bilinear")
    assert (r["noise1"], r["noise1_sigma"]) == ("gaussian", 3.43)
    assert (r["jpeg1_quality"], r["blur2_kernel"], r["resize2_scale"], r["noise2_sigma"]) == (50.46, "sinc", 0.6, 10.6)
    assert (r["final_order"], r["final_resize_mode"], r["final_jpeg_quality"]) == ("jpeg > resize", "bilinear", 64.5)
    assert (r["max_blur_sigma"], r["max_noise_sigma"], r["min_jpeg_quality"], r["sinc"]) == (0.0, 10.6, 50.46, True)

    b = parse_degradation(BSRGAN_CASE)
    assert b["family"] == "bsrgan" and b["down1_mode"] == "matlab_bicubic"
    assert (b["blur1_kernel"], b["blur1_size"], b["blur1_sigma_x"]) == ("iso", 7, pytest.approx(1.0345662105))
    assert (b["blur2_kernel"], b["blur2_sigma_x"], b["blur2_sigma_y"]) == ("aniso", 2.0, 1.0)
    assert (b["down2"], b["down2_scale"], b["down2_blur_sigma"]) == ("blur+nearest", 0.5, pytest.approx(0.8055972815))
    assert (b["noise1"], b["noise1_sigma"]) == ("correlated", pytest.approx(12.5))
    assert math.isnan(b["jpeg1_quality"]) and b["final_jpeg_quality"] == 91 and b["min_jpeg_quality"] == 91
    assert b["order"] == "down1 > blur2 > blur1 > down2 > noise1 > down3 > final_jpeg"
    assert b["max_blur_sigma"] == 2.0


def test_case_frame_and_gain_figure(seal_root, tmp_path):
    cases = case_frame(seal_root)
    assert len(cases) == NUM_CASES and cases["family"].value_counts().to_dict() == {"realesrgan": 54, "bsrgan": 46}
    assert cases.loc[0, "noise1_sigma"] == 3.43 and cases.loc[59, "order"].startswith("jpeg1 > down2")
    assert (cases["min_jpeg_quality"] > 0).all() and (cases["max_noise_sigma"] > 0).all()
    gain = pd.Series(np.linspace(-0.2, 0.3, NUM_CASES), index=cases.index)
    out = gain_figure(cases, gain, tmp_path / "gain.png", "test")
    assert out.stat().st_size > 10_000


def _fake_result(seal_root: Path, target: Path, offset: float) -> dict:
    """A seal.json as the command writes it, from SEAL's published SRResNet scores."""
    from srcore.evaluation.seal import MODELS_CSV, seal_lines
    from srcore.evaluation.seal_scores import read_model_scores
    means = {m: v + offset for m, v in read_model_scores(seal_root / MODELS_CSV)["SRResNet"].items()}
    return {"target": str(target), "seal_root": str(seal_root), "seconds": 0.0,
            "summary": seal_summary(means, seal_lines(seal_root)), "rows": [],
            "cases": [{"case": i, **{m: float(v[i]) for m, v in means.items()}} for i in range(NUM_CASES)]}


def test_command_reads_results_and_writes_gains(seal_root, tmp_path, capsys):
    """Jobs already evaluated are read back; the table lists the published rows; --baseline
    writes the per-case gains."""
    jobs = [tmp_path / "dropout", tmp_path / "baseline"]
    for job, offset in zip(jobs, (0.5, 0.0)):
        (job / "seal").mkdir(parents=True)
        (job / "seal" / "seal.json").write_text(json.dumps(_fake_result(seal_root, job, offset)))
    assert seal_cli.main([str(jobs[0]), "--baseline", str(jobs[1]), "--seal-root", str(seal_root)]) == 0
    out = capsys.readouterr().out
    assert "RDSR" in out and "SEAL (published)" in out and "dropout" in out
    gains = pd.read_csv(jobs[0] / "seal" / "cases.csv", index_col="case")
    assert len(gains) == NUM_CASES and gains["gain_db"].to_numpy() == pytest.approx(0.5)
    assert (jobs[0] / "seal" / "gain_vs_degradation.png").is_file()


def test_seal_table_counts_runs_and_leaves_the_published_rows_blank(seal_root, tmp_path):
    """seal.md: a setting's row averages its seeds and says how many runs (a whole number); the
    published models stand below it with no count."""
    from analysis.seal_table import write_seal_table
    stats = {f"seal/{m}/{s}": v for m in ("psnr_y", "ssim_y") for s, v in
             zip(("S", "AR", "RPR_I", "RPR_A", "RPR_U"), (21.0, 0.0, 0.02, 0.0, 0.03))}
    runs = pd.DataFrame([{"state": "finished", "swept.dropout.position": pos, "swept.seed": seed,
                          "config": {"eval": {"seal_root": str(seal_root)}},
                          **stats, "seal/psnr_y/S": 21.0 + 0.2 * seed}
                         for pos, seeds in (("none", (0, 1)), ("last", (0,))) for seed in seeds])
    md = write_seal_table(runs, tmp_path, "t")
    rows = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| ")]
    psnr = {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:10]}
    assert psnr["dropout.position=none"][:3] == ["this sweep", "2", "21.100"]
    assert psnr["dropout.position=last"][:2] == ["this sweep", "1"]
    assert psnr["RDSR"][:3] == ["SEAL (published)", "", "22.438"]
    assert "nan" not in md
    assert pd.read_csv(tmp_path / "seal.csv")["n"].tolist()[:2] == [2, 1]


def test_seal_table_finds_a_relative_seal_root_from_any_folder(seal_root, tmp_path, monkeypatch):
    """A job's eval.seal_root is stored as configured (../shared/data/SEAL, relative to the
    checkout it ran in): the table finds the published rows wherever it is made, and says so
    when it cannot."""
    import os
    from analysis.seal_table import write_seal_table
    from tests.conftest import ROOT
    stats = {f"seal/{m}/{s}": 0.5 for m in ("psnr_y", "ssim_y") for s in ("S", "AR", "RPR_I", "RPR_A", "RPR_U")}
    relative = os.path.relpath(seal_root, ROOT)
    runs = pd.DataFrame([{"state": "finished", "swept.eval": "seal", "swept.seed": 0,
                          "config": {"eval": {"seal_root": relative}}, **stats}])
    monkeypatch.delenv("SR_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert not Path(relative).is_dir()  # not from here
    md = write_seal_table(runs, tmp_path, "t")
    assert md.count("SEAL (published)") == 14 and "are missing" not in md
    runs["config"] = [{"eval": {"seal_root": str(tmp_path / "nowhere")}}]
    md = write_seal_table(runs, tmp_path, "t")
    assert "SEAL (published)" not in md and "SEAL's published models are missing" in md and "nowhere" in md


def test_command_missing_seal_folder_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        seal_cli.main([str(tmp_path), "--seal-root", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert "SEAL folder" in err and "nowhere' does not exist" in err


@pytest.mark.slow
def test_command_evaluates_all_1400_images(seal_root, tmp_path, capsys):
    """The whole suite with a small SRResNet through the command (a weights file that carries
    its model_args); prints the time (target: under 2 minutes on 2 free CPU cores)."""
    torch.manual_seed(0)
    weights = tmp_path / "net.pth"
    save_weights(build_model("srresnet", upscale=4, num_feat=32, num_block=4), weights)
    start = time.perf_counter()
    assert seal_cli.main([str(weights), "--seal-root", str(seal_root)]) == 0
    seconds = time.perf_counter() - start
    result = json.loads((tmp_path / "net_seal" / "seal.json").read_text())
    assert len(result["rows"]) == 1400 and [c["case"] for c in result["cases"]] == list(range(NUM_CASES))
    assert result["summary"]["psnr_y/cases"] == 93
    print(f"SEAL, 1,400 images: {seconds:.1f} s wall, {result['cpu_seconds']:.1f} s CPU")


def test_a_job_scored_on_seal_end_to_end(tmp_path, shared_data):
    """eval=paper_seal: results.json and the wandb summary hold SEAL's statistics, and the tables
    put the job beside SEAL's published models."""
    from analysis.runs import runs_frame
    from analysis.tables import main as tables_main
    from tests.conftest import TINY, run_sweeper

    run_sweeper(["-m", *TINY, "eval=paper_seal", "eval.seal_cases=[0,1,2,50]", f"paths.data_root={shared_data}",
                 "dropout.position=none,last"], tmp_path)
    (sweep,) = (tmp_path / "sweeps").iterdir()
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(results) == 2
    for r in results:
        assert {"seal/psnr_y/S", "seal/psnr_y/AR", "seal/psnr_y/RPR_A", "seal/psnr_y/RPR_U", "seal/psnr_y/RPR_I",
                "seal/ssim_y/S"} <= set(r["metrics"]) and any(k.startswith("test/") for k in r["metrics"])
        assert [c["case"] for c in r["seal"]["cases"]] == [0, 1, 2, 50]
    runs = runs_frame(sweep)
    assert (runs["state"] == "finished").all() and runs["seal/psnr_y/S"].notna().all()
    assert tables_main([str(sweep)]) == 0
    md = (sweep / "tables" / "seal.md").read_text()
    assert "SEAL (published)" in md and "RealESRNet" in md and "dropout.position=last" in md


def test_a_seal_evaluation_stopped_between_batches_continues_to_the_same_rows(seal_root):
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=1)
    full, summary = evaluate_seal(model, seal_root, batch_size=4, cases=[0, 1])
    reports, asked = [], []
    with pytest.raises(EvaluationStopped) as e:
        evaluate_seal(model, seal_root, batch_size=4, cases=[0, 1], on_progress=lambda n, t: reports.append((n, t)),
                      should_stop=lambda: asked.append(1) or len(asked) > 3)
    kept = json.loads(json.dumps(e.value.rows))  # as the job keeps them: a JSON file
    assert 0 < len(kept) < 28 and reports[-1] == (len(kept), 28) and reports[0] == (0, 28)
    reports.clear()
    resumed, again = evaluate_seal(model, seal_root, batch_size=4, cases=[0, 1], done=kept,
                                   on_progress=lambda n, t: reports.append((n, t)))
    assert resumed == full and again == summary and reports[0] == (len(kept), 28) and reports[-1] == (28, 28)


def test_a_job_stopped_during_seal_keeps_both_suites_and_its_rerun_ends_as_an_uninterrupted_one(seal_root, tmp_path):
    """The job's side (sweeper.job._evaluate, both suites): a stop request during SEAL keeps the
    paper's rows and SEAL's scored ones in eval_partial.json; the rerun scores only the rest."""
    from types import SimpleNamespace

    import sweeper.build as build
    from sweeper import job
    from sweeper.compose import compose

    cfg = compose(["preset=smoke", "eval=paper_seal", f"eval.seal_root={seal_root}", "eval.seal_cases=[0,1]",
                   "eval.seal_batch_size=4", "eval.lr_cache=null"])
    test_sets = build.test_sets(cfg)
    torch.manual_seed(0)
    net = build_model("srresnet", num_feat=8, num_block=1)
    stop = SimpleNamespace(requested=False)

    def on_seal(n, total):
        stop.requested = n >= 8

    quiet = SimpleNamespace(on_eval=lambda n, t: None, on_seal=lambda n, t: None)
    reference = job._evaluate(cfg, net, test_sets, tmp_path / "ref", "cpu", SimpleNamespace(requested=False), quiet)
    (tmp_path / "job").mkdir()
    with pytest.raises(EvaluationStopped):
        job._evaluate(cfg, net, test_sets, tmp_path / "job", "cpu", stop, SimpleNamespace(on_eval=quiet.on_eval,
                                                                                          on_seal=on_seal))
    kept = json.loads((tmp_path / "job" / job.EVAL_PARTIAL).read_text())
    assert len(kept["rows"]) == len(reference[0]) and 8 <= len(kept["seal_rows"]) < 28
    stop.requested = False
    assert job._evaluate(cfg, net, test_sets, tmp_path / "job", "cpu", stop, quiet) == reference
