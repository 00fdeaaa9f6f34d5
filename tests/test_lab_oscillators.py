"""The coupled-oscillator virtual lab: physics limits, units, noise, and the checks of its options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pnnkit import ConfigError, make_lab
from pnnkit.cli import demo_config_text
from pnnkit.config import load_config, parse_yaml, validate_config
from pnnkit.experiments import build_lab
from pnnkit.labs.oscillators import (
    CoupledOscillatorLab,
    OscillatorImperfections,
    couplings_matrix,
    integrate_oscillators,
)


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


# --- option checks: every constructor option and OscillatorImperfections field (docs/labs/oscillators.md) ---------
_NAN, _INF = math.nan, math.inf
_N = "an integer ≥ 2 (the number of pendula)"
_STEPS = "an integer ≥ 1 (RK4 steps over the duration)"
_DURATION = "a finite number > 0 (evolution time, in 1/ω₀)"
_INPUT = "a finite number in (0, π] rad (a release angle beyond ±π is the same pendulum position as one within)"
_RANGE = "a finite number > 0 ω₀²"
_SEED = "an integer in [0, 2**32)"
_REL_STD = "a finite number ≥ 0 (a relative std)"
_ALPHA = "a finite number > -1 (α = 1 + error must stay > 0: a restoring force)"
_READOUT = "a finite number ≥ 0 rad (a std)"
_IMP = ("OscillatorImperfections(…) or a mapping of its fields (coupling_error, nonlinearity_error, input_noise, "
        "readout_noise)")

_BAD_OPTIONS = [
    ("n", 1, _N), ("n", 0, _N), ("n", -4, _N), ("n", 2.5, _N), ("n", 4.0, _N), ("n", True, _N), ("n", "8", _N),
    ("n", _NAN, _N), ("n", _INF, _N),
    ("steps", 0, _STEPS), ("steps", -3, _STEPS), ("steps", 2.5, _STEPS), ("steps", True, _STEPS),
    ("steps", "30", _STEPS), ("steps", _NAN, _STEPS),
    ("duration", 0.0, _DURATION), ("duration", -1.0, _DURATION), ("duration", _NAN, _DURATION),
    ("duration", _INF, _DURATION), ("duration", True, _DURATION), ("duration", "3", _DURATION),
    ("input_max", 0.0, _INPUT), ("input_max", -1.0, _INPUT), ("input_max", 3.2, _INPUT), ("input_max", _NAN, _INPUT),
    ("input_max", _INF, _INPUT), ("input_max", True, _INPUT), ("input_max", "1", _INPUT),
    ("coupling_max", 0.0, _RANGE), ("coupling_max", -0.5, _RANGE), ("coupling_max", _NAN, _RANGE),
    ("coupling_max", _INF, _RANGE), ("coupling_max", True, _RANGE), ("coupling_max", None, _RANGE),
    ("drive_max", 0.0, _RANGE), ("drive_max", -0.5, _RANGE), ("drive_max", _NAN, _RANGE), ("drive_max", -_INF, _RANGE),
    ("drive_max", False, _RANGE), ("drive_max", "0.5", _RANGE),
    ("unit", -1, _SEED), ("unit", 2**32, _SEED), ("unit", 1.5, _SEED), ("unit", True, _SEED), ("unit", _NAN, _SEED),
    ("seed", -1, _SEED), ("seed", 2**32, _SEED), ("seed", 0.5, _SEED), ("seed", False, _SEED), ("seed", "0", _SEED),
    ("ideal", 1, "true or false"), ("ideal", "yes", "true or false"), ("ideal", None, "true or false"),
    ("dtype", "float16", "float32 or float64"), ("dtype", torch.float16, "float32 or float64"),
    ("dtype", torch.int64, "float32 or float64"), ("dtype", 32, "float32 or float64"),
    ("imperfections", 3, _IMP),
    ("imperfections", "none", _IMP),
]


@pytest.mark.parametrize("option, value, allowed", _BAD_OPTIONS)
def test_each_constructor_option_is_refused_in_one_line(option, value, allowed, monkeypatch):
    """``oscillator lab: <option> must be <allowed>, got <value>``, raised before a defect is drawn."""
    monkeypatch.setattr(torch, "randn", lambda *a, **k: pytest.fail("drew defects before checking the options"))
    with pytest.raises(ConfigError) as err:
        CoupledOscillatorLab(**({option: value} if option == "n" else {"n": 4, option: value}))
    assert str(err.value) == f"oscillator lab: {option} must be {allowed}, got {value!r}"


_BAD_FIELDS = [
    ("coupling_error", -1.0, _REL_STD), ("coupling_error", -0.01, _REL_STD), ("coupling_error", _NAN, _REL_STD),
    ("coupling_error", _INF, _REL_STD), ("coupling_error", True, _REL_STD), ("coupling_error", "0.2", _REL_STD),
    ("nonlinearity_error", -3.0, _ALPHA), ("nonlinearity_error", -1.0, _ALPHA), ("nonlinearity_error", -1, _ALPHA),
    ("nonlinearity_error", _NAN, _ALPHA), ("nonlinearity_error", _INF, _ALPHA), ("nonlinearity_error", -_INF, _ALPHA),
    ("nonlinearity_error", False, _ALPHA), ("nonlinearity_error", None, _ALPHA),
    ("input_noise", _NAN, _REL_STD), ("input_noise", -0.02, _REL_STD), ("input_noise", _INF, _REL_STD),
    ("input_noise", True, _REL_STD), ("input_noise", "0.02", _REL_STD),
    ("readout_noise", -0.01, _READOUT), ("readout_noise", _NAN, _READOUT), ("readout_noise", _INF, _READOUT),
    ("readout_noise", True, _READOUT), ("readout_noise", [0.01], _READOUT),
]


@pytest.mark.parametrize("field, value, allowed", _BAD_FIELDS)
def test_each_imperfection_field_is_refused_in_one_line(field, value, allowed):
    """The dataclass checks its own fields, whichever way it is built: directly, by the lab, or from a mapping."""
    want = f"oscillator lab: imperfections.{field} must be {allowed}, got {value!r}"
    with pytest.raises(ConfigError) as err:
        OscillatorImperfections(**{field: value})
    assert str(err.value) == want
    with pytest.raises(ConfigError) as err:
        CoupledOscillatorLab(4, imperfections={field: value})
    assert str(err.value) == want


@pytest.mark.parametrize("field, value, allowed", [
    ("input_noise", _NAN, _REL_STD), ("coupling_error", -1.0, _REL_STD), ("nonlinearity_error", -3.0, _ALPHA),
    ("readout_noise", -0.01, _READOUT), ("readout_noise", _INF, _READOUT), ("nonlinearity_error", -1, _ALPHA),
])
def test_make_lab_names_the_imperfection_field(field, value, allowed):
    """The audit's cases through ``make_lab`` (a config's ``lab.options.imperfections``): named, not built."""
    with pytest.raises(ConfigError) as err:
        make_lab("oscillators", imperfections={field: value})
    assert str(err.value) == f"oscillator lab: imperfections.{field} must be {allowed}, got {float(value)!r}"


def test_make_lab_names_the_bad_option():
    with pytest.raises(ConfigError) as err:
        make_lab("oscillators", n=1)
    assert str(err.value) == f"oscillator lab: n must be {_N}, got 1"
    with pytest.raises(ConfigError) as err:
        make_lab("oscillators", input_max=4.0)
    assert str(err.value) == f"oscillator lab: input_max must be {_INPUT}, got 4.0"


def test_a_scaled_imperfection_that_breaks_a_rule_names_the_scale():
    with pytest.raises(ConfigError) as err:
        make_lab("oscillators", n=4, imperfections={"nonlinearity_error": -0.5}, imperfection_scale=2.0)
    assert str(err.value) == (f"oscillator lab: imperfections.nonlinearity_error must be {_ALPHA}, got -1.0 "
                              f"(after imperfection_scale 2)")
    ok = make_lab("oscillators", n=4, imperfections={"nonlinearity_error": -0.5}, imperfection_scale=1.5)
    assert ok._alpha == 0.25


def test_defaults_and_boundary_values_build():
    imp = OscillatorImperfections()
    assert (imp.coupling_error, imp.nonlinearity_error, imp.input_noise, imp.readout_noise) == (0.2, 0.1, 0.02, 0.01)
    lab = CoupledOscillatorLab()
    assert (lab.n, lab.duration, lab.steps, lab.unit, lab.ideal) == (8, 3.0, 30, 0, False)
    assert lab._coupling_factor.dtype == torch.float32 and lab.imperfections == imp
    assert lab.spec.input_dim == make_lab("oscillators").spec.input_dim == 8
    # the edges of each rule are allowed
    CoupledOscillatorLab(2, steps=1, input_max=math.pi, unit=2**32 - 1, seed=2**32 - 1, dtype="float64")
    edge = OscillatorImperfections(coupling_error=0, nonlinearity_error=-0.99, input_noise=0, readout_noise=0)
    assert CoupledOscillatorLab(3, imperfections=edge)._alpha == pytest.approx(0.01)
    assert CoupledOscillatorLab(3, imperfections={"coupling_error": 0.5}).imperfections.coupling_error == 0.5
    assert CoupledOscillatorLab(3, ideal=True).imperfections == OscillatorImperfections(0, 0, 0, 0)


def test_the_shipped_oscillator_configs_still_build():
    """The demo preset and examples/oscillators_*.yaml (n = 64, unit 0), at every scale of the imperfection sweep
    (4 × the default coupling_error, 0.8, draws couplings of either sign: no sign rule on coupling_error)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    configs = [validate_config(parse_yaml(demo_config_text(), "demo"), "demo")]
    configs += [load_config(p) for p in sorted(examples.glob("*.yaml"))]
    ours = [c for c in configs if c.lab.name == "oscillators"]
    assert len(ours) >= 3  # the demo and the two oscillator examples
    scales = {s for c in ours for s in c.imperfection_sweep or ()}
    assert 4.0 in scales  # examples/oscillators_digits_sweeps.yaml: 0, 1, 2, 4 × the default defects
    for c in ours:
        for scale in sorted({c.lab.imperfection_scale, *scales}):
            lab = build_lab(c.lab.model_copy(update={"imperfection_scale": scale}))
            assert lab.n == 64 and lab.imperfections.coupling_error == pytest.approx(0.2 * scale)
    flipped = build_lab(ours[0].lab.model_copy(update={"imperfection_scale": 4.0}))._coupling_factor < 0
    assert int(flipped.sum()) == 232  # at scale 4 (std 0.8), 232 of unit 0's 2016 couplings flip sign (docs)


def test_the_labs_dtype_is_the_simulations_precision_and_the_call_returns_the_callers():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 8, generator=g) * 2 - 1
    params = {"J": torch.rand(28, generator=g) * 0.4 - 0.2, "e": torch.rand(8, generator=g) * 0.4 - 0.2}
    lab32, lab64 = (CoupledOscillatorLab(ideal=True, dtype=d) for d in (torch.float32, torch.float64))
    y64 = lab64(x.double(), {k: v.double() for k, v in params.items()})
    y = lab64(x, params)  # float32 in: simulated in float64, returned as float32
    assert y.dtype == torch.float32 and torch.equal(y, y64.float())
    assert not torch.equal(lab32(x, params), y)  # the float32 lab rounds differently
