"""The interface between pnnkit and a physical device (or a simulation standing in for one)."""

from __future__ import annotations

import contextlib
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DeviceError, PnnkitError, RangeError, ShapeError
from .interrupts import InterruptGate, interrupt_gate
from .spec import SystemSpec

Params = Mapping[str, Tensor]


_CHECKED_FLOATS = (torch.float32, torch.float64)
_NO_READING = object()  # measure() has not returned


@functools.lru_cache(maxsize=512)
def inner_bounds(low: float, high: float, dtype: torch.dtype) -> tuple[float, float]:
    """The values of ``dtype`` closest to ``low`` and ``high`` that lie inside ``[low, high]``.

    Rounding a bound to a tensor's precision can move it outward (float32(0.1) > 0.1), so clamping a float32
    tensor to ``(low, high)`` could hand a device 0.1000000015 for a declared maximum of 0.1; clamping to these
    bounds never does. Bounds the dtype represents exactly (±1, 0.5, …) come back unchanged.
    """
    def inward(value: float, toward: float) -> float:
        t = torch.tensor(value, dtype=dtype)
        if (float(t) > value) if toward < value else (float(t) < value):
            t = torch.nextafter(t, torch.tensor(toward, dtype=dtype))
        return float(t)

    lo, hi = ((float(math.ceil(low)), float(math.floor(high))) if not dtype.is_floating_point
              else (inward(low, math.inf), inward(high, -math.inf)))
    if lo > hi:
        raise ConfigError(f"the range [{low}, {high}] holds no {dtype} value: it is narrower than that precision "
                          "resolves; use float64 or a wider range")
    return lo, hi


def clamp_to_range(t: Tensor, low: float, high: float) -> Tensor:
    """``t`` clamped into ``[low, high]`` in its own precision, never past a bound (see :func:`inner_bounds`)."""
    lo, hi = inner_bounds(low, high, t.dtype)
    return t.clamp(lo, hi)


