"""The command line: the console script, its custom --help and Hydra's bash tab completion."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = Path(sys.executable).parent / "sr-sweep"


def test_help_lists_the_groups_presets_and_examples():
    out = subprocess.run([sys.executable, "-m", "sweeper", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.startswith("sr-sweep: regularisation ablation studies")
    for line in ("regularizer: adaptive_dropout, dropout, droppath, none, simple_align",
                 "preset: demo, smoke", "sr-sweep -m +experiment=regularizers", "make tables"):
        assert line in text
    assert "Powered by Hydra" not in text


@pytest.mark.skipif(not SCRIPT.exists() or not shutil.which("bash"), reason="sr-sweep is not installed (pip install -e .)")
def test_bash_completion_through_the_installed_script(tmp_path):
    """What `eval "$(sr-sweep -sc install=bash)"` installs completes groups, options and keys."""
    script = ('source <(sr-sweep -sc install=bash)\n'
              'complete -p sr-sweep >/dev/null || exit 3\n'
              'for line in "sr-sweep regularizer=" "sr-sweep back" "sr-sweep preset=s"; do\n'
              '  COMP_LINE="$line"; COMP_POINT=${#line}; COMP_WORDS=($line); COMP_CWORD=$((${#COMP_WORDS[@]}-1))\n'
              '  hydra_bash_completion; echo "${COMPREPLY[*]}"\n'
              'done\n')
    env = {**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # as an activated venv
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    regularizers, backbone, preset = out.stdout.splitlines()[-3:]
    assert set(regularizers.split()) >= {"regularizer=none", "regularizer=simple_align", "regularizer=dropout"}
    assert "backbone=" in backbone.split()
    assert preset.split() == ["preset=smoke"]


def test_a_dry_run_without_a_grid_validates_the_one_job_and_trains_nothing(tmp_path):
    from tests.conftest import TINY, run_sweeper
    proc = run_sweeper([*TINY, "hydra.sweeper.dry_run=true"], tmp_path)
    assert "dry run: 1 job in " in proc.stdout and "(to run); nothing run (a grid: add -m)" in proc.stdout
    assert not list(tmp_path.glob("runs/*/results.json")) and not list(tmp_path.glob("runs/*/checkpoint.pt"))
    bad = run_sweeper([*TINY, "dropout.p=1.5", "hydra.sweeper.dry_run=true"], tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == \
        "error: dropout.p=1.5 is invalid: it must be a real number in [0, 1)"
