"""What a regulariser is, how it is named in configs and checkpoints, and how it joins a network.

A regulariser may
  (a) put a parameter-free module at named sites (``site_module``), so state_dict keys never
      depend on regularisers and BasicSR weights load into any regularised network;
  (b) follow the training iteration (``set_iteration``, called before every forward pass);
      its state must be a pure function of the iteration, so a resumed run continues exactly;
  (c) add a loss term computed from the outputs of sites it taps (``tapped_sites``,
      ``extra_loss``);
  (d) ask for ``views`` degraded LR views of each GT patch (default 1).

A regulariser is described by plain data, its *spec* ``{"name": ..., **settings}``: that is
what configs give ``srcore.models.build_model`` and what ``model.pt`` stores, so a weights
file rebuilds its own network. Adding one = a module with a ``Regularizer`` subclass decorated
with ``@register_regularizer`` (imported in ``srcore/regularizers/__init__.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

REGULARIZERS: dict[str, type[Regularizer]] = {}

# ``capture_key`` of a regulariser that follows the iteration but cannot say how: no CUDA graph.
NOT_CAPTURABLE = object()


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    REGULARIZERS[cls.name] = cls
    return cls


class Regularizer:
    """One regularisation method with its settings; once attached, bound to one network.

    Subclasses set ``name``, validate their settings in ``__init__`` (everything that does not
    depend on the network) and in ``resolve`` (what does), and override the hooks they need.
    """

    name: ClassVar[str]
    views: int = 1  # degraded LR views per GT patch the training loop must produce
    tapped_sites: tuple[str, ...] = ()  # sites whose outputs ``extra_loss`` reads
    draws_in_loss: bool = False  # whether ``extra_loss`` draws random numbers (from torch's global RNG)

    def __init__(self) -> None:
        self.sites: frozenset[str] = frozenset()  # where it acts; set by ``attach_regularizers``

    def settings(self) -> dict:
        """The constructor's arguments as plain data (lists, not tuples)."""
        raise NotImplementedError

    def spec(self) -> dict:
        return {"name": self.name, **self.settings()}

    def resolve(self, sites: Sequence[str]) -> frozenset[str]:
        """Check the settings against a network's site list; the sites this regulariser acts at."""
        return frozenset()

    def site_module(self, site: str) -> nn.Module:
        """A new parameter-free module for one of the resolved sites."""
        raise NotImplementedError

    def set_iteration(self, iteration: int) -> None:
        """Called with the 1-based iteration before each training forward pass."""

    def capture_key(self):
        """A hashable value that changes whenever ``set_iteration`` changes what the forward pass
        computes: a CUDA-graphed training step (``srcore.train_step``) is captured again when it
        changes. None for a regulariser that does not follow the iteration; one that overrides
        ``set_iteration`` must override this too, else the step is never graphed."""
        return NOT_CAPTURABLE if type(self).set_iteration is not Regularizer.set_iteration else None

    def extra_loss(self, sr: torch.Tensor, hr: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A term added to the training loss; ``features`` holds this forward pass's outputs of
        ``tapped_sites``. With ``views`` = k the batch is k views of the same GT patches, view-major."""
        return None


def check_real(name: str, key: str, value, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or [low, high)); else ValueError naming
    ``regularizers.<name>.<key>``. bool is refused: ``True`` is a config mistake, not 1."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and low <= value and (value < high if high_open else value <= high))  # NaN fails
    if not ok:
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"regularizers.{name}.{key}={value!r} must be a real number in {interval}")
    return float(value)


def check_choice(name: str, key: str, value, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"regularizers.{name}.{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
    return value


def build_regularizer(spec: Mapping | Regularizer) -> Regularizer:
    """A fresh regulariser from its spec (a regulariser object is copied through its spec, so
    two networks never share one)."""
    if isinstance(spec, Regularizer):
        spec = spec.spec()
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"a regularizer is a dict with a 'name' (one of {', '.join(REGULARIZERS)}), got {spec!r}")
    settings = dict(spec)
    name = settings.pop("name")
    if name not in REGULARIZERS:
        raise ValueError(f"regularizer {name!r} is unknown; allowed: {', '.join(REGULARIZERS)}")
    try:
        return REGULARIZERS[name](**settings)
    except TypeError as e:  # a missing or misspelt setting
        raise ValueError(f"regularizer {name!r}: {e}") from None


def check_regularizers(specs: Sequence, sites: Sequence[str]) -> list[Regularizer]:
    """Build every regulariser and check it against the network's site list."""
    if isinstance(specs, (str, Mapping, Regularizer)):
        raise ValueError(f"regularizers must be a list of regularizer specs, got {specs!r}")
    regs = [build_regularizer(s) for s in specs]
    for r in regs:
        r.sites = r.resolve(sites)
    return regs


def attach_regularizers(model: nn.Module, specs: Sequence) -> tuple[Regularizer, ...]:
    """Put the regularisers' modules at the model's sites; ``model.regularizers`` lists them.

    Two regularisers at one site are chained in the order given. The model provides
    ``site_modules()`` (name -> module, forward order) and ``set_site(name, module)``.
    """
    sites = tuple(model.site_modules())
    regs = check_regularizers(specs, sites)
    for site in sites:
        modules = [r.site_module(site) for r in regs if site in r.sites]
        if any(m.state_dict() for m in modules):  # would add state_dict keys: BasicSR weights would not load
            raise TypeError(f"a site module at {site!r} holds parameters or buffers; site modules must not")
        if modules:
            model.set_site(site, modules[0] if len(modules) == 1 else nn.Sequential(*modules))
    model.regularizers = tuple(regs)
    return model.regularizers
