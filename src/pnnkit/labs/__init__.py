"""Virtual labs: simulated physical systems with seeded, physically motivated imperfections.

``make_lab(name, **options)`` builds a registered lab; ``lab_names()`` lists them. A lab module registers
itself with :func:`register_lab`.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import torch

from ..errors import ConfigError
from ..options import check_options, describe_options, option_names, refuse_unknown
from ..system import PhysicalSystem


class VirtualLab(PhysicalSystem):
    """Base of the simulated labs: a seeded per-measurement noise generator and a measurement counter, both
    saved and restored by checkpoints (so a resumed run reproduces an uninterrupted one exactly)."""

    def _init_noise(self, seed: int) -> None:
        self._noise = torch.Generator().manual_seed(int(seed))
        self._count = 0  # samples measured so far (labs with slow drift advance it)

    def get_state(self) -> dict[str, Any]:
        return {"noise": self._noise.get_state(), "count": self._count}

    def set_state(self, state: dict[str, Any]) -> None:
        if "noise" in state:
            self._noise.set_state(state["noise"])
        if "count" in state:
            self._count = int(state["count"])

_LABS: dict[str, Callable[..., PhysicalSystem]] = {}
_OPTIONS_OF: dict[str, Callable[..., Any]] = {}
# Lab modules imported lazily on first use (heavy optional dependencies stay optional).
_LAB_MODULES: dict[str, str] = {"oscillators": "pnnkit.labs.oscillators", "shg": "pnnkit.labs.shg", "circuit": "pnnkit.labs.circuit", "plate": "pnnkit.labs.plate"}


def resolve_imperfections(options: dict[str, Any], cls: type) -> Any:
    """Pop ``imperfections`` (an instance of ``cls``, a dict of its fields, or None = defaults) and
    ``imperfection_scale`` (multiplies every defect) from a lab's ``options``; return the scaled defects."""
    imp = options.pop("imperfections", None)
    scale = options.pop("imperfection_scale", 1.0)
    if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ConfigError(f"imperfection_scale must be a finite number ≥ 0, got {scale!r}")
    imp = dataclass_of("", "imperfections", imp, cls)
    with scale_named(scale):
        return (imp or cls()).scaled(scale)


@contextmanager
def scale_named(scale: float) -> Iterator[None]:
    """A refused imperfection (a :class:`ConfigError` naming ``imperfections.<field>``) raised inside the block ends
    with ``(after imperfection_scale <scale>)`` when the scale is not 1: the value it names is the user's × the
    scale."""
    try:
        yield
    except ConfigError as e:
        if scale == 1 or "imperfections." not in str(e):
            raise
        raise ConfigError(f"{e} (after imperfection_scale {scale:g})") from None


def dataclass_of(lab: str, option: str, value: Any, cls: type) -> Any:
    """Option ``option`` of lab ``lab`` as a ``cls``: None (the caller's default) as None, an instance as it is, or
    a mapping of its fields (a field it lacks is named with a did-you-mean; ``cls`` checks the values). Anything else
    is a one-line :class:`ConfigError` (``"<lab>: <option> must be <cls>(…) or a mapping of its fields (<names>), …"``;
    without the prefix for an empty ``lab``)."""
    if value is None or isinstance(value, cls):
        return value
    prefix = f"{lab}: " if lab else ""
    if isinstance(value, Mapping):
        refuse_unknown(f"{prefix}{option}", dict(value), {f.name for f in fields(cls)})
        return cls(**value)
    names = ", ".join(f.name for f in fields(cls))
    raise ConfigError(f"{prefix}{option} must be {cls.__name__}(…) or a mapping of its fields ({names}), got "
                      f"{value!r}")


def register_lab(name: str, factory: Callable[..., PhysicalSystem], module: str | None = None,
                 options_of: type | None = None) -> None:
    """Register ``factory`` as lab ``name``. ``options_of``: the class whose constructor takes the lab's options
    (plus ``imperfections`` and ``imperfection_scale``), so that a mistyped option is named before anything is
    built; without it the factory's own signature is used."""
    _LABS[name] = factory
    _OPTIONS_OF[name] = options_of or factory
    if module:
        _LAB_MODULES[name] = module


def lab_names() -> list[str]:
    return sorted(set(_LABS) | set(_LAB_MODULES))


def _registered(name: str) -> Callable[..., PhysicalSystem]:
    """Lab ``name``'s factory, its module imported on first use; an unknown name is a one-line ConfigError."""
    if name not in _LABS and name in _LAB_MODULES:
        importlib.import_module(_LAB_MODULES[name])
    if name not in _LABS:
        raise ConfigError(f"unknown lab {name!r}; available: {', '.join(lab_names())}")
    return _LABS[name]


def lab_description(name: str) -> tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]:
    """Lab ``name``'s one-line summary and its options with their defaults (:func:`pnnkit.options.describe_options`;
    ``imperfections`` and ``imperfection_scale`` included for every lab that takes them)."""
    factory = _registered(name)
    target = _OPTIONS_OF.get(name, factory)
    summary = (inspect.getdoc(target) or "").split("\n\n")[0].replace("\n", " ").replace("``", "`")
    options = describe_options(target)
    if target is not factory and not any(o[0] == "imperfection_scale" for o in options):
        options.append(("imperfection_scale", "1", []))
    return summary, options


def make_lab(name: str, **options: Any) -> PhysicalSystem:
    """Build lab ``name`` with ``options`` (constructor keyword arguments)."""
    factory = _registered(name)
    accepted = option_names(_OPTIONS_OF.get(name, factory))
    if accepted is not None and _OPTIONS_OF.get(name, factory) is not factory:
        accepted |= {"imperfections", "imperfection_scale"}
    refuse_unknown(f"lab {name!r}", options, accepted)
    options = check_options(f"lab {name!r}", _OPTIONS_OF.get(name, factory), options)
    try:
        return factory(**options)
    except TypeError as e:
        raise ConfigError(f"lab {name!r}: {e}") from e
