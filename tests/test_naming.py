"""Stable, collision-free sweep and job names."""
from sweeper.__main__ import with_sweep_name
from sweeper.naming import job_dirname, run_id, sweep_name_from_argv


def test_sweep_name_is_stable_and_order_free():
    a = sweep_name_from_argv(["-m", "dropout.position=last,middle", "dropout.p=0.1,0.5"])
    b = sweep_name_from_argv(["dropout.p=0.1,0.5", "-m", "dropout.position=last,middle"])
    assert a == b == "dropout.p=0.1,0.5__dropout.position=last,middle"


def test_run_only_keys_do_not_change_names():
    base = sweep_name_from_argv(["dropout.p=0.1,0.5"])
    assert sweep_name_from_argv(["dropout.p=0.1,0.5", "logger.mode=online", "train.device=cuda",
                                 "hydra/launcher=submitit_local", "paths.output_root=/x"]) == base
    assert job_dirname(["dropout.p=0.1", "sweep_name=x", "train.device=cpu"]) == "dropout.p=0.1"
    assert job_dirname(["dropout.p=0.1", "eval.lr_cache=null", "eval.workers=2", "eval.batch_size=8"]) == "dropout.p=0.1"
    assert job_dirname(["dropout.p=0.1", "eval.tile=64"]) != "dropout.p=0.1"  # tiles may change a pixel


def test_different_sweeps_never_share_a_name():
    names = {sweep_name_from_argv(a) for a in (["data.train=/a/b"], ["data.train=/a_b"], ["data.train=_a_b"],
                                                 ["x=" + "y" * 300], ["x=" + "y" * 299 + "z"])}
    assert len(names) == 5
    assert all(len(n) <= 120 for n in names)


def test_job_names_and_run_ids():
    assert job_dirname([]) == "default"
    assert job_dirname(["dropout.position=[b4,last]", "backbone=rrdb"]) == "backbone=rrdb,dropout.position=[b4,last]"
    assert run_id("s", "j") == run_id("s", "j") != run_id("s", "k")
    assert len(run_id("s", "j")) == 16


def test_multirun_gets_a_sweep_name():
    argv = with_sweep_name(["prog", "-m", "dropout.p=0.1,0.5"])
    assert argv[-1] == "sweep_name='dropout.p=0.1,0.5'"
    assert with_sweep_name(["prog", "dropout.p=0.1"]) == ["prog", "dropout.p=0.1"]
    assert with_sweep_name(["prog", "-m", "sweep_name=mine"]) == ["prog", "-m", "sweep_name=mine"]
