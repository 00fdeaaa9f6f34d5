"""Virtual lab: a speaker-driven multimode metal plate recorded by a microphone (the paper's mechanical PNN).

Signal chain (all times in s; the model is written in normalised amplitudes, see ``docs/labs/plate.md``)::

    DAC (ZOH, sample_rate) ─► amplifier (drive_scale) ─► speaker (2nd-order, soft excursion limit)
        ─► plate (n_modes thin-plate modes, stretching nonlinearity) ─► microphone (band-pass) ─► ADC ─► features

Speaker cone excursion ``u_s`` (units of its excursion limit X_max), drive voltage ``V``::

    ü_s = −ω_s² (u_s + α_s u_s³) − (ω_s/Q_s) u̇_s + ω_s² g_s V / (1 + u_s²)

(suspension hardening α_s and force-factor drop Bl(x) ∝ 1/(1 + u_s²): a soft excursion limit). The plate is
base-excited through the speaker stud at ``r_d``; modal displacements ``u_k`` (units of the plate thickness)::

    ü_k + 2ζ_k ω_k u̇_k + ω_k² u_k = P_k ü_s − γ ω_1² κ_k u_k Σ_j κ_j u_j²,     κ_k = ω_k / ω_1

(von Kármán-type stretching: one shared in-plane tension ∝ Σ κ_j u_j², so every mode is a hardening Duffing
oscillator and all modes are coupled cubically). Modes of a simply supported rectangular plate:
``f_mn = f_11 (m² + n² (a/b)²) / (1 + (a/b)²)``, ``φ_mn = 2 sin(mπξ) sin(nπη)``; ``P_k = P_0 φ_k(r_d)``;
damping is Rayleigh-type ``2ζ_k ω_k = α_R + β_R ω_k²`` (Q ≈ 50–250). The microphone above ``r_m`` records the
local pressure ∝ plate acceleration ``Σ_k φ_k(r_m) ü_k`` through a 2nd-order high-pass and a 2nd-order low-pass.

Integrator: the whole linear chain (speaker, plate, microphone filters: 2 + 2N + 4 states) is propagated
*exactly* over each substep for the zero-order-hold drive (one matrix exponential per call); the two nonlinear
forces are applied as symplectic velocity kicks in a Strang splitting (half-step linear, kick, half-step
linear). The result is exact in the linear regime at any step size and 2nd-order accurate in the nonlinear one;
``simulate_reference`` integrates the same ODE with torchdiffeq (fixed-step RK4) for validation.
Batched over samples and modes; the only Python loop is over time steps.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from ..errors import ConfigError
from ..spec import ParamSpec, SystemSpec
from ..system import Params
from . import VirtualLab, dataclass_of, register_lab, resolve_imperfections, scale_named
from .checks import MAX_BITS, check, check_fields, check_unit_and_seed, finite, float_dtype, nonneg, positive
from ..twins import DigitalTwin, register_twin

__all__ = [
    "PlateDesign",
    "PlateImperfections",
    "PlatePhysics",
    "PlateLab",
    "PlatePhysicsTwin",
    "plate_mode_indices",
    "simulate_plate",
    "simulate_reference",
    "transfer_function",
]


# ----------------------------------------------------------------------------------------------------------
# option checks
# ----------------------------------------------------------------------------------------------------------
_check = functools.partial(check, "plate")  # one-line "plate: <option> must be …, got …" errors
_check_fields = functools.partial(check_fields, "plate")
_float_dtype = functools.partial(float_dtype, "plate")


def _point(name: str, value: Any) -> tuple[float, float]:
    """A (ξ, η) position on the plate: two numbers strictly inside (0, 1) (the simply supported edges, where every
    mode shape vanishes, excluded)."""
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 1 for v in value))
    if not ok:
        raise ConfigError(f"plate: {name} must be two numbers (ξ, η), each in (0, 1) (a point on the plate, as "
                          f"fractions of its sides), got {value!r}")
    return float(value[0]), float(value[1])


# ----------------------------------------------------------------------------------------------------------
# design and defects
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlateDesign:
    """Nominal physics of the plate lab (the design every unit is built to).

    Attributes:
        f11: fundamental mode frequency (Hz). 100 Hz = a 187 mm × 137 mm × 0.5 mm aluminium plate with simply
            supported edges (f_11 = (π/2)(1/a² + 1/b²)·√(D/ρh), D = Eh³/12(1−ν²), E = 69 GPa, ρ = 2700 kg/m³).
        aspect: side ratio b/a (0.73, irrational-looking so that few modes are degenerate).
        plate_length: side a in m (0.187); only used to convert the position tolerance to plate coordinates.
        rayleigh_alpha, rayleigh_beta: damping 2ζω = α + βω² (1/s, s). Defaults 12.57 1/s and 3.18e-7 s give
            Q = 50 at 100 Hz (mount and air-pumping losses), a peak Q = 250 at 1 kHz and Q = 150 at 3 kHz
            (material/thermoelastic losses); typical of a screwed-down metal sheet.
        stretching: γ, hardening coefficient of the stretching nonlinearity in units of ω_1²; with amplitudes in
            plate thicknesses, von Kármán theory gives γ of order one (a single mode at amplitude h shifts its
            frequency by ≈ 3γ/8 ≈ 37 %).
        drive_point, mic_point: (ξ, η) positions of the speaker stud and the microphone as fractions of (a, b);
            both off-centre so that all modes couple.
        drive_coupling: P_0, plate modal amplitude (thicknesses) per speaker acceleration (X_max·ω_s² units)
            — the speaker/plate mass ratio × X_max / h. Sets where the plate turns nonlinear (see docs).
        speaker_f, speaker_q: speaker resonance (Hz) and total Q (a small full-range driver: 90 Hz, 0.7).
        speaker_gain: g_s, static cone excursion per volt in units of X_max (0.25 /V: 1 V DC moves the cone by a
            quarter of its linear excursion).
        speaker_hardening: α_s, cubic suspension stiffening at u_s = X_max (0.5).
        mic_highpass, mic_lowpass: corners (Hz) of the microphone/preamp 2nd-order Butterworth high-pass (40 Hz,
            capsule vent + AC coupling) and low-pass (8 kHz, capsule roll-off + anti-alias filter).
        pressure_gain: fixed scale from plate acceleration to the recorded signal, chosen once so that the
            ideal lab's features are O(1) for uniform random inputs at drive_scale 1 (see docs).
        adc_full_scale: ADC range ±full_scale in the recorded (normalised) units (16.0, ≈ 2× the peak of ±1 V binary drive).
        dac_full_scale: DAC range ±full_scale in V (2.0; inputs use ±1 V, inputs + bias ±1.5 V).
    """

    f11: float = 100.0
    aspect: float = 0.73
    plate_length: float = 0.187
    rayleigh_alpha: float = 12.57
    rayleigh_beta: float = 3.18e-7
    stretching: float = 1.0
    drive_point: tuple[float, float] = (0.45, 0.42)
    mic_point: tuple[float, float] = (0.62, 0.71)
    drive_coupling: float = 2.0
    speaker_f: float = 90.0
    speaker_q: float = 0.7
    speaker_gain: float = 0.25
    speaker_hardening: float = 0.5
    mic_highpass: float = 40.0
    mic_lowpass: float = 8000.0
    pressure_gain: float = 2.772e-7
    adc_full_scale: float = 16.0
    dac_full_scale: float = 2.0

    # allowed values: the field's name → (rule, test); the unit is that of the field
    _RULES: ClassVar[dict[str, tuple[str, Callable[[Any], bool]]]] = {
        "f11": ("a finite number > 0 Hz", positive),
        "aspect": ("a finite number > 0", positive),
        "plate_length": ("a finite number > 0 m", positive),
        "rayleigh_alpha": ("a finite number ≥ 0 1/s", nonneg),
        "rayleigh_beta": ("a finite number ≥ 0 s", nonneg),
        "stretching": ("a finite number ≥ 0", nonneg),  # hardening; a softening plate would run away
        "drive_coupling": ("a finite number > 0", positive),
        "speaker_f": ("a finite number > 0 Hz", positive),
        "speaker_q": ("a finite number > 0", positive),
        "speaker_gain": ("a finite number > 0 1/V", positive),
        "speaker_hardening": ("a finite number ≥ 0", nonneg),
        "mic_highpass": ("a finite number > 0 Hz", positive),
        "pressure_gain": ("a finite number > 0", positive),
        "adc_full_scale": ("a finite number > 0", positive),
        "dac_full_scale": ("a finite number > 0 V", positive),
    }

    def __post_init__(self) -> None:
        _check_fields(self, "design", self._RULES)
        hp = self.mic_highpass
        _check("design.mic_lowpass", self.mic_lowpass, f"a finite number > design.mic_highpass = {hp:g} Hz",
               lambda v: v > hp)
        for name in ("drive_point", "mic_point"):
            object.__setattr__(self, name, _point(f"design.{name}", getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drive_point"], d["mic_point"] = list(self.drive_point), list(self.mic_point)
        return d


@dataclass(frozen=True)
class PlateImperfections:
    """Defects of one physical unit and of each measurement (defaults: typical bench values, see docs).

    Fixed per unit (drawn from the ``unit`` seed):
        freq_error: relative std of each mode frequency (0.015: thickness ±1–2 %, edge clamping and residual
            stress move plate modes by 1–2 % between nominally identical sheets).
        q_error: log-normal std of each mode's Q (0.15: mounting losses vary by 10–20 % between assemblies).
        position_error: std (m) of the speaker-stud and microphone positions in each direction (1e-3 m: hand
            assembly), which changes every mode's drive and pick-up coupling.
        speaker_error: log-normal std of the speaker's resonance, Q and gain (0.10: driver tolerance ±10–15 %).
        mic_gain_error_db: std of the microphone+preamp sensitivity (1.0 dB: capsule tolerance).
    Slow drift (advances with the number of samples measured):
        drift_kelvin: amplitude (K) of the room-temperature cycle (1.0 K: HVAC cycling).
        drift_period: samples per temperature cycle (20000 ≈ 30 min at ~10 recordings/s).
        tempco: relative change of the mode frequencies per K (−2.6e-4 /K: aluminium, ½·dE/dT/E).
    Fresh every measurement (``seed``):
        acoustic_noise: rms room noise at the microphone output in the normalised units of the recording at
            drive_scale 1 (1e-3 ≈ −60 dB below the typical signal: 40–45 dB SPL room vs ~100 dB SPL plate).
            It does not scale with the drive, so it matters more at small drive_scale.
        electronic_noise: rms preamp + ADC noise in ADC units (5e-4 ≈ −90 dB re full scale ±16).
        jitter: std (s) of the delay between drive and recording, drawn per recording from a normal law truncated
            at ±4·jitter and at ±one ADC sample (the interpolation's range) (3e-6 s ≈ 0.1 ADC
            sample at 32 kHz: a duplex audio interface restarting its streams at 192 kHz aligns them to its
            5.2 µs sample period, ± about one sample across the clock-domain crossing).
    Quantisation:
        dac_bits, adc_bits: 16-bit converters over their full scale (0 = ideal converter).
    """

    freq_error: float = 0.015
    q_error: float = 0.15
    position_error: float = 1e-3
    speaker_error: float = 0.10
    mic_gain_error_db: float = 1.0
    drift_kelvin: float = 1.0
    drift_period: float = 20000.0
    tempco: float = -2.6e-4
    acoustic_noise: float = 1e-3
    electronic_noise: float = 5e-4
    jitter: float = 3e-6
    dac_bits: int = 16
    adc_bits: int = 16

    # allowed values: the field's name → (rule, test); the unit is that of the field
    _RULES: ClassVar[dict[str, tuple[str, Callable[[Any], bool]]]] = {
        "freq_error": ("a finite number ≥ 0", nonneg),
        "q_error": ("a finite number ≥ 0", nonneg),
        "position_error": ("a finite number ≥ 0 m", nonneg),
        "speaker_error": ("a finite number ≥ 0", nonneg),
        "mic_gain_error_db": ("a finite number ≥ 0 dB", nonneg),
        "drift_kelvin": ("a finite number ≥ 0 K", nonneg),
        "drift_period": ("a finite number > 0 samples", positive),
        "tempco": ("a finite number (1/K)", finite),
        "acoustic_noise": ("a finite number ≥ 0", nonneg),
        "electronic_noise": ("a finite number ≥ 0", nonneg),
        "jitter": ("a finite number ≥ 0 s", nonneg),
        "dac_bits": (f"an integer from 0 (ideal converter) to {MAX_BITS}", lambda v: 0 <= v <= MAX_BITS),
        "adc_bits": (f"an integer from 0 (ideal converter) to {MAX_BITS}", lambda v: 0 <= v <= MAX_BITS),
    }

    def __post_init__(self) -> None:
        _check_fields(self, "imperfections", self._RULES, integers=("dac_bits", "adc_bits"))

    _SCALED: ClassVar[tuple[str, ...]] = (
        "freq_error", "q_error", "position_error", "speaker_error", "mic_gain_error_db", "drift_kelvin",
        "acoustic_noise", "electronic_noise", "jitter",
    )

    def scaled(self, factor: float) -> "PlateImperfections":
        """All defect magnitudes × ``factor`` (converter resolution kept; ``factor = 0`` turns everything off)."""
        if factor < 0:
            raise ConfigError(f"imperfection_scale must be ≥ 0, got {factor}")
        out = replace(self, **{k: getattr(self, k) * factor for k in self._SCALED})
        return out if factor > 0 else replace(out, dac_bits=0, adc_bits=0)

    @classmethod
    def none(cls) -> "PlateImperfections":
        return cls().scaled(0.0)


# ----------------------------------------------------------------------------------------------------------
# physics
# ----------------------------------------------------------------------------------------------------------
def plate_mode_indices(n_modes: int, aspect: float) -> list[tuple[int, int]]:
    """The ``n_modes`` lowest (m, n) modes of a simply supported a × b plate (b = aspect·a), ascending."""
    r2 = 1.0 / aspect**2
    cands = [(m, n) for m in range(1, n_modes + 2) for n in range(1, n_modes + 2)]
    cands.sort(key=lambda mn: (mn[0] ** 2 + mn[1] ** 2 * r2, mn))
    return cands[:n_modes]


@dataclass
class PlatePhysics:
    """Concrete constants of one plate (design or a unit with its defects); tensors are float64, shape (N,).

    ``omega`` mode angular frequencies (rad/s), ``zeta`` damping ratios, ``kappa`` stretching weights,
    ``drive`` and ``pickup`` the modal couplings at the stud and microphone; scalars for speaker and mic.
    """

    omega: Tensor
    zeta: Tensor
    kappa: Tensor
    drive: Tensor
    pickup: Tensor
    omega1: float
    stretching: float
    speaker_omega: Tensor | float
    speaker_q: Tensor | float
    speaker_gain: Tensor | float
    speaker_hardening: float
    mic_omega_h: float
    mic_omega_l: float
    pressure_gain: Tensor | float

    @property
    def n_modes(self) -> int:
        return int(self.omega.shape[0])

    @classmethod
    def from_design(cls, design: PlateDesign, n_modes: int) -> "PlatePhysics":
        idx = plate_mode_indices(n_modes, design.aspect)
        m = torch.tensor([i for i, _ in idx], dtype=torch.float64)
        n = torch.tensor([j for _, j in idx], dtype=torch.float64)
        r2 = 1.0 / design.aspect**2
        omega = 2 * math.pi * design.f11 * (m**2 + n**2 * r2) / (1 + r2)
        zeta = (design.rayleigh_alpha + design.rayleigh_beta * omega**2) / (2 * omega)
        return cls(
            omega=omega,
            zeta=zeta,
            kappa=omega / omega[0],
            drive=design.drive_coupling * _shape(m, n, design.drive_point),
            pickup=_shape(m, n, design.mic_point),
            omega1=float(omega[0]),
            stretching=design.stretching,
            speaker_omega=2 * math.pi * design.speaker_f,
            speaker_q=design.speaker_q,
            speaker_gain=design.speaker_gain,
            speaker_hardening=design.speaker_hardening,
            mic_omega_h=2 * math.pi * design.mic_highpass,
            mic_omega_l=2 * math.pi * design.mic_lowpass,
            pressure_gain=design.pressure_gain,
        )


def _shape(m: Tensor, n: Tensor, point: tuple[float, float] | Tensor) -> Tensor:
    xi, eta = point[0], point[1]
    return 2 * torch.sin(m * math.pi * xi) * torch.sin(n * math.pi * eta)


def _state_space(ph: PlatePhysics) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Continuous linear system ż = A z + b V + E F (float64), output y = cᵀ z.

    State layout: [u_s, u̇_s, u_1..u_N, u̇_1..u̇_N, a_1, a_2, h_1, h_2] (speaker, plate, mic low-pass, high-pass).
    Returns ``A (n, n)``, ``b (n,)``, ``E (1+N, n)`` (nonlinear forces [F_s, F_1..F_N] → accelerations; the
    speaker force also accelerates the plate base) and ``c (n,)``.
    """
    N = ph.n_modes
    n = 2 + 2 * N + 4
    f64 = torch.float64
    ws = torch.as_tensor(ph.speaker_omega, dtype=f64)
    qs = torch.as_tensor(ph.speaker_q, dtype=f64)
    gs = torch.as_tensor(ph.speaker_gain, dtype=f64)
    K = torch.as_tensor(ph.pressure_gain, dtype=f64)
    wh, wl, qb = ph.mic_omega_h, ph.mic_omega_l, 1 / math.sqrt(2)
    iq, ip, im = 2, 2 + N, 2 + 2 * N
    ar = torch.arange(N)
    rows, cols, vals = [], [], []

    def put(r: Any, c: Any, v: Any) -> None:
        rr, cc, vv = torch.broadcast_tensors(torch.as_tensor(r), torch.as_tensor(c), torch.as_tensor(v, dtype=f64))
        rows.append(rr.reshape(-1))
        cols.append(cc.reshape(-1))
        vals.append(vv.reshape(-1))

    speaker_row = torch.stack([-ws**2, -ws / qs])  # u̇_s' = speaker_row · (u_s, u̇_s) + ws² gs V
    put(0, 1, 1.0)
    put(1, 0, speaker_row[0])
    put(1, 1, speaker_row[1])
    put(iq + ar, ip + ar, 1.0)
    put(ip + ar, iq + ar, -ph.omega**2)
    put(ip + ar, ip + ar, -2 * ph.zeta * ph.omega)
    put(ip + ar, 0, ph.drive * speaker_row[0])  # base excitation P_k ü_s
    put(ip + ar, 1, ph.drive * speaker_row[1])
    # microphone: low-pass on the pick-up velocity v = Σ φ_k(r_m) u̇_k; a_2 = d/dt of its output = acceleration
    put(im, im + 1, 1.0)
    put(im + 1, im, -(wl**2))
    put(im + 1, im + 1, -wl / qb)
    put(im + 1, ip + ar, wl**2 * ph.pickup)
    # high-pass (s² numerator) driven by a_2: y = ḧ_1 = a_2 − ω_h² h_1 − (ω_h/Q) h_2
    put(im + 2, im + 3, 1.0)
    put(im + 3, im + 2, -(wh**2))
    put(im + 3, im + 3, -wh / qb)
    put(im + 3, im + 1, 1.0)
    r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    A = torch.zeros(n * n, dtype=f64).index_put((r * n + c,), v, accumulate=True).reshape(n, n)
    b_idx = torch.cat([torch.tensor([1]), ip + ar])
    b_val = torch.cat([(ws**2 * gs).reshape(1), ph.drive * ws**2 * gs])
    b = torch.zeros(n, dtype=f64).index_put((b_idx,), b_val)
    e_r = torch.cat([torch.zeros(N + 1, dtype=torch.long), 1 + torch.arange(N)])
    e_c = torch.cat([torch.tensor([1]), ip + ar, ip + ar])
    e_v = torch.cat([torch.ones(1, dtype=f64), ph.drive, torch.ones(N, dtype=f64)])
    E = torch.zeros((N + 1) * n, dtype=f64).index_put((e_r * n + e_c,), e_v).reshape(N + 1, n)
    c_out = torch.zeros(n, dtype=f64)
    c_out = c_out.index_put((torch.tensor([im + 1, im + 2, im + 3]),), torch.stack(
        [K, -K * wh**2, -K * wh / qb]))
    return A, b, E, c_out


