"""The fault-injection suite (benchmarks/fault_injection.py, `make faults`): every case must survive
with nothing lost. One representative case runs by default; all of them with `make test-slow`."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "benchmarks" / "fault_injection.py")
faults = sys.modules["fault_injection"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(faults)
CASES = {case.name: case for case in faults.CASES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the suite's command: what every rerun must equal."""
    return faults.reference(tmp_path_factory.mktemp("faults"))


def survives(name, reference, tmp_path):
    verdict, detail, _ = faults.run_case(CASES[name], tmp_path, reference)
    if verdict == "skipped":
        pytest.skip(detail)
    assert verdict == "survived", f"{name}: {detail}"


def test_a_kill_during_a_checkpoint_write_is_survived(reference, tmp_path):
    """kill -9 between writing checkpoint.pt's temporary file and renaming it: the rerun resumes
    from the previous checkpoint, removes the partial write and ends bit-identical, its row done."""
    survives("kill:checkpoint-write", reference, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n != "kill:checkpoint-write"])
def test_every_fault_is_survived(name, reference, tmp_path):
    survives(name, reference, tmp_path)


def test_a_patch_point_that_is_gone_is_reported_not_passed(tmp_path):
    """The harness names a fault point whose function no longer exists (the code moved on), and
    the case fails on it instead of passing without a fault."""
    spec = importlib.util.spec_from_file_location("fault_hooks", faults.HOOKS / "sitecustomize.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)  # SR_FAULT is unset here: nothing is patched
    hooks.POINT, hooks.LOG = "startup", str(tmp_path / "log")
    hooks._patch(types.ModuleType("sweeper.jobstate"))  # a module without JobStatus
    assert '"where": "sweeper.jobstate.JobStatus.__init__"' in (tmp_path / "log").read_text()

    with pytest.raises(faults.Lost, match="patch point not found: no fault point named 'no-such-point'"):
        faults.faulted(["train.lr=-1"], tmp_path / "out", "no-such-point")


def test_a_job_whose_wandb_run_did_not_finish_is_not_done(tmp_path):
    """B under a sweep: results.json complete but the wandb run unfinished (killed in between) is
    a job to launch again (run_job then only completes the run); the results still read as done."""
    from sweeper.jobstate import JobStatus, is_done, job_state, write_json

    JobStatus(tmp_path, "job", 16)  # a new attempt: its wandb run is not finished
    write_json(tmp_path / "results.json", {"metrics": {"test/x/clean/psnr": 1.0}})
    assert not is_done(tmp_path) and job_state(tmp_path)[0] == "done"
    JobStatus(tmp_path, "job", 16).write(wandb_finished=True)
    assert is_done(tmp_path)
    write_json(tmp_path / "status.json", {"state": "done"})  # written before the field existed
    assert is_done(tmp_path)
