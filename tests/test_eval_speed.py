"""Evaluation at hardware speed (issue 20, the evaluation half): the progress callback, the
test-LR cache, batching across degradations, metrics off the critical path and tiled inference,
each equal to the one-image-at-a-time path it replaces."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from srcore.evaluation import evaluate
from srcore.evaluation.lr_cache import PROTOCOL, SUFFIX, LRCache, code_version, entry_key, image_digest
from srcore.evaluation.paper import PaperSuite
from srcore.evaluation.scoring import EvaluationStopped, super_resolve
from srcore.evaluation.tiling import tiled_forward
from srcore.metrics import psnr, scores, ssim
from srcore.models import build_model
from tests.conftest import ROOT


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


# ---------------------------------------------------------------- the test-LR cache

DEGS = ["clean", "blur", "noise", "jpeg", "blur+noise", "blur+jpeg", "noise+jpeg", "blur+noise+jpeg"]


def _lr_files(folder):
    return sorted(p for p in folder.rglob(f"*{SUFFIX}"))


def test_the_cache_gives_the_same_lr_bytes_and_the_same_metrics(tmp_path):
    sets, model = _sets(n_sets=2), _tiny()
    ref_cases = list(PaperSuite(sets, DEGS, 4, 3))
    cache = LRCache(tmp_path / "c")
    cold = list(PaperSuite(sets, DEGS, 4, 3, cache))
    assert (cache.hits, cache.misses) == (0, len(ref_cases)) and len(_lr_files(tmp_path / "c")) == len(ref_cases)
    warm_cache = LRCache(tmp_path / "c")
    warm = list(PaperSuite(sets, DEGS, 4, 3, warm_cache))
    assert (warm_cache.hits, warm_cache.misses) == (len(ref_cases), 0)
    for r, a, b in zip(ref_cases, cold, warm):
        assert r.lr.dtype == b.lr.dtype == np.uint8 and r.lr.tobytes() == a.lr.tobytes() == b.lr.tobytes()
        assert r.lr.shape == b.lr.shape
    without, m0 = evaluate(model, sets, DEGS, 4, 4, 3)
    with_cold, m1 = evaluate(model, sets, DEGS, 4, 4, 3, lr_cache=tmp_path / "c2")
    with_warm, m2 = evaluate(model, sets, DEGS, 4, 4, 3, lr_cache=tmp_path / "c2")
    assert without == with_cold == with_warm and m0 == m1 == m2  # identical, not close


def test_cache_keys_follow_content_seed_scale_degradation_and_code_version():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    d = image_digest(hr)
    other = hr.copy()
    other[0, 0, 0] ^= 1
    keys = {entry_key(d, "noise", 4, 1), entry_key(image_digest(other), "noise", 4, 1), entry_key(d, "noise", 4, 2),
            entry_key(d, "noise", 2, 1), entry_key(d, "jpeg", 4, 1), entry_key(image_digest(hr[:8]), "noise", 4, 1)}
    assert len(keys) == 6
    assert entry_key(image_digest(hr.copy()), "noise", 4, 1) == entry_key(d, "noise", 4, 1)
    assert "cv2=" in code_version() and "jpeg=" in code_version() and PROTOCOL in code_version()


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel", "flip_header", "empty", "garbage"])
def test_a_corrupt_cache_file_is_detected_rebuilt_and_never_used(tmp_path, damage):
    sets = _sets(sizes=((32, 32),))
    ref = list(PaperSuite(sets, DEGS, 4, 0))
    list(PaperSuite(sets, DEGS, 4, 0, LRCache(tmp_path)))
    victim = _lr_files(tmp_path)[3]
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[:-5]
    elif damage == "flip_pixel":
        data[-1] ^= 0x10
    elif damage == "flip_header":
        data[20] ^= 0x01  # the height: the size check fails
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a cache file" * 40)
    victim.write_bytes(bytes(data))
    cache = LRCache(tmp_path)
    again = list(PaperSuite(sets, DEGS, 4, 0, cache))
    assert cache.rebuilt == 1 and cache.misses == 1 and cache.hits == len(ref) - 1
    assert all(a.lr.tobytes() == b.lr.tobytes() and a.lr.shape == b.lr.shape for a, b in zip(ref, again))
    fresh = LRCache(tmp_path)
    list(PaperSuite(sets, DEGS, 4, 0, fresh))
    assert fresh.hits == len(ref) and fresh.rebuilt == 0  # rewritten whole


_FILL = """
import sys
import numpy as np
from srcore.evaluation.lr_cache import LRCache
from srcore.evaluation.paper import PaperSuite
rng = np.random.default_rng(7)
sets = {"s": [(f"im{k}", rng.integers(0, 256, (64, 48), dtype=np.uint8)[..., None].repeat(3, 2)) for k in range(4)]}
cases = list(PaperSuite(sets, %r, 4, 0, LRCache(sys.argv[1])))
sys.stdout.write(";".join(c.lr.tobytes().hex()[:64] + str(len(c.lr.tobytes())) for c in cases))
"""


def test_concurrent_processes_filling_the_same_entries_all_end_with_valid_files(tmp_path):
    code = _FILL % (DEGS,)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1] and outs[0]
    files = _lr_files(tmp_path)
    check = LRCache(tmp_path)
    assert len(files) == 4 * len(DEGS) and all(check.read(p.stem) is not None for p in files) and check.rebuilt == 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_writers_racing_on_one_entry_never_expose_a_partial_file(tmp_path):
    cache = LRCache(tmp_path)
    lr = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    key = entry_key(image_digest(lr), "clean", 4, 0)
    stop, bad = threading.Event(), []

    def writer():
        while not stop.is_set():
            cache.write(key, lr)

    def reader():
        while not stop.is_set():
            got = LRCache(tmp_path).read(key)
            if got is not None and got.tobytes() != lr.tobytes():
                bad.append(1)
    threads = [threading.Thread(target=f) for f in (writer, writer, reader)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert not bad and LRCache(tmp_path).read(key).tobytes() == lr.tobytes()


# ---------------------------------------------------------------- batching, metric threads


def _old_evaluate(model, sets, degradations, scale, crop_border, base_seed=0):
    """Today's loop before issue 20 (516f983): one image at a time, the metrics in line."""
    rows = []
    for case in PaperSuite(sets, degradations, scale, base_seed):
        sr = super_resolve(model, case.lr, torch.device("cpu"))
        rows.append({"set": case.set, "image": case.image, "degradation": case.degradation,
                     "psnr": psnr(sr, case.hr, crop_border), "psnr_y": psnr(sr, case.hr, crop_border, test_y=True),
                     "ssim_y": ssim(sr, case.hr, crop_border, test_y=True)})
    return rows


