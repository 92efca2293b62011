"""Evaluation at hardware speed (issue 20, the evaluation half): the progress callback, the
test-LR cache, batching across degradations, metrics off the critical path and tiled inference,
each equal to the one-image-at-a-time path it replaces."""
from __future__ import annotations

import numpy as np
import torch

from srcore.evaluation import evaluate
from srcore.models import build_model


def _sets(sizes=((48, 40), (40, 56)), n_sets=1, seed=0):
    rng = np.random.default_rng(seed)
    return {f"s{j}": [(f"im{k}", rng.integers(0, 256, (*hw, 3), dtype=np.uint8)) for k, hw in enumerate(sizes)]
            for j in range(n_sets)}


def _tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("srresnet", num_feat=8, num_block=2)


def test_on_progress_counts_images_times_degradations_including_kept_rows():
    sets, model, degs = _sets(), _tiny(), ["clean", "noise", "jpeg"]
    calls = []
    rows, _ = evaluate(model, sets, degs, 4, 4, on_progress=lambda d, t: calls.append((d, t)))
    assert calls == [(k, 6) for k in range(1, 7)]
    calls.clear()
    evaluate(model, sets, degs, 4, 4, done=rows[:4], on_progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6) and [d for d, _ in calls] == sorted(d for d, _ in calls)
