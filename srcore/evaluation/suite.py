"""What a test suite is: an iterable of ``EvalCase``, the LR input and HR reference of one
scored image, in scoring order.

The metrics loop (``srcore.evaluation.scoring``) super-resolves each case's LR and scores it
against its HR, so a suite only says which images to score: the paper's suite
(``srcore.evaluation.paper.PaperSuite``) degrades each HR test image eight ways on the fly; a
suite of pre-degraded LR images on disk reads them.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np


class EvalCase(NamedTuple):
    """One scored image: the result rows key on (set, image, degradation)."""
    set: str            # test set name, e.g. "Set5"
    image: str          # image name (file stem), e.g. "baby"
    degradation: str    # the case within the suite, e.g. "blur+noise"
    lr: np.ndarray      # HxWx3 uint8 model input
    hr: np.ndarray      # (H*scale)x(W*scale)x3 uint8 reference


class Suite:
    """A test suite; iterating it yields its ``EvalCase`` in scoring order."""

    def __iter__(self) -> Iterator[EvalCase]:
        raise NotImplementedError
