"""Checks of a virtual lab's options, shared by the labs: each refusal is one line,
``"<lab>: <option> must be <what is allowed>, got <value>"`` (a :class:`~pnnkit.errors.ConfigError`), raised when the
lab (or one of its design/imperfection dataclasses) is built, before anything is simulated."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
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
        raise refusal(lab, name, value, rule)
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


@dataclass(frozen=True)
class Allowed:
    """The values an option may take: a real or integer number between ``lo`` and ``hi`` (None: unbounded), each
    end open or closed (reals must also be finite), or a flag (``kind="bool"``). A declarative alternative to
    :func:`check`'s (words, test) rule: the words come from the bounds (:meth:`text`). Used by the circuit lab."""

    lo: float = 0.0
    hi: float | None = None
    lo_open: bool = True
    hi_open: bool = False
    unit: str = ""
    kind: str = "real"  # "real" | "int" | "bool"
    none: str = ""  # if set, None is allowed too and means this

    def text(self) -> str:
        """What is allowed, in words, as a refusal says it: e.g. "a number in [0, 1) V"."""
        if self.kind == "bool":
            return "true or false"
        what = "an integer" if self.kind == "int" else "a finite number" if self.hi is None else "a number"
        lo, hi = (f"{b:g}" if isinstance(b, float) else str(b) for b in (self.lo, self.hi))
        if self.hi is None:
            text = f"{what} {'>' if self.lo_open else '≥'} {lo}{self.unit}"
        else:
            text = f"{what} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}{self.unit}"
        return text + (f" or None ({self.none})" if self.none else "")

    def admits(self, v: Any) -> bool:
        """Whether ``v`` may be given (a bool is never a number; numpy scalars count as numbers)."""
        if v is None:
            return bool(self.none)
        if self.kind == "bool":
            return isinstance(v, (bool, np.bool_))
        number = numbers.Integral if self.kind == "int" else numbers.Real
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, number):
            return False
        if not isinstance(v, numbers.Integral) and not math.isfinite(v):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def check(self, lab: str, option: str, v: Any) -> None:
        """Nothing if :meth:`admits` ``v``; otherwise the one-line refusal naming ``lab`` and ``option``."""
        if not self.admits(v):
            raise refusal(lab, option, v, self.text())


def shown(v: Any) -> str:
    """A value as a message shows it: integers plainly; reals to 12 significant digits (so a derived 0.1 × 12 reads
    1.2), keeping a ".0" when whole so that 2.0 is not mistaken for the integer 2; numpy scalars like Python's;
    anything else as its repr."""
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)):
        text = f"{float(v):.12g}"
        return text + ".0" if re.fullmatch(r"-?\d+", text) else text
    return repr(v)


def refusal(lab: str, option: str, value: Any, allowed: str) -> ConfigError:
    """``"<lab>: <option> must be <allowed>, got <value>"`` as a :class:`ConfigError` (the value as :func:`shown`)."""
    return ConfigError(f"{lab}: {option} must be {allowed}, got {shown(value)}")


def check_allowed_fields(lab: str, obj: Any, option: str, rules: dict[str, Allowed]) -> None:
    """Each field of the dataclass ``obj`` (the lab's option ``option``) against its :class:`Allowed` rule."""
    for name, rule in rules.items():
        rule.check(lab, f"{option}.{name}", getattr(obj, name))
