"""analysis.wandb_offline against real offline runs written by the installed wandb.

The runs are created once per module in two subprocesses (run side by side):
one writes every finished run, the other logs and then dies without finish().
Subprocesses keep wandb's global state and its service process out of pytest.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from analysis.wandb_offline import (OfflineRun, WandbFileError, console_log, find_run_files, read_media, read_run,
                                    read_runs, system_metrics)
from srcore.evaluation import TEST_DEGRADATIONS
from tests.conftest import TINY, run_sweeper

CONFIG = {
    "backbone": {"name": "srresnet", "num_feat": 64},
    "dropout": {"position": "last", "p": 0.5, "kind": "channel"},
    "train": {"lr": 2e-4, "betas": [0.9, 0.99]},
    "seed": 0,
}
STEPS = 6

# Written by the first subprocess: root/main, root/failed, root/twice (same id twice).
WRITE_RUNS = textwrap.dedent(f"""
    import json, math, os, sys
    import wandb

    root = sys.argv[1]
    settings = wandb.Settings(console="off", x_disable_stats=True)

    def init(sub, **kw):
        return wandb.init(project="proj", dir=os.path.join(root, sub), settings=settings, **kw)

    run = init("main", id="main1", name="srresnet-p0.5", group="sweepA", job_type="train",
               tags=["dropout.p=0.5", "backbone=srresnet"], config=json.loads({json.dumps(CONFIG)!r}))
    for step in range({STEPS}):
        run.log({{"train/loss": 1.0 / (step + 1), "test/Set5/clean/psnr": 30.0 + step,
                  "nested": {{"a": step}}, "nan": math.nan, "inf": math.inf, "ninf": -math.inf}})
    run.summary["test/Set5/clean/psnr"] = 99.5  # overrides the last logged 35.0
    run.summary["best"] = {{"psnr": 99.5, "step": 5}}
    run.finish()

    run = init("failed", id="fail1")
    run.log({{"x": 1, "blob": "y" * 100_000}})  # records spanning 4 blocks: FIRST, MIDDLE, LAST
    run.finish(exit_code=1)

    # A requeued job: same id, resume="allow".  (Within one process wandb.init
    # reuses name/group/job_type/tags of the previous init unless passed again,
    # hence the explicit name.)
    run = init("twice", id="twice1", name="first", config={{"attempt": 1, "only_first": True}})
    run.log({{"loss": 1.0, "only_first_metric": 1}})
    run.summary["best"] = 1.0
    run.finish()
    run = init("twice", id="twice1", name="second", resume="allow", config={{"attempt": 2}})
    run.log({{"loss": 2.0}})
    run.summary["best"] = 2.0
    run.finish()
