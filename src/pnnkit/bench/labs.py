"""Throughput of each virtual lab at batch 256 beside a compute floor.

A lab call (``system(x, θ)``: range/shape guard, the simulation, noise, the finite/shape checks of the result) is
timed against the **floor**: the arithmetic the simulation cannot avoid, written as plain torch with nothing
around it and timed alone on the same batch and thread count (one intra-op thread; thread CPU time, so that
other jobs on a shared machine do not count; fastest of the repeats):

* ``oscillators`` — the RK4 integration itself: ``steps`` × 4 evaluations of ``−α sin q + J sin q − rowsum(J)
  ⊙ sin q + e`` ((B, n)·(n, n) matmul, sin, elementwise) and the RK4 combinations, in a bare Python loop. What the
  lab adds: torchdiffeq's solver machinery, building the coupling matrix, input/readout noise, the guard.
* ``shg`` — the FFT autoconvolution of the shaped field at each quadrature depth (fft, square, ifft), |B|², and
  the spectrometer binning matmul, from a precomputed complex field. What the lab adds: pixel assembly, the
  SLM defects (quantiser, gamma, crosstalk), laser noise and drift, detector noise and ADC, the guard.

Goal: lab time ≤ 2 × floor. Where the gap is larger, the row carries the cProfile top entries (by own time) of
the lab call, which show where the rest goes.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .common import available_labs, cpu_clock, goal, machine_info, min_time, result

if TYPE_CHECKING:
    from ..system import PhysicalSystem

BATCH = 256


def _inputs(lab, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    spec = lab.spec
    x = spec.input_low + (spec.input_high - spec.input_low) * (0.1 + 0.8 * torch.rand(batch, spec.input_dim, generator=g))
    th = {p.name: p.low + (p.high - p.low) * (0.3 + 0.4 * torch.rand(p.shape, generator=g)) for p in spec.params}
    return x, th


def oscillator_floor(lab: PhysicalSystem, x: Tensor,
                     th: dict[str, Tensor]) -> Callable[[], Tensor]:
    """Bare RK4 over the same ODE (coupling matrix prepared outside the timed region)."""
    from ..labs.oscillators import couplings_matrix

    n, steps, T = lab.n, lab.steps, lab.duration
    J = couplings_matrix(th["J"], n)
    Jt, rs, e, alpha = J.T.contiguous(), J.sum(-1), th["e"], float(lab._alpha)
    h = T / steps

    def acc(q):
        s = torch.sin(q)
        return s @ Jt - (alpha + rs) * s + e

    def run():
        q, p = x.clone(), torch.zeros_like(x)
        for _ in range(steps):
            k1q, k1p = p, acc(q)
            k2q, k2p = p + 0.5 * h * k1p, acc(q + 0.5 * h * k1q)
            k3q, k3p = p + 0.5 * h * k2p, acc(q + 0.5 * h * k2q)
            k4q, k4p = p + h * k3p, acc(q + h * k3q)
            q = q + (h / 6) * (k1q + 2 * k2q + 2 * k3q + k4q)
            p = p + (h / 6) * (k1p + 2 * k2p + 2 * k3p + k4p)
        return q

    return run


def shg_floor(lab: PhysicalSystem, x: Tensor, th: dict[str, Tensor]) -> Callable[[], Tensor]:
    """FFT autoconvolution + |B|² + binning from a precomputed shaped field."""
    from ..labs.shg import sh_field_fft

    with torch.no_grad():
        a = lab.shaped_field(x, th)
    t, nfft, binning, p_ref = lab._t, lab.design.nfft, lab.binning, lab.design.p_ref

    def run():
        b = sh_field_fft(a, t["in_phase"], t["out_factor"], nfft)
        return (b.abs().pow(2) @ binning) / p_ref

    return run


FLOORS = {"oscillators": oscillator_floor, "shg": shg_floor}
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "oscillators": [{"n": 8}, {"n": 64}],  # the lab default and the demo's 64-pendulum layer
    "shg": [{}],  # default: 12 inputs + 52 parameter pixels, 12 bins
}


def _profile(fn, top: int = 12, calls: int = 5) -> list[dict[str, Any]]:
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    entries = []
    for (file, line, func), (cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        entries.append({"function": f"{file.split('site-packages/')[-1].split('src/')[-1]}:{line}({func})",
                        "calls_per_lab_call": nc / calls, "own_ms_per_lab_call": 1e3 * tt / calls,
                        "cumulative_ms_per_lab_call": 1e3 * ct / calls})
    entries.sort(key=lambda e: -e["own_ms_per_lab_call"])
    return entries[:top]


def run(quick: bool = False, threads: int = 1) -> dict[str, Any]:
    from ..labs import make_lab

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        machine = machine_info(threads)
        repeats = 2 if quick else 15
        rows = []
        for name in available_labs():
            for opts in CONFIGS.get(name, [{}])[: 1 if quick else None]:
                lab = make_lab(name, **opts)
                x, th = _inputs(lab, BATCH)
                t_lab = min_time(lambda: lab(x, th), repeats, clock=cpu_clock)
                floor = FLOORS[name](lab, x, th)
                with torch.no_grad():
                    t_floor = min_time(floor, repeats, clock=cpu_clock)
                row = {"lab": name, "config": ", ".join(f"{k}={v}" for k, v in opts.items()) or "default",
                       "batch": BATCH, "lab_ms": 1e3 * t_lab, "floor_ms": 1e3 * t_floor,
                       "lab_samples_per_s": BATCH / t_lab, "floor_samples_per_s": BATCH / t_floor,
                       "ratio": t_lab / t_floor}
                if row["ratio"] > 2.0 or quick:
                    row["profile_top"] = _profile(lambda: lab(x, th), top=5 if quick else 12, calls=1 if quick else 5)
                rows.append(row)
        goals = [goal(f"{r['lab']} ({r['config']}): lab time / compute floor at batch {BATCH}", r["ratio"], 2.0, "<=",
                      "" if r["ratio"] <= 2.0 else "gap explained by the profile in this row")
                 for r in rows]
        return result("labs", machine, rows, goals, settings={
            "threads": threads, "repeats": repeats, "batch": BATCH, "timing": "thread CPU time (one intra-op thread), fastest of the repeats",
            "floors": {"oscillators": oscillator_floor.__doc__, "shg": shg_floor.__doc__},
        })
    finally:
        torch.set_num_threads(old)


COLUMNS = ("lab", "config", "batch", "lab_ms", "floor_ms", "lab_samples_per_s", "floor_samples_per_s", "ratio")
