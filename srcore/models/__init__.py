"""Super-resolution backbones with BasicSR-compatible parameter names and dropout sites."""

from __future__ import annotations

from torch import nn

from .rrdb import RRDBNet
from .srresnet import SRResNet

BACKBONES: dict[str, type[nn.Module]] = {"srresnet": SRResNet, "rrdb": RRDBNet}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name, e.g. ``build_model("srresnet", dropout_position="last", dropout_p=0.7)``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name](**kwargs)


__all__ = ["BACKBONES", "build_model", "SRResNet", "RRDBNet"]
