"""Super-resolution backbones with BasicSR-compatible parameter names and regulariser sites.

``BACKBONES`` maps a name to its class (filled by ``@register_backbone`` in each arch
module imported here); ``build_model`` / ``check_model`` build / validate a network from
plain data; ``load_model`` rebuilds one from a ``save_weights`` file.
"""

from __future__ import annotations

from .backbone import BACKBONES, Backbone, register_backbone
from .build import build_model, check_model
from .checkpoint import load_model, load_official, load_weights, save_weights
# Importing an arch module registers its backbone; error messages list them in this order.
from .srresnet import SRResNet  # isort: skip
from .rrdb import RRDBNet  # isort: skip
from .edsr import EDSR  # isort: skip
from .swinir import SwinIR  # isort: skip
from .hat import HAT  # isort: skip

__all__ = ["BACKBONES", "Backbone", "register_backbone", "build_model", "check_model", "load_model", "load_official",
           "load_weights", "save_weights", "SRResNet", "RRDBNet", "EDSR", "SwinIR", "HAT"]
