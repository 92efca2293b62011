"""Regularisers for SR training, and the sites of a network where they act.

``REGULARIZERS`` maps a name to its class; ``build_regularizer({"name": ..., **settings})``
makes one; ``srcore.models.build_model(..., regularizers=[spec, ...])`` attaches them to a
network. ``base`` says what a regulariser may do, ``sites`` is the placement vocabulary.
Adding a regulariser = one module here (imported below) + its config file.
"""

from .base import (REGULARIZERS, Regularizer, attach_regularizers, build_regularizer, check_regularizers,
                   register_regularizer)
from .dropout import Dropout
from .sites import resolve_sites, site_names

__all__ = ["REGULARIZERS", "Regularizer", "Dropout", "attach_regularizers", "build_regularizer",
           "check_regularizers", "register_regularizer", "resolve_sites", "site_names"]
