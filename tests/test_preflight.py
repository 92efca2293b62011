"""Bad values fail before any job starts, naming the value and what is allowed.

Configs are composed exactly as the CLI composes them."""
from pathlib import Path

import pytest
from sweeper.compose import compose
from sweeper.preflight import PreflightError, validate_config
from tests.conftest import TINY, run_sweeper


def _cfg(*overrides):
    return compose(overrides)


def test_defaults_and_presets_are_valid():
    for overrides in [(), ("train=smoke",), ("train=demo",), ("preset=smoke",), ("preset=demo",),
                      ("backbone=rrdb",), ("degradation=bicubic",),
                      ("degradation=multi",), ("degradation=bicubic", "preset=demo"),
                      ("dropout.position=[b4,last]",), ("dropout.kind=element",), ("dropout.position=none",)]:
        validate_config(_cfg(*overrides))


def test_paper_defaults():
    cfg = _cfg()
    assert (cfg.backbone.name, cfg.backbone.num_feat, cfg.backbone.num_block) == ("srresnet", 64, 16)
    assert (cfg.dropout.position, cfg.dropout.kind, cfg.dropout.p) == ("last", "channel", 0.7)
    assert _cfg("backbone=rrdb").dropout.p == 0.5
    t = cfg.train
    assert (t.iterations, t.batch_size, t.patch_size, t.lr, list(t.betas), t.ema_decay) == \
        (500000, 16, 32, 2e-4, [0.9, 0.99], 0.999)
    assert sum(t.scheduler.periods) == t.iterations and cfg.scale == 4 and cfg.eval.crop_border == 4
    assert len(cfg.eval.degradations) == 8 and cfg.logger.mode == "offline"
    assert (cfg.degradation.name, cfg.degradation.gt_size) == ("realesrgan", 400)


@pytest.mark.parametrize("override, message", [
    ("dropout.p=1.5", r"1\.5.*\[0, 1\)"),
    ("dropout.p=1.0", r"1\.0.*\[0, 1\)"),
    ("dropout.position=b99", r"b99.*b1\.\.b16"),
    ("dropout.position=foo", r"foo.*none, first"),
    ("dropout.kind=spatial", r"spatial.*channel, element"),
    ("data.train=/nonexistent/DIV2K", r"/nonexistent/DIV2K"),
    ("+data.test_sets.Set5=/nonexistent/Set5", r"data.test_sets.Set5.*/nonexistent/Set5"),
    ("eval.degradations=[clean,fog]", r"fog.*clean, blur, noise, jpeg"),
    ("logger.mode=cloud", r"cloud.*offline, online, disabled"),
    ("logger.progress=fancy", r"logger.progress=.fancy. is unknown; allowed: auto, bar, plain, off"),
    ("train.device=tpu", r"tpu.*auto, cpu, cuda"),
    ("train.iterations=0", r"train.iterations=0"),
    ("degradation.gt_size=64", r"degradation.gt_size=64.*>= the HR patch"),
    ("degradation.kernel_prob=[0.5,0.6,0,0,0,0]", r"kernel_prob"),
    ("degradation.jpeg_range=[30,120]", r"jpeg_range"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(PreflightError, match=message):
        validate_config(_cfg(override))


def test_bad_multirun_launches_nothing(tmp_path):
    proc = run_sweeper(["-m", *TINY, "dropout.p=0.1,1.5", "dropout.position=last,b99"], tmp_path, check=False)
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert "3 of 4 jobs have invalid settings; nothing was launched" in err
    assert "Traceback" not in err and "sweep_name" not in err
    assert "dropout.p=1.5" in err and "b99" in err
    assert not list(tmp_path.glob("sweeps/*/*/results.json"))
    assert not list(tmp_path.glob("sweeps/*/*/wandb"))


def test_unknown_backbone_lists_the_choices(tmp_path):
    proc = run_sweeper(["-m", "backbone=foo", "dropout.p=0.1,0.5"], tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "backbone/foo" in err and "rrdb" in err and "srresnet" in err
    assert not Path(tmp_path / "sweeps").exists()


def test_missing_data_folder_fails_single_run_before_work(tmp_path):
    proc = run_sweeper([*TINY, "data.train=/nonexistent/HR"], tmp_path, check=False)
    assert proc.returncode == 2 and "/nonexistent/HR" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("runs/*/wandb"))


def test_jobs_that_train_the_same_model_are_named_before_launch(tmp_path):
    """b2 and middle are the same site of a 4-block network: pre-flight says so (and runs both)."""
    proc = run_sweeper(["-m", *TINY, "backbone.num_block=4", "dropout.position=b2,middle,last", "train.iterations=2",
                        "train.log_every=1", "train.val_every=2", "train.ckpt_every=2"], tmp_path)
    err = proc.stderr + proc.stdout
    assert "train the same model" in err
    line = next(x for x in err.splitlines() if "train the same model" in x)
    assert "dropout.position=b2" in line and "dropout.position=middle" in line and "position=last" not in line
