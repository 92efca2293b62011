"""What every backbone states about itself, and the registry that names them.

Pre-flight, ``build_model`` and the regularisers ask the backbone class, never a table kept
elsewhere: its scales (``SCALES``), its sites (``site_names``) and whether a set of
arguments is valid (``check_args``). Adding a backbone = one module with a ``Backbone``
subclass decorated with ``@register_backbone("<name>")`` (imported in
``srcore/models/__init__.py``) + ``conf/backbone/<name>.yaml``.

``site_names`` is a classmethod whose parameters are the constructor arguments the site list
depends on, by the same names (SRResNet: ``num_block, upscale``; SwinIR: ``depths, upscale,
upsampler``); ``site_names_for(args)`` calls it with those taken from a full argument dict.

Sites follow one convention (see ``srcore.regularizers.sites``): ``inblock<k>`` is the
``site`` attribute of block k of the module list named by ``BLOCKS`` (``self.body[k - 1]``
by default), every other site lives in ``self.sites``, an ``nn.ModuleDict`` made by
``init_sites``. A backbone laid out differently overrides ``site_modules`` and ``set_site``.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import nn

BACKBONES: dict[str, type[Backbone]] = {}

# The RGB mean of DIV2K's training images, which EDSR, SwinIR and HAT subtract from their input.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def register_backbone(name: str):
    def register(cls: type[Backbone]) -> type[Backbone]:
        cls.name = name
        BACKBONES[name] = cls
        return cls
    return register


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Backbone(nn.Module):
    """Base of the SR networks: their facts as class attributes and classmethods."""

    name: ClassVar[str]  # set by @register_backbone
    SCALES: ClassVar[tuple[int, ...]]
    BLOCKS: ClassVar[str] = "body"  # the module list whose k-th entry holds site inblock<k> as `site`
    # Set by srcore.models.build_model; a network constructed directly has no model_args and no regularisers.
    model_args: dict | None = None
    regularizers: tuple = ()

    @classmethod
    def site_names(cls, *args, **kwargs) -> tuple[str, ...]:
        """The network's sites in forward order (parameters: the constructor arguments they depend on)."""
        raise NotImplementedError

    @classmethod
    def site_names_for(cls, args: Mapping) -> tuple[str, ...]:
        """``site_names`` given a full argument dict (``full_args``): passes the arguments it names."""
        params = inspect.signature(cls.site_names).parameters
        return cls.site_names(**{k: args[k] for k in params if k in args})

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
        """Raise ValueError naming the first bad argument (as ``backbone.<arg>``) and what is allowed.

        The type of each argument is checked against its default's: an int must be a positive
        integer, a float a number, a tuple a non-empty list of such items; then ``check_settings``
        checks what relates several arguments."""
        cls.check_scale(upscale)
        params = cls._signature_params()
        for key in kwargs:
            if key not in params or key == "upscale":
                allowed = ", ".join(k for k in params if k != "upscale")
                raise ValueError(f"backbone.{key} is not a setting of {cls.name}; allowed: {allowed}")
        for key, param in params.items():
            if key != "upscale":
                _check_type(key, param.default, kwargs.get(key, param.default))
        cls.check_settings({k: upscale if k == "upscale" else kwargs.get(k, p.default) for k, p in params.items()})

    @classmethod
    def check_settings(cls, args: dict) -> None:
        """Backbone-specific checks on the full arguments (types already checked); ValueError if bad."""

    @classmethod
    def full_args(cls, upscale, **kwargs) -> dict:
        """Every constructor argument, defaults filled in, in signature order (after ``check_args``);
        sequences become lists, so the result is plain data equal to what a config gives."""
        cls.check_args(upscale, **kwargs)
        args = {k: upscale if k == "upscale" else kwargs.get(k, p.default) for k, p in cls._signature_params().items()}
        return {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in args.items()}

    @classmethod
    def settings_from_weights(cls, state: Mapping) -> dict:
        """The constructor arguments an official weights file implies (sizes, depths, ...), for
        building a network that loads it with ``strict=True``; {} where nothing can be read off."""
        return {}

    def init_sites(self, *args, **kwargs) -> None:
        """An ``nn.Identity`` at every site outside the blocks; called once the blocks exist.
        The arguments are ``site_names``'s."""
        self._site_order = self.site_names(*args, **kwargs)
        self.sites = nn.ModuleDict({n: nn.Identity() for n in self._site_order if not n.startswith("inblock")})

    @staticmethod
    def _block_index(site: str) -> int | None:
        return int(site[len("inblock"):]) - 1 if site.startswith("inblock") else None

    def site_modules(self) -> dict[str, nn.Module]:
        """All site modules by name, in forward order (for regularisers and forward hooks)."""
        blocks = getattr(self, self.BLOCKS)
        return {n: self.sites[n] if self._block_index(n) is None else blocks[self._block_index(n)].site
                for n in self._site_order}

    def set_site(self, name: str, module: nn.Module) -> None:
        """Put a (parameter-free) module at a site."""
        if name not in self._site_order:
            raise KeyError(f"site {name!r} is unknown; allowed: {', '.join(self._site_order)}")
        k = self._block_index(name)
        if k is None:
            self.sites[name] = module
        else:
            getattr(self, self.BLOCKS)[k].site = module


def _check_type(key: str, default, value) -> None:
    """``value`` has the kind of ``default`` (see ``Backbone.check_args``); ValueError naming ``backbone.<key>``."""
    if _is_int(default):
        if not _is_int(value) or value <= 0:
            raise ValueError(f"backbone.{key}={value!r} must be a positive integer")
    elif isinstance(default, float):
        if not _is_real(value):
            raise ValueError(f"backbone.{key}={value!r} must be a number")
    elif isinstance(default, tuple) and default:
        ok = _is_int if _is_int(default[0]) else _is_real
        if (isinstance(value, str) or not isinstance(value, Sequence) or not value
                or not all(ok(v) and (ok is _is_real or v > 0) for v in value)):
            kind = "positive integers" if ok is _is_int else "numbers"
            raise ValueError(f"backbone.{key}={value!r} must be a non-empty list of {kind}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"backbone.{key}={value!r} must be a string")
