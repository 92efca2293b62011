"""What a person sees while a job runs: on a terminal, progress bars with an ETA; anywhere else,
plain lines; and in the job's log file never a control character."""
from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from analysis.wandb_offline import console_log, read_media, system_metrics
from sweeper.progress import JobProgress, format_seconds, headline, resolve_mode
from tests.conftest import ROOT, TINY, run_sweeper

CONTROL = re.compile(r"[\x1b\r]")


def job_dir(out: Path) -> Path:
    (results,) = (out / "runs").glob("*/results.json")
    return results.parent


def run_on_a_terminal(args: list[str], out: Path, columns: int, lines: int, timeout: float = 600) -> str:
    """``python -m sweeper ARGS`` with stdin, stdout and stderr on a pseudo-terminal of
    ``columns`` x ``lines`` (0: unknown, as ``script`` makes; ``stty cols`` sets only one); what
    it printed."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {**os.environ, "SR_OUTPUT_ROOT": str(out), "HYDRA_FULL_ERROR": "0", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *args], cwd=ROOT, env=env, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("columns, lines", [(100, 40), (0, 0), (110, 0)])
def test_a_terminal_sees_progress_bars_with_an_eta(tmp_path, columns, lines):
    out = run_on_a_terminal([*TINY, "train.iterations=12", "logger.images.val=false", "logger.images.panels=false",
                             "logger.system_metrics=false"], tmp_path, columns, lines)
    screen = out.replace("\r\n", "\n")
    bars = [segment for line in screen.split("\n") for segment in line.split("\r")]
    train = [b for b in bars if b.startswith("train:")]
    assert train, out[-2000:]
    # tqdm's [elapsed<remaining, rate, postfix]: the ETA, the speed, the loss of the last log step
    assert any(re.search(r"\d+/12 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+it/s, loss \d\.\d{4}", b) for b in train), train
    assert re.search(r"12/12 \[.*val \d+\.\d\d dB\]", train[-1]), train[-1]
    assert any(re.search(r"eval \(images x degradations\): 100%.*8/8", b) for b in bars), bars
    assert "\r" in out  # a bar redraws in place
    assert not any("iter 4/12" in b for b in bars)  # the bar shows those; the log file keeps them
    assert re.search(r"PSNR on builtin \(dB\): clean \d+\.\d\d  blur \d+\.\d\d", screen)
    jd = job_dir(tmp_path)
    assert f"results: {jd / 'results.json'}" in screen
    log = (jd / "app.log").read_text()
    assert "iter 4/12" in log and "results:" in log
    assert not CONTROL.search(log), [line for line in log.splitlines() if CONTROL.search(line)]
    (run_file,) = jd.glob("wandb/offline-run-*/run-*.wandb")
    console = console_log(run_file)  # wandb's output.log: the bars as they ended, redraws applied
    assert "12/12" in console and not CONTROL.search(console)


def test_without_a_terminal_plain_lines_and_a_clean_log_file(tmp_path):
    """Plain lines (here one per iteration: progress_every_s=0), with the wandb extras off."""
    proc = run_sweeper([*TINY, "logger.progress_every_s=0", "logger.images.val=false", "logger.images.panels=false",
                        "logger.system_metrics=false", "logger.console=false"], tmp_path)
    out = proc.stdout + proc.stderr
    assert not CONTROL.search(out), [line for line in out.splitlines() if CONTROL.search(line)][:5]
    assert re.search(r"train 4/8 \(50%\)  [\d.]+ it/s  ETA \d+s  loss \d\.\d{4}", out), out[-3000:]
    assert re.search(r"train 8/8 \(100%\)  [\d.]+ it/s  took \d+s  loss \d\.\d{4}  val \d+\.\d\d dB", out)
    assert re.search(r"eval 4/8 \(50%\)  [\d.]+ img/s  ETA \d+s", out)
    assert re.search(r"eval 8/8 \(100%\)", out)
    jd = job_dir(tmp_path)
    assert f"results: {jd / 'results.json'}" in out
    log = (jd / "app.log").read_text()
    assert "train 8/8 (100%)" in log and "PSNR on builtin (dB): clean" in log
    assert not CONTROL.search(log)
    # the off switches: no images, no system metrics, no console log in the run files
    (run_file,) = jd.glob("wandb/offline-run-*/run-*.wandb")
    assert not [m for m in read_media(run_file) if m["type"] == "image-file"]
    assert system_metrics(run_file) == [] and console_log(run_file) == ""


def test_progress_lines_and_headline_units():
    assert [format_seconds(s) for s in (9.4, 75, 3725, float("inf"))] == ["9s", "1m15s", "1h02m", "?"]
    with open(os.devnull, "w") as devnull:
        assert resolve_mode("auto", devnull) == "plain" and resolve_mode("off") == "off"
    with pytest.raises(ValueError, match="logger.progress='fancy'"):
        resolve_mode("fancy")
    metrics = {"test/A/clean/psnr": 30.0, "test/A/blur/psnr": 28.0, "test/B/clean/psnr": 26.0,
               "test/B/blur/psnr": 24.0, "test/A/clean/ssim_y": 0.9}
    assert headline(metrics, ["A", "B"]) == ["PSNR on A (dB): clean 30.00  blur 28.00",
                                            "PSNR mean over 2 sets (dB): clean 28.00  blur 26.00"]
    p = JobProgress("off", 0, 10)
    p.on_iteration(1)  # nothing to show, nothing raised
    p.close()


def test_a_job_scored_on_seal_ends_with_its_seal_line():
    from sweeper.progress import seal_headline
    metrics = {"test/builtin/clean/psnr": 25.8, "seal/psnr_y/S": 24.304, "seal/psnr_y/AR": 0.08,
               "seal/psnr_y/RPR_I": 0.125, "seal/psnr_y/cases": 100.0, "seal/ssim_y/S": 0.7}
    assert seal_headline(metrics) == ["SEAL (psnr_y): PSNR-S 24.30  AR 0.08  RPR_I 0.12  cases 100"]
    assert seal_headline({"test/builtin/clean/psnr": 25.8}) == []
