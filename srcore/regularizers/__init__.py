"""Regularisers for SR training, and the sites of a network where they act.

``REGULARIZERS`` maps a name to its class; ``build_regularizer({"name": ..., **settings})``
makes one; ``srcore.models.build_model(..., regularizers=[spec, ...])`` attaches them to a
network. ``base`` says what a regulariser may do, ``sites`` is the placement vocabulary.
Adding a regulariser = one module here (imported below) + its config file.
"""

from .base import (REGULARIZERS, Regularizer, attach_regularizers, build_regularizer, check_regularizers,
                   register_regularizer)
# Importing a regulariser's module registers it; error messages list them in this order.
from .dropout import Dropout  # isort: skip
from .adaptive_dropout import AdaptiveDropout  # isort: skip
from .droppath import DropPath  # isort: skip
from .simple_align import SimpleAlign  # isort: skip
from .sites import numbered_sites, resolve_sites, site_names

__all__ = ["REGULARIZERS", "Regularizer", "Dropout", "AdaptiveDropout", "DropPath", "SimpleAlign",
           "attach_regularizers", "build_regularizer", "check_regularizers", "register_regularizer",
           "numbered_sites", "resolve_sites", "site_names"]
