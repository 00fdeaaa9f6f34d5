"""Virtual lab: a network of coupled nonlinear oscillators (pendula), the authors' public example system.

Dynamics (time in units of 1/ω₀, angles in rad)::

    d²q_i/dt² = −α sin q_i + Σ_j J_ij (sin q_j − sin q_i) + e_i

Input: initial angles ``q(0)`` (released at rest). Trainable: symmetric couplings ``J`` (upper triangle) and
constant drives ``e``. Output: the angles ``q(T)``. Integrated with torchdiffeq (fixed-step RK4), batched.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from ..errors import ConfigError
from ..spec import ParamSpec, SystemSpec
from ..system import Params
from . import VirtualLab, dataclass_of, register_lab, resolve_imperfections
from .checks import check, check_fields, check_unit_and_seed, float_dtype, nonneg, positive
from ..twins import DigitalTwin, register_twin

# --- option checks ----------------------------------------------------------------------------------------
LAB = "oscillator lab"  # one-line "oscillator lab: <option> must be …, got …" (prefix pinned by test_bad_input.py)
_check = functools.partial(check, LAB)
_check_fields = functools.partial(check_fields, LAB)
_float_dtype = functools.partial(float_dtype, LAB)


@dataclass(frozen=True)
class OscillatorImperfections:
    """Defects of a physical unit (defaults: the sim-to-real gap of the authors' public example).

    Attributes:
        coupling_error: relative std of each coupling's deviation from its set value, fixed per unit
            (spring constants and attachment points off nominal). Default 0.2.
        nonlinearity_error: relative error of the restoring nonlinearity (α = 1 + error; e.g. pendulum
            length/mass off the design value). Default 0.10.
        input_noise: relative std of the error setting each initial angle, fresh every measurement. Default 0.02.
        readout_noise: std of additive angle-readout noise (rad), fresh every measurement. Default 0.01 rad
            (≈ 0.6°, a camera/encoder readout).
    """

    coupling_error: float = 0.2
    nonlinearity_error: float = 0.10
    input_noise: float = 0.02
    readout_noise: float = 0.01

    # allowed values: the field's name → (rule, test). Standard deviations are ≥ 0; the nonlinearity error must
    # leave α = 1 + error > 0 (α ≤ 0 is a pendulum with no restoring force, or an inverted one). A coupling's
    # factor 1 + ε, ε ~ N(0, coupling_error), has no sign rule: J itself takes both signs by design, and a
    # Gaussian draw can cross 0 at any std > 0 (the documented sweep runs at 4 × 0.2 = 0.8).
    _RULES: ClassVar[dict[str, tuple[str, Callable[[Any], bool]]]] = {
        "coupling_error": ("a finite number ≥ 0 (a relative std)", nonneg),
        "nonlinearity_error": ("a finite number > -1 (α = 1 + error must stay > 0: a restoring force)",
                               lambda v: v > -1),
        "input_noise": ("a finite number ≥ 0 (a relative std)", nonneg),
        "readout_noise": ("a finite number ≥ 0 rad (a std)", nonneg),
    }

    def __post_init__(self) -> None:
        _check_fields(self, "imperfections", self._RULES)

    def scaled(self, factor: float) -> "OscillatorImperfections":
        """Every defect × ``factor`` (0 gives the design itself)."""
        return replace(self, **{k: v * factor for k, v in asdict(self).items()})


def couplings_matrix(j_upper: Tensor, n: int) -> Tensor:
    """Symmetric ``(…, n, n)`` coupling matrix with zero diagonal from its upper triangle ``(…, n(n−1)/2)``."""
    iu = torch.triu_indices(n, n, 1, device=j_upper.device)
    full = j_upper.new_zeros(*j_upper.shape[:-1], n * n)
    full[..., iu[0] * n + iu[1]] = j_upper
    full[..., iu[1] * n + iu[0]] = j_upper
    return full.reshape(*j_upper.shape[:-1], n, n)


def integrate_oscillators(
    q0: Tensor, J: Tensor, e: Tensor, alpha: Tensor | float, duration: float, steps: int
) -> Tensor:
    """Angles at ``t = duration`` for a batch released at rest from ``q0`` (B, n). ``J``: (n, n) or (B, n, n)."""
    n = q0.shape[-1]
    row_sum = J.sum(-1)

    shared = J.dim() == 2  # one J for the batch: a single (B, n) × (n, n) product (J is symmetric)

    def rhs(t: Tensor, state: Tensor) -> Tensor:
        q, p = state[:, :n], state[:, n:]
        s = torch.sin(q)
        js = s @ J if shared else (J @ s.unsqueeze(-1)).squeeze(-1)
        coupling = js - row_sum * s
        return torch.cat([p, -alpha * s + coupling + e], dim=1)

    state0 = torch.cat([q0, torch.zeros_like(q0)], dim=1)
    t = torch.tensor([0.0, duration], dtype=q0.dtype)
    out = odeint(rhs, state0, t, method="rk4", options={"step_size": duration / steps})
    return out[-1, :, :n]


class CoupledOscillatorLab(VirtualLab):
    """``n`` coupled pendula; each instance is one physical unit (``unit`` seeds its fixed defects).

    Args:
        n: number of oscillators (input and output dimension).
        duration: evolution time T (units of 1/ω₀).
        steps: RK4 steps over T.
        input_max: initial angles are set within ±input_max rad.
        coupling_max, drive_max: hard ranges of J and e (units of ω₀²).
        unit: seed of this unit's fixed defects (different seeds = different units of the same design).
        ideal: no defects and no noise (the design itself).
        imperfections: defect levels (see :class:`OscillatorImperfections`; also a mapping of its fields).
        seed: seed of the per-measurement noise.
        dtype: simulation dtype, float32 or float64 (also by name).

    Every option and every imperfection field is checked when the lab is built, before anything is drawn or
    simulated (a one-line :class:`ConfigError` naming it; the allowed values are listed in
    ``docs/labs/oscillators.md``).
    """

    differentiable = True
    batched_params = True

    def __init__(
        self,
        n: int = 8,
        *,
        duration: float = 3.0,
        steps: int = 30,
        input_max: float = 1.0,
        coupling_max: float = 0.5,
        drive_max: float = 0.5,
        unit: int = 0,
        ideal: bool = False,
        imperfections: OscillatorImperfections | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        # every option is checked before anything is drawn or simulated (the dataclass checks its own fields)
        _check("n", n, "an integer ≥ 2 (the number of pendula)", lambda v: v >= 2, integer=True)
        _check("duration", duration, "a finite number > 0 (evolution time, in 1/ω₀)", positive)
        _check("steps", steps, "an integer ≥ 1 (RK4 steps over the duration)", lambda v: v >= 1, integer=True)
        _check("input_max", input_max, "a finite number in (0, π] rad (a release angle beyond ±π is the same "
               "pendulum position as one within)", lambda v: 0 < v <= math.pi)
        _check("coupling_max", coupling_max, "a finite number > 0 ω₀²", positive)
        _check("drive_max", drive_max, "a finite number > 0 ω₀²", positive)
        check_unit_and_seed(LAB, unit, seed)
        if not isinstance(ideal, (bool, np.bool_)):
            raise ConfigError(f"{LAB}: ideal must be true or false, got {ideal!r}")
        imperfections = dataclass_of(LAB, "imperfections", imperfections, OscillatorImperfections)
        dtype = _float_dtype(dtype)
        self.n, self.duration, self.steps = int(n), float(duration), int(steps)
        self.unit, self.ideal = int(unit), bool(ideal)
        self.imperfections = OscillatorImperfections(0, 0, 0, 0) if ideal else (imperfections or OscillatorImperfections())
        imp = self.imperfections
        self.spec = SystemSpec(
            name="oscillators" + ("-ideal" if ideal else ""),
            input_dim=n,
            output_dim=n,
            input_low=-input_max,
            input_high=input_max,
            input_unit="rad",
            output_unit="rad",
            params=(
                ParamSpec("J", (n * (n - 1) // 2,), -coupling_max, coupling_max, "ω0^2", init_scale=0.2,
                          doc="couplings J_ij, i<j, row-major upper triangle"),
                ParamSpec("e", (n,), -drive_max, drive_max, "ω0^2", init_scale=0.2, doc="constant drive per oscillator"),
            ),
            noise_std=imp.readout_noise or None,
            meta={"duration": duration, "steps": steps, "unit": unit, "ideal": ideal, "imperfections": asdict(imp)},
        )
        g = torch.Generator().manual_seed(1_000_003 * (self.unit + 1))
        eps = torch.randn(n * (n - 1) // 2, generator=g, dtype=torch.float64) * imp.coupling_error
        self._coupling_factor = (1 + eps).to(dtype)
        self._alpha = 1.0 + imp.nonlinearity_error
        self.dtype = dtype
        self._init_noise(seed)

    def measure(self, x: Tensor, params: Params) -> Tensor:
        """Simulated in the lab's ``dtype``; returned in the caller's."""
        imp, dt = self.imperfections, self.dtype
        J = couplings_matrix(params["J"].to(dt) * self._coupling_factor, self.n)
        q0 = x.to(dt)
        if imp.input_noise:
            q0 = q0 * (1 + imp.input_noise * torch.randn(x.shape, generator=self._noise, dtype=dt))
        y = integrate_oscillators(q0, J, params["e"].to(dt), self._alpha, self.duration, self.steps)
        if imp.readout_noise:
            y = y + imp.readout_noise * torch.randn(y.shape, generator=self._noise, dtype=dt)
        return y.to(x.dtype)

    def ideal_twin(self) -> "OscillatorPhysicsTwin":
        """The design equations as a differentiable twin (calibration factors at their nominal 1)."""
        return OscillatorPhysicsTwin(self.spec, n=self.n, duration=self.duration, steps=self.steps)


@register_twin
class OscillatorPhysicsTwin(DigitalTwin):
    """Physics-based twin: the design ODE with a few calibration factors fitted to measurements.

    Learnable: nonlinearity scale α, a global coupling gain, and input/output gains. Per-coupling defects of a
    unit are *not* modelled (a realistic calibration cannot resolve them), so the twin stays imperfect.
    """

    kind: ClassVar[str] = "oscillator_physics"

    def __init__(self, spec: SystemSpec, n: int, duration: float, steps: int) -> None:
        super().__init__(spec)
        self.n, self.duration, self.steps = int(n), float(duration), int(steps)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.log_coupling_gain = nn.Parameter(torch.zeros(()))
        self.log_input_gain = nn.Parameter(torch.zeros(()))
        self.log_output_gain = nn.Parameter(torch.zeros(()))

    def config(self) -> dict[str, Any]:
        return {"n": self.n, "duration": self.duration, "steps": self.steps}

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        dt = x.dtype
        J = couplings_matrix(params["J"].to(dt) * self.log_coupling_gain.exp().to(dt), self.n)
        q0 = x * self.log_input_gain.exp().to(dt)
        e = params["e"].to(dt)
        y = integrate_oscillators(q0, J, e, self.log_alpha.exp().to(dt), self.duration, self.steps)
        return y * self.log_output_gain.exp().to(dt)



def _make(**options: Any) -> CoupledOscillatorLab:
    imp = resolve_imperfections(options, OscillatorImperfections)
    return CoupledOscillatorLab(imperfections=imp, **options)


register_lab("oscillators", _make, options_of=CoupledOscillatorLab)