def test_metrics_scores_is_bit_identical_to_the_three_metrics():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = rng.integers(24, 120, 2)
        hr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sr = np.clip(hr.astype(int) + rng.integers(-30, 31, hr.shape), 0, 255).astype(np.uint8)
        c = int(rng.integers(0, 6))
        assert scores(sr, hr, c) == {"psnr": psnr(sr, hr, c), "psnr_y": psnr(sr, hr, c, test_y=True),
                                     "ssim_y": ssim(sr, hr, c, test_y=True)}


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (1, 1), (8, 2), (3, 1)])
def test_batches_and_metric_threads_give_todays_values(batch_size, workers):
    sets = _sets(sizes=((48, 40), (40, 56), (44, 44)))
    model = _tiny()
    old = _old_evaluate(model, sets, DEGS, 4, 4)
    new, _ = evaluate(model, sets, DEGS, 4, 4, batch_size=batch_size, workers=workers)
    assert [(r["set"], r["image"], r["degradation"]) for r in new] == [(r["set"], r["image"], r["degradation"])
                                                                      for r in old]
    for a, b in zip(old, new):
        for m in ("psnr", "psnr_y"):
            assert abs(a[m] - b[m]) <= 1e-6, (a, b)  # the bound; equal here in practice
        assert abs(a["ssim_y"] - b["ssim_y"]) <= 1e-8
    if batch_size == 1:
        assert new == old  # the same forward passes: bit-identical


def test_a_batch_is_the_same_as_single_images_for_a_model_with_dropout_in_eval_mode():
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2,
                        regularizers=[{"name": "dropout", "position": ["all", "last"], "p": 0.9, "kind": "channel"}])
    sets = _sets()
    one, _ = evaluate(model, sets, DEGS, 4, 4, batch_size=1)
    eight, _ = evaluate(model, sets, DEGS, 4, 4, batch_size=8)
    for a, b in zip(one, eight):
        assert all(abs(a[m] - b[m]) <= 1e-6 for m in ("psnr", "psnr_y", "ssim_y"))
    assert not model.training


def test_batched_evaluation_stops_between_cases_and_resumes_to_the_same_rows():
    sets = _sets(sizes=((48, 40), (48, 40), (40, 56)))
    model, degs = _tiny(), ["clean", "noise", "jpeg"]
    full, full_means = evaluate(model, sets, degs, 4, 4, batch_size=8)
    for stop_at in (1, 2, 4, 6):
        asked = []
        with pytest.raises(EvaluationStopped) as e:
            evaluate(model, sets, degs, 4, 4, batch_size=8, workers=2,
                     should_stop=lambda: asked.append(1) or len(asked) > stop_at)
        partial = json.loads(json.dumps(e.value.rows))
        assert partial == full[:stop_at]
        scored = []
        resumed, means = evaluate(model, sets, degs, 4, 4, batch_size=8, done=partial,
                                  should_stop=lambda: scored.append(1) and False)
        assert resumed == full and means == full_means and len(scored) == len(full) - stop_at


def test_a_failing_metric_is_raised_not_lost():
    with pytest.raises(ValueError, match="crop_border"):
        evaluate(_tiny(), _sets(), ["clean"], 4, 100, workers=2)


# ---------------------------------------------------------------- tiled inference


def test_tiles_with_overlap_at_least_the_receptive_field_match_the_whole_image():
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2).eval()
    x = torch.rand(2, 3, 45, 38)
    with torch.inference_mode():
        whole = model(x)
        for tile in (8, 16, 20, 64):
            tiled = tiled_forward(model, x, tile, overlap=2 * 2 + 5)
            assert tiled.shape == whole.shape
            assert (tiled - whole).abs().max().item() <= 1e-5
        seams = tiled_forward(model, x, 16, overlap=0)
        assert (seams - whole).abs().max().item() > 1e-3  # without context the seams differ


def test_tiled_evaluation_equals_whole_image_evaluation():
    sets, model = _sets(sizes=((96, 80), (64, 72))), _tiny()
    whole, _ = evaluate(model, sets, DEGS, 4, 4)
    tiled, _ = evaluate(model, sets, DEGS, 4, 4, tile=8, tile_overlap=2 * 2 + 5)
    for a, b in zip(whole, tiled):
        assert all(abs(a[m] - b[m]) <= 1e-6 for m in ("psnr", "psnr_y", "ssim_y")), (a, b)
