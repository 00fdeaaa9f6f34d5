"""The interface between pnnkit and a physical device (or a simulation standing in for one)."""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DeviceError, PnnkitError, RangeError, ShapeError
from .spec import SystemSpec

Params = Mapping[str, Tensor]


_HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=256)
def _bound_in(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``, as the element-wise comparison ``x < value`` rounds it."""
    return float(torch.tensor(value, dtype=dtype))


def _finite_within(t: Tensor, low: float, high: float) -> bool:
    """True when every value of ``t`` is finite and inside ``[low, high]`` — one fused min/max reduction.

    ``aminmax`` propagates NaN into both results, which then fail every comparison; ±inf fail the bounds or the
    finiteness test. False means "not shown to be fine" (also for dtypes this path does not handle): the caller
    then runs the detailed element-wise checks, which raise the clear error.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return False
    mn, mx = torch.aminmax(t.detach())
    lo, hi = mn.item(), mx.item()
    return (math.isfinite(lo) and math.isfinite(hi)
            and _bound_in(low, t.dtype) <= lo and hi <= _bound_in(high, t.dtype))


class PhysicalSystem(ABC):
    """A controllable physical system ``y = f_p(x, θ)``: implement :meth:`measure` and set :attr:`spec`.

    ``measure`` receives a batch ``x`` of shape ``(B, spec.input_dim)`` and one parameter setting per call
    (``params[name]`` has the declared shape), both as detached CPU tensors already checked against their hard
    ranges; it returns ``(B, spec.output_dim)`` as a tensor or numpy array. A numpy / subprocess / instrument
    implementation never sees autograd. Call the system (``system(x, params)``), not ``measure``: the call checks
    shapes and ranges *before* anything reaches the device, checks the measurement is finite, and counts queries.

    Subclasses whose ``measure`` is a differentiable torch computation set ``differentiable = True``; only then
    can a layer run in ``exact`` mode. Simulations with random noise may expose ``get_state``/``set_state`` so
    that a training run can be checkpointed and resumed bit-identically.
    """

    spec: SystemSpec
    differentiable: bool = False
    #: when True the system also accepts per-sample parameters, ``params[name]`` of shape ``(B, *shape)``.
    batched_params: bool = False

    @abstractmethod
    def measure(self, x: Tensor, params: Params) -> Tensor | np.ndarray:
        """Run the device on a batch. Units as in :attr:`spec`."""

    # --- bookkeeping -------------------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        return getattr(self, "_calls", 0)

    @property
    def queries(self) -> int:
        """Samples sent through the system so far (one sample through one call = one query)."""
        return getattr(self, "_queries", 0)

    def reset_counters(self) -> None:
        self._calls = 0
        self._queries = 0

    def attach_log(self, log: Any | None) -> None:
        """Record every successful call into ``log`` (a :class:`pnnkit.measurements.MeasurementLog`); None detaches."""
        self._log = log

    def get_state(self) -> dict[str, Any]:
        """Mutable state (e.g. noise generators) needed to resume a run exactly; default none."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""

    # --- the guarded call ----------------------------------------------------------------------------------
    def check_inputs(self, x: Tensor, params: Params) -> int:
        """Raise :class:`ShapeError` / :class:`RangeError` unless ``x`` and ``params`` fit the spec; return B."""
        spec = getattr(self, "spec", None)
        if not isinstance(spec, SystemSpec):
            raise ConfigError(f"{type(self).__name__} has no spec: set self.spec = SystemSpec(...) in its __init__")
        if not isinstance(x, Tensor):
            raise ShapeError(f"{spec.name}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != spec.input_dim:
            raise ShapeError(
                f"{spec.name}: x must have shape (batch, {spec.input_dim}), got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        if batch == 0:
            raise ShapeError(f"{spec.name}: empty batch")
        if x.dtype in _HALF:
            raise ShapeError(f"{spec.name}: x is {x.dtype}; use float32 or float64 (half precision rounds values "
                             "past the hard range)")
        lo, hi = spec.input_low, spec.input_high
        if not _finite_within(x, lo, hi):  # fast path: one reduction; otherwise the detailed checks below
            if not torch.isfinite(x).all():
                raise RangeError(f"{spec.name}: input contains NaN or inf")
            if bool((x < lo).any()) or bool((x > hi).any()):
                raise RangeError(
                    f"{spec.name}: input outside its hard range [{lo}, {hi}] {spec.input_unit} "
                    f"(min {x.min().item():.9g}, max {x.max().item():.9g}); constrain it before the call"
                )
        missing = set(spec.param_names) - set(params)
        extra = set(params) - set(spec.param_names)
        if missing or extra:
            raise ShapeError(
                f"{spec.name}: parameters {sorted(params)} do not match the spec {spec.param_names}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unknown {sorted(extra)}" if extra else "")
            )
        for p in spec.params:
            v = params[p.name]
            if not isinstance(v, Tensor):
                raise ShapeError(f"{spec.name}: parameter {p.name!r} must be a tensor")
            if v.dtype in _HALF:
                raise ShapeError(f"{spec.name}: parameter {p.name!r} is {v.dtype}; use float32 or float64")
            ok_shared = tuple(v.shape) == p.shape
            ok_batched = self.batched_params and tuple(v.shape) == (batch, *p.shape)
            if not (ok_shared or ok_batched):
                want = f"{p.shape}" + (f" or {(batch, *p.shape)}" if self.batched_params else "")
                raise ShapeError(f"{spec.name}: parameter {p.name!r} must have shape {want}, got {tuple(v.shape)}")
            if v.numel() and not _finite_within(v, p.low, p.high):
                if not torch.isfinite(v).all():
                    raise RangeError(f"{spec.name}: parameter {p.name!r} contains NaN or inf")
                if bool((v < p.low).any()) or bool((v > p.high).any()):
                    raise RangeError(
                        f"{spec.name}: parameter {p.name!r} outside its hard range [{p.low}, {p.high}] {p.unit} "
                        f"(min {v.min().item():.9g}, max {v.max().item():.9g})"
                    )
        return batch

    def __call__(self, x: Tensor, params: Params, *, grad: bool = False) -> Tensor:
        """Measure a batch: check, run :meth:`measure`, check the result, count queries.

        ``grad=True`` keeps the autograd graph (``exact`` mode; differentiable systems only).
        """
        batch = self.check_inputs(x, params)
        if grad and not self.differentiable:
            raise DeviceError(f"{self.spec.name}: system is not differentiable; 'exact' mode needs a simulation")
        try:
            if grad:
                y = self.measure(x, dict(params))
            else:  # the device gets detached CPU copies, whatever device the network runs on: a driver that
                with torch.no_grad():  # writes into its input cannot change the network's tensors or the log
                    y = self.measure(x.detach().cpu().clone(),
                                     {k: v.detach().cpu().clone() for k, v in params.items()})
        except PnnkitError:
            raise
        except Exception as e:  # the device's own failure (driver, timeout, simulator): named, with its cause
            raise DeviceError(f"{self.spec.name}: measure() failed on call {self.calls + 1} (batch of {batch}): "
                              f"{type(e).__name__}: {e}") from e
        if isinstance(y, np.ma.MaskedArray):  # masked (invalid) readings count as NaN: refused below, and logged
            y = y.astype(np.float64).filled(np.nan)
        if isinstance(y, np.ndarray):
            if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
                raise DeviceError(f"{self.spec.name}: measure() returned an array of {y.dtype}, expected real numbers")
            y = torch.from_numpy(np.ascontiguousarray(y))
            y = y.to(_reading_dtype(x, y))
        if isinstance(y, Tensor) and (y.is_complex() or y.dtype == torch.bool):
            raise DeviceError(f"{self.spec.name}: measure() returned {y.dtype} values, expected real numbers")
        if isinstance(y, Tensor) and y.device != x.device:
            y = y.to(x.device)
        if not isinstance(y, Tensor):
            raise DeviceError(f"{self.spec.name}: measure() returned {type(y).__name__}, expected a tensor or array")
        if tuple(y.shape) != (batch, self.spec.output_dim):
            raise DeviceError(
                f"{self.spec.name}: measure() returned shape {tuple(y.shape)}, expected ({batch}, {self.spec.output_dim})"
            )
        self._calls = self.calls + 1
        self._queries = self.queries + batch
        log = getattr(self, "_log", None)
        if log is not None:  # what came back is kept as measured, NaN/inf included (readers skip those rows)
            log.append(x, params, y)
        if not _finite_within(y, -math.inf, math.inf) and not torch.isfinite(y).all():
            bad = int((~torch.isfinite(y)).any(dim=1).sum())
            kept = " (the call is kept in the attached log)" if log is not None else ""
            raise DeviceError(f"{self.spec.name}: measurement returned NaN/inf for {bad} of {batch} samples{kept}")
        out = _reading_dtype(x, y)
        return y if y.dtype == out else y.to(out)

    def __repr__(self) -> str:
        spec = getattr(self, "spec", None)
        if not isinstance(spec, SystemSpec):
            return f"{type(self).__name__}(no spec)"
        return f"{type(self).__name__}({spec.name!r}, in={spec.input_dim}, out={spec.output_dim})"


def _reading_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    """The dtype a measurement is returned in: ``x``'s when ``x`` is floating point (the network's precision);
    for integer inputs (DAC codes, say) the reading's own floating dtype (the default one for integer readings), so
    a measurement is never truncated to integers."""
    if x.is_floating_point():
        return x.dtype
    return y.dtype if y.is_floating_point() else torch.get_default_dtype()


class FunctionSystem(PhysicalSystem):
    """Wrap a plain function ``fn(x, params) -> y`` (torch or numpy) and a spec as a :class:`PhysicalSystem`.

    ``numpy=True`` hands ``fn`` numpy arrays instead of tensors (for instrument or subprocess code).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        spec: SystemSpec,
        *,
        numpy: bool = False,
        differentiable: bool = False,
        batched_params: bool = False,
    ) -> None:
        self.fn = fn
        self.spec = spec
        self.numpy = numpy
        self.differentiable = differentiable and not numpy
        self.batched_params = batched_params

    def measure(self, x: Tensor, params: Params) -> Tensor | np.ndarray:
        if self.numpy:
            y = self.fn(x.cpu().numpy(), {k: v.cpu().numpy() for k, v in params.items()})
            return y if isinstance(y, np.ma.MaskedArray) else np.asarray(y)  # a mask is read by __call__
        return self.fn(x, params)
