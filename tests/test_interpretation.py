"""Interpretation tools against independent computations: CSM vs a finite-difference
gradient, channel ablation vs a manual forward pass, CHI vs scikit-learn; and the command
on a real pair of tiny jobs and on a BasicSR-style weights file."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.interpret import main as interpret_main
from srcore.interpretation import (Taps, ablate_channel, calinski_harabasz, channel_ablation, channel_saliency,
                                     evenness, gini, gradient_magnitude_objective, layer_names, normalized_entropy,
                                     psnr)
from srcore.models import build_model
from tests.conftest import TINY, run_sweeper


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = build_model("srresnet", upscale=4, num_feat=4, num_block=2).double().eval()
    for p in model.parameters():  # away from BasicSR's 0.1-scaled init, so every channel matters
        p.data.normal_(0, 0.3)
    return model


def test_layers_are_the_papers_taps():
    assert layer_names(tiny_model()) == ["first", "b1", "b2", "hr", "last"]
    with pytest.raises(KeyError, match="allowed: first, b1, b2, hr, last"):
        Taps(tiny_model(), ["b9"])


def test_csm_equals_a_finite_difference_gradient():
    model = tiny_model()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    csm = channel_saliency(model, x, ["last"])["last"]

    # independently: the features entering conv_last, and the tail written out by hand
    with Taps(model, ["last"]) as taps, torch.no_grad():
        model(x)
        feat = taps.features["last"].clone()
    skip = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    tail = lambda f: gradient_magnitude_objective(model.conv_last(f) + skip)  # noqa: E731
    grad = torch.zeros_like(feat)
    eps = 1e-6
    with torch.no_grad():
        for idx in np.ndindex(*feat.shape):
            plus, minus = feat.clone(), feat.clone()
            plus[idx] += eps
            minus[idx] -= eps
            grad[idx] = (tail(plus) - tail(minus)) / (2 * eps)
    g = grad[0].abs()
    expected = (g / g.max()).sum(dim=(1, 2)).numpy()
    np.testing.assert_allclose(csm, expected, rtol=1e-5, atol=1e-7)


def test_channel_ablation_matches_a_manual_forward_pass():
    model = tiny_model()
    lr = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    hr = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    drops = channel_ablation(model, lr, hr, "last", border=4)
    assert drops.shape == (4,)
    with torch.no_grad(), Taps(model, ["last"]) as taps:
        base = [psnr(model(x), y) for x, y in zip(lr.split(1), hr.split(1))]
        feats = []
        for x in lr.split(1):
            model(x)
            feats.append(taps.features["last"].clone())
    for c in range(4):
        manual = []
        for x, y, f in zip(lr.split(1), hr.split(1), feats):
            kept = f.clone()
            kept[:, c] = 0
            kept = kept * (f.abs().sum() / kept.abs().sum())  # total activation kept
            out = model.conv_last(kept) + F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
            manual.append(psnr(out, y))
        assert drops[c] == pytest.approx(np.mean(base) - np.mean(manual), abs=1e-9)
    f = torch.rand(1, 4, 3, 3)
    assert ablate_channel(f, 1).abs().sum().item() == pytest.approx(f.abs().sum().item(), rel=1e-6)


def test_chi_equals_scikit_learn_and_grows_with_separation():
    from sklearn.metrics import calinski_harabasz_score
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    centers = np.array([[0, 0], [3, 0], [0, 3]])
    near = centers[labels] * 0.5 + rng.normal(size=(90, 2))
    far = centers[labels] * 3.0 + rng.normal(size=(90, 2))
    for x in (near, far):
        assert calinski_harabasz(x, labels) == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-10)
    assert calinski_harabasz(far, labels) > calinski_harabasz(near, labels)


def test_evenness_measures():
    assert gini(np.ones(8)) == pytest.approx(0) and normalized_entropy(np.ones(8)) == pytest.approx(1)
    one_hot = np.eye(8)[0]
    assert gini(one_hot) == pytest.approx(7 / 8) and normalized_entropy(one_hot) == pytest.approx(0)
    assert evenness(np.array([1.0, 2.0, 3.0]))["cv"] == pytest.approx(np.std([1, 2, 3]) / 2)


def test_the_command_on_a_pair_of_jobs_and_on_basicsr_weights(tmp_path, capsys):
    run_sweeper(["-m", *TINY, "dropout.position=none,last", "eval.max_images=2"], tmp_path)
    jobs = sorted(p.parent for p in tmp_path.glob("sweeps/*/*/model.pt"))
    assert interpret_main([str(jobs[0]), str(jobs[1]), "--max-images", "2", "--embed", "pca"]) == 0
    out = capsys.readouterr().out
    assert out.count("Gini") == 2 and "side by side" in out
    for job in jobs:
        result = json.loads((job / "interpret" / "interpretation.json").read_text())
        assert set(result["csm"]) == {"first", "b1", "b2", "hr", "last"} and len(result["csm"]["last"]) == 8
        assert result["chi"] >= 0 and len(result["ablation_drop_db"]) == 8
        for name in ("csm.png", "ablation.png", "ddr.png"):
            assert (job / "interpret" / name).stat().st_size > 5000
    assert (jobs[1].parent / "pair.png").exists()
    # the results joined the job's own wandb run; its test metrics and state are intact
    from analysis.wandb_offline import read_runs
    (run,) = read_runs(jobs[1])
    assert len(list(jobs[1].glob("wandb/offline-run-*"))) == 2
    assert run.state == "finished" and "test/builtin/clean/psnr" in run.summary
    assert run.summary["interpret/last/gini"] == pytest.approx(
        json.loads((jobs[1] / "interpret" / "interpretation.json").read_text())["evenness"]["last"]["gini"])

    # an official/BasicSR-style file: {"params_ema": state_dict}, loaded with weights_only
    weights = torch.load(jobs[0] / "model.pt", weights_only=True)
    state = weights.get("params_ema") or weights["params"]
    torch.save({"params_ema": state}, tmp_path / "net_g.pth")
    assert interpret_main([str(tmp_path / "net_g.pth"), "--backbone", "srresnet", "--num-feat", "8",
                           "--num-block", "2", "--max-images", "1", "--embed", "pca", "--data", "builtin"]) == 0
    assert (tmp_path / "interpret" / "interpretation.json").exists()


def test_tables_show_chi_and_evenness_next_to_psnr(tmp_path, capsys):
    from analysis.tables import main as tables_main
    run_sweeper(["-m", *TINY, "dropout.position=none,last"], tmp_path)
    sweep = next((tmp_path / "sweeps").iterdir())
    assert interpret_main(["--sweep", str(sweep), "--max-images", "1", "--embed", "pca"]) == 0
    capsys.readouterr()
    assert tables_main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "**Interpretation**" in out and "gini" in out and "chi" in out and "psnr (mean)" in out
    table = (sweep / "tables" / "interpretation.md").read_text()
    assert "none" in table and "last" in table


def test_the_optional_hook_runs_after_training_and_logs_to_wandb(tmp_path):
    from analysis.wandb_offline import read_runs
    run_sweeper(["-m", *TINY, "interpret.after_training=true", "interpret.max_images=1"], tmp_path)
    (job,) = [p.parent for p in tmp_path.glob("sweeps/*/*/results.json")]
    result = json.loads((job / "interpret" / "interpretation.json").read_text())
    (run,) = read_runs(job)
    assert run.summary["interpret/last/gini"] == pytest.approx(result["evenness"]["last"]["gini"])
    assert run.summary["interpret/last/chi"] == pytest.approx(result["chi"])
