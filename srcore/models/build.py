"""Networks by name: a backbone plus its regularisers, described by plain data.

``build_model(**model.model_args)`` rebuilds any network ``build_model`` made; that dict is
what ``model.pt`` stores (see ``checkpoint``), so weights files rebuild their own network.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..regularizers import attach_regularizers, check_regularizers
from .backbone import BACKBONES, Backbone


def backbone_class(name: str) -> type[Backbone]:
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is unknown; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def check_model(name: str, upscale: int = 4, regularizers: Sequence = (), **backbone_kwargs) -> dict:
    """Every check ``build_model`` makes, without building (pre-flight): ValueError naming the
    first bad value. Returns the full ``model_args``: every backbone argument, defaults filled
    in, and the regularisers as specs."""
    cls = backbone_class(name)
    args = cls.full_args(upscale, **backbone_kwargs)
    regs = check_regularizers(regularizers, cls.site_names_for(args))
    return {"name": name, **args, "regularizers": [r.spec() for r in regs]}


def build_model(name: str, upscale: int = 4, regularizers: Sequence = (), **backbone_kwargs) -> Backbone:
    """Build a backbone by name with its regularisers (plain specs or ``Regularizer`` objects), e.g.
    ``build_model("srresnet", regularizers=[{"name": "dropout", "position": "last", "p": 0.7, "kind": "channel"}])``.

    The backbone's weights are initialised exactly as without regularisers (their modules
    are parameter-free and placed after construction), so a seed gives the same network."""
    model_args = check_model(name, upscale, regularizers, **backbone_kwargs)
    args = {k: v for k, v in model_args.items() if k not in ("name", "regularizers")}
    model = BACKBONES[name](**args)
    attach_regularizers(model, model_args["regularizers"])
    model.model_args = model_args
    return model
