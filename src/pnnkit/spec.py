"""Declarative description of a physical system: what goes in, what comes out, in which units and ranges."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError


def _real(owner: str, key: str, value: Any) -> float:
    """``value`` as a float, or a one-line ConfigError naming ``owner.key`` (text, None and booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ConfigError(f"{owner}: {key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{owner}: {key} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class ParamSpec:
    """One named, controllable parameter block of a physical system.

    Attributes:
        name: identifier, used as the key in parameter dicts.
        shape: shape of the block (``()`` for a scalar).
        low, high: hard range, in ``unit``; the system never receives a value outside it.
        unit: physical unit of the values (e.g. ``"rad"``, ``"V"``, ``"1"`` for dimensionless).
        init: initial value for trainable layers (``None``: uniform in ``[low, high]`` scaled by ``init_scale``).
        init_scale: when ``init`` is ``None``, draw uniformly in ``mid ± init_scale·(high−low)/2``.
        doc: one-line description.
    """

    name: str
    shape: tuple[int, ...]
    low: float
    high: float
    unit: str = "1"
    init: float | None = None
    init_scale: float = 0.5
    doc: str = ""

    def __post_init__(self) -> None:
        try:
            shape = tuple(operator.index(s) for s in ((self.shape,) if not hasattr(self.shape, "__iter__")
                                                       else self.shape))
        except TypeError:
            shape = (-1,)
        if any(s < 0 for s in shape):
            raise ConfigError(f"parameter {self.name!r}: shape must be a tuple of integers ≥ 0, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"parameter name {self.name!r} must be a Python identifier")
        who = f"parameter {self.name!r}"
        for key in ("low", "high"):
            object.__setattr__(self, key, _real(who, key, getattr(self, key)))
        scale = _real(who, "init_scale", self.init_scale)
        if not 0 <= scale <= 1:
            raise ConfigError(f"{who}: init_scale must lie in [0, 1] (a fraction of the range), got {self.init_scale!r}")
        if self.init is not None:
            object.__setattr__(self, "init", _real(who, "init", self.init))
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ConfigError(f"parameter {self.name!r}: need finite low < high, got [{self.low}, {self.high}]")
        if self.init is not None and not (self.low <= self.init <= self.high):
            raise ConfigError(f"parameter {self.name!r}: init {self.init} outside [{self.low}, {self.high}]")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SystemSpec:
    """What a physical system accepts and returns.

    Attributes:
        name: short identifier of the system (e.g. ``"oscillators"``).
        input_dim: number of input values per sample.
        output_dim: number of output values per sample.
        input_low, input_high: hard range of every input value, in ``input_unit``.
        params: the controllable parameter blocks.
        input_unit, output_unit: physical units.
        noise_std: typical measurement noise (std, in ``output_unit``), if known.
        meta: free-form facts (lab settings, instrument id) stored with measurements.
    """

    name: str
    input_dim: int
    output_dim: int
    input_low: float
    input_high: float
    params: tuple[ParamSpec, ...] = ()
    input_unit: str = "1"
    output_unit: str = "1"
    noise_std: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"system name must be a non-empty string, got {self.name!r}")
        for key in ("input_low", "input_high"):
            object.__setattr__(self, key, _real(f"system {self.name!r}", key, getattr(self, key)))
        if self.noise_std is not None:
            noise = _real(f"system {self.name!r}", "noise_std", self.noise_std)
            if not (math.isfinite(noise) and noise >= 0):
                raise ConfigError(f"system {self.name!r}: noise_std must be a finite number ≥ 0 or None, got "
                                  f"{self.noise_std!r}")
        params = (self.params,) if isinstance(self.params, ParamSpec) else self.params
        if not hasattr(params, "__iter__") or not all(isinstance(p, ParamSpec) for p in params):
            raise ConfigError(f"system {self.name!r}: params must be a tuple of ParamSpec, got {self.params!r}")
        object.__setattr__(self, "params", tuple(params))
        for key in ("input_dim", "output_dim"):
            value = getattr(self, key)
            try:
                if isinstance(value, bool):
                    raise TypeError
                object.__setattr__(self, key, operator.index(value))
            except TypeError:
                raise ConfigError(f"system {self.name!r}: {key} must be an integer, got {value!r}") from None
        if self.input_dim < 1 or self.output_dim < 1:
            raise ConfigError(f"system {self.name!r}: input_dim and output_dim must be ≥ 1")
        if not (math.isfinite(self.input_low) and math.isfinite(self.input_high) and self.input_low < self.input_high):
            raise ConfigError(f"system {self.name!r}: need finite input_low < input_high, got "
                              f"[{self.input_low}, {self.input_high}]")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ConfigError(f"system {self.name!r}: duplicate parameter names {names}")

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def n_params(self) -> int:
        """Total number of scalar controllable parameters."""
        return sum(p.numel for p in self.params)

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(f"system {self.name!r} has no parameter {name!r}; it has {self.param_names}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = [asdict(p) for p in self.params]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SystemSpec":
        d = dict(d)
        d["params"] = tuple(ParamSpec(**{**p, "shape": tuple(p["shape"])}) for p in d.get("params", ()))
        return cls(**d)

    def same_interface(self, other: "SystemSpec") -> bool:
        """True when ``other`` has the same dimensions, ranges and parameter blocks (the twin contract), and records
        the same quantity where both say which (``meta["records"]``, e.g. the circuit lab's recorded node)."""
        return not self.interface_differences(other)

    def interface_differences(self, other: "SystemSpec") -> list[str]:
        """What differs between this interface and ``other``'s, one ``"what: this vs other"`` line each (empty when
        :meth:`same_interface`)."""
        diff = [f"{key} {getattr(self, key)} vs {getattr(other, key)}"
                for key in ("input_dim", "output_dim", "input_low", "input_high")
                if getattr(self, key) != getattr(other, key)]
        records = (self.meta.get("records"), other.meta.get("records"))
        if None not in records and records[0] != records[1]:  # what the outputs measure, where both specs say
            diff.append(f"records {records[0]} vs {records[1]}")
        if self.param_names != other.param_names:
            diff.append(f"parameters {self.param_names} vs {other.param_names}")
        else:
            for a, b in zip(self.params, other.params):
                diff += [f"parameter {a.name!r} {key} {getattr(a, key)} vs {getattr(b, key)}"
                         for key in ("shape", "low", "high") if getattr(a, key) != getattr(b, key)]
        return diff
