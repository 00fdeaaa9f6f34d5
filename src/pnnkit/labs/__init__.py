"""Virtual labs: simulated physical systems with seeded, physically motivated imperfections.

``make_lab(name, **options)`` builds a registered lab; ``lab_names()`` lists them. A lab module registers
itself with :func:`register_lab`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import ConfigError
from ..options import check_options, option_names, refuse_unknown
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
    imp = imperfections_of(imp, cls)
    return (imp or cls()).scaled(scale)


def imperfections_of(imp: Any, cls: type, lab: str = "") -> Any:
    """``imp`` as a ``cls`` (given as one, or as a mapping of its fields), or None; else a one-line
    :class:`ConfigError` (prefixed ``"<lab>: "`` if ``lab`` is given)."""
    prefix = f"{lab}: " if lab else ""
    if isinstance(imp, Mapping):
        try:
            return cls(**imp)
        except TypeError as e:
            raise ConfigError(f"{prefix}imperfections: {e}") from None
    if imp is not None and not isinstance(imp, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise ConfigError(f"{prefix}imperfections must be {article} {cls.__name__} or a mapping of its fields, "
                          f"got {imp!r}")
    return imp


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


def make_lab(name: str, **options: Any) -> PhysicalSystem:
    """Build lab ``name`` with ``options`` (constructor keyword arguments)."""
    if name not in _LABS and name in _LAB_MODULES:
        importlib.import_module(_LAB_MODULES[name])
    if name not in _LABS:
        raise ConfigError(f"unknown lab {name!r}; available: {', '.join(lab_names())}")
    factory = _LABS[name]
    accepted = option_names(_OPTIONS_OF.get(name, factory))
    if accepted is not None and _OPTIONS_OF.get(name, factory) is not factory:
        accepted |= {"imperfections", "imperfection_scale"}
    refuse_unknown(f"lab {name!r}", options, accepted)
    options = check_options(f"lab {name!r}", _OPTIONS_OF.get(name, factory), options)
    try:
        return factory(**options)
    except TypeError as e:
        raise ConfigError(f"lab {name!r}: {e}") from e
