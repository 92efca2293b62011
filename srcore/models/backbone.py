"""What every backbone states about itself, and the registry that names them.

Pre-flight, ``build_model`` and the regularisers ask the backbone class, never a table kept
elsewhere: its scales (``SCALES``), its sites (``site_names``) and whether a set of
arguments is valid (``check_args``). Adding a backbone = one module with a ``Backbone``
subclass decorated with ``@register_backbone("<name>")`` (imported in
``srcore/models/__init__.py``) + ``conf/backbone/<name>.yaml``.

Sites follow one convention (see ``srcore.regularizers.sites``): ``inblock<k>`` is the
``site`` attribute of ``self.body[k - 1]``, every other site lives in ``self.sites``, an
``nn.ModuleDict`` made by ``init_sites``. A backbone laid out differently overrides
``site_modules`` and ``set_site``.
"""

from __future__ import annotations

import inspect
import numbers
from typing import ClassVar

from torch import nn

BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(name: str):
    def register(cls: type[Backbone]) -> type[Backbone]:
        cls.name = name
        BACKBONES[name] = cls
        return cls
    return register


class Backbone(nn.Module):
    """Base of the SR networks: their facts as class attributes and classmethods."""

    name: ClassVar[str]  # set by @register_backbone
    SCALES: ClassVar[tuple[int, ...]]
    # Set by srcore.models.build_model; a network constructed directly has no model_args and no regularisers.
    model_args: dict | None = None
    regularizers: tuple = ()

    @classmethod
    def site_names(cls, num_block: int, upscale: int) -> tuple[str, ...]:
        """The network's sites in forward order."""
        raise NotImplementedError

    @classmethod
    def check_scale(cls, upscale) -> None:
        if upscale not in cls.SCALES:
            raise ValueError(f"scale={upscale!r} is not supported by {cls.name}; allowed: {cls.SCALES}")

    @classmethod
    def _signature_params(cls) -> dict[str, inspect.Parameter]:
        params = dict(inspect.signature(cls.__init__).parameters)
        params.pop("self")
        return params

    @classmethod
    def check_args(cls, upscale, **kwargs) -> None:
        """Raise ValueError naming the first bad argument (as ``backbone.<arg>``) and what is allowed."""
        cls.check_scale(upscale)
        params = cls._signature_params()
        for key in kwargs:
            if key not in params or key == "upscale":
                allowed = ", ".join(k for k in params if k != "upscale")
                raise ValueError(f"backbone.{key} is not a setting of {cls.name}; allowed: {allowed}")
        for key, param in params.items():
            if isinstance(param.default, int) and not isinstance(param.default, bool) and key != "upscale":
                value = kwargs.get(key, param.default)
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                    raise ValueError(f"backbone.{key}={value!r} must be a positive integer")

    @classmethod
    def full_args(cls, upscale, **kwargs) -> dict:
        """Every constructor argument, defaults filled in, in signature order (after ``check_args``)."""
        cls.check_args(upscale, **kwargs)
        return {k: upscale if k == "upscale" else kwargs.get(k, p.default) for k, p in cls._signature_params().items()}

    def init_sites(self, num_block: int, upscale: int) -> None:
        """An ``nn.Identity`` at every site outside the blocks; called once the blocks exist."""
        self._site_order = self.site_names(num_block, upscale)
        self.sites = nn.ModuleDict({n: nn.Identity() for n in self._site_order if not n.startswith("inblock")})

    @staticmethod
    def _block_index(site: str) -> int | None:
        return int(site[len("inblock"):]) - 1 if site.startswith("inblock") else None

    def site_modules(self) -> dict[str, nn.Module]:
        """All site modules by name, in forward order (for regularisers and forward hooks)."""
        return {n: self.sites[n] if self._block_index(n) is None else self.body[self._block_index(n)].site
                for n in self._site_order}

    def set_site(self, name: str, module: nn.Module) -> None:
        """Put a (parameter-free) module at a site."""
        if name not in self._site_order:
            raise KeyError(f"site {name!r} is unknown; allowed: {', '.join(self._site_order)}")
        k = self._block_index(name)
        if k is None:
            self.sites[name] = module
        else:
            self.body[k].site = module