""")

# The second subprocess dies like a job killed by its scheduler: once wandb-core
# (the service process that writes the file, in a session of its own) has
# written at least two 32 KiB blocks, SIGKILL it and exit without finish().
KILLED_RUN = textwrap.dedent("""
    import glob, os, signal, sys, time
    import wandb

    run = wandb.init(project="proj", dir=sys.argv[1], id="killed1",
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    for step in range(150):
        run.log({"loss": float(step), "pad": "x" * 1000})
    deadline = time.time() + 20
    while time.time() < deadline:
        files = glob.glob(os.path.join(sys.argv[1], "wandb", "offline-run-*", "run-*.wandb"))
        if files and os.path.getsize(files[0]) >= 2 * 32768:
            break
        time.sleep(0.01)
    for stat in glob.glob("/proc/[0-9]*/stat"):  # our children: the wandb-core service
        try:
            ppid = int(open(stat).read().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid():
                os.kill(int(stat.split("/")[2]), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
    os._exit(3)
""")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wandb_runs")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(root / ".config"), "WANDB_CACHE_DIR": str(root / ".cache"),
           "WANDB_DATA_DIR": str(root / ".data")}
    env.pop("WANDB_DIR", None)
    (root / "killed").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root / sub)], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for code, sub in ((WRITE_RUNS, ""), (KILLED_RUN, "killed"))]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert procs[0].returncode == 0, outs[0]
    assert procs[1].returncode == 3, outs[1]
    return root


def one_run_dir(root: Path, sub: str) -> Path:
    (path,) = find_run_files(root / sub)
    return path.parent


def test_finished_run_metadata_and_config(root):
    run = read_run(one_run_dir(root, "main"))  # a run directory works as well as the file
    assert run.path.name == "run-main1.wandb"
    assert (run.run_id, run.name, run.group, run.job_type, run.project) == (
        "main1", "srresnet-p0.5", "sweepA", "train", "proj")
    assert run.tags == ["dropout.p=0.5", "backbone=srresnet"]
    assert run.config == CONFIG  # nested as passed, wandb's "_wandb" key dropped
    assert (run.state, run.exit_code, run.truncated, run.resumed) == ("finished", 0, False, False)
    assert time.time() - 300 < run.start_time <= time.time()
    assert run.runtime is not None and 0 <= run.runtime < 120


def test_summary_last_logged_values_and_explicit_updates(root):
    s = read_run(find_run_files(root / "main")[0]).summary
    assert s["test/Set5/clean/psnr"] == 99.5  # explicit update wins, slash key stays flat
    assert "test" not in s
    assert s["best"] == {"psnr": 99.5, "step": 5}
    assert s["train/loss"] == pytest.approx(1.0 / STEPS)  # last logged value
    assert s["nested"] == {"a": STEPS - 1}  # logged nested dict comes back nested
    assert s["_step"] == STEPS - 1
    assert "_wandb" not in s


def test_history_rows(root):
    h = read_run(find_run_files(root / "main")[0]).history
    assert [row["_step"] for row in h] == list(range(STEPS))
    for step, row in enumerate(h):
        assert row["train/loss"] == pytest.approx(1.0 / (step + 1))
        assert row["test/Set5/clean/psnr"] == 30.0 + step
        assert row["nested"] == {"a": step}
        assert {"_runtime", "_timestamp"} <= row.keys()
    assert read_run(find_run_files(root / "main")[0], history=False).history == []


def test_nan_and_inf_round_trip(root):
    run = read_run(find_run_files(root / "main")[0])
    for values in [run.summary, *run.history]:
        assert math.isnan(values["nan"])
        assert values["inf"] == math.inf and values["ninf"] == -math.inf


def test_failed_run(root):
    run = read_run(find_run_files(root / "failed")[0])
    assert (run.state, run.exit_code) == ("failed", 1)
    assert run.summary["x"] == 1
    assert run.summary["blob"] == run.history[0]["blob"] == "y" * 100_000


def test_killed_run_is_unfinished_and_readable(root):
    run = read_run(find_run_files(root / "killed")[0])
    assert (run.state, run.exit_code) == ("unfinished", None)
    assert run.config == {} and run.run_id == "killed1"
    assert len(run.history) >= 20  # at least two 32 KiB blocks of ~1 KiB rows reached the file
    assert [row["_step"] for row in run.history] == list(range(len(run.history)))
    assert all(row["loss"] == row["_step"] for row in run.history)


def test_resumed_id_dedupes_to_latest_directory(root):
    runs = read_runs(root / "twice", dedupe=False)
    assert [r.run_id for r in runs] == ["twice1", "twice1"]
    first, second = runs  # sorted by start time
    assert first.path.parent != second.path.parent
    assert (first.name, first.summary["best"], first.resumed) == ("first", 1.0, False)
    assert first.config == {"attempt": 1, "only_first": True}
    # An offline resume is a fresh run: nothing of the first directory carries over
    # (no config, no summary, history restarts at step 0); only resume=true is set.
    assert (second.name, second.summary["best"], second.resumed) == ("second", 2.0, True)
    assert second.config == {"attempt": 2}
    assert "only_first_metric" not in second.summary
    assert [(row["_step"], row["loss"]) for row in second.history] == [(0, 2.0)]

    (run,) = read_runs(root / "twice")
    assert run.path == second.path and run.summary["best"] == 2.0


def test_read_runs_finds_every_run_once(root):
    files = find_run_files(root)
    assert files == sorted(files)
    assert all("latest-run" not in f.parts for f in files)  # the symlink is not followed
    assert len(files) == 5 and len(set(files)) == 5
    runs = read_runs(root)
    assert sorted(r.run_id for r in runs) == ["fail1", "killed1", "main1", "twice1"]
    assert all(isinstance(r, OfflineRun) for r in runs)


def copy_main_file(root: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run-main1.wandb"
    shutil.copy(find_run_files(root / "main")[0], dest)
    return dest


def test_flipped_byte_raises_with_file_and_offset(root, tmp_path):
    path = copy_main_file(root, tmp_path)
    data = bytearray(path.read_bytes())
    assert len(data) < 32768  # one block: chunks follow each other from offset 7
    chunk = 7  # find the chunk holding the middle of the file, flip a byte of its data
    while chunk + 7 + int.from_bytes(data[chunk + 4 : chunk + 6], "little") <= len(data) // 2:
        chunk += 7 + int.from_bytes(data[chunk + 4 : chunk + 6], "little")
    data[chunk + 7 + int.from_bytes(data[chunk + 4 : chunk + 6], "little") // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WandbFileError) as err:
        read_run(path)
    assert str(path) in str(err.value) and f"offset {chunk}" in str(err.value)
    assert err.value.offset == chunk


def test_bad_magic_raises(root, tmp_path):
    path = copy_main_file(root, tmp_path)
    path.write_bytes(b":W&X" + path.read_bytes()[4:])
    with pytest.raises(WandbFileError, match="offset 0"):
        read_run(path)


def test_truncated_file_reads_complete_records(root, tmp_path):
    path = copy_main_file(root, tmp_path)
    data = path.read_bytes()
    full = read_run(path)
    rows = []
    for cut in (7, 10, len(data) // 3, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        run = read_run(path)  # must not raise
        assert run.state == "unfinished" and run.exit_code is None
        assert run.truncated == (cut != 7)
        assert run.history == full.history[: len(run.history)]
        rows.append(len(run.history))
    assert rows == sorted(rows) and rows[-1] == STEPS
    path.write_bytes(data[: len(data) // 2] + bytes(1000))  # zero-filled tail after a crash
    assert read_run(path).truncated


def test_same_second_directories_dedupe_by_suffix(root, tmp_path):
    # Same start time (a copied file); wandb names a second directory that
    # starts within the same second offline-run-<stamp>-<id>-1, -2, ...
    src = find_run_files(root / "main")[0]
    for suffix in ("", "-2", "-9", "-10"):
        d = tmp_path / "wandb" / f"offline-run-20260101_000000-main1{suffix}"
        d.mkdir(parents=True)
        shutil.copy(src, d / src.name)
    (run,) = read_runs(tmp_path)
    assert run.path.parent.name.endswith("main1-10")


def leet_summary(run_dir: Path) -> dict:
    cli = Path(sys.executable).with_name("wandb")
    if not cli.exists():
        pytest.skip("wandb CLI not found next to the Python executable")
    proc = subprocess.run([str(cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false"})
    if proc.returncode != 0:
        pytest.skip(f"`wandb leet inspect` unavailable: {proc.stderr.strip()[:200]}")
    return json.loads(proc.stdout)


def jsonable(value):
    """Our values as leet prints them: non-finite floats become strings."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return value


@pytest.mark.parametrize("sub", ["main", "killed"])
def test_matches_wandb_leet_inspect(root, sub):
    run_dir = one_run_dir(root, sub)
    leet = leet_summary(run_dir)
    run = read_run(run_dir)
    summary = jsonable(run.summary)
    assert leet["summary"].keys() <= summary.keys()
    assert {k: summary[k] for k in leet["summary"]} == leet["summary"]
    assert jsonable(run.config) == leet["config"]
    assert (run.run_id, run.name or "", run.project, run.tags) == (
        leet["run_id"], leet["name"], leet["project"], leet["tags"])
    assert run.exit_code == leet["exit_code"]
    if sub == "main":
        assert leet["state"] == run.state == "finished"



def test_read_runs_can_skip_a_corrupt_file(root, tmp_path):
    """One damaged file must not hide every other run from the tables."""
    good = tmp_path / "good" / "run-main1.wandb"
    good.parent.mkdir()
    shutil.copy(find_run_files(root / "main")[0], good)
    bad = tmp_path / "bad" / "run-bad.wandb"
    bad.parent.mkdir()
    bad.write_bytes(b"not a wandb file at all")
    with pytest.raises(WandbFileError):
        read_runs(tmp_path)
    with pytest.warns(UserWarning, match="run-bad.wandb"):
        runs = read_runs(tmp_path, skip_corrupt=True)
    assert [r.path for r in runs] == [good]


def test_a_smoke_jobs_run_page_has_panels_system_metrics_and_its_console(tmp_path):
    """A job's offline run, read back by this reader: an LR | SR | HR panel per test degradation
    (the same crops in every run), the validation panel at every val step, system metrics, the
    console log, and the headline metric per degradation in the summary."""
    run_sweeper([*TINY, "train.iterations=8", "train.val_every=4", "eval.max_images=2",
                 "logger.system_metrics_every_s=1"], tmp_path)
    (run_file,) = find_run_files(tmp_path / "runs")
    run = read_run(run_file)
    assert run.state == "finished"
    media = read_media(run_file)
    panels = {m["key"].removeprefix("images/"): m for m in media if m["key"].startswith("images/")}
    assert sorted(panels) == sorted(TEST_DEGRADATIONS)
    for deg, m in panels.items():
        assert m["type"] == "image-file" and m["file"].is_file() and m["step"] == 8
        assert (m["width"], m["height"]) == (3 * 96 + 4, 2 * 96 + 2)  # LR | SR | HR, 2 images, 96 px
        assert m["caption"].startswith(f"{deg}: LR (x4 nearest) | SR | HR; builtin: ")
    assert [m["step"] for m in media if m["key"] == "val/images"] == [4, 8]
    assert {m["key"] for m in media if m["type"] == "table-file"} == {"test/metrics", "test/per_image"}
    stats = system_metrics(run_file)
    assert stats and all("_timestamp" in s for s in stats)
    assert any("proc.memory.rssMB" in s or "memory_percent" in s for s in stats), stats[0]
    console = console_log(run_file)
    assert "train 8/8 (100%)" in console and "results: " in console and "\r" not in console
    for deg in TEST_DEGRADATIONS:  # stable keys: the run table sorts and groups by them
        assert isinstance(run.summary[f"test/builtin/{deg}/psnr"], float)
    assert len({m["sha256"] for m in panels.values()}) == len(panels)  # each degradation its own LR


def test_panels_show_the_same_crops_whatever_the_model():
    """Runs compare side by side: the LR and HR crops of a panel depend on the test images and
    the degradation only (the test protocol's own LR, its noise seed), the SR on the model."""
    import numpy as np
    import torch

    from sweeper.wandb_run import degradation_panels

    rng = np.random.default_rng(0)
    images = [("a", rng.integers(0, 256, (130, 150, 3), dtype=np.uint8)),
              ("b", rng.integers(0, 256, (64, 200, 3), dtype=np.uint8))]
    nets = [torch.nn.Upsample(scale_factor=4, mode=m) for m in ("nearest", "bilinear")]
    a, b = (degradation_panels(net, images, "S", ["clean", "blur+noise"], 4, 0, 96) for net in nets)
    for deg in ("clean", "blur+noise"):
        (pa, caption), (pb, _) = a[deg], b[deg]
        assert caption == f"{deg}: LR (x4 nearest) | SR | HR; S: a, b"
        assert pa.shape == (96 + 2 + 64, 3 * 96 + 4, 3)  # the second image is 64 px high
        lr_and_hr = np.r_[0:96, 196:292]
        assert np.array_equal(pa[:, lr_and_hr], pb[:, lr_and_hr])
        assert not np.array_equal(pa[:, 98:194], pb[:, 98:194])
        assert (pa[96:98] == 255).all()  # white between the rows
    hr = images[0][1][:128, :148]  # mod-crop to x4, then the centre 96 px on the LR grid
    assert np.array_equal(a["clean"][0][:96, 196:292], hr[16:112, 24:120])