def _finite_within(t: Tensor, low: float, high: float) -> bool:
    """True when every value of ``t`` is finite and inside ``[low, high]`` — one fused min/max reduction.

    The comparison is exact: the extremes come back as Python floats (float64 holds every float32 value) and are
    compared with the bounds as declared, so a value rounded past a bound is not let through. ``aminmax``
    propagates NaN into both results, which then fail every comparison; ±inf fail the bounds or the finiteness
    test. False means "not shown to be fine" (also for dtypes this path does not handle): the caller then runs
    the detailed element-wise checks, which raise the clear error.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return False
    mn, mx = torch.aminmax(t.detach())
    lo, hi = mn.item(), mx.item()
    return math.isfinite(lo) and math.isfinite(hi) and low <= lo and hi <= high


def _refused_dtype(t: Tensor) -> bool:
    """Whether values of ``t``'s dtype cannot be range-checked exactly: complex, bool, and floats other than
    float32/float64 (half precision and float8 round past a bound). Integers are checked exactly."""
    return t.is_complex() or t.dtype == torch.bool or (t.is_floating_point() and t.dtype not in _CHECKED_FLOATS)


def _why_not(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return " (a device takes real values; the imaginary part would be dropped)"
    if dtype == torch.bool:
        return ""
    return " (lower precision rounds values past the hard range)"


def _unit(unit: str) -> str:
    """`` unit`` for a message, or nothing for a dimensionless value (unit ``"1"``)."""
    return "" if unit in ("", "1") else f" {unit}"


def _outside(t: Tensor, low: float, high: float) -> bool:
    """Whether any value of ``t`` lies outside ``[low, high]``, compared exactly (floats in float64, integers with
    the integer bounds inside the range, so an int64 beyond 2⁵³ is not rounded onto a bound)."""
    d = t.detach()
    if not d.is_floating_point():
        info = torch.iinfo(d.dtype)
        lo, hi = max(math.ceil(low), info.min), min(math.floor(high), info.max)
        return lo > hi or bool((d < lo).any()) or bool((d > hi).any())
    if d.dtype != torch.float64:
        d = d.double()
    return bool((d < low).any()) or bool((d > high).any())


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
        """Samples sent to the device so far (one sample through one call = one query), counted when the call
        reaches :meth:`measure`: calls that fail there or return a refused reading count too (the device was used)."""
        return getattr(self, "_queries", 0)

    def attach_log(self, log: Any | None) -> None:
        """Record every call into ``log`` (a :class:`pnnkit.measurements.MeasurementLog`); None detaches."""
        self._log = log

    def push_log(self, log: Any) -> None:
        """Record into ``log`` until :meth:`pop_log`, which re-attaches the log that was attached before."""
        self._log_stack = [*getattr(self, "_log_stack", []), getattr(self, "_log", None)]
        self._log = log

    def pop_log(self) -> Any | None:
        """Undo the last :meth:`push_log`: re-attach the log that was attached before it; returns the popped log."""
        stack = getattr(self, "_log_stack", [])
        log = getattr(self, "_log", None)
        self._log = stack.pop() if stack else None
        return log

    def get_state(self) -> dict[str, Any]:
        """Mutable state (e.g. noise generators) needed to resume a run exactly; default none."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""

    # --- the guarded call ----------------------------------------------------------------------------------
    def check_spec(self) -> SystemSpec:
        """:attr:`spec`, or a one-line :class:`ConfigError` if the system has none."""
        spec = getattr(self, "spec", None)
        if not isinstance(spec, SystemSpec):
            raise ConfigError(f"{type(self).__name__} has no spec: set self.spec = SystemSpec(...) in its __init__")
        return spec

    def check_inputs(self, x: Tensor, params: Params) -> int:
        """Raise :class:`ShapeError` / :class:`RangeError` unless ``x`` and ``params`` fit the spec; return B."""
        spec = self.check_spec()
        if not isinstance(x, Tensor):
            raise ShapeError(f"{spec.name}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != spec.input_dim:
            raise ShapeError(
                f"{spec.name}: x must have shape (batch, {spec.input_dim}), got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        if batch == 0:
            raise ShapeError(f"{spec.name}: empty batch")
        if _refused_dtype(x):
            raise ShapeError(f"{spec.name}: x is {x.dtype}; use float32 or float64{_why_not(x.dtype)}")
        lo, hi = spec.input_low, spec.input_high
        if not _finite_within(x, lo, hi):  # fast path: one reduction; otherwise the detailed checks below
            if not torch.isfinite(x).all():
                raise RangeError(f"{spec.name}: input contains NaN or inf")
            if _outside(x, lo, hi):
                raise RangeError(
                    f"{spec.name}: input outside its hard range [{lo}, {hi}]{_unit(spec.input_unit)} "
                    f"(min {x.min().item():.9g}, max {x.max().item():.9g}); constrain it before the call"
                )
        if not (hasattr(params, "items") and hasattr(params, "__getitem__")):
            raise ShapeError(f"{spec.name}: params must be a mapping of parameter name → tensor "
                             f"({spec.param_names}), got {type(params).__name__}")
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
            if _refused_dtype(v):
                raise ShapeError(f"{spec.name}: parameter {p.name!r} is {v.dtype}; use float32 or float64"
                                 f"{_why_not(v.dtype)}")
            ok_shared = tuple(v.shape) == p.shape
            ok_batched = self.batched_params and tuple(v.shape) == (batch, *p.shape)
            if not (ok_shared or ok_batched):
                want = f"{p.shape}" + (f" or {(batch, *p.shape)}" if self.batched_params else "")
                raise ShapeError(f"{spec.name}: parameter {p.name!r} must have shape {want}, got {tuple(v.shape)}")
            if v.numel() and not _finite_within(v, p.low, p.high):
                if not torch.isfinite(v).all():
                    raise RangeError(f"{spec.name}: parameter {p.name!r} contains NaN or inf")
                if _outside(v, p.low, p.high):
                    raise RangeError(
                        f"{spec.name}: parameter {p.name!r} outside its hard range [{p.low}, {p.high}]{_unit(p.unit)} "
                        f"(min {v.min().item():.9g}, max {v.max().item():.9g})"
                    )
        return batch

    def __call__(self, x: Tensor, params: Params, *, grad: bool = False) -> Tensor:
        """Measure a batch: check, run :meth:`measure`, check the result, count queries, log the call.

        ``grad=True`` keeps the autograd graph (``exact`` mode; differentiable systems only). A ``measure`` that
        fails part-way may attach ``partial_reading`` to the exception it raises — an array ``(B, output_dim)``
        with NaN rows for the samples it could not measure — and the call logs those readings before the error
        goes on, so nothing measured is lost.
        """
        if not grad and isinstance(x, Tensor) and hasattr(params, "items"):  # a Mapping, or nn.ParameterDict
            # the device gets detached CPU copies, made before the check: what was checked is what is sent, and a
            # driver that writes into its input cannot change the network's tensors or the log
            home = x.device
            x = x.detach().cpu().clone()
            params = {k: v.detach().cpu().clone() if isinstance(v, Tensor) else v for k, v in params.items()}
        else:
            home = x.device if isinstance(x, Tensor) else None
        batch = self.check_inputs(x, params)
        if grad and not self.differentiable:
            raise DeviceError(f"{self.spec.name}: system is not differentiable; 'exact' mode needs a simulation")
        log = getattr(self, "_log", None)
        y: Any = _NO_READING
        # with a log, the Ctrl-C handler is in place before the call: Ctrl-C stops a call that is still measuring,
        # and waits from the reading's return to its last logged row
        with interrupt_gate() if log is not None else contextlib.nullcontext(InterruptGate()) as gate:
            try:
                self._calls = self.calls + 1  # counted as it reaches the device, whatever the device then does
                self._queries = self.queries + batch
                if grad:
                    y = self.measure(x, dict(params))
                else:
                    with torch.no_grad():
                        y = self.measure(x, params)
                gate.close()
            except BaseException as e:
                if y is not _NO_READING:  # Ctrl-C came just after the reading returned: keep it, then stop
                    gate.close()
                    try:
                        self._record(y, x, params, batch, log)
                    except PnnkitError as refused:
                        e.add_note(str(refused))
                    raise
                kept = self._keep_partial(x, params, e, gate)
                if isinstance(e, PnnkitError) and kept:
                    try:  # the same error, its message saying where the partial reading went
                        again = type(e)(f"{e}{kept}")
                        again.__dict__.update(e.__dict__)
                    except Exception:
                        e.add_note(kept.strip())
                        raise e from None
                    raise again from e
                if isinstance(e, PnnkitError) or not isinstance(e, Exception):  # our own errors, Ctrl-C: as they are
                    raise
                # the device's own failure (driver, timeout, simulator): named, with its cause
                said = " / ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line
                raise DeviceError(f"{self.spec.name}: measure() failed on call {self.calls} (batch of {batch}): "
                                  f"{type(e).__name__}: {said}{kept}") from e
            measured, out = self._record(y, x, params, batch, log)
        y = measured if measured.dtype == out else measured.to(out)
        if not _finite_within(y, -math.inf, math.inf) and not torch.isfinite(y).all():
            bad = int((~torch.isfinite(y)).any(dim=1).sum())
            what = "NaN/inf" if not torch.isfinite(measured).all() else f"values beyond {out}'s range"
            kept = " (the call is kept in the attached log)" if log is not None else ""
            raise DeviceError(f"{self.spec.name}: measurement returned {what} for {bad} of {batch} samples{kept}")
        return y if home is None or y.device == home else y.to(home)

    def _record(self, y: Any, x: Tensor, params: Params, batch: int, log: Any) -> tuple[Tensor, torch.dtype]:
        """Check a reading that came back and log it as measured (full precision, NaN/inf included: readers skip
        those rows). Returns the reading and the dtype the caller gets it in."""
        y, out = self._checked_reading(y, x, params, batch)
        if log is not None:
            try:
                log.append(x, params, y)
            except Exception as e:  # log closed, disk full: say so in one line, and hand the reading back with it
                said = " / ".join(line.strip() for line in str(e).splitlines() if line.strip())
                err = DeviceError(f"{self.spec.name}: the reading of call {self.calls} (batch of {batch}) could not be "
                                  f"logged to {getattr(log, 'path', 'the attached log')}: {type(e).__name__}: {said} "
                                  "(the reading is attached to this error as .partial_reading)")
                err.partial_reading = y.detach().cpu().numpy()  # type: ignore[attr-defined]
                raise err from e
        return y, out

    def _checked_reading(self, y: Any, x: Tensor, params: Params, batch: int) -> tuple[Tensor, torch.dtype]:
        """``measure``'s return value as a real tensor of shape ``(batch, output_dim)`` at its own precision (integer
        readings as float64, exact up to 2⁵³), and the dtype the caller gets it in
        (:func:`_reading_dtype`). Anything else is refused with a :class:`DeviceError`, after the reading, as it
        came back, is kept in the attached log. The tensor returned is the caller's own: never memory ``measure``
        may write into again."""
        raw = y
        owned = False  # whether y is already a copy of what measure() returned, or still its memory
        if isinstance(y, np.ma.MaskedArray):  # masked (invalid) readings count as NaN: refused later, and logged
            y, owned = y.astype(np.float64).filled(np.nan), True
        why = None
        if isinstance(y, np.ndarray):
            if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
                why = f"measure() returned an array of {y.dtype}, expected real numbers"
            else:  # a driver may read into one buffer it reuses: the reading is copied (once), never aliased
                fresh = owned or np.issubdtype(y.dtype, np.integer)  # integers: copied to float64 below anyway
                y = torch.from_numpy(np.ascontiguousarray(y) if fresh else np.array(y, copy=True, order="C"))
                owned = True
        if why is None and isinstance(y, Tensor) and (y.is_complex() or y.dtype == torch.bool):
            why = f"measure() returned {y.dtype} values, expected real numbers"
        if why is None and not isinstance(y, Tensor):
            why = f"measure() returned {type(y).__name__}, expected a tensor or array"
        if why is None and tuple(y.shape) != (batch, self.spec.output_dim):
            why = f"measure() returned shape {tuple(y.shape)}, expected ({batch}, {self.spec.output_dim})"
        if why is not None:
            log = getattr(self, "_log", None)
            kept = ""
            if log is not None and hasattr(log, "append_refused"):
                where = log.append_refused(x, params, raw, why)
                kept = f" (the reading is kept in {getattr(log, 'path', 'the attached log')} under {where})"
            raise DeviceError(f"{self.spec.name}: {why}{kept}")
        out = _reading_dtype(x, y)
        if not y.is_floating_point():
            y = y.to(torch.float64)  # a new tensor
        elif not owned:  # a tensor the system may write into again (an internal buffer): a copy, same dtype/values
            y = y.clone()
        return y, out

    def _keep_partial(self, x: Tensor, params: Params, error: BaseException, gate: InterruptGate) -> str:
        """Log the ``partial_reading`` a failed ``measure`` attached to ``error`` (Ctrl-C held by ``gate`` meanwhile);
        the note for its message."""
        part = getattr(error, "partial_reading", None)
        log = getattr(self, "_log", None)
        if part is None or log is None:
            return ""
        try:  # never in the way of the device's own error
            y = torch.as_tensor(np.ma.filled(np.ma.asarray(part, dtype=np.float64), np.nan))
            if tuple(y.shape) != (x.shape[0], self.spec.output_dim):
                why = (f"partial_reading of shape {tuple(y.shape)}, expected ({x.shape[0]}, {self.spec.output_dim}) "
                       "with NaN rows for the samples not measured")
                if not hasattr(log, "append_refused"):
                    return f" (its {why} could not be logged)"
                gate.close()
                where = log.append_refused(x, params, part, why)
                return f" (its {why}, is kept in {getattr(log, 'path', 'the attached log')} under {where})"
            gate.close()
            log.append(x, params, y)
        except Exception as e:
            return f" (its partial reading could not be logged: {type(e).__name__}: {e})"
        done = int(torch.isfinite(y).all(dim=1).sum())
        return (f" (the {done} samples measured before the failure are kept in "
                f"{getattr(log, 'path', 'the attached log')})")

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
