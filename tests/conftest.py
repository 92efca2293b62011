import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# wandb must never touch the network in tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("WANDB_SILENT", "true")

# A tiny job: seconds on a CPU. Compose with the CLI exactly as a user would.
TINY = ["preset=smoke", "train.iterations=8", "train.log_every=4", "train.val_every=8", "train.ckpt_every=4",
        "backbone.num_feat=8", "backbone.num_block=2", "eval.max_images=1", "data.val_max_images=1"]


def run_sweeper(args, out_root, check=True, timeout=600, env=None):
    """Run `python -m sweeper ARGS` in a subprocess, as the CLI user does."""
    e = {**os.environ, "SR_OUTPUT_ROOT": str(out_root), "HYDRA_FULL_ERROR": "0", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweeper failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
