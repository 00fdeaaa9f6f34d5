"""The coupled-oscillator virtual lab: physics limits, units, noise."""

from __future__ import annotations

import math

import torch

from pnnkit import make_lab
from pnnkit.labs.oscillators import couplings_matrix, integrate_oscillators


def _params(n, g, scale=0.3):
    return {"J": (torch.rand(n * (n - 1) // 2, generator=g) * 2 - 1) * scale, "e": (torch.rand(n, generator=g) * 2 - 1) * scale}


def test_uncoupled_small_angles_oscillate_harmonically():
    q0 = torch.full((1, 3), 0.01, dtype=torch.float64)
    J = torch.zeros(3, 3, dtype=torch.float64)
    T = 2.0
    q = integrate_oscillators(q0, J, torch.zeros(3, dtype=torch.float64), 1.0, T, 200)
    torch.testing.assert_close(q, q0 * math.cos(T), rtol=2e-4, atol=0)  # sin q ≈ q: q(t) = q0 cos t


def test_coupling_matrix_is_symmetric_with_zero_diagonal():
    J = couplings_matrix(torch.arange(1.0, 7.0), 4)
    assert torch.equal(J, J.T) and torch.equal(J.diagonal(), torch.zeros(4)) and J[0, 1] == 1 and J[2, 3] == 6


def test_units_differ_same_unit_reproduces_and_ideal_matches_twin():
    g = torch.Generator().manual_seed(0)
    p = _params(6, g)
    x = torch.rand(32, 6, generator=g) * 2 - 1
    mk = lambda **k: make_lab("oscillators", n=6, imperfection_scale=0, **k)  # noqa: E731 - defects only
    no_noise = dict(imperfections={"coupling_error": 0.2, "nonlinearity_error": 0.1, "input_noise": 0, "readout_noise": 0})
    a = make_lab("oscillators", n=6, unit=0, **no_noise)(x, p)
    b = make_lab("oscillators", n=6, unit=0, **no_noise)(x, p)
    c = make_lab("oscillators", n=6, unit=1, **no_noise)(x, p)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3
    ideal = make_lab("oscillators", n=6, ideal=True)
    torch.testing.assert_close(ideal(x, p), ideal.ideal_twin()(x, p), rtol=0, atol=1e-6)
    torch.testing.assert_close(mk(unit=3)(x, p), ideal(x, p), rtol=0, atol=1e-6)  # scale 0 = the design


def test_measurement_noise_has_the_documented_level():
    lab = make_lab("oscillators", n=4, imperfections={"coupling_error": 0.2, "nonlinearity_error": 0.1,
                                                      "input_noise": 0.0, "readout_noise": 0.01})
    g = torch.Generator().manual_seed(1)
    p, x = _params(4, g), torch.rand(512, 4, generator=g) * 2 - 1
    d = lab(x, p) - lab(x, p)  # difference of two readouts: std = √2 · 0.01
    assert abs(float(d.std()) / math.sqrt(2) - 0.01) < 0.0008


def test_noise_state_roundtrip_reproduces_measurements():
    lab = make_lab("oscillators", n=4, seed=3)
    g = torch.Generator().manual_seed(2)
    p, x = _params(4, g), torch.rand(8, 4, generator=g)
    st = lab.get_state()
    y1 = lab(x, p)
    lab.set_state(st)
    assert torch.equal(lab(x, p), y1)
