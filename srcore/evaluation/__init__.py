"""The TEST protocols: which LR images a trained model is scored on, and the metrics loop.

- ``suite``: what a test suite is (``EvalCase``: set, image, degradation, LR, HR);
- ``paper``: the paper's protocol, eight fixed degradations of every HR test image
  (``TEST_DEGRADATIONS``, ``make_test_lr``, ``noise_seed``, ``mod_crop``, ``PaperSuite``);
- ``scoring``: super-resolve and score every case of a suite (``evaluate_suite``; ``evaluate``
  for the paper's suite), per-set means (``summarize``);
- ``seal``: SEAL's Set14-SE (ICLR 2024), 100 real-world degradations shipped as LR images
  (``SealSuite``, ``evaluate_seal``, ``check_seal_root``); ``seal_scores``: its AR / RPR
  metrics against the acceptance and excellence lines.

The training degradations are ``srcore.degrade``. Adding a suite: one module with a ``Suite``
subclass, one line in ``SUITES``.
"""
from __future__ import annotations

from srcore.evaluation.paper import TEST_DEGRADATIONS, PaperSuite
from srcore.evaluation.scoring import METRICS, evaluate, evaluate_suite, summarize, super_resolve
from srcore.evaluation.seal import SealSuite
from srcore.evaluation.suite import EvalCase, Suite

SUITES: dict[str, type[Suite]] = {
    "paper": PaperSuite,
    "seal": SealSuite,
}
