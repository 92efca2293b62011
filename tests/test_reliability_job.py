"""Cluster-grade reliability (issue 19), the job's side: a stop signal during evaluation (A) and
a kill between the results and the end of the wandb run (B)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from analysis.runs import runs_frame
from srcore.evaluation import evaluate
from srcore.evaluation.scoring import EvaluationStopped
from srcore.imageio import write_image
from srcore.models import build_model
from sweeper.jobstate import is_done
from tests.conftest import ROOT, TINY, run_sweeper


def test_an_evaluation_stopped_between_images_continues_to_the_same_rows():
    rng = np.random.default_rng(0)
    sets = {"a": [(f"im{k}", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for k in range(3)]}
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2)
    degradations = ["clean", "noise", "jpeg"]
    full, full_means = evaluate(model, sets, degradations, 4, 4)
    asked = []
    try:
        evaluate(model, sets, degradations, 4, 4, should_stop=lambda: asked.append(1) or len(asked) > 4)
    except EvaluationStopped as e:
        partial = json.loads(json.dumps(e.rows))  # as the job keeps them: a JSON file
    assert len(partial) == 4
    scored = []
    resumed, means = evaluate(model, sets, degradations, 4, 4, done=partial,
                              should_stop=lambda: scored.append(1) and False)
    assert resumed == full and means == full_means and len(scored) == len(full) - 4


def _big_test_set(folder, n=40):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(n):
        write_image(folder / f"{k:03d}.png", rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    return folder


@pytest.mark.slow  # make test-slow: the default suite stays under ~15 min (CI: 2 cores)
def test_a_stop_signal_during_evaluation_stops_the_job_and_the_rerun_keeps_what_was_scored(tmp_path):
    """A: SIGUSR2 while the job evaluates: it stops between two images, saying so, keeps the scored
    images, and the rerun ends with the uninterrupted job's metrics."""
    args = [*TINY, f"+data.test_sets.big={_big_test_set(tmp_path / 'big')}", "eval.max_images=null"]
    run_sweeper(args, tmp_path / "ref")
    (ref,) = [json.loads(p.read_text()) for p in (tmp_path / "ref").glob("runs/*/results.json")]

    env = {**os.environ, "SR_OUTPUT_ROOT": str(tmp_path / "run"), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        status = list((tmp_path / "run").glob("runs/*/status.json"))
        if status and json.loads(status[0].read_text() or "{}").get("phase") == "evaluating":
            break
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=300)
    job = status[0].parent
    state = json.loads((job / "status.json").read_text())
    assert not is_done(job), out[-2000:]
    assert state["state"] == "interrupted" and "during evaluation" in state["reason"]
    kept = json.loads((job / "eval_partial.json").read_text())["rows"]
    assert 0 < len(kept) < len(ref["per_image"])

    run_sweeper(args, tmp_path / "run")
    done = json.loads((job / "results.json").read_text())
    assert done["metrics"] == ref["metrics"] and done["per_image"] == ref["per_image"]
    assert not (job / "eval_partial.json").exists()


def test_a_finished_job_whose_wandb_run_never_finished_is_completed_by_the_rerun(tmp_path):
    """B: killed after results.json, before wandb finished (here: its wandb files are gone, the
    extreme case): the rerun does not train again, and completes the run from the results."""
    run_sweeper([*TINY], tmp_path)
    (job,) = [p.parent for p in tmp_path.glob("runs/*/results.json")]
    results = json.loads((job / "results.json").read_text())
    status = json.loads((job / "status.json").read_text())
    assert status["wandb_finished"]
    shutil.rmtree(job / "wandb")
    (job / "status.json").write_text(json.dumps({**status, "wandb_finished": False}))

    run_sweeper([*TINY], tmp_path)
    assert json.loads((job / "results.json").read_text()) == results  # not trained again
    assert json.loads((job / "status.json").read_text())["wandb_finished"]
    (run,) = runs_frame(tmp_path / "runs").to_dict("records")
    assert run["state"] == "finished"
    assert {k: v for k, v in run.items() if k.startswith("test/")} == results["metrics"]
