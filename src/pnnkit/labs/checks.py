"""Checks of a virtual lab's options, shared by the labs: each refusal is one line,
``"<lab>: <option> must be <what is allowed>, got <value>"`` (a :class:`~pnnkit.errors.ConfigError`), raised when the
lab (or one of its design/imperfection dataclasses) is built, before anything is simulated."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from ..config import SEED_LIMIT
from ..errors import ConfigError
from ..options import float_dtype_named

MAX_BITS = 32  # converter and lookup-table resolution (0 = ideal); no real converter has more
Rule = tuple[str, Callable[[Any], bool]]  # (what is allowed, in words; the test)


def finite(v: float) -> bool:
    return True  # check() has already refused NaN and ±inf


def nonneg(v: float) -> bool:
    return v >= 0


def positive(v: float) -> bool:
    return v > 0


def check(lab: str, name: str, value: Any, rule: str, ok: Callable[[Any], bool] = finite, *,
          integer: bool = False) -> Any:
    """``value`` if it is a finite real number (an integer if ``integer``; never a bool) for which ``ok`` holds;
    otherwise a one-line :class:`ConfigError` naming the lab, the option, what is allowed and the value."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{lab}: {name} must be {rule}, got {value!r}")
    return value


def check_fields(lab: str, obj: Any, prefix: str, rules: dict[str, Rule], integers: tuple[str, ...] = ()) -> None:
    """Each field of the dataclass ``obj`` (the lab's option ``prefix``) against its rule."""
    for name, (rule, ok) in rules.items():
        check(lab, f"{prefix}.{name}", getattr(obj, name), rule, ok, integer=name in integers)


def check_unit_and_seed(lab: str, unit: Any, seed: Any) -> None:
    """A lab's ``unit`` (its fixed defects) and noise ``seed``: integers in [0, 2**32), as a config's are."""
    for name, value in (("unit", unit), ("seed", seed)):
        check(lab, name, value, "an integer in [0, 2**32)", lambda v: 0 <= v < SEED_LIMIT, integer=True)


def float_dtype(lab: str, value: Any) -> torch.dtype:
    """``torch.float32`` / ``torch.float64``, given as such or by name (a config's ``dtype: float64``)."""
    dtype = float_dtype_named(value)
    if dtype is None:
        raise ConfigError(f"{lab}: dtype must be float32 or float64, got {value!r}")
    return dtype