def _zoh(A: Tensor, b: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """Exact discretisation over ``dt`` with the input held: z(t+dt) = Φ z(t) + γ V."""
    n = A.shape[0]
    M = torch.cat([torch.cat([A, b.reshape(n, 1)], 1), torch.zeros(1, n + 1, dtype=A.dtype)], 0)
    X = torch.linalg.matrix_exp(M * dt)
    return X[:n, :n], X[:n, n]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the time-stepping loop on one intra-op thread, then restore the setting.

    Every op in the loop is tiny (B × n_modes); multithreading them only adds synchronisation, and on a busy
    machine a 2-thread BLAS call on a (256, 8) × (8, 40) product can stall for milliseconds.
    """
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def simulate_plate(
    drive: Tensor,
    physics: PlatePhysics,
    *,
    sample_rate: float,
    substeps: int,
    return_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate the chain for the ZOH speaker voltage ``drive`` (B, L) from rest (Strang splitting, exact linear).

    Returns the recorded signal y (B, L·substeps) at times ``(j + ½)·h``, ``h = 1/(sample_rate·substeps)``.
    ``return_states`` also returns all states (B, L·substeps, 2 + 2N + 4) at the same times (layout of
    :func:`_state_space`; velocities before that step's nonlinear kick; for tests — memory-hungry, no grad).

    Differentiable w.r.t. ``drive``, ``physics.omega`` and ``physics.zeta`` (other constants are treated as
    fixed). Both passes run on one intra-op thread (see :func:`_one_thread`). When only ``drive`` needs a
    gradient (PAT's backward and in-silico training through a frozen twin), the backward pass is the
    hand-written adjoint of the time-stepping loop (:class:`_DriveAdjoint`); otherwise (fitting a twin's
    physics) the forward is recomputed with autograd, like activation checkpointing (:class:`_Recompute`).
    """
    kw = {"sample_rate": sample_rate, "substeps": substeps}
    tensors = (drive, physics.omega, physics.zeta)
    if return_states or not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        with _one_thread():
            return _simulate(drive, physics, return_states=return_states, **kw)
    if not (physics.omega.requires_grad or physics.zeta.requires_grad):
        return _DriveAdjoint.apply(drive, physics, sample_rate, substeps)

    def fn(d: Tensor, om: Tensor, ze: Tensor) -> Tensor:
        return _simulate(d, replace(physics, omega=om, zeta=ze), **kw)  # type: ignore[return-value]

    return _Recompute.apply(fn, *tensors)


class _Recompute(torch.autograd.Function):
    """Run ``fn(*inputs)`` without a graph; in backward, rebuild it and take the VJP (single-threaded)."""

    @staticmethod
    def forward(ctx: Any, fn: Any, *inputs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.fn = fn
        ctx.save_for_backward(*inputs)
        with torch.no_grad(), _one_thread():
            return fn(*inputs)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        inputs = ctx.saved_tensors
        with torch.enable_grad(), _one_thread():
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
            out = ctx.fn(*leaves)
            need = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(out, need, grad_out, allow_unused=True))
        return (None, *(next(grads) if t.requires_grad else None for t in leaves))


class _DriveAdjoint(torch.autograd.Function):
    """:func:`_simulate` with a hand-written reverse pass for the gradient w.r.t. the drive only.

    Autograd through the loop records ≈ 15 tiny ops per time step and walks them back one by one (≈ 5× the
    forward's time for the plate twin at batch 128). The adjoint runs the same recurrence backwards with the
    transposed step matrices and the derivatives of the two kicks, using the mode displacements and speaker
    excursions kept by the forward pass. Same math as autograd (``tests/test_lab_plate.py`` compares them).
    """

    @staticmethod
    def forward(ctx: Any, drive: Tensor, physics: PlatePhysics, sample_rate: float, substeps: int) -> Tensor:  # type: ignore[override]
        keep: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
        with torch.no_grad(), _one_thread():
            y = _simulate(drive, physics, sample_rate=sample_rate, substeps=substeps, keep=keep)
        ctx.physics, ctx.kw, ctx.keep = physics, (sample_rate, substeps), keep
        ctx.save_for_backward(drive)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        sample_rate, substeps = ctx.kw
        with torch.no_grad(), _one_thread():
            g = _drive_adjoint(grad_y, ctx.saved_tensors[0], ctx.keep, ctx.physics, sample_rate, substeps)
        return g, None, None, None


@dataclass
class _Step:
    """Coefficients of one merged time step of :func:`_simulate` (see the comments there)."""

    i_s: Tensor
    iq: Tensor
    ip: Tensor
    aqq: Tensor
    aqp: Tensor
    apq: Tensor
    app: Tensor
    w_s: Tensor
    w_q: Tensor
    w_p: Tensor
    mqT: Tensor
    mpT: Tensor
    a_s: Tensor
    k_col: Tensor
    k_row: Tensor
    bl_gain: Tensor
    g_b: Tensor
    c_s: Tensor


def _step(physics: PlatePhysics, sample_rate: float, substeps: int, dt: torch.dtype) -> _Step:
    N = physics.n_modes
    h = 1.0 / (sample_rate * substeps)
    A, b, E, c = _state_space(physics)
    phi_half, g_half = _zoh(A, b, h / 2)
    phi = phi_half @ phi_half
    g_a, g_b = phi_half @ g_half, g_half  # input of a merged step: V_j·Φ½γ½ + V_{j+1}·γ½
    # Structure of Φ (block-triangular): plate modes only mix pairwise (u_k, u̇_k); the "small" states
    # S = [u_s, u̇_s, a_1, a_2, h_1, h_2] take input from the speaker, the plate and themselves. Each step
    # multiplies X = [S, V_j, V_{j+1}, f_s] (B, 9) by the matching columns of Φ and adds the plate terms;
    # f_s is the speaker's nonlinear force, whose kick (on u̇_s and, through the base, on every u̇_k) is
    # folded into its column −h·Φ·E_s.
    iq = torch.arange(2, 2 + N)
    ip = iq + N
    i_s = torch.tensor([0, 1, 2 + 2 * N, 3 + 2 * N, 4 + 2 * N, 5 + 2 * N])
    aqq, aqp, apq, app = (phi[r, cc].to(dt) for r, cc in ((iq, iq), (iq, ip), (ip, iq), (ip, ip)))
    cols = torch.cat([phi[:, i_s], g_a.reshape(-1, 1), g_b.reshape(-1, 1), -h * (phi @ E[0]).reshape(-1, 1)], 1)
    w_s, w_q, w_p = cols[i_s].T.to(dt), cols[iq].T.to(dt), cols[ip].T.to(dt)  # (9, 6), (9, N), (9, N)
    mqT, mpT = phi[i_s][:, iq].T.to(dt), phi[i_s][:, ip].T.to(dt)  # (N, 6): plate → mic
    ws = torch.as_tensor(physics.speaker_omega, dtype=torch.float64)
    gs = torch.as_tensor(physics.speaker_gain, dtype=torch.float64)
    return _Step(
        i_s=i_s, iq=iq, ip=ip, aqq=aqq, aqp=aqp, apq=apq, app=app, w_s=w_s, w_q=w_q, w_p=w_p, mqT=mqT, mpT=mpT,
        a_s=(ws**2 * physics.speaker_hardening).to(dt),
        k_col=physics.kappa.to(dt).reshape(N, 1),
        k_row=(-h * physics.stretching * physics.omega1**2 * physics.kappa).to(dt).reshape(1, N),  # kick = h·F
        bl_gain=(ws**2 * gs).to(dt), g_b=g_b.to(dt), c_s=c[i_s].to(dt),
    )


def _simulate(
    drive: Tensor, physics: PlatePhysics, *, sample_rate: float, substeps: int, return_states: bool = False,
    keep: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The integrator behind :func:`simulate_plate` (runs with autograd if its inputs require grad).

    ``keep``: three lists that receive, per step, the mode displacements q (B, N), the speaker excursion (B, 1)
    and Σ_j κ_j q_j² (B, 1) — what :func:`_drive_adjoint` needs.
    """
    dt = drive.dtype
    B, L = drive.shape
    st = _step(physics, sample_rate, substeps, dt)
    i_s, iq, ip = st.i_s, st.iq, st.ip
    aqq, aqp, apq, app, w_s, w_q, w_p, mqT, mpT = st.aqq, st.aqp, st.apq, st.app, st.w_s, st.w_q, st.w_p, st.mqT, st.mpT
    a_s, k_col, k_row = st.a_s, st.k_col, st.k_row

    T = L * substeps
    v_sub = drive.repeat_interleave(substeps, 1)  # (B, T): drive during substep j
    v_next = torch.cat([v_sub[:, 1:], v_sub[:, -1:]], 1)
    # per-step views via unbind (its backward is one stack; indexing would zero-fill a full tensor per step)
    vv = torch.stack([v_sub, v_next], 0).permute(2, 1, 0).unbind(0)  # T × (B, 2)
    bl = (v_sub * st.bl_gain).T.unsqueeze(-1).unbind(0)  # T × (B, 1): Bl-drop drive term
    z0 = drive[:, :1] * st.g_b  # half step from rest
    S, q, p = z0[:, i_s], z0[:, iq], z0[:, ip]
    rec: list[Tensor] = []
    states: list[Tensor] = []
    # the only Python loop: over time steps (callers hold _one_thread())
    for j in range(T):
        rec.append(S)  # the microphone states are untouched by the kicks
        if return_states:
            states.append(torch.cat([S[:, :2], q, p, S[:, 2:]], 1))
        if j == T - 1:
            break
        # kick: both nonlinear forces depend on positions only, so the kick is the exact flow of the forces
        xs = S[:, 0:1]
        sq = (q * q) @ k_col  # Σ_j κ_j u_j²
        if keep is not None:
            keep[0].append(q)
            keep[1].append(xs)
            keep[2].append(sq)
        fp = q * (sq * k_row)  # stretching: −h γ ω_1² κ_k u_k Σ_j κ_j u_j²
        xs2 = xs * xs
        fs = xs2 * torch.addcdiv(a_s * xs, bl[j], 1 + xs2)  # −F_s: suspension hardening + Bl(x) drop
        p = p + fp
        X = torch.cat([S, vv[j], fs], 1)
        S, q, p = (
            torch.addmm(torch.addmm(X @ w_s, q, mqT), p, mpT),
            torch.addcmul(torch.addcmul(X @ w_q, aqq, q), aqp, p),
            torch.addcmul(torch.addcmul(X @ w_p, apq, q), app, p),
        )
    y = (torch.stack(rec, 1) @ st.c_s)  # (B, T)
    if return_states:
        return y, torch.stack(states, 1)
    return y


def _drive_adjoint(
    grad_y: Tensor, drive: Tensor, keep: tuple[list[Tensor], list[Tensor], list[Tensor]], physics: PlatePhysics,
    sample_rate: float, substeps: int,
) -> Tensor:
    """Reverse pass of :func:`_simulate` w.r.t. the drive: ``grad_y`` (B, T) → gradient (B, L).

    Step j maps (S, q, p) → (S⁺, q⁺, p⁺) with p' = p + fp(q), X = [S, V_j, V_{j+1}, fs(S₀, V_j)] and
    S⁺ = X w_s + q mqT + p' mpT, q⁺ = X w_q + aqq⊙q + aqp⊙p', p⁺ = X w_p + apq⊙q + app⊙p'; y_j = S_j · c_s.
    The adjoints (gS, gq, gp) of the state are carried from the last step back to the first.
    """
    B, L = drive.shape
    dt = drive.dtype
    st = _step(physics, sample_rate, substeps, dt)
    T = L * substeps
    w_sT, w_qT, w_pT = st.w_s.T.contiguous(), st.w_q.T.contiguous(), st.w_p.T.contiguous()  # (6|N, 9)
    mq, mp = st.mqT.T.contiguous(), st.mpT.T.contiguous()  # (6, N)
    k, kr = st.k_col.reshape(1, -1), st.k_row  # (1, N)
    gyc = (grad_y.to(dt).T.unsqueeze(-1) * st.c_s).unbind(0)  # T × (B, 6): the record's adjoint on S_j
    if T == 1:  # no step is taken: y_0 = V_0 γ½ · c_s
        return (gyc[0] @ st.g_b[st.i_s]).reshape(B, 1)
    qs, sqs = keep[0], keep[2]  # per step: q (B, N) and s = Σ_m κ_m q_m² (B, 1), kept by the forward
    xs = torch.stack(keep[1])  # (T−1, B, 1): speaker excursion before each kick
    bl = (drive.repeat_interleave(substeps, 1)[:, : T - 1] * st.bl_gain).T.unsqueeze(-1)  # (T−1, B, 1)
    # fs = xs² (a_s xs + bl/(1 + xs²)):  ∂fs/∂xs = 3 a_s xs² + 2 bl xs/(1 + xs²)²,  ∂fs/∂bl = xs²/(1 + xs²)
    xs2 = xs * xs
    den = 1 + xs2
    dfs_dxs = (3 * st.a_s * xs2 + 2 * bl * xs / (den * den)).unbind(0)
    dfs_dbl = xs2 / den
    del xs, bl, xs2, den
    k2 = 2 * k
    gXs: list[Tensor] = []  # adjoint of X per step, last step first
    gS = gyc[T - 1]
    gq = drive.new_zeros(B, physics.n_modes)
    gp = gq
    for j in range(T - 2, -1, -1):
        gX = torch.addmm(torch.addmm(gS @ w_sT, gq, w_qT), gp, w_pT)  # (B, 9): adjoint of X = [S, V_j, V_j+1, fs]
        gpp = torch.addcmul(torch.addcmul(gS @ mp, st.aqp, gq), st.app, gp)  # adjoint of p' = p + fp
        gq = torch.addcmul(torch.addcmul(gS @ mq, st.aqq, gq), st.apq, gp)
        # fp_k = q_k s kr_k:  ∂fp_k/∂q_m = δ_km s kr_k + 2 q_k kr_k κ_m q_m
        q = qs[j]
        gk = gpp * kr
        r = (q * gk).sum(1, keepdim=True)
        gq = torch.addcmul(torch.addcmul(gq, gk, sqs[j]), r * k2, q)
        gp = gpp
        gS = gX[:, :6] + gyc[j]
        gS[:, :1].addcmul_(gX[:, 8:9], dfs_dxs[j])
        gXs.append(gX)
    # the first state z0 = V_0 · γ½ (half step from rest)
    g0 = gS @ st.g_b[st.i_s] + gq @ st.g_b[st.iq] + gp @ st.g_b[st.ip]  # (B,)
    gX = torch.stack(gXs[::-1], 1)  # (B, T−1, 9), step order
    g_sub = drive.new_zeros(B, T)  # adjoint of the drive during substep j
    g_sub[:, : T - 1] = gX[:, :, 6] + gX[:, :, 8] * dfs_dbl.squeeze(-1).T * st.bl_gain
    g_sub[:, 1:] += gX[:, :, 7]  # V_{j+1} of step j is the drive of substep j + 1
    g = g_sub.reshape(B, L, substeps).sum(2)
    g[:, 0] += g0
    return g
def simulate_reference(
    drive: Tensor, physics: PlatePhysics, *, sample_rate: float, substeps: int, rk4_steps: int = 8
) -> Tensor:
    """Same ODE as :func:`simulate_plate`, integrated with torchdiffeq fixed-step RK4 (validation only; slow).

    Each ZOH sample is integrated separately (``rk4_steps`` RK4 steps per recording interval h), and y is read
    at the same times ``(j + ½)·h``. ``rk4_steps`` must be even.
    """
    if rk4_steps % 2:
        raise ConfigError("rk4_steps must be even (outputs fall half-way between recording steps)")
    dt = drive.dtype
    B, L = drive.shape
    N = physics.n_modes
    h = 1.0 / (sample_rate * substeps)
    A, b, E, c = (t.to(dt) for t in _state_space(physics))
    ctx = _one_thread()
    ws = torch.as_tensor(physics.speaker_omega, dtype=dt)
    w_s2g = ws**2 * torch.as_tensor(physics.speaker_gain, dtype=dt)
    a_s = ws**2 * physics.speaker_hardening
    k_col = physics.kappa.to(dt).reshape(N, 1)
    k_row = (-physics.stretching * physics.omega1**2 * physics.kappa).to(dt).reshape(1, N)
    z = torch.zeros(B, A.shape[0], dtype=dt)
    t_grid = torch.tensor([0.0] + [(j + 0.5) * h for j in range(substeps)] + [substeps * h], dtype=dt)
    ys = []
    with ctx:
        for i in range(L):
            v = drive[:, i : i + 1]

            def rhs(t: Tensor, s: Tensor, v: Tensor = v) -> Tensor:
                xs2 = s[:, 0:1] ** 2
                q = s[:, 2 : 2 + N]
                fs = -xs2 * (a_s * s[:, 0:1] + v * w_s2g / (1 + xs2))
                fp = q * ((q * q) @ k_col) * k_row
                return s @ A.T + v * b + torch.cat([fs, fp], 1) @ E

            out = odeint(rhs, z, t_grid, method="rk4", options={"step_size": h / rk4_steps})
            ys.append(out[1:-1] @ c)  # (substeps, B)
            z = out[-1]
    return torch.cat(ys, 0).T


def transfer_function(physics: PlatePhysics, freq: Tensor) -> Tensor:
    """Analytic small-signal response y/V (complex) of the continuous chain at frequencies ``freq`` (Hz)."""
    w = 2 * math.pi * freq.to(torch.float64)
    s = 1j * w
    ws = float(physics.speaker_omega)
    qs = float(physics.speaker_q)
    gs = float(physics.speaker_gain)
    xs = ws**2 * gs / (s**2 + s * ws / qs + ws**2)
    acc_s = s**2 * xs
    om, ze = physics.omega.to(torch.complex128), physics.zeta.to(torch.complex128)
    modal = physics.drive / (s[:, None] ** 2 + 2 * ze * om * s[:, None] + om**2)  # (F, N)
    vel = s * acc_s * (modal * physics.pickup).sum(-1)
    wl, wh, qb = physics.mic_omega_l, physics.mic_omega_h, 1 / math.sqrt(2)
    lp = wl**2 / (s**2 + s * wl / qb + wl**2)
    hp = s**2 / (s**2 + s * wh / qb + wh**2)
    return float(physics.pressure_gain) * hp * s * lp * vel


# ----------------------------------------------------------------------------------------------------------
# the lab
# ----------------------------------------------------------------------------------------------------------
def _bin_matrix(t_win: int, bins: int, dtype: torch.dtype) -> Tensor:
    """(t_win, bins) averaging matrix over ``bins`` nearly equal contiguous time bins."""
    edges = torch.linspace(0, t_win, bins + 1).round().long()
    W = torch.zeros(t_win, bins, dtype=dtype)
    for k in range(bins):
        W[edges[k] : edges[k + 1], k] = 1.0 / float(edges[k + 1] - edges[k])
    return W


def _delay(y: Tensor, d: Tensor) -> Tensor:
    """y(t − d·h) for per-row delays ``d`` (B, 1) in samples (|d| ≲ 1): 3-point (quadratic) interpolation.

    The system is at rest before the recording starts (y = 0 there); the end is extrapolated linearly.
    """
    prev = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)
    nxt = torch.cat([y[:, 1:], 2 * y[:, -1:] - y[:, -2:-1]], 1)
    return y - d * 0.5 * (nxt - prev) + 0.5 * d * d * (nxt - 2 * y + prev)


def _quantise(v: Tensor, full_scale: float, bits: int) -> Tensor:
    """Round to a ``bits``-bit converter over ±full_scale (straight-through gradient), clipping at full scale.

    The 2^bits codes run from −full_scale to full_scale − LSB (two's complement), as the circuit lab's DAQ: a value
    at or above +full_scale reads as the top code."""
    v = v.clamp(-full_scale, full_scale)
    if bits <= 0:
        return v
    lsb = 2 * full_scale / 2**bits
    return v + ((torch.round(v / lsb) * lsb).clamp(-full_scale, full_scale - lsb) - v).detach()


class _PlateModel:
    """Shared drive → features pipeline (lab and twin)."""

    def __init__(self, n_inputs: int, n_params: int, output_dim: int, n_tail: int, substeps: int,
                 sample_rate: float, drive_scale: float, bias: bool, design: PlateDesign) -> None:
        if n_inputs < 1 or output_dim < 1 or n_params < 0 or n_tail < 0:
            raise ConfigError("plate lab: need n_inputs ≥ 1, output_dim ≥ 1, n_params ≥ 0, n_tail ≥ 0")
        if substeps < 1 or sample_rate <= 0 or drive_scale <= 0:
            raise ConfigError("plate lab: need substeps ≥ 1, sample_rate > 0 and drive_scale > 0")
        if (n_inputs + n_tail) * substeps < output_dim:  # every bin averages at least one microphone sample
            raise ConfigError(f"plate: output_dim must be at most (n_inputs + n_tail) × substeps = "
                              f"{(n_inputs + n_tail) * substeps}, the microphone samples it bins, got {output_dim}")
        self.n_inputs, self.n_params, self.output_dim = n_inputs, n_params, output_dim
        self.n_tail, self.substeps, self.sample_rate = n_tail, substeps, float(sample_rate)
        self.drive_scale, self.bias, self.design = float(drive_scale), bool(bias), design
        self._bins: dict[torch.dtype, Tensor] = {}

    def make_spec(self, name: str, meta: dict[str, Any], noise_std: float | None) -> SystemSpec:
        params = []
        if self.n_params:
            params.append(ParamSpec("theta", (self.n_params,), -1.0, 1.0, "V", init_scale=0.5,
                                    doc="drive segment played before the data (DAC volts)"))
        if self.bias:
            params.append(ParamSpec("bias", (self.n_inputs,), -0.5, 0.5, "V", init=0.0,
                                    doc="per-sample offset added to the data segment (DAC volts)"))
        return SystemSpec(name=name, input_dim=self.n_inputs, output_dim=self.output_dim, input_low=-1.0,
                          input_high=1.0, params=tuple(params), input_unit="V", output_unit="p_ref^2",
                          noise_std=noise_std, meta=meta)

    def dac_signal(self, x: Tensor, params: Params) -> Tensor:
        """(B, L) DAC voltages: [θ | x (+ bias) | zeros(n_tail)]."""
        B, dt = x.shape[0], x.dtype
        parts = []
        if self.n_params:
            th = params["theta"].to(dt)
            parts.append(th.expand(B, self.n_params) if th.dim() == 1 else th)
        data = x
        if self.bias:
            data = data + params["bias"].to(dt)
        parts.append(data)
        parts.append(x.new_zeros(B, self.n_tail))
        return torch.cat(parts, 1)

    def window(self, y: Tensor) -> Tensor:
        return y[:, self.n_params * self.substeps :]

    def features(self, y_win: Tensor) -> Tensor:
        W = self._bins.get(y_win.dtype)
        if W is None:
            W = self._bins[y_win.dtype] = _bin_matrix(y_win.shape[1], self.output_dim, y_win.dtype)
        return (y_win * y_win) @ W


class PlateLab(VirtualLab):
    """A speaker-driven metal plate recorded by a microphone; each instance is one physical unit.

    The drive (DAC, ``sample_rate``, zero-order hold) is ``[θ | x (+ bias) | n_tail zeros]`` volts, amplified
    by ``drive_scale`` into the speaker. The microphone is sampled at ``sample_rate·substeps``; the recording
    from the start of the data segment to the end of the tail is split into ``output_dim`` equal time bins and
    each output is the mean square of the recording in its bin (units p_ref², O(1) at drive_scale 1; the preamp
    gain is set to 1/drive_scale so that outputs stay O(1) at any drive level — a fixed normalisation).

    Args:
        n_inputs: data samples per input (input_dim), volts in [−1, 1]. Default 196 (14×14 image).
        n_params: length of the trainable drive segment ``theta`` (volts in [−1, 1]) played before the data.
        output_dim: number of time bins (outputs).
        n_modes: plate modes simulated (lowest first).
        drive_scale: amplifier gain (V at the speaker per DAC volt); larger → more nonlinear.
        sample_rate: DAC rate (Hz); substeps: integration/recording steps per DAC sample (ADC rate =
            sample_rate·substeps); n_tail: zero samples appended (ring-down recorded).
        bias: add a trainable per-sample offset ``bias`` (n_inputs, ±0.5 V) to the data segment.
        unit: seed of this unit's fixed defects; ideal: the design itself (no defects, noise, drift,
            quantisation or jitter); imperfections: defect levels (:class:`PlateImperfections`).
        seed: seed of the per-measurement noise (state in :meth:`get_state`).
        design: nominal physics (:class:`PlateDesign`, or a mapping of its fields).
        dtype: dtype of the simulation, float32 or float64 (inputs are cast to it; the call returns the caller's
            dtype).

    Every option and every field of ``design`` and ``imperfections`` is checked when the lab is built (a one-line
    :class:`ConfigError` naming it; the allowed ranges are listed in ``docs/labs/plate.md``). The DAC's
    ``design.dac_full_scale`` must cover the declared drive (±1 V, ±1.5 V with ``bias``), also in the ideal lab.
    """

    differentiable = True
    batched_params = True

    def __init__(
        self,
        n_inputs: int = 196,
        n_params: int = 64,
        output_dim: int = 16,
        n_modes: int = 40,
        *,
        drive_scale: float = 1.0,
        sample_rate: float = 8000.0,
        substeps: int = 4,
        n_tail: int = 64,
        bias: bool = False,
        unit: int = 0,
        ideal: bool = False,
        imperfections: PlateImperfections | None = None,
        seed: int = 0,
        design: PlateDesign | dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        # every option is checked before anything is built (the dataclasses check their own fields)
        for name, value, low in (("n_inputs", n_inputs, 1), ("n_params", n_params, 0), ("output_dim", output_dim, 1),
                                 ("n_modes", n_modes, 1), ("substeps", substeps, 1), ("n_tail", n_tail, 0)):
            _check(name, value, f"an integer ≥ {low}", lambda v, low=low: v >= low, integer=True)
        _check("drive_scale", drive_scale, "a finite number > 0 V/V", positive)
        _check("sample_rate", sample_rate, "a finite number > 0 Hz", positive)
        check_unit_and_seed("plate", unit, seed)
        dtype = _float_dtype(dtype)
        design = dataclass_of("plate", "design", design, PlateDesign)
        imperfections = dataclass_of("plate", "imperfections", imperfections, PlateImperfections)
        self.design = design or PlateDesign()
        self.model = _PlateModel(int(n_inputs), int(n_params), int(output_dim), int(n_tail), int(substeps),
                                 sample_rate, drive_scale, bias, self.design)
        self.n_modes, self.unit, self.ideal, self.dtype = int(n_modes), int(unit), bool(ideal), dtype
        self.imperfections = PlateImperfections.none() if ideal else (imperfections or PlateImperfections())
        imp = self.imperfections
        # A DAC cannot output beyond its full scale, whatever its resolution (and the ideal lab too).
        peak = 1.0 + (0.5 if self.model.bias else 0.0)  # θ and x within ±1 V, bias ±0.5 V on the data
        if self.design.dac_full_scale < peak:
            raise ConfigError(f"plate: the DAC's ±{self.design.dac_full_scale:g} V (design.dac_full_scale) cannot play "
                              f"the declared drive of ±{peak:g} V; use dac_full_scale ≥ {peak:g}")
        # the recording is delayed by 3-point interpolation, valid for delays up to about one ADC sample
        adc_period = 1.0 / (self.model.sample_rate * self.model.substeps)
        _check("imperfections.jitter", imp.jitter, f"≤ one ADC sample period, 1/(sample_rate·substeps) = "
               f"{adc_period:.3g} s", lambda v: v <= adc_period)
        self.nominal = PlatePhysics.from_design(self.design, self.n_modes)
        self.physics = self.nominal if ideal else self._unit_physics()
        g = torch.Generator().manual_seed(7_919 * (self.unit + 1) + 1)
        self._drift_phase = float(torch.rand((), generator=g, dtype=torch.float64)) * 2 * math.pi
        self._init_noise(seed)  # also resets the measurement count (drives the temperature cycle)
        self.spec = self.model.make_spec(
            "plate" + ("-ideal" if ideal else ""),
            {"n_modes": n_modes, "drive_scale": drive_scale, "sample_rate": sample_rate, "substeps": substeps,
             "n_tail": n_tail, "unit": unit, "ideal": ideal, "imperfections": asdict(imp),
             "design": self.design.to_dict()},
            None,
        )

    # --- per-unit constants -----------------------------------------------------------------------------------
    def _unit_physics(self) -> PlatePhysics:
        imp, d, N = self.imperfections, self.design, self.n_modes
        g = torch.Generator().manual_seed(1_000_003 * (self.unit + 1))
        f64 = torch.float64

        def rn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=g, dtype=f64)

        nom = self.nominal
        omega = nom.omega * (1 + imp.freq_error * rn(N))
        q = nom.omega / (2 * nom.zeta) * torch.exp(imp.q_error * rn(N))
        idx = plate_mode_indices(N, d.aspect)
        m = torch.tensor([i for i, _ in idx], dtype=f64)
        n = torch.tensor([j for _, j in idx], dtype=f64)
        scale = torch.tensor([d.plate_length, d.plate_length * d.aspect], dtype=f64)
        dp = torch.tensor(d.drive_point, dtype=f64) + imp.position_error * rn(2) / scale
        mp = torch.tensor(d.mic_point, dtype=f64) + imp.position_error * rn(2) / scale
        sp = torch.exp(imp.speaker_error * rn(3))
        mic = 10 ** (imp.mic_gain_error_db * float(rn(1)) / 20)
        # normal draws have no bound: a large freq_error or position_error can draw an unphysical unit
        if bool((omega <= 0).any()):
            raise ConfigError(f"plate unit {self.unit}: imperfections.freq_error {imp.freq_error:g} drew a mode "
                              f"frequency ≤ 0 Hz; use a smaller freq_error (the default is 0.015)")
        for name, point in (("speaker stud", dp), ("microphone", mp)):
            if not bool(((point > 0) & (point < 1)).all()):
                raise ConfigError(f"plate unit {self.unit}: imperfections.position_error {imp.position_error:g} m "
                                  f"drew the {name} off the plate (at {point.tolist()} of its sides); use a "
                                  f"smaller position_error (the default is 0.001 m)")
        return replace(
            nom,
            omega=omega,
            zeta=omega / (2 * q),
            drive=d.drive_coupling * _shape(m, n, dp),
            pickup=_shape(m, n, mp),
            speaker_omega=float(nom.speaker_omega) * float(sp[0]),
            speaker_q=float(nom.speaker_q) * float(sp[1]),
            speaker_gain=float(nom.speaker_gain) * float(sp[2]),
            pressure_gain=float(nom.pressure_gain) * mic,
        )

    @property
    def mode_frequencies(self) -> Tensor:
        """This unit's mode frequencies (Hz) at the reference temperature, shape (n_modes,)."""
        return self.physics.omega / (2 * math.pi)

    @property
    def mode_q(self) -> Tensor:
        """This unit's mode quality factors, shape (n_modes,)."""
        return 1 / (2 * self.physics.zeta)

    def drift(self, count: int | None = None) -> float:
        """Relative frequency shift from the temperature cycle after ``count`` measured samples (default: now)."""
        imp = self.imperfections
        n = self._count if count is None else count
        if not imp.drift_kelvin:
            return 0.0
        return imp.tempco * imp.drift_kelvin * math.sin(2 * math.pi * n / imp.drift_period + self._drift_phase)

    @property
    def sample_times(self) -> Tensor:
        """Recording times (s) of :meth:`record`'s samples, shape (L·substeps,)."""
        mdl = self.model
        L = mdl.n_params + mdl.n_inputs + mdl.n_tail
        return (torch.arange(L * mdl.substeps, dtype=torch.float64) + 0.5) / (mdl.sample_rate * mdl.substeps)

    # --- measurement ----------------------------------------------------------------------------------------
    def record(self, x: Tensor, params: Params) -> Tensor:
        """The full microphone recording (B, L·substeps) in normalised units (after ADC), at :attr:`sample_times`.

        Advances the noise generator and the measurement count like :meth:`measure`; no range checks (use the
        system call for guarded access).
        """
        x = x.to(self.dtype)
        imp, mdl, dt = self.imperfections, self.model, self.dtype
        B = x.shape[0]
        v = mdl.dac_signal(x, params)
        v = _quantise(v, self.design.dac_full_scale, imp.dac_bits) if imp.dac_bits else v
        ph = self.physics
        delta = self.drift()
        if delta:
            ph = replace(ph, omega=ph.omega * (1 + delta), zeta=ph.zeta)
        y = simulate_plate(v * mdl.drive_scale, ph, sample_rate=mdl.sample_rate, substeps=mdl.substeps)
        if imp.jitter:
            # truncated at ±4σ, and at ±one ADC sample: the 3-point interpolation's range (default 4σ = 0.38 sample)
            bound = min(4 * imp.jitter, 1.0 / (mdl.sample_rate * mdl.substeps))
            tau = (imp.jitter * torch.randn(B, 1, generator=self._noise, dtype=torch.float64)).clamp(-bound, bound)
            y = _delay(y, (tau * mdl.sample_rate * mdl.substeps).to(dt))
        if imp.acoustic_noise:
            y = y + imp.acoustic_noise * self._band_noise(B, y.shape[1], dt)
        y = y / mdl.drive_scale  # preamp gain tracks the drive level
        if imp.electronic_noise:
            y = y + imp.electronic_noise * torch.randn(y.shape, generator=self._noise, dtype=dt)
        if imp.adc_bits:
            y = _quantise(y, self.design.adc_full_scale, imp.adc_bits)
        self._count += B
        return y

    def _band_noise(self, B: int, T: int, dt: torch.dtype) -> Tensor:
        """(B, T) white noise shaped by the microphone band-pass, unit rms in expectation."""
        w = torch.randn(B, T, generator=self._noise, dtype=torch.float64)
        return self._mic_band(w).to(dt)

    def _mic_band(self, w: Tensor) -> Tensor:
        """Rows of ``w`` filtered by the microphone band-pass (circular FFT filter) and divided by the filter's rms
        gain ‖h‖, h = irfft(H): unit white noise comes out with unit rms in expectation, and each row's result
        depends on that row alone (a sample's noise must not depend on what else is measured with it)."""
        T = w.shape[-1]
        f = torch.fft.rfftfreq(T, d=1.0 / (self.model.sample_rate * self.model.substeps)).to(torch.float64)
        s = 2j * math.pi * f
        qb = 1 / math.sqrt(2)
        wh, wl = self.physics.mic_omega_h, self.physics.mic_omega_l
        H = (s**2 / (s**2 + s * wh / qb + wh**2)) * (wl**2 / (s**2 + s * wl / qb + wl**2))
        gain = torch.fft.irfft(H, n=T).norm().clamp_min(1e-30)
        return torch.fft.irfft(torch.fft.rfft(w) * H, n=T) / gain

    def measure(self, x: Tensor, params: Params) -> Tensor:
        with _one_thread():  # every op here is small enough that threading only costs (see _one_thread)
            y = self.record(x, params)
            return self.model.features(self.model.window(y))

    def ideal_twin(self) -> "PlatePhysicsTwin":
        """The design equations (nominal physics, no defects or noise) as a differentiable twin."""
        mdl = self.model
        return PlatePhysicsTwin(self.spec, n_inputs=mdl.n_inputs, n_params=mdl.n_params, output_dim=mdl.output_dim,
                                n_modes=self.n_modes, drive_scale=mdl.drive_scale, sample_rate=mdl.sample_rate,
                                substeps=mdl.substeps, n_tail=mdl.n_tail, bias=mdl.bias,
                                design=self.design.to_dict())


@register_twin
class PlatePhysicsTwin(DigitalTwin):
    """Physics-based twin of the plate lab: the design equations with global and per-mode calibration.

    Learnable, all starting at the design value (so the unfitted twin is the design): four global factors (a
    mode-frequency scale, a damping scale, a drive gain and an output gain, log-parameterised) and, per mode k
    — the standard modal-analysis calibration of a real plate — a frequency correction
    ``ω_k ← ω_k·exp(FREQ_STEP·f_k)``, a damping (1/Q) correction ``ζ_k ← ζ_k·exp(d_k)`` and an additive
    microphone pick-up correction ``φ_k(r_m) ← φ_k(r_m) + p_k`` (which absorbs the position errors of the stud
    and the microphone to first order). ``FREQ_STEP`` (1e-2) makes one optimizer step of size lr ≈ 0.02 move a
    mode by ≈ 0.02 % — a fraction of a linewidth (1/Q = 0.4–2 %) — so the fit walks each mode to the unit's
    frequency instead of jumping across its resonance. Noise, drift, speaker defects and quantisation are not
    modelled.
    """

    FREQ_STEP: ClassVar[float] = 1e-2

    kind: ClassVar[str] = "plate_physics"

    def __init__(self, spec: SystemSpec, n_inputs: int, n_params: int, output_dim: int, n_modes: int,
                 drive_scale: float, sample_rate: float, substeps: int, n_tail: int, bias: bool,
                 design: dict[str, Any]) -> None:
        super().__init__(spec)
        self.design = dataclass_of("plate twin", "design", design, PlateDesign)
        self.model = _PlateModel(int(n_inputs), int(n_params), int(output_dim), int(n_tail), int(substeps),
                                 sample_rate, drive_scale, bias, self.design)
        self.n_modes = int(n_modes)
        self.nominal = PlatePhysics.from_design(self.design, self.n_modes)
        self.log_freq_scale = nn.Parameter(torch.zeros(()))
        self.log_damping_scale = nn.Parameter(torch.zeros(()))
        self.log_drive_gain = nn.Parameter(torch.zeros(()))
        self.log_output_gain = nn.Parameter(torch.zeros(()))
        self.mode_freq = nn.Parameter(torch.zeros(self.n_modes))
        self.mode_log_damping = nn.Parameter(torch.zeros(self.n_modes))
        self.mode_pickup = nn.Parameter(torch.zeros(self.n_modes))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Twins saved before the per-mode corrections existed load with those corrections at zero (the design)."""
        state = dict(state_dict)
        for k in ("mode_freq", "mode_log_damping", "mode_pickup"):
            if k not in state and "log_freq_scale" in state:
                state[k] = torch.zeros_like(getattr(self, k))
        return super().load_state_dict(state, strict=strict, assign=assign)

    def calibrated_physics(self) -> PlatePhysics:
        """The twin's current plate constants (design × fitted global and per-mode corrections), float64."""
        nom, f64 = self.nominal, torch.float64
        fs = (self.log_freq_scale.to(f64) + self.FREQ_STEP * self.mode_freq.to(f64)).exp()
        ds = (self.log_damping_scale.to(f64) + self.mode_log_damping.to(f64)).exp()
        omega = nom.omega * fs
        # ζ_k ω_k is the decay rate; keep Q_k = 1/(2ζ_k) tied to the damping factors only
        return replace(nom, omega=omega, zeta=nom.zeta * ds, pickup=nom.pickup + self.mode_pickup.to(f64))

    def config(self) -> dict[str, Any]:
        m = self.model
        return {"n_inputs": m.n_inputs, "n_params": m.n_params, "output_dim": m.output_dim, "n_modes": self.n_modes,
                "drive_scale": m.drive_scale, "sample_rate": m.sample_rate, "substeps": m.substeps,
                "n_tail": m.n_tail, "bias": m.bias, "design": self.design.to_dict()}

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        with _one_thread():
            return self._forward(x, params)

    def _forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        mdl = self.model
        ph = self.calibrated_physics()
        v = mdl.dac_signal(x, params) * (mdl.drive_scale * self.log_drive_gain.exp().to(x.dtype))
        kw = {"sample_rate": mdl.sample_rate, "substeps": mdl.substeps}
        tensors = (v, ph.omega, ph.zeta, ph.pickup)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors[1:]):
            # like simulate_plate's recompute path, but also differentiable w.r.t. the pick-up couplings
            def fn(d: Tensor, om: Tensor, ze: Tensor, pk: Tensor) -> Tensor:
                return _simulate(d, replace(ph, omega=om, zeta=ze, pickup=pk), **kw)  # type: ignore[return-value]

            y = _Recompute.apply(fn, *tensors)
        else:
            y = simulate_plate(v, ph, **kw)  # a gradient w.r.t. the drive only: the hand-written adjoint
        y = y / mdl.drive_scale
        return mdl.features(mdl.window(y)) * (2 * self.log_output_gain).exp().to(x.dtype)


def _make(**options: Any) -> PlateLab:
    scale = options.get("imperfection_scale", 1.0)
    imp = resolve_imperfections(options, PlateImperfections)
    with scale_named(scale):  # the jitter's bound depends on the lab's sampling: checked by the lab
        return PlateLab(imperfections=imp, **options)



register_lab("plate", _make, options_of=PlateLab)
