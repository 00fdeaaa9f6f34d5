"""Virtual lab: a nonlinear analog circuit (2N3904 NPN stage with an LC collector filter), simulated by ngspice.

Circuit (one physical unit; all values in :class:`CircuitComponents`)::

                      VCC (+5 V)
            ┌────────────┴─────────────┐
            │                          │
           RB 470k                    RC 680
            │                          │
   DAQ ─R1 150k──●── B                 RL 47   (inductor winding resistance)
                 │    │                │
                CB    │                L 33 mH
               4.7n   │     C ●────────┘
                 │    │       │  │
                GND   └──|< Q │  CT 33n ── GND        output: v(C), the collector voltage
                          2N3904 emitter → GND

The DAQ drives node B through R1 with a piecewise-constant voltage series: the ``n_inputs`` data values and the
``n_params`` trainable values are time-multiplexed (evenly interleaved, one DAQ update period ``t_segment`` each,
with a finite slew ``t_rise`` between levels). RB biases the transistor on (≈ 0.64 mA at a 0 V drive); R1·CB
low-passes the drive (memory across segments); the base–emitter junction rectifies it (a soft ReLU: −1 V turns the
transistor off, +1 V pushes ≈ 1.66 mA); the collector current drives the series RC–L / shunt CT filter, an
under-damped 2nd-order low pass (f₀ ≈ 4.8 kHz, ζ ≈ 0.36) that rings across several segments. The collector
voltage, sampled by an ADC at ``adc_rate`` and averaged into ``output_dim`` equal time bins, is the output.

Reality is ngspice (a transistor-level simulator with the full Gummel–Poon model, junction and diffusion
capacitances); the differentiable twin is a torch ODE of the same circuit with the transistor's DC equations only
(Ebers–Moll transport model, optionally with Gummel–Poon's Early effect, high-injection knee and B–E leakage).
See ``docs/labs/circuit.md``.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from ..config import SEED_LIMIT
from ..errors import ConfigError, DeviceError
from ..spec import ParamSpec, SystemSpec
from ..system import Params
from . import VirtualLab, dataclass_of, register_lab, resolve_imperfections
from .checks import MAX_BITS, Allowed, check_allowed_fields, float_dtype, refusal
from ..twins import DigitalTwin, register_twin

K_BOLTZMANN = 1.380649e-23  # J/K (exact, SI 2019)
Q_ELECTRON = 1.602176634e-19  # C (exact, SI 2019)
T_NOMINAL = 300.15  # K: ngspice's default TEMP = TNOM = 27 °C

INSTALL_HINT = (
    "ngspice not found on PATH: install it with `apt-get install -y ngspice libngspice0` "
    "(or run scripts/install-system-deps.sh), or pass ngspice='/path/to/ngspice'"
)

#: The circuit nodes the ADC can record (``output_node``), with their netlist prefixes: the collector ``c<i>`` (after
#: the R–L–C tank) or the base ``b<i>`` (the R1–CB node, clamped by the base–emitter junction).
NODES: dict[str, str] = {"collector": "c", "base": "b"}

#: Published SPICE model of the 2N3904 (the Fairchild/National card distributed with most SPICE libraries,
#: e.g. LTspice's standard.bjt). Only the DC subset (IS … IKR) enters the torch twin.
Q2N3904_CARD: dict[str, float] = {
    "IS": 6.734e-15, "XTI": 3.0, "EG": 1.11, "VAF": 74.03, "BF": 416.4, "NE": 1.259, "ISE": 6.734e-15,
    "IKF": 66.78e-3, "XTB": 1.5, "BR": 0.7371, "NC": 2.0, "ISC": 0.0, "IKR": 0.0, "RC": 1.0,
    "CJC": 3.638e-12, "MJC": 0.3085, "VJC": 0.75, "FC": 0.5, "CJE": 4.493e-12, "MJE": 0.2593, "VJE": 0.75,
    "TR": 239.5e-9, "TF": 301.2e-12, "ITF": 0.4, "VTF": 4.0, "XTF": 2.0, "RB": 10.0,
}


# ----------------------------------------------------------------------------------------------------------
# option checks: every refusal is one line, "circuit: <option> must be <allowed>, got <value>"
# ----------------------------------------------------------------------------------------------------------
_refusal = functools.partial(refusal, "circuit")
_check_fields = functools.partial(check_allowed_fields, "circuit")

_POSITIVE_V = Allowed(unit=" V")
_NOISE_V = Allowed(lo_open=False, unit=" V")
_TOLERANCE = Allowed(lo_open=False, hi=1.0, hi_open=True)  # uniform ±tol: the part's value stays > 0
_SPREAD = Allowed(lo_open=False, hi=2.0)  # log-normal σ: 2 is a factor e² ≈ 7.4 per σ, beyond any real parts
_BITS = Allowed(lo_open=False, hi=MAX_BITS, kind="int")  # 0 = no quantisation
_FLAG = Allowed(kind="bool")
_COUNT = Allowed(lo=1, lo_open=False, kind="int")
_SEED = Allowed(lo_open=False, hi=SEED_LIMIT, hi_open=True, kind="int")
_float_dtype = functools.partial(float_dtype, "circuit")


def _design(option: str, value: Any, cls: type) -> Any:
    """Option ``option`` as a ``cls``: the defaults for None, else :func:`~pnnkit.labs.dataclass_of`."""
    value = dataclass_of("circuit", option, value, cls)
    return cls() if value is None else value


@dataclass(frozen=True)
class CircuitComponents:
    """Nominal (design) component values, SI units. Defaults documented in docs/labs/circuit.md.

    Attributes:
        vcc: supply voltage (V).
        r1: DAQ → base resistor (Ω). With rb it maps the ±1 V drive onto 0 … ≈ 11 µA of base current.
        rb: bias resistor VCC → base (Ω): ≈ 0.64 mA collector current at a 0 V drive.
        cb: base-node capacitor to ground (F). 4.7 nF ≫ the transistor's own ≈ 0.1 nF Miller + junction
            capacitance, so the twin (which ignores those) stays close; R1∥RB·CB ≈ 0.53 ms when off.
        rc: collector load resistor (Ω) in series with the inductor: DC gain and tank damping.
        rl: winding (DC) resistance of the inductor (Ω), typical of a 33 mH ferrite drum-core inductor.
        l: inductor (H).
        ct: collector shunt capacitor (F); with l: f₀ = 1/(2π√(L·CT)) ≈ 4.8 kHz, Z₀ = √(L/CT) = 1 kΩ.
    """

    vcc: float = 5.0
    r1: float = 150e3
    rb: float = 470e3
    cb: float = 4.7e-9
    rc: float = 680.0
    rl: float = 47.0
    l: float = 33e-3
    ct: float = 33e-9

    def __post_init__(self) -> None:
        """Every value a finite number > 0 in its unit."""
        units = {"vcc": " V", "r1": " Ω", "rb": " Ω", "cb": " F", "rc": " Ω", "rl": " Ω", "l": " H", "ct": " F"}
        _check_fields(self, "components", {k: Allowed(unit=u) for k, u in units.items()})


@dataclass(frozen=True)
class CircuitTiming:
    """Drive and acquisition timing.

    Attributes:
        t_segment: DAQ update period: each drive value is held this long (s). 50 µs = 20 kS/s output rate.
        t_rise: linear slew between consecutive levels (s); 1 µs ≈ a DAQ analog output's 2 V step at ~2 V/µs.
        adc_rate: ADC sampling rate of the collector voltage (S/s); 200 kS/s = 10 samples per segment.
    """

    t_segment: float = 50e-6
    t_rise: float = 1e-6
    adc_rate: float = 200e3

    def __post_init__(self) -> None:
        """Finite positive times and rate; a segment is a whole number of ADC periods and the slew lies within one
        (so the drive's knots are in order and every ADC sample falls on a level or the end of a slew)."""
        _check_fields(self, "timing", {"t_segment": Allowed(unit=" s"), "t_rise": Allowed(unit=" s"),
                                       "adc_rate": Allowed(unit=" S/s")})
        per = self.t_segment * self.adc_rate
        if abs(per - round(per)) > 1e-9 or round(per) < 1:
            raise _refusal("timing.t_segment", self.t_segment,
                           f"a whole number ≥ 1 of ADC sample periods (1/timing.adc_rate = {self.adc_dt:g} s)")
        if not self.t_rise < self.adc_dt:
            raise _refusal("timing.t_rise", self.t_rise,
                           f"shorter than one ADC sample period (1/timing.adc_rate = {self.adc_dt:g} s)")

    @property
    def adc_dt(self) -> float:
        return 1.0 / self.adc_rate

    @property
    def samples_per_segment(self) -> int:
        return int(round(self.t_segment * self.adc_rate))


@dataclass(frozen=True)
class CircuitImperfections:
    """Defects of one physical unit and of the measurement chain (defaults: documented in docs/labs/circuit.md).

    Fixed per unit (seeded by ``unit``):
        resistor_tolerance: each resistor uniform within ±this (relative). 0.01 = 1 % metal-film parts.
        capacitor_tolerance: each capacitor uniform within ±this. 0.10 = common X7R / film ±10 % parts.
        inductor_tolerance: inductor (and its winding resistance) uniform within ±this. 0.10 = ±10 % parts.
        supply_tolerance: VCC uniform within ±this. 0.005 = a bench supply's set-point accuracy (±25 mV at 5 V).
        beta_spread: log-normal σ of the transistor's forward gain BF. 0.15 (the datasheet allows hFE 100–300;
            parts from one reel are much closer).
        is_spread: log-normal σ of the saturation currents IS and ISE (junction area / doping), 0.2
            ≈ ±5 mV spread of V_BE at a fixed current.
    Fresh every measurement (seeded by ``seed``):
        drive_noise: rms noise of the DAQ's analog output (V), 1e-4 (order of a 16-bit DAQ AO's noise).
        adc_noise: rms input noise of the ADC (V) per sample, 2e-4 (≈ 0.7 LSB at 16 bit over ±10 V,
            typical of a USB DAQ).
        johnson: add the thermal (Johnson–Nyquist) noise of the recorded node: its resistances' noise is
            filtered by the node's capacitor C (CT for the collector, CB for the base), so the node carries
            √(kT/C) rms (equipartition): 0.35 µV at CT = 33 nF, 0.94 µV at CB = 4.7 nF. Added per ADC sample (in
            the circuit it is correlated over the node's ≈ 0.1 ms time constant); physically present, but
            negligible next to the ADC noise. The transistor's shot noise (2qI_C, ≈ 1.8 µV at the collector at
            rest) is not modelled.
    Deterministic measurement chain:
        drive_bits, drive_range: DAQ output quantisation: ``drive_bits`` over ±``drive_range`` V (16 bit over
            ±10 V: LSB 0.305 mV). 0 bits = no quantisation.
        adc_bits, adc_range: ADC quantisation of each sample, ``adc_bits`` over ±``adc_range`` V (16 bit over
            ±10 V); samples clip at the range. 0 bits = none.
    """

    resistor_tolerance: float = 0.01
    capacitor_tolerance: float = 0.10
    inductor_tolerance: float = 0.10
    supply_tolerance: float = 0.005
    beta_spread: float = 0.15
    is_spread: float = 0.2
    drive_noise: float = 1e-4
    adc_noise: float = 2e-4
    johnson: bool = True
    drive_bits: int = 16
    drive_range: float = 10.0
    adc_bits: int = 16
    adc_range: float = 10.0

    _SCALED: ClassVar[tuple[str, ...]] = (
        "resistor_tolerance", "capacitor_tolerance", "inductor_tolerance", "supply_tolerance", "beta_spread",
        "is_spread", "drive_noise", "adc_noise",
    )
    _ALLOWED: ClassVar[dict[str, Allowed]] = {
        "resistor_tolerance": _TOLERANCE, "capacitor_tolerance": _TOLERANCE, "inductor_tolerance": _TOLERANCE,
        "supply_tolerance": _TOLERANCE, "beta_spread": _SPREAD, "is_spread": _SPREAD, "drive_noise": _NOISE_V,
        "adc_noise": _NOISE_V, "johnson": _FLAG, "drive_bits": _BITS, "drive_range": _POSITIVE_V, "adc_bits": _BITS,
        "adc_range": _POSITIVE_V,
    }

    def __post_init__(self) -> None:
        """Tolerances in [0, 1) (a part stays positive), log-normal spreads in [0, 2], noise levels finite ≥ 0 V,
        converter bits integers 0 … 32, converter ranges finite > 0 V (the DAQ's range holds at any resolution)."""
        _check_fields(self, "imperfections", self._ALLOWED)

    def scaled(self, factor: float) -> "CircuitImperfections":
        """Tolerances and noise levels × ``factor`` (quantisation unchanged; factor 0 also drops Johnson noise)."""
        changes: dict[str, Any] = {k: getattr(self, k) * factor for k in self._SCALED}
        if factor == 0:
            changes["johnson"] = False
        return replace(self, **changes)

    @classmethod
    def none(cls) -> "CircuitImperfections":
        """No defects, no noise, no quantisation (the design itself)."""
        return cls(**{k: 0.0 for k in cls._SCALED}, johnson=False, drive_bits=0, adc_bits=0)


# ----------------------------------------------------------------------------------------------------------
# drive waveform and readout
# ----------------------------------------------------------------------------------------------------------
def drive_order(n_inputs: int, n_params: int) -> np.ndarray:
    """Index into ``concat(x, θ)`` giving the time order of the drive segments (evenly interleaved).

    Input i sits at fractional position (i+½)/n_inputs, parameter j at (j+½)/n_params; stable sort, inputs first
    on ties. With n_inputs == n_params this is x₀, θ₀, x₁, θ₁, ….
    """
    pos = [((i + 0.5) / n_inputs, 0, i) for i in range(n_inputs)]
    pos += [((j + 0.5) / n_params, 1, n_inputs + j) for j in range(n_params)]
    return np.array([k for _, _, k in sorted(pos)], dtype=np.int64)


def drive_sequence(x: Tensor, theta: Tensor | None, order: Tensor) -> Tensor:
    """(B, n_segments) drive values in time order: ``concat(x, θ)`` (θ shared, shape (n_params,), or per sample)
    indexed by ``order`` (:func:`drive_order`); θ None when the circuit has no parameters."""
    if theta is None:
        return x[:, order]
    th = theta.to(x.dtype)
    th = th.reshape(1, -1).expand(x.shape[0], -1) if th.dim() == 1 else th
    return torch.cat([x, th], dim=1)[:, order]


def pwl_knots(n_segments: int, timing: CircuitTiming) -> np.ndarray:
    """Knot times of the drive: 0, then for each segment k its start t_k and the end of the slew t_k + t_rise, then
    the end of the window. The level before segment 0 is 0 V (the circuit starts at its 0 V operating point)."""
    t = [0.0]
    for k in range(n_segments):
        tk = k * timing.t_segment
        if k > 0:
            t.append(tk)
        t.append(tk + timing.t_rise)
    t.append(n_segments * timing.t_segment)
    return np.array(t)


def pwl_values(levels: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Values at :func:`pwl_knots` for drive ``levels`` (B, S): 0, L₀, L₀, L₁, L₁, …, L_{S−1}, L_{S−1}."""
    if isinstance(levels, Tensor):
        z = levels.new_zeros(levels.shape[0], 1)
        return torch.cat([z, levels.repeat_interleave(2, dim=1)], dim=1)
    z = np.zeros((levels.shape[0], 1))
    return np.concatenate([z, np.repeat(levels, 2, axis=1)], axis=1)


def bin_matrix(n_samples: int, output_dim: int) -> np.ndarray:
    """(output_dim, n_samples) averaging matrix: sample j (taken at t = (j+1)/adc_rate) goes to bin ⌊j·D/N⌋."""
    if n_samples < output_dim:
        raise ConfigError(f"circuit: output_dim must be at most the {n_samples} ADC samples of the drive window "
                          f"((n_inputs + n_params) × timing.t_segment × timing.adc_rate), got {output_dim}")
    b = (np.arange(n_samples) * output_dim) // n_samples
    m = np.zeros((output_dim, n_samples))
    m[b, np.arange(n_samples)] = 1.0
    return m / m.sum(1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# ngspice back end
# ----------------------------------------------------------------------------------------------------------
#: default cap on circuit copies per ngspice netlist (one process: per-circuit time is lowest near 32 copies)
MAX_CIRCUITS_PER_RUN = 32


def _fmt(v: float) -> str:
    return f"{v:.12g}"


def model_card_line(name: str, card: dict[str, float]) -> str:
    body = " ".join(f"{k}={_fmt(v)}" for k, v in card.items())
    return f".model {name} NPN({body})"


def _circuit_elements(i: int, comps: CircuitComponents) -> list[str]:
    """The netlist lines of copy ``i`` of the circuit, from its drive node ``d<i>`` to its collector ``c<i>``."""
    return [
        f"R1_{i} d{i} b{i} {_fmt(comps.r1)}",
        f"RB_{i} vcc b{i} {_fmt(comps.rb)}",
        f"CB_{i} b{i} 0 {_fmt(comps.cb)}",
        f"Q{i} c{i} b{i} 0 QN",
        f"RC_{i} vcc m{i} {_fmt(comps.rc)}",
        f"RL_{i} m{i} n{i} {_fmt(comps.rl)}",
        f"L_{i} n{i} c{i} {_fmt(comps.l)}",
        f"CT_{i} c{i} 0 {_fmt(comps.ct)}",
    ]


def circuit_netlist(
    levels: np.ndarray,
    comps: CircuitComponents,
    card: dict[str, float],
    timing: CircuitTiming,
    *,
    tmax: float,
    reltol: float,
    out_file: str,
    node: str = "collector",
) -> str:
    """One ngspice netlist holding ``len(levels)`` independent copies of the circuit (one per sample), saving the
    voltage of ``node`` (``"collector"`` or ``"base"``) of each."""
    n_seg = levels.shape[1]
    knots = pwl_knots(n_seg, timing)
    vals = pwl_values(levels)
    t_stop = n_seg * timing.t_segment
    lines = ["* pnnkit circuit lab", model_card_line("QN", card), f"VCC vcc 0 DC {_fmt(comps.vcc)}"]
    knot_text = [_fmt(t) for t in knots.tolist()]  # shared by every copy: formatted once
    for i, row in enumerate(vals.tolist()):  # Python floats: formatting them is ≈ 4× faster than numpy scalars
        pwl = " ".join([f"{t} {_fmt(v)}" for t, v in zip(knot_text, row)])
        lines += [f"Vd{i} d{i} 0 PWL({pwl})", *_circuit_elements(i, comps)]
    probe = " ".join(f"v({NODES[node]}{i})" for i in range(levels.shape[0]))
    lines.append(".save " + probe)
    lines.append(f".options reltol={_fmt(reltol)}")
    lines += [
        ".control",
        "set wr_singlescale",
        "set numdgt=12",
        f"tran {_fmt(timing.adc_dt)} {_fmt(t_stop)} 0 {_fmt(tmax)}",
        "linearize",
        f"wrdata {out_file} " + probe,
        "quit",
        ".endc",
        ".end",
    ]
    return "\n".join(lines) + "\n"


_NGSPICE_VERSIONS: dict[str, str] = {}


def ngspice_version(ngspice: str = "ngspice") -> str:
    """The simulator's version as ``ngspice -v`` prints it (e.g. ``"ngspice-39"``), or ``"unknown"``.

    The lab's readings depend on it (device models and time-step control change between releases), so it is part
    of the lab's metadata and goes into every measurement file. Found versions are cached per executable; a failed
    query is not, so the next lab asks again."""
    if ngspice in _NGSPICE_VERSIONS:
        return _NGSPICE_VERSIONS[ngspice]
    try:
        out = subprocess.run([ngspice, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"ngspice-\S+", out.stdout + out.stderr)
    if not m:
        return "unknown"
    _NGSPICE_VERSIONS[ngspice] = m.group(0)
    return m.group(0)


def run_ngspice(netlist: str, *, ngspice: str = "ngspice", timeout: float = 600.0) -> str:
    """Run ``ngspice -b`` on ``netlist`` in a scratch directory; return the text of ``out.txt`` it writes."""
    with tempfile.TemporaryDirectory(prefix="pnnkit-spice-") as d:
        cir = os.path.join(d, "circuit.cir")
        out = os.path.join(d, "out.txt")
        with open(cir, "w") as f:
            f.write(netlist.replace("{OUT}", out))
        try:
            proc = subprocess.run([ngspice, "-b", cir], capture_output=True, text=True, timeout=timeout, cwd=d)
        except FileNotFoundError as e:
            raise DeviceError(INSTALL_HINT) from e
        except subprocess.TimeoutExpired as e:
            raise DeviceError(f"ngspice timed out after {timeout:.0f} s") from e
        if not os.path.exists(out) or proc.returncode != 0:
            tail = " / ".join(ln.strip() for ln in (proc.stdout + proc.stderr).strip().splitlines()[-8:] if ln.strip())
            raise DeviceError(f"ngspice failed (exit {proc.returncode}): {tail}")
        with open(out) as f:
            return f.read()


def _parse_wrdata(text: str, n_cols: int) -> np.ndarray:
    data = np.array(text.split(), dtype=np.float64)
    if data.size % (n_cols + 1):
        raise DeviceError(f"ngspice output has {data.size} numbers, not a multiple of {n_cols + 1} columns")
    return data.reshape(-1, n_cols + 1)


def simulate_ngspice(
    levels: np.ndarray,
    comps: CircuitComponents,
    card: dict[str, float],
    timing: CircuitTiming,
    *,
    workers: int = 1,
    circuits_per_run: int | None = None,
    tmax: float = 1e-6,
    reltol: float = 1e-4,
    ngspice: str = "ngspice",
    node: str = "collector",
) -> np.ndarray:
    """Voltage of ``node`` (the collector by default, or the base) at t = (j+1)/adc_rate, j = 0 … N−1, for each
    drive in ``levels`` (B, S): (B, N).

    The batch is cut into netlists of ``circuits_per_run`` circuit copies (default: an equal share per worker, at
    most :data:`MAX_CIRCUITS_PER_RUN`) run by up to ``workers`` concurrent ngspice processes (threads wait on the
    subprocesses). Copies in one netlist share ngspice's time steps, so the per-circuit cost grows with the copy
    count beyond a few dozen (every copy is stepped at the finest step any of them needs).
    """
    b = levels.shape[0]
    workers = max(1, int(workers))
    per = circuits_per_run or min(MAX_CIRCUITS_PER_RUN, math.ceil(b / workers))
    chunks = [levels[i : i + per] for i in range(0, b, per)]
    n_samples = levels.shape[1] * timing.samples_per_segment

    def one(chunk: np.ndarray) -> np.ndarray:
        text = run_ngspice(
            circuit_netlist(chunk, comps, card, timing, tmax=tmax, reltol=reltol, out_file="{OUT}", node=node),
            ngspice=ngspice,
        )
        table = _parse_wrdata(text, chunk.shape[0])
        if table.shape[0] < n_samples + 1:
            raise DeviceError(f"ngspice returned {table.shape[0]} time points, expected {n_samples + 1}")
        return table[1 : n_samples + 1, 1:].T

    outs: list[np.ndarray | None] = [None] * len(chunks)
    try:
        if workers == 1 or len(chunks) == 1:
            for i, c in enumerate(chunks):
                outs[i] = one(c)
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                futures = [pool.submit(one, c) for c in chunks]
                try:
                    for i, f in enumerate(futures):
                        outs[i] = f.result()
                except BaseException:
                    for f in futures:  # the runs not started are dropped; the running ones finish
                        f.cancel()
                    wait(futures)
                    for i, f in enumerate(futures):
                        if outs[i] is None and f.done() and not f.cancelled() and f.exception() is None:
                            outs[i] = f.result()
                    raise
    except BaseException as e:  # what finished goes with the error (NaN rows for the rest): it gets logged
        if any(o is not None for o in outs):
            e.partial_reading = np.concatenate(  # type: ignore[attr-defined]
                [o if o is not None else np.full((len(c), n_samples), np.nan) for o, c in zip(outs, chunks)])
        raise
    return np.concatenate(outs, axis=0)  # type: ignore[arg-type]


def ngspice_operating_point(
    comps: CircuitComponents, card: dict[str, float], v_drive: float = 0.0, *, ngspice: str = "ngspice"
) -> dict[str, float]:
    """DC operating point (ngspice ``.op``) with the DAQ held at ``v_drive``: v_b, v_c (V), i_c, i_b (A)."""
    lines = [
        "* pnnkit circuit lab: operating point", model_card_line("QN", card), f"VCC vcc 0 DC {_fmt(comps.vcc)}",
        f"Vd0 d0 0 DC {_fmt(v_drive)}", *_circuit_elements(0, comps),
        ".control", "set numdgt=12", "op",
        "let vb = v(b0)", "let vc = v(c0)", "let ic = @q0[ic]", "let ib = @q0[ib]",
        "wrdata {OUT} vb vc ic ib", "quit", ".endc", ".end",
    ]
    text = run_ngspice("\n".join(lines) + "\n", ngspice=ngspice)
    nums = [float(v) for v in re.findall(r"[-+]?\d+\.\d+e[-+]\d+", text)]
    if len(nums) < 8:
        raise DeviceError(f"could not parse the ngspice operating point from {text!r}")
    # wrdata writes "scale value" pairs for each vector
    return {"v_b": nums[1], "v_c": nums[3], "i_c": nums[5], "i_b": nums[7]}


# ----------------------------------------------------------------------------------------------------------
# torch ODE model (twin and differentiable back end)
# ----------------------------------------------------------------------------------------------------------
_EXP_MAX = 40.0  # junction exponent cap (v_be ≤ 40·V_T ≈ 1.03 V): wild intermediate states cannot overflow


class BJT:
    """Collector and base currents (I_C, I_B) of the NPN from its junction voltages (DC model).

    ``model="ebers_moll"``: transport-form Ebers–Moll,
    I_C = I_S(e^{vbe/VT} − e^{vbc/VT}) − I_S/β_R(e^{vbc/VT} − 1),
    I_B = I_S/β_F(e^{vbe/VT} − 1) + I_S/β_R(e^{vbc/VT} − 1).
    ``model="gummel_poon_dc"`` adds the three DC corrections of the SPICE Gummel–Poon model that matter here:
    the Early effect and high-injection knee through the base charge q_b = q₁/2·(1 + √(1 + 4q₂)),
    q₁ = 1/(1 − vbc/VAF), q₂ = I_S(e^{vbe/VT} − 1)/IKF (dividing the transport current), and the B–E
    recombination current ISE(e^{vbe/(NE·VT)} − 1).
    The constants are combined once, so the per-call cost is a few dozen tensor operations (it sits in the ODE's
    right-hand side); they stay differentiable with respect to the parameters in ``t``.
    """

    def __init__(self, t: dict[str, Tensor], model: str, vt: float) -> None:
        self.gp = model != "ebers_moll"
        self.inv_vt = 1.0 / vt
        self.i_s = t["IS"]
        self.inv_bf, self.inv_br = 1 / t["BF"], 1 / t["BR"]
        if self.gp:
            self.inv_vaf, self.inv_ikf = 1 / t["VAF"], 1 / t["IKF"]
            self.ise, self.inv_nevt = t["ISE"], 1 / (t["NE"] * vt)

    def __call__(self, vbe: Tensor, vbc: Tensor) -> tuple[Tensor, Tensor]:
        i_f = self.i_s * (torch.exp((vbe * self.inv_vt).clamp(max=_EXP_MAX)) - 1)
        i_r = self.i_s * (torch.exp((vbc * self.inv_vt).clamp(max=_EXP_MAX)) - 1)
        i_r_br = i_r * self.inv_br
        if not self.gp:
            return i_f - i_r - i_r_br, i_f * self.inv_bf + i_r_br
        q1 = 1 / (1 - vbc * self.inv_vaf)
        qb = 0.5 * q1 * (1 + torch.sqrt(1 + 4 * (i_f * self.inv_ikf).clamp(min=-0.24)))
        leak = self.ise * (torch.exp((vbe * self.inv_nevt).clamp(max=_EXP_MAX)) - 1)
        return (i_f - i_r) / qb - i_r_br, i_f * self.inv_bf + leak + i_r_br

    def derivatives(self, vbe: Tensor, vbc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """∂I_C/∂v_be, ∂I_C/∂v_bc, ∂I_B/∂v_be, ∂I_B/∂v_bc (as autograd would give them, clamps included)."""
        xf, xr = vbe * self.inv_vt, vbc * self.inv_vt
        ef, er = torch.exp(xf.clamp(max=_EXP_MAX)), torch.exp(xr.clamp(max=_EXP_MAX))
        i_f, i_r = self.i_s * (ef - 1), self.i_s * (er - 1)
        df = torch.where(xf <= _EXP_MAX, self.i_s * self.inv_vt * ef, 0.0)  # dI_F/dv_be
        dr = torch.where(xr <= _EXP_MAX, self.i_s * self.inv_vt * er, 0.0)  # dI_R/dv_bc
        dr_br = dr * self.inv_br
        if not self.gp:
            return df, -dr - dr_br, df * self.inv_bf, dr_br
        q1 = 1 / (1 - vbc * self.inv_vaf)
        z = i_f * self.inv_ikf
        root = torch.sqrt(1 + 4 * z.clamp(min=-0.24))
        qb = 0.5 * q1 * (1 + root)
        dqb_be = torch.where(z >= -0.24, q1 * self.inv_ikf / root, 0.0) * df
        dqb_bc = 0.5 * (1 + root) * q1 * q1 * self.inv_vaf
        xl = vbe * self.inv_nevt
        dleak = torch.where(xl <= _EXP_MAX, self.ise * self.inv_nevt * torch.exp(xl.clamp(max=_EXP_MAX)), 0.0)
        ratio = (i_f - i_r) / (qb * qb)
        dic_be = df / qb - ratio * dqb_be
        dic_bc = -dr / qb - ratio * dqb_bc - dr_br
        return dic_be, dic_bc, df * self.inv_bf + dleak, dr_br


def bjt_currents(vbe: Tensor, vbc: Tensor, t: dict[str, Tensor], model: str, vt: float) -> tuple[Tensor, Tensor]:
    """(I_C, I_B) of the transistor (see :class:`BJT`)."""
    return BJT(t, model, vt)(vbe, vbc)


_DC_KEYS = ("IS", "BF", "BR", "VAF", "IKF", "ISE", "NE")


def operating_point(
    c: dict[str, Tensor], t: dict[str, Tensor], model: str, vt: float, v_drive: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """DC state (v_b, i_l, v_c) of the ODE model with the DAQ at ``v_drive``.

    Newton's method on (v_b, v_c) without autograd, then one Newton step with autograd: the result carries the
    implicit-function gradient with respect to the component values (needed when a twin calibrates them)."""

    def residual(v: Tensor, c: dict[str, Tensor], t: dict[str, Tensor]) -> Tensor:
        """Kirchhoff's current law at the base node (scaled by R1, in V) and the collector loop (V)."""
        vb, vc = v[0], v[1]
        ic, ib = bjt_currents(vb, vb - vc, t, model, vt)
        f1 = (v_drive - vb) / c["r1"] + (c["vcc"] - vb) / c["rb"] - ib
        f2 = c["vcc"] - (c["rc"] + c["rl"]) * ic - vc
        return torch.stack([f1 * c["r1"], f2])

    cd = {k: v.detach().double() for k, v in c.items()}
    td = {k: v.detach().double() for k, v in t.items()}
    v = torch.tensor([0.6, float(cd["vcc"]) - 1.0], dtype=torch.float64)

    def res_d(v: Tensor) -> Tensor:  # the residual of the detached float64 values, for Newton's iterations
        return residual(v, cd, td)

    for _ in range(100):
        jac = torch.autograd.functional.jacobian(res_d, v)
        step = torch.linalg.solve(jac, res_d(v))
        step = step.clamp(-0.05, 0.05)  # damped: junction exponentials
        v = v - step
        if float(step.abs().max()) < 1e-13:
            break
    jac = torch.autograd.functional.jacobian(res_d, v)
    dtype = next(iter(c.values())).dtype
    v_star = v.to(dtype) - torch.linalg.solve(jac.to(dtype), residual(v.to(dtype), c, t))
    vb, vc = v_star[0], v_star[1]
    ic, _ = bjt_currents(vb, vb - vc, t, model, vt)
    return vb, ic, vc


@dataclass(frozen=True)
class _ODEPlan:
    """Time grid of :func:`simulate_ode` for ``n_seg`` drive segments (numpy; built once per shape and timing).

    Attributes:
        knots: drive knot times (s), see :func:`pwl_knots`.
        grid: RK4 step boundaries (s), ``n_steps + 1`` of them: every knot and every ADC sample time, and
            ``substeps`` steps per ADC interval (one across each slew).
        sample_t: ADC sample times (s), all on the grid.
        out_index: grid index of each ADC sample.
        stage_w: (n_seg, 4·n_steps) drive at the four stages (t₀, t₀+h/3, t₀+2h/3, t₀+h) of every step as a
            linear map of the drive levels (the drive is linear within each step: the grid contains every knot).
    """

    knots: np.ndarray
    grid: np.ndarray
    sample_t: np.ndarray
    out_index: np.ndarray
    stage_w: np.ndarray


@functools.lru_cache(maxsize=32)
def _ode_plan(n_seg: int, timing: CircuitTiming, substeps: int) -> _ODEPlan:
    m = timing.samples_per_segment  # a whole number ≥ 1, and t_rise < one ADC period: CircuitTiming checks both
    if substeps < 1:
        raise ConfigError(f"substeps must be ≥ 1, got {substeps}")
    knots = pwl_knots(n_seg, timing)
    # Knot and sample times are rounded alike (to 1 fs) so that the last knot and the last sample coincide exactly:
    # unrounded, n_seg·t_segment and n_seg·m·adc_dt can differ in the last bit (e.g. t_segment = 10 µs), and
    # torchdiffeq then rejects the grid (its last point must equal the last evaluation time).
    sample_t = np.round(np.arange(1, n_seg * m + 1) * timing.adc_dt, 15)
    coarse = sorted(set(np.round(np.concatenate([[0.0], knots, sample_t]), 15)))
    fine: list[float] = []
    for a, b in zip(coarse[:-1], coarse[1:]):
        k = 1 if b - a <= timing.t_rise * 1.0001 else substeps
        fine += list(np.linspace(a, b, k + 1)[:-1])
    fine.append(coarse[-1])
    grid = np.array(fine)
    out_index = np.searchsorted(grid, sample_t)
    if not np.array_equal(grid[out_index], sample_t):
        raise ConfigError("internal: ADC sample times are not on the integration grid")
    # stage drive: on knot interval i the drive is vals[i] + α·(vals[i+1] − vals[i]), with vals = (0, L₀, L₀, L₁, …)
    n_steps = len(grid) - 1
    w = np.zeros((n_seg, 4 * n_steps))
    for n in range(n_steps):
        a, h = grid[n], grid[n + 1] - grid[n]
        i = min(max(bisect.bisect_right(knots.tolist(), a + h / 2) - 1, 0), len(knots) - 2)
        for s, frac in enumerate((0.0, 1 / 3, 2 / 3, 1.0)):
            alpha = min(max((a + frac * h - knots[i]) / (knots[i + 1] - knots[i]), 0.0), 1.0)
            if i >= 1:
                w[(i - 1) // 2, 4 * n + s] += 1 - alpha
            w[i // 2, 4 * n + s] += alpha
    return _ODEPlan(knots, grid, sample_t, out_index, w)


def simulate_ode(
    levels: Tensor,
    c: dict[str, Tensor],
    t: dict[str, Tensor],
    timing: CircuitTiming,
    *,
    model: str = "gummel_poon_dc",
    substeps: int = 1,
    temperature: float = T_NOMINAL,
    node: str = "collector",
) -> Tensor:
    """Voltage of ``node`` (``"collector"``: v_c, the default; ``"base"``: v_b) at t = (j+1)/adc_rate (B, N) of the
    ODE model for drive ``levels`` (B, S); differentiable.

    States: base-node voltage v_b (CB), inductor current i_L, collector voltage v_c (CT)::

        CB·dv_b/dt = (u(t) − v_b)/R1 + (VCC − v_b)/RB − I_B(v_b, v_b − v_c)
        L ·di_L/dt = VCC − (RC + RL)·i_L − v_c
        CT·dv_c/dt = i_L − I_C(v_b, v_b − v_c)

    Every transistor terminal sits on a capacitor node (emitter grounded), so the right-hand side is explicit: no
    algebraic loop. Fixed-step RK4 (3/8 rule, torchdiffeq's ``rk4``) on a grid aligned with the drive: one step
    across each slew (the drive is linear there, so RK4 sees it exactly) and ``substeps`` steps per ADC interval
    elsewhere (default 1: 5 µs).
    Stability: the fastest mode is the base node when the transistor conducts hardest (drive +1 V, I_B = 11.4 µA):
    τ = CB/(dI_B/dv_b + 1/R1 + 1/RB) = 12 µs (10.9 µs with CB at −10 %); the tank's ω₀ = 3.0·10⁴ s⁻¹. With the
    default 5 µs step |λh| ≤ 0.46 and ω₀h = 0.15, well inside RK4's stability region (|λh| < 2.78).

    Two implementations of the same steps: when a component value or transistor parameter needs a gradient
    (fitting a twin), torchdiffeq's ``odeint`` with autograd; otherwise (PAT's backward, in-silico training and
    evaluation through a frozen twin, the lab's ``ode`` backend) an explicit loop without a graph whose gradient
    w.r.t. ``levels`` is the hand-written discrete adjoint of the RK4 steps (:class:`_DriveAdjoint`): ≈ 2.2× faster
    than autograd through ``odeint``, same numbers (``tests/test_lab_circuit.py`` compares both).
    """
    if node not in NODES:
        raise ConfigError(f"node must be one of {', '.join(map(repr, NODES))}, got {node!r}")
    vt = K_BOLTZMANN * temperature / Q_ELECTRON
    plan = _ode_plan(int(levels.shape[1]), timing, int(substeps))
    consts = [*c.values(), *t.values()]
    if torch.is_grad_enabled() and any(v.requires_grad for v in consts):
        return _simulate_odeint(levels, c, t, plan, model, vt, node)
    ode = _FixedODE(c, t, model, vt, plan, levels.dtype, node)
    if torch.is_grad_enabled() and levels.requires_grad:
        return _DriveAdjoint.apply(levels, ode)
    with torch.no_grad():
        return ode.run(levels, keep=None)


def _simulate_odeint(
    levels: Tensor, c: dict[str, Tensor], t: dict[str, Tensor], plan: _ODEPlan, model: str, vt: float,
    node: str = "collector",
) -> Tensor:
    """:func:`simulate_ode` with torchdiffeq and autograd (differentiable w.r.t. everything)."""
    dtype = levels.dtype
    knots_np = plan.knots
    knots = torch.as_tensor(knots_np, dtype=dtype)
    vals = pwl_values(levels)
    slopes = (vals[:, 1:] - vals[:, :-1]) / (knots[1:] - knots[:-1])
    grid_t = torch.as_tensor(plan.grid, dtype=dtype)
    eval_t = torch.as_tensor(np.concatenate([[0.0], plan.sample_t]), dtype=dtype)
    # drive: u(t) = vals[i] + slopes[i]·(t − knot_i) on knot interval i; pre-scaled by 1/(R1·CB), and the flat
    # intervals skip the slope term (fewer tensor operations in the right-hand side)
    inv_cb = 1 / c["cb"]
    k_u = inv_cb / c["r1"]
    u_cols = list((vals * k_u).unbind(1))
    u_slopes = [None if bool((sl == 0).all()) else sl * k_u for sl in slopes.unbind(1)]
    knot_list = [float(v) for v in knots_np]
    k_bias = c["vcc"] * inv_cb / c["rb"]
    k_vb = (1 / c["r1"] + 1 / c["rb"]) * inv_cb
    inv_l, inv_ct = 1 / c["l"], 1 / c["ct"]
    rs = c["rc"] + c["rl"]
    bjt = BJT(t, model, vt)

    def rhs(time: Tensor, s: Tensor) -> Tensor:
        vb, il, vc = s.unbind(1)
        tf = float(time)
        i = min(max(bisect.bisect_right(knot_list, tf) - 1, 0), len(knot_list) - 2)
        u = u_cols[i] if u_slopes[i] is None else u_cols[i] + u_slopes[i] * (tf - knot_list[i])
        ic, ib = bjt(vb, vb - vc)
        dvb = u + k_bias - vb * k_vb - ib * inv_cb
        dil = (c["vcc"] - rs * il - vc) * inv_l
        dvc = (il - ic) * inv_ct
        return torch.stack([dvb, dil, dvc], dim=1)

    vb0, il0, vc0 = operating_point(c, t, model, vt)
    s0 = torch.stack([vb0, il0, vc0]).to(dtype).expand(levels.shape[0], 3).contiguous()
    sol = odeint(rhs, s0, eval_t, method="rk4", options={"grid_constructor": lambda f, y0, tt: grid_t})
    return sol[1:, :, 0 if node == "base" else 2].T


@functools.lru_cache(maxsize=64)
def _fixed_operating_point(
    c: tuple[tuple[str, float], ...], t: tuple[tuple[str, float], ...], model: str, vt: float
) -> tuple[float, float, float]:
    """:func:`operating_point` for fixed constants (name–value pairs), as floats. Cached: a frozen twin or the
    lab's ``ode`` backend asks for the same point on every call, and the damped Newton solve costs 20–35 ms."""
    with torch.no_grad():
        cd = {k: torch.tensor(v, dtype=torch.float64) for k, v in c}
        td = {k: torch.tensor(v, dtype=torch.float64) for k, v in t}
        vb0, il0, vc0 = operating_point(cd, td, model, vt)
    return float(vb0), float(il0), float(vc0)


class _FixedODE:
    """The circuit ODE with fixed (non-differentiable) constants, stepped by an explicit RK4 loop.

    ``run`` integrates (no graph) and can keep the base and collector voltages of every RK4 stage; ``adjoint``
    maps the gradient w.r.t. the sampled voltage of ``node`` back to the drive levels from those kept stages.
    """

    def __init__(self, c: dict[str, Tensor], t: dict[str, Tensor], model: str, vt: float, plan: _ODEPlan,
                 dtype: torch.dtype, node: str = "collector") -> None:
        f = {k: float(v) for k, v in c.items()}
        self.plan, self.dtype = plan, dtype
        self.base = node == "base"
        self.inv_cb = 1 / f["cb"]
        self.k_u = self.inv_cb / f["r1"]
        self.k_bias = f["vcc"] * self.inv_cb / f["rb"]
        self.k_vb = (1 / f["r1"] + 1 / f["rb"]) * self.inv_cb
        self.vcc, self.rs = f["vcc"], f["rc"] + f["rl"]
        self.inv_l, self.inv_ct = 1 / f["l"], 1 / f["ct"]
        td = {k: float(v) for k, v in t.items()}
        self.bjt = BJT(td, model, vt)  # type: ignore[arg-type]
        self.s0 = _fixed_operating_point(tuple(f.items()), tuple(td.items()), model, vt)
        self.h = np.diff(plan.grid).tolist()
        self.is_out = np.zeros(len(plan.grid), dtype=bool)
        self.is_out[plan.out_index] = True
        self.w = torch.as_tensor(plan.stage_w, dtype=dtype)

    def rhs(self, vb: Tensor, il: Tensor, vc: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ic, ib = self.bjt(vb, vb - vc)
        dvb = u - vb * self.k_vb - ib * self.inv_cb
        dil = (self.vcc - self.rs * il - vc) * self.inv_l
        dvc = (il - ic) * self.inv_ct
        return dvb, dil, dvc

    def run(self, levels: Tensor, keep: list[Tensor] | None) -> Tensor:
        """Sampled voltage of the node (B, N); with ``keep`` a list, appends (v_b, v_c) of every stage to it."""
        b = levels.shape[0]
        u_all = (levels.to(self.dtype) @ self.w * self.k_u + self.k_bias).T.unbind(0)  # 4·n_steps × (B,)
        vb, il, vc = (levels.new_full((b,), v, dtype=self.dtype) for v in self.s0)
        outs: list[Tensor] = []
        f = self.rhs
        for n, h in enumerate(self.h):
            u1, u2, u3, u4 = u_all[4 * n : 4 * n + 4]
            a1, b1, c1 = f(vb, il, vc, u1)
            h3 = h / 3
            y2 = (vb + h3 * a1, il + h3 * b1, vc + h3 * c1)
            a2, b2, c2 = f(*y2, u2)
            y3 = (vb + h * (a2 - a1 / 3), il + h * (b2 - b1 / 3), vc + h * (c2 - c1 / 3))
            a3, b3, c3 = f(*y3, u3)
            y4 = (vb + h * (a1 - a2 + a3), il + h * (b1 - b2 + b3), vc + h * (c1 - c2 + c3))
            a4, b4, c4 = f(*y4, u4)
            if keep is not None:
                keep += [vb, vc, y2[0], y2[2], y3[0], y3[2], y4[0], y4[2]]
            h8 = h * 0.125
            vb = vb + (a1 + 3 * (a2 + a3) + a4) * h8
            il = il + (b1 + 3 * (b2 + b3) + b4) * h8
            vc = vc + (c1 + 3 * (c2 + c3) + c4) * h8
            if self.is_out[n + 1]:
                outs.append(vb if self.base else vc)
        return torch.stack(outs, dim=1)

    def jacobian(self, vb: Tensor, vc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The state-dependent entries J₀₀, J₀₂, J₂₀, J₂₂ of ∂(dv_b, di_L, dv_c)/∂(v_b, i_L, v_c)."""
        dic_be, dic_bc, dib_be, dib_bc = self.bjt.derivatives(vb, vb - vc)
        j00 = -self.k_vb - self.inv_cb * (dib_be + dib_bc)
        j02 = self.inv_cb * dib_bc
        j20 = -self.inv_ct * (dic_be + dic_bc)
        j22 = self.inv_ct * dic_bc
        return j00, j02, j20, j22

    def adjoint(self, grad_y: Tensor, keep: list[Tensor]) -> Tensor:
        """Gradient w.r.t. the drive levels (B, S) of ⟨grad_y, y⟩ (discrete adjoint of :meth:`run`'s steps)."""
        st = torch.stack(keep).view(len(self.h), 4, 2, -1)  # step, stage, (v_b, v_c), batch
        j00, j02, j20, j22 = (j.unbind(0) for j in self.jacobian(st[:, :, 0].flatten(0, 1), st[:, :, 1].flatten(0, 1)))
        j11, j12, j21 = -self.rs * self.inv_l, -self.inv_l, self.inv_ct
        gy = grad_y.to(self.dtype).T.unbind(0)
        n_out = len(gy)
        zero = torch.zeros_like(gy[0])
        a0, a1, a2 = zero, zero, zero
        gu: list[Tensor] = []  # adjoint of the stage drives, last stage first
        for n in range(len(self.h) - 1, -1, -1):
            if self.is_out[n + 1]:
                n_out -= 1
                if self.base:
                    a0 = a0 + gy[n_out]
                else:
                    a2 = a2 + gy[n_out]
            h = self.h[n]
            c1, c2 = h * 0.125, h * 0.375
            # adjoints of the four slopes k₁…k₄ (each a triple), updated as the stages are undone in reverse
            g1 = [a0 * c1, a1 * c1, a2 * c1]
            g4 = list(g1)
            g2 = [a0 * c2, a1 * c2, a2 * c2]
            g3 = list(g2)
            y0 = [a0, a1, a2]

            def back(k: int, g: list[Tensor]) -> list[Tensor]:
                """Jᵀg at stage k (the drive enters dv_b only, with gradient g[0]); adds it to y0's adjoint."""
                gu.append(g[0])
                gv = [j00[k] * g[0] + j20[k] * g[2], j11 * g[1] + j21 * g[2], j02[k] * g[0] + j12 * g[1] + j22[k] * g[2]]
                for i in range(3):
                    y0[i] = y0[i] + gv[i]
                return gv

            k = 4 * n
            gv = back(k + 3, g4)  # Y₄ = y₀ + h(k₁ − k₂ + k₃)
            for i in range(3):
                g1[i], g2[i], g3[i] = g1[i] + h * gv[i], g2[i] - h * gv[i], g3[i] + h * gv[i]
            gv = back(k + 2, g3)  # Y₃ = y₀ + h(k₂ − k₁/3)
            for i in range(3):
                g2[i], g1[i] = g2[i] + h * gv[i], g1[i] - (h / 3) * gv[i]
            gv = back(k + 1, g2)  # Y₂ = y₀ + (h/3)·k₁
            for i in range(3):
                g1[i] = g1[i] + (h / 3) * gv[i]
            back(k, g1)  # Y₁ = y₀
            a0, a1, a2 = y0
        g_stage = torch.stack(gu[::-1], dim=1) * self.k_u  # (B, 4·n_steps)
        return g_stage @ self.w.T


class _DriveAdjoint(torch.autograd.Function):
    """:class:`_FixedODE` as an autograd function: forward without a graph, backward = its adjoint."""

    @staticmethod
    def forward(ctx: Any, levels: Tensor, ode: _FixedODE) -> Tensor:  # type: ignore[override]
        keep: list[Tensor] = []
        with torch.no_grad():
            y = ode.run(levels, keep)
        ctx.ode, ctx.keep, ctx.in_dtype = ode, keep, levels.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        with torch.no_grad():
            g = ctx.ode.adjoint(grad_y, ctx.keep)
        return g.to(ctx.in_dtype), None


def _ste_quantize(v: Tensor, bits: int, full_range: float) -> Tensor:
    """Round to the converter's LSB (``bits`` over ±full_range, clipped); straight-through gradient."""
    if bits <= 0:
        return v
    lsb = 2 * full_range / 2**bits
    q = (torch.round(v / lsb) * lsb).clamp(-full_range, full_range - lsb)
    return v + (q - v).detach()


# ----------------------------------------------------------------------------------------------------------
# the lab
# ----------------------------------------------------------------------------------------------------------
def unit_values(
    comps: CircuitComponents, card: dict[str, float], imp: CircuitImperfections, unit: int
) -> tuple[CircuitComponents, dict[str, float]]:
    """Component values and transistor card of physical unit ``unit`` (fixed draw within the tolerances)."""
    rng = np.random.default_rng([20220126, int(unit)])

    def u(tol: float) -> float:
        return float(1 + tol * rng.uniform(-1, 1))

    c = CircuitComponents(
        vcc=comps.vcc * u(imp.supply_tolerance),
        r1=comps.r1 * u(imp.resistor_tolerance),
        rb=comps.rb * u(imp.resistor_tolerance),
        cb=comps.cb * u(imp.capacitor_tolerance),
        rc=comps.rc * u(imp.resistor_tolerance),
        rl=comps.rl * u(imp.inductor_tolerance),
        l=comps.l * u(imp.inductor_tolerance),
        ct=comps.ct * u(imp.capacitor_tolerance),
    )
    k = dict(card)
    k["BF"] = card["BF"] * math.exp(imp.beta_spread * rng.standard_normal())
    f_is = math.exp(imp.is_spread * rng.standard_normal())
    k["IS"], k["ISE"] = card["IS"] * f_is, card["ISE"] * f_is
    return c, k


class CircuitLab(VirtualLab):
    """The transistor circuit as a physical system; each instance is one physical unit (``unit`` seeds its defects).

    Args:
        n_inputs: data values per sample (drive segments carrying x).
        n_params: trainable drive values ``theta`` (segments interleaved with the inputs, see :func:`drive_order`).
        output_dim: number of equal time bins the recorded voltage is averaged into.
        output_node: the node the ADC records: ``"collector"`` (default; v(C), after the R–L–C tank) or ``"base"``
            (v(B), the R1–CB node; faster: 12–30 µs while the transistor conducts, against the tank's 4.82 kHz).
        unit: seed of this unit's fixed component values (different seeds = different units of the same design).
        ideal: nominal components, no noise, no quantisation (reality is still ngspice's full transistor model, and
            the DAQ still has its ±10 V range: input_max and param_max must lie within it).
        imperfections: see :class:`CircuitImperfections`.
        seed: seed of the per-measurement noise (state in :meth:`get_state`).
        workers: concurrent ngspice processes (default: the number of CPUs).
        circuits_per_run: circuit copies per ngspice netlist (default: an equal share of the batch per worker).
        dtype: dtype of the ``backend="ode"`` computation.
        backend: ``"ngspice"`` (reality, not differentiable) or ``"ode"`` (the torch ODE with this unit's component
            values, noise and quantisation; differentiable, for ``exact`` mode).
        input_max, param_max: hard ranges ±input_max, ±param_max (V) of the drive values.
        components, timing: the design (see :class:`CircuitComponents`, :class:`CircuitTiming`).
        spice_tmax, spice_reltol: ngspice's maximum internal step and relative tolerance.
        ngspice: the ngspice executable.

    Every option is checked before anything is built (one-line :class:`ConfigError` naming it); the rules of the
    three dataclasses are in their ``__post_init__``.
    """

    batched_params = True

    def __init__(
        self,
        n_inputs: int = 16,
        n_params: int = 16,
        output_dim: int = 16,
        *,
        output_node: str = "collector",
        unit: int = 0,
        ideal: bool = False,
        imperfections: CircuitImperfections | None = None,
        seed: int = 0,
        workers: int | None = None,
        circuits_per_run: int | None = None,
        dtype: torch.dtype = torch.float64,
        backend: str = "ngspice",
        input_max: float = 1.0,
        param_max: float = 1.0,
        components: CircuitComponents | None = None,
        timing: CircuitTiming | None = None,
        spice_tmax: float = 1e-6,
        spice_reltol: float = 1e-4,
        ngspice: str = "ngspice",
    ) -> None:
        # every option is checked before anything is drawn, simulated or started
        for name, value, rule in (
            ("n_inputs", n_inputs, _COUNT), ("n_params", n_params, Allowed(lo_open=False, kind="int")),
            ("output_dim", output_dim, _COUNT), ("unit", unit, _SEED), ("seed", seed, _SEED), ("ideal", ideal, _FLAG),
            ("workers", workers, replace(_COUNT, none="one per CPU")),
            ("circuits_per_run", circuits_per_run, replace(_COUNT, none="an equal share of the batch per worker")),
            ("input_max", input_max, _POSITIVE_V), ("param_max", param_max, _POSITIVE_V),
            ("spice_tmax", spice_tmax, Allowed(unit=" s")),
            ("spice_reltol", spice_reltol, Allowed(hi=1.0, hi_open=True)),
        ):
            rule.check("circuit", name, value)
        if backend not in ("ngspice", "ode"):
            raise _refusal("backend", backend, "'ngspice' or 'ode'")
        if output_node not in NODES:
            raise _refusal("output_node", output_node, " or ".join(map(repr, NODES)))
        if not (isinstance(ngspice, str) and ngspice):
            raise _refusal("ngspice", ngspice, "the name or path of the ngspice executable")
        dtype = _float_dtype(dtype)
        imp = _design("imperfections", imperfections, CircuitImperfections)
        self.imperfections = imp = CircuitImperfections.none() if ideal else imp
        self.design = _design("components", components, CircuitComponents)
        self.timing = _design("timing", timing, CircuitTiming)
        # A DAQ cannot play a level beyond its output range at any resolution (ideal=True included: no quantiser,
        # but the same DAQ)
        if max(input_max, param_max) > imp.drive_range:
            raise ConfigError(f"circuit: input_max/param_max ({max(input_max, param_max):g} V) exceed the DAQ's "
                              f"±{imp.drive_range:g} V output range (imperfections.drive_range)")
        self.n_inputs, self.n_params, self.output_dim = int(n_inputs), int(n_params), int(output_dim)
        self.output_node = output_node
        self.n_segments = self.n_inputs + self.n_params
        self.n_samples = self.n_segments * self.timing.samples_per_segment
        self._bins = bin_matrix(self.n_samples, self.output_dim)
        if backend == "ngspice":
            exe = shutil.which(ngspice)
            if exe is None:
                raise DeviceError(INSTALL_HINT)
            self.ngspice = exe
        else:
            self.ngspice = ngspice
        self.backend = backend
        self.differentiable = backend == "ode"
        self.unit, self.ideal = int(unit), bool(ideal)
        self.card = dict(Q2N3904_CARD)
        if ideal:
            self.components = self.design
            self.unit_card = dict(self.card)
        else:
            self.components, self.unit_card = unit_values(self.design, self.card, self.imperfections, self.unit)
        self.workers = int(workers) if workers is not None else (os.cpu_count() or 1)
        self.circuits_per_run = None if circuits_per_run is None else int(circuits_per_run)
        self.dtype = dtype
        self.spice_tmax, self.spice_reltol = float(spice_tmax), float(spice_reltol)
        self.order = drive_order(self.n_inputs, self.n_params)
        vt_noise = 0.0
        if imp.johnson:  # thermal noise of the recorded node: kT/C of its capacitor (equipartition)
            comp = self.components
            c_node = comp.ct if output_node == "collector" else comp.cb
            vt_noise = math.sqrt(K_BOLTZMANN * T_NOMINAL / c_node)
        self.johnson_rms = vt_noise
        self.sample_noise = math.sqrt(vt_noise**2 + imp.adc_noise**2)
        per_bin = self.n_samples / self.output_dim
        noise_std = self.sample_noise / math.sqrt(per_bin) if self.sample_noise else None
        params = (
            (ParamSpec("theta", (self.n_params,), -param_max, param_max, "V", init_scale=0.5,
                       doc="trainable DAQ drive levels, interleaved in time with the inputs"),)
            if self.n_params else ()
        )
        self.spec = SystemSpec(
            name="circuit" + ("-ideal" if ideal else ""),
            input_dim=self.n_inputs,
            output_dim=self.output_dim,
            input_low=-input_max,
            input_high=input_max,
            params=params,
            input_unit="V",
            output_unit="V",
            noise_std=noise_std,
            meta={
                "unit": self.unit, "ideal": ideal, "backend": backend, "output_node": output_node,
                "records": f"{output_node} voltage", "imperfections": _jsonable(asdict(imp)),
                "design": asdict(self.design), "components": asdict(self.components), "timing": asdict(self.timing),
                "transistor": "2N3904", "unit_card": {k: self.unit_card[k] for k in ("IS", "ISE", "BF")},
                "simulator": ngspice_version(self.ngspice) if backend == "ngspice" else "torch ODE (simulate_ode)",
            },
        )
        self._init_noise(seed)

    # --- measurement ---------------------------------------------------------------------------------------
    def drive_levels(self, x: Tensor, params: Params) -> Tensor:
        """(B, n_segments) drive values in time order (before DAQ quantisation and noise)."""
        return drive_sequence(x, params["theta"] if self.n_params else None, torch.as_tensor(self.order))

    def measure(self, x: Tensor, params: Params) -> Tensor | np.ndarray:
        imp = self.imperfections
        dt = self.dtype if self.backend == "ode" else torch.float64
        lv = _ste_quantize(self.drive_levels(x.to(dt), params), imp.drive_bits, imp.drive_range)
        if imp.drive_noise:
            lv = lv + imp.drive_noise * torch.randn(lv.shape, generator=self._noise, dtype=dt)
        if self.backend == "ode":
            c = {k: torch.tensor(v, dtype=dt) for k, v in asdict(self.components).items()}
            t = {k: torch.tensor(self.unit_card[k], dtype=dt) for k in _DC_KEYS}
            v = simulate_ode(lv, c, t, self.timing, node=self.output_node)
        else:
            try:
                v = torch.from_numpy(
                    simulate_ngspice(
                        lv.detach().numpy(), self.components, self.unit_card, self.timing, workers=self.workers,
                        circuits_per_run=self.circuits_per_run, tmax=self.spice_tmax, reltol=self.spice_reltol,
                        ngspice=self.ngspice, node=self.output_node,
                    )
                )
            except BaseException as e:  # the runs that finished, read out like the rest (NaN rows stay NaN)
                part = getattr(e, "partial_reading", None)
                if part is not None:
                    e.partial_reading = self._read_out(torch.from_numpy(part), dt).numpy()  # type: ignore[attr-defined]
                raise
        return self._read_out(v, dt)

    def _read_out(self, v: Tensor, dt: torch.dtype) -> Tensor:
        """Node voltages (B, samples) → recorded bins: sampling noise, the ADC, the bin averages."""
        imp = self.imperfections
        if self.sample_noise:
            v = v + self.sample_noise * torch.randn(v.shape, generator=self._noise, dtype=dt)
        v = _ste_quantize(v, imp.adc_bits, imp.adc_range)
        return v @ torch.as_tensor(self._bins.T, dtype=v.dtype)

    def operating_point(self, v_drive: float = 0.0) -> dict[str, float]:
        """This unit's DC operating point from ngspice ``.op`` (DAQ held at ``v_drive``)."""
        exe = shutil.which(self.ngspice) or shutil.which("ngspice")
        if exe is None:
            raise DeviceError(INSTALL_HINT)
        return ngspice_operating_point(self.components, self.unit_card, v_drive, ngspice=exe)

    def ideal_twin(self, model: str = "gummel_poon_dc", substeps: int = 1) -> "CircuitODETwin":
        """The design equations as a differentiable twin (nominal components, nominal transistor card)."""
        return CircuitODETwin(
            self.spec, n_inputs=self.n_inputs, n_params=self.n_params, output_dim=self.output_dim,
            components=asdict(self.design), timing=asdict(self.timing), card={k: self.card[k] for k in _DC_KEYS},
            model=model, substeps=substeps, output_node=self.output_node,
        )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with numpy scalars (``np.True_``, ``np.float64``, …) as the Python values JSON can store."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


@register_twin
class CircuitODETwin(DigitalTwin):
    """Physics twin: the circuit ODE (:func:`simulate_ode`) with calibration factors on its component values.

    Learnable (all start at the design value, factor 1): log-scales of R1, RB, CB, RC+RL, L, CT and of the
    transistor's IS (with ISE) and BF, plus an output offset (V). Junction capacitances, transit times and the
    ohmic resistances of the transistor are not modelled.

    Args:
        spec: the lab's spec.
        n_inputs, n_params, output_dim: as the lab.
        components, timing: dicts of :class:`CircuitComponents` / :class:`CircuitTiming` fields.
        card: the transistor's DC parameters (IS, BF, BR, VAF, IKF, ISE, NE).
        model: ``"gummel_poon_dc"`` (default) or ``"ebers_moll"`` (see :func:`bjt_currents`).
        substeps: RK4 steps per ADC sample interval.
        output_node: the node the twin predicts, as the lab's ``output_node`` (``"collector"`` or ``"base"``).
        em_beta: forward gain used by the plain ``"ebers_moll"`` model in place of the card's BF = 416 (the card's
            peak gain; without the B–E leakage term that BF would bias the stage into saturation). Default 131 =
            I_C/I_B of ngspice's operating point at a 0 V drive (0.641 mA / 4.90 µA).
    """

    kind: ClassVar[str] = "circuit_ode"
    _CAL: ClassVar[tuple[str, ...]] = ("r1", "rb", "cb", "rc", "l", "ct", "IS", "BF")

    def __init__(
        self,
        spec: SystemSpec,
        n_inputs: int,
        n_params: int,
        output_dim: int,
        components: dict[str, float] | None = None,
        timing: dict[str, float] | None = None,
        card: dict[str, float] | None = None,
        model: str = "gummel_poon_dc",
        substeps: int = 1,
        em_beta: float = 131.0,
        output_node: str = "collector",
    ) -> None:
        super().__init__(spec)
        if model not in ("gummel_poon_dc", "ebers_moll"):
            raise ConfigError(f"unknown transistor model {model!r}; use 'gummel_poon_dc' or 'ebers_moll'")
        if output_node not in NODES:
            raise ConfigError(f"circuit twin: output_node must be one of {', '.join(map(repr, NODES))}, "
                              f"got {output_node!r}")
        lab_node = spec.meta.get("output_node", "collector")
        if output_node != lab_node:
            raise ConfigError(f"circuit twin: it predicts the {output_node} voltage but its lab records the "
                              f"{lab_node} (output_node)")
        self.output_node = output_node
        self.n_inputs, self.n_params, self.output_dim = int(n_inputs), int(n_params), int(output_dim)
        self.components = CircuitComponents(**(components or {}))
        self.timing = CircuitTiming(**(timing or {}))
        self.card = {k: float((card or Q2N3904_CARD)[k]) for k in _DC_KEYS}
        self.model, self.substeps, self.em_beta = model, int(substeps), float(em_beta)
        self.log_scale = nn.ParameterDict({k: nn.Parameter(torch.zeros((), dtype=torch.float64)) for k in self._CAL})
        self.offset = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("order", torch.as_tensor(drive_order(self.n_inputs, self.n_params)))
        n_samples = (self.n_inputs + self.n_params) * self.timing.samples_per_segment
        self.register_buffer("bins", torch.as_tensor(bin_matrix(n_samples, self.output_dim)))

    def config(self) -> dict[str, Any]:
        return {
            "n_inputs": self.n_inputs, "n_params": self.n_params, "output_dim": self.output_dim,
            "components": asdict(self.components), "timing": asdict(self.timing), "card": dict(self.card),
            "model": self.model, "substeps": self.substeps, "em_beta": self.em_beta, "output_node": self.output_node,
        }

    def values(self, dtype: torch.dtype = torch.float64) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Calibrated component values and transistor parameters (tensors, differentiable)."""
        s = {k: v.to(dtype).exp() for k, v in self.log_scale.items()}
        comp = {f.name: torch.tensor(getattr(self.components, f.name), dtype=dtype) for f in fields(CircuitComponents)}
        for k in ("r1", "rb", "cb", "l", "ct"):
            comp[k] = comp[k] * s[k]
        comp["rc"], comp["rl"] = comp["rc"] * s["rc"], comp["rl"] * s["rc"]
        tr = {k: torch.tensor(v, dtype=dtype) for k, v in self.card.items()}
        if self.model == "ebers_moll":
            tr["BF"] = torch.tensor(self.em_beta, dtype=dtype)
        tr["IS"], tr["ISE"], tr["BF"] = tr["IS"] * s["IS"], tr["ISE"] * s["IS"], tr["BF"] * s["BF"]
        return comp, tr

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        dt = x.dtype
        lv = drive_sequence(x, params["theta"] if self.n_params else None, self.order)
        comp, tr = self.values(dt)
        v = simulate_ode(lv, comp, tr, self.timing, model=self.model, substeps=self.substeps, node=self.output_node)
        return v @ self.bins.to(dt).T + self.offset.to(dt)



def _make(**options: Any) -> CircuitLab:
    imp = resolve_imperfections(options, CircuitImperfections)
    return CircuitLab(imperfections=imp, **options)


register_lab("circuit", _make, options_of=CircuitLab)
