"""The ngspice circuit lab: operating point, agreement with the torch ODE model, ranges, units, parallelism."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from pnnkit.errors import DeviceError, RangeError
from pnnkit.labs import make_lab
from pnnkit.labs.circuit import (
    K_BOLTZMANN,
    Q2N3904_CARD,
    Q_ELECTRON,
    T_NOMINAL,
    CircuitComponents,
    CircuitODETwin,
    CircuitTiming,
    drive_order,
    simulate_ode,
)
from pnnkit.twins import DigitalTwin

needs_ngspice = pytest.mark.skipif(
    shutil.which("ngspice") is None, reason="ngspice not installed (run scripts/install-system-deps.sh)"
)
F64 = torch.float64


def _drive(batch: int, n_in: int, n_p: int, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n_in, generator=g, dtype=F64) * 2 - 1
    return x, {"theta": torch.rand(n_p, generator=g, dtype=F64) * 2 - 1}


def test_missing_ngspice_is_a_device_error_with_install_hint() -> None:
    with pytest.raises(DeviceError, match="apt-get install"):
        make_lab("circuit", ngspice="no-such-ngspice-binary")


def test_drive_order_interleaves() -> None:
    assert drive_order(3, 3).tolist() == [0, 3, 1, 4, 2, 5]
    order = drive_order(4, 2).tolist()
    assert sorted(order) == list(range(6)) and order[0] == 0


@needs_ngspice
def test_dc_operating_point_matches_hand_calculation() -> None:
    lab = make_lab("circuit", ideal=True)
    op = lab.operating_point(0.0)
    c, k = CircuitComponents(), Q2N3904_CARD
    vt = K_BOLTZMANN * T_NOMINAL / Q_ELECTRON  # 25.86 mV at 27 °C
    # Thevenin equivalent of the base drive with the DAQ at 0 V: VCC through RB against R1 to ground.
    v_th = c.vcc * c.r1 / (c.r1 + c.rb)  # 1.2097 V
    r_th = c.r1 * c.rb / (c.r1 + c.rb)  # 113.7 kΩ
    v_be, v_c = 0.65, c.vcc
    for _ in range(4):  # hand iteration: base current from the divider, then the junction law
        i_b = (v_th - v_be) / r_th
        # I_B = I_C/β_F + ISE·(I_C/IS)^(1/NE) (forward gain plus B–E recombination), I_C scaled by the Early factor
        early = 1 + (v_c - v_be) / k["VAF"]
        lo, hi = 0.0, k["BF"] * i_b
        for _ in range(60):
            i_f = (lo + hi) / 2
            if i_f / k["BF"] + k["ISE"] * (i_f / k["IS"]) ** (1 / k["NE"]) > i_b:
                hi = i_f
            else:
                lo = i_f
        i_c = i_f * early
        v_be = vt * math.log(i_f / k["IS"])
        v_c = c.vcc - (c.rc + c.rl) * i_c
    assert 0.60 < op["v_b"] < 0.70
    assert op["v_b"] == pytest.approx(v_be, abs=3e-3)
    assert op["i_b"] == pytest.approx(i_b, rel=0.01)
    assert op["i_c"] == pytest.approx(i_c, rel=0.03)  # ≈ 0.64 mA
    assert op["v_c"] == pytest.approx(v_c, abs=0.03)


@needs_ngspice
def test_small_signal_agreement_ngspice_vs_torch_ode() -> None:
    """A ±50 mV drive around 0 V: the deviation from the operating point agrees within 3 % of its peak."""
    lab = make_lab("circuit", ideal=True, n_inputs=8, n_params=8, output_dim=16)
    twin = lab.ideal_twin()
    k = torch.arange(8, dtype=F64)
    x = torch.stack([0.05 * torch.sin(k + p) for p in range(3)])
    th = {"theta": 0.05 * torch.cos(k)}
    x0, th0 = torch.zeros(1, 8, dtype=F64), {"theta": torch.zeros(8, dtype=F64)}
    dy_spice = lab(x, th) - lab(x0, th0)
    with torch.no_grad():
        dy_ode = twin(x, th) - twin(x0, th0)
    peak = dy_spice.abs().max()
    assert peak > 0.02  # the drive does move the collector (gain ≈ 1 V/V)
    assert (dy_spice - dy_ode).abs().max() < 0.03 * peak


@needs_ngspice
def test_large_signal_agreement_full_range() -> None:
    lab = make_lab("circuit", ideal=True, n_inputs=8, n_params=8, output_dim=8)
    x, th = _drive(6, 8, 8)
    y = lab(x, th)
    with torch.no_grad():
        ym = lab.ideal_twin()(x, th)
    assert float(((y - ym).pow(2).mean() / y.var()).sqrt()) < 0.03
    assert float(y.min()) > 1.0  # collector stays well above the base: never saturates


@needs_ngspice
def test_out_of_range_raises_before_the_simulator() -> None:
    lab = make_lab("circuit", n_inputs=4, n_params=4, output_dim=4)
    x, th = _drive(2, 4, 4)
    with pytest.raises(RangeError):
        lab(x * 1.5 + 0.6, th)
    with pytest.raises(RangeError):
        lab(x, {"theta": th["theta"] + 2.0})
    assert lab.calls == 0


@needs_ngspice
def test_units_differ_same_seed_identical() -> None:
    x, th = _drive(3, 4, 4)
    opts = dict(n_inputs=4, n_params=4, output_dim=8)
    a = make_lab("circuit", unit=0, seed=5, **opts)(x, th)
    a2 = make_lab("circuit", unit=0, seed=5, **opts)(x, th)
    b = make_lab("circuit", unit=1, seed=5, **opts)(x, th)
    c = make_lab("circuit", unit=0, seed=6, **opts)(x, th)
    assert torch.equal(a, a2)
    assert (a - b).abs().max() > 0.01  # component tolerances: tens of mV
    assert 0 < (a - c).abs().max() < 0.002  # only the measurement noise differs


@needs_ngspice
def test_noise_state_roundtrip() -> None:
    lab = make_lab("circuit", n_inputs=4, n_params=4, output_dim=4)
    x, th = _drive(2, 4, 4)
    state = lab.get_state()
    y1 = lab(x, th)
    lab.set_state(state)
    assert torch.equal(lab(x, th), y1)


@needs_ngspice
def test_parallel_workers_equal_serial() -> None:
    x, th = _drive(6, 4, 4, seed=3)
    opts = dict(n_inputs=4, n_params=4, output_dim=8, ideal=True)
    serial = make_lab("circuit", workers=1, circuits_per_run=2, **opts)(x, th)
    parallel = make_lab("circuit", workers=3, circuits_per_run=2, **opts)(x, th)
    assert torch.equal(serial, parallel)  # same netlists, run concurrently
    one_netlist = make_lab("circuit", workers=1, circuits_per_run=6, **opts)(x, th)
    per_circuit = make_lab("circuit", workers=3, circuits_per_run=1, **opts)(x, th)
    # copies sharing one netlist share ngspice's time steps: agreement to ngspice's tolerance, ≪ 1 ADC LSB
    assert (one_netlist - serial).abs().max() < 1e-4
    assert (per_circuit - serial).abs().max() < 1e-4


def test_ode_backend_is_differentiable_and_twin_roundtrips(tmp_path) -> None:
    lab = make_lab("circuit", backend="ode", n_inputs=4, n_params=4, output_dim=4)
    assert lab.differentiable
    x, th = _drive(3, 4, 4)
    th = {"theta": th["theta"].clone().requires_grad_(True)}
    y = lab(x, th, grad=True)
    y.sum().backward()
    assert th["theta"].grad is not None and torch.isfinite(th["theta"].grad).all()
    assert th["theta"].grad.abs().max() > 0
    twin = lab.ideal_twin()
    out = twin(x, {"theta": th["theta"].detach()})
    out.sum().backward()  # calibration factors receive gradients (incl. through the operating point)
    assert all(torch.isfinite(p.grad).all() for p in twin.parameters() if p.grad is not None)
    assert twin.log_scale["rb"].grad.abs() > 0
    twin.save(tmp_path / "twin")
    loaded = DigitalTwin.load(tmp_path / "twin", lab.spec)
    assert isinstance(loaded, CircuitODETwin)
    with torch.no_grad():
        assert torch.allclose(loaded(x, {"theta": th["theta"].detach()}), out.detach())


def _graph_nodes(y: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``y``."""
    names, seen, todo = set(), set(), [y.grad_fn]
    while todo:
        f = todo.pop()
        if f is not None and id(f) not in seen:
            seen.add(id(f))
            names.add(type(f).__name__)
            todo += [n for n, _ in f.next_functions]
    return names


@pytest.mark.parametrize(("model", "substeps", "t_segment"), [
    ("gummel_poon_dc", 1, 5e-6), ("gummel_poon_dc", 2, 10e-6), ("ebers_moll", 1, 5e-6),
])
def test_fast_loop_and_adjoint_equal_torchdiffeq_autograd(model: str, substeps: int, t_segment: float) -> None:
    """The explicit RK4 loop (frozen constants) and its hand-written adjoint give torchdiffeq's numbers."""
    timing = CircuitTiming(t_segment=t_segment)
    lab = make_lab("circuit", backend="ode", n_inputs=9, n_params=5, output_dim=7, timing=timing)
    twin = lab.ideal_twin(model=model, substeps=substeps)
    with torch.no_grad():  # off the design values, so the calibration path is exercised too
        twin.log_scale["cb"].fill_(-0.1)
        twin.log_scale["BF"].fill_(0.2)
    comp, tr = twin.values()
    frozen_c, frozen_t = {k: v.detach() for k, v in comp.items()}, {k: v.detach() for k, v in tr.items()}
    g = torch.Generator().manual_seed(3)
    levels = (torch.rand(6, 14, generator=g, dtype=F64) * 2.4 - 1.2).requires_grad_(True)  # a little past ±1 V
    ref = simulate_ode(levels, comp, tr, timing, model=model, substeps=substeps)  # constants need grad: odeint
    fast = simulate_ode(levels, frozen_c, frozen_t, timing, model=model, substeps=substeps)
    assert "_DriveAdjointBackward" not in _graph_nodes(ref) and "_DriveAdjointBackward" in _graph_nodes(fast)
    w = torch.randn(ref.shape, generator=g, dtype=F64)
    (g_ref,) = torch.autograd.grad(ref, levels, w)
    (g_fast,) = torch.autograd.grad(fast, levels, w)
    assert (fast - ref).abs().max() <= 1e-12 * ref.abs().max()
    assert (g_fast - g_ref).abs().max() <= 1e-10 * g_ref.abs().max()
    with torch.no_grad():
        assert torch.equal(simulate_ode(levels, frozen_c, frozen_t, timing, model=model, substeps=substeps), fast)


def test_adjoint_passes_gradcheck_and_twin_uses_it_when_frozen() -> None:
    timing = CircuitTiming(t_segment=5e-6)
    lab = make_lab("circuit", backend="ode", n_inputs=3, n_params=2, output_dim=5, timing=timing)
    twin = lab.ideal_twin().requires_grad_(False)
    comp, tr = twin.values()
    levels = torch.linspace(-1, 1, 10, dtype=F64).reshape(2, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: simulate_ode(v, comp, tr, timing), (levels,), eps=1e-6, atol=1e-7)
    x, th = _drive(4, 3, 2)
    x.requires_grad_(True)
    y = twin(x, th)
    assert "_DriveAdjointBackward" in _graph_nodes(y)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().max() > 0


@pytest.mark.parametrize("model", ["gummel_poon_dc", "ebers_moll"])
def test_adjoint_jacobian_matches_autograd_in_every_region(model: str) -> None:
    """The RHS Jacobian entries used by the adjoint equal autograd's, also in saturation (v_bc > 0, where the
    B–C terms matter) and at the junction-exponent cap — regions the circuit's normal drive never reaches."""
    from pnnkit.labs.circuit import _FixedODE, _ode_plan

    timing = CircuitTiming(t_segment=5e-6)
    twin = make_lab("circuit", backend="ode", n_inputs=3, n_params=2, output_dim=5, timing=timing).ideal_twin(model)
    comp, tr = (dict((k, v.detach()) for k, v in d.items()) for d in twin.values())
    vt = K_BOLTZMANN * T_NOMINAL / Q_ELECTRON
    ode = _FixedODE(comp, tr, model, vt, _ode_plan(5, timing, 1), F64)
    vb = torch.tensor([0.0, 0.55, 0.65, 0.70, 0.75, 1.2], dtype=F64)  # off … deep on … past the exponent cap
    vc = torch.tensor([5.0, 4.50, 0.50, 0.60, 0.30, 0.9], dtype=F64)  # forward active … saturated (v_c < v_b)
    il = torch.full_like(vb, 1e-3)
    u = torch.zeros_like(vb)

    def f(s: torch.Tensor) -> torch.Tensor:
        return torch.stack(ode.rhs(s[0], s[1], s[2], u))

    jac = torch.autograd.functional.jacobian(f, torch.stack([vb, il, vc]))  # (3, B, 3, B): diagonal in the batch
    idx = torch.arange(len(vb))
    full = jac[:, idx, :, idx]  # (B, 3, 3)
    j00, j02, j20, j22 = ode.jacobian(vb, vc)
    for got, (r, c) in ((j00, (0, 0)), (j02, (0, 2)), (j20, (2, 0)), (j22, (2, 2))):
        want = full[:, r, c]
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12 * float(want.abs().max())), (r, c)
    assert full[4, 0, 2].abs() > 1e-3 * full[4, 0, 0].abs()  # the saturated state does exercise the B–C terms
    assert torch.equal(full[:, 0, 1], torch.zeros_like(vb)) and torch.equal(full[:, 1, 0], torch.zeros_like(vb))
    assert torch.allclose(full[:, 1, 1], torch.full_like(vb, -ode.rs * ode.inv_l))
    assert torch.allclose(full[:, 1, 2], torch.full_like(vb, -ode.inv_l))
    assert torch.allclose(full[:, 2, 1], torch.full_like(vb, ode.inv_ct))


def test_a_declared_range_beyond_the_daq_is_refused():
    """Levels beyond the DAQ's ±10 V would be clipped by its quantiser without an error: refused at build time."""
    from pnnkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^circuit: input_max/param_max \(12 V\) exceed the DAQ's ±10 V output "
                                          r"range \(imperfections.drive_range\)$"):
        make_lab("circuit", n_inputs=2, n_params=2, output_dim=2, input_max=12.0, backend="ode")
    with pytest.raises(ConfigError, match=r"\(10.5 V\) exceed the DAQ's ±10 V"):
        make_lab("circuit", n_inputs=2, n_params=2, output_dim=2, param_max=10.5, backend="ode")
    assert make_lab("circuit", n_inputs=2, n_params=2, output_dim=2, input_max=10.0, backend="ode").spec.input_high == 10.0


@needs_ngspice
@pytest.mark.parametrize("workers", [1, 2])
def test_ngspice_runs_that_finished_are_logged_when_another_fails(tmp_path, monkeypatch, workers) -> None:
    import pnnkit.labs.circuit as circuit
    from pnnkit import MeasurementLog

    lab = make_lab("circuit", n_inputs=4, n_params=2, output_dim=6, workers=workers, circuits_per_run=2)
    log = MeasurementLog(tmp_path / "log.h5", lab.spec)
    lab.attach_log(log)
    real, runs = circuit.run_ngspice, []

    def third_run_times_out(*a, **kw):
        runs.append(1)
        if len(runs) == 3:
            raise DeviceError("ngspice timed out after 600 s")
        return real(*a, **kw)

    monkeypatch.setattr(circuit, "run_ngspice", third_run_times_out)
    x = torch.linspace(-1, 1, 24).reshape(6, 4)
    with pytest.raises(DeviceError, match="timed out.*the 4 samples measured before the failure are kept"):
        lab(x, {p.name: torch.zeros(p.shape) for p in lab.spec.params})
    y = torch.from_numpy(log._f["y"][...])
    assert len(log) == 6 and int(torch.isfinite(y).all(dim=1).sum()) == 4  # the failed run's 2 circuits: NaN rows
    assert len(log.to_measurements()) == 4


@needs_ngspice
def test_simulator_version_is_recorded_with_the_measurements(tmp_path) -> None:
    from pnnkit.labs.circuit import ngspice_version
    from pnnkit.measurements import MeasurementSet

    lab = make_lab("circuit", n_inputs=4, n_params=4, output_dim=4)
    assert lab.spec.meta["simulator"] == ngspice_version(lab.ngspice)
    assert lab.spec.meta["simulator"].startswith("ngspice-")  # the version `ngspice -v` printed, not a fallback
    assert ngspice_version("no-such-ngspice-binary") == "unknown"
    x, th = _drive(2, 4, 4)
    y = lab(x, th)
    path = MeasurementSet(lab.spec, x, {"theta": th["theta"].expand(2, -1)}, y[:, None]).save(tmp_path / "m.h5")
    assert MeasurementSet.load(path).spec.meta["simulator"] == lab.spec.meta["simulator"]
    ode = make_lab("circuit", backend="ode", n_inputs=4, n_params=4, output_dim=4)
    assert ode.spec.meta["simulator"].startswith("torch")


# --- options are checked when the lab is built: one line naming the option, its value and what is allowed -----------
_DAQ = r"circuit: input_max/param_max \({} V\) exceed the DAQ's ±10 V output range \(imperfections\.drive_range\)"


@pytest.mark.parametrize(("options", "message"), [
    ({"imperfections": {"drive_range": math.nan}}, r"circuit: imperfections\.drive_range must be a finite number "
                                                   r"> 0 V, got nan"),
    ({"input_max": 50.0, "imperfections": {"drive_bits": 0}}, _DAQ.format(50)),  # no quantiser: the range still holds
    ({"input_max": 12.0, "ideal": True}, _DAQ.format(12)),  # ideal: no quantiser, the same ±10 V DAQ
    ({"spice_reltol": -1e-4}, r"circuit: spice_reltol must be a number in \(0, 1\), got -0\.0001"),
    ({"spice_tmax": 0}, r"circuit: spice_tmax must be a finite number > 0 s, got 0\.0"),
    ({"workers": -5}, r"circuit: workers must be an integer ≥ 1 or None \(one per CPU\), got -5"),
    ({"circuits_per_run": 0}, r"circuit: circuits_per_run must be an integer ≥ 1 or None \(an equal share of the batch "
                              r"per worker\), got 0"),
    ({"timing": {"t_segment": -1e-5}}, r"circuit: timing\.t_segment must be a finite number > 0 s, got -1e-05"),
    ({"timing": {"t_segment": 7e-6}}, r"circuit: timing\.t_segment must be a whole number ≥ 1 of ADC sample "
                                      r"periods \(1/timing\.adc_rate = 5e-06 s\), got 7e-06"),
    ({"timing": {"t_rise": 5e-6}}, r"circuit: timing\.t_rise must be shorter than one ADC sample period "
                                   r"\(1/timing\.adc_rate = 5e-06 s\), got 5e-06"),
    ({"timing": {"adc_rate": math.inf}}, r"circuit: timing\.adc_rate must be a finite number > 0 S/s, got inf"),
    ({"imperfections": {"resistor_tolerance": 1.0}}, r"circuit: imperfections\.resistor_tolerance must be a number "
                                                     r"in \[0, 1\), got 1\.0"),
    ({"imperfections": {"supply_tolerance": -0.01}}, r"circuit: imperfections\.supply_tolerance must be a number "
                                                     r"in \[0, 1\), got -0\.01"),
    ({"imperfections": {"beta_spread": math.nan}}, r"circuit: imperfections\.beta_spread must be a number in \[0, 2\], "
                                                   r"got nan"),
    ({"imperfections": {"adc_noise": -2e-4}}, r"circuit: imperfections\.adc_noise must be a finite number ≥ 0 V, "
                                              r"got -0\.0002"),
    ({"imperfections": {"drive_bits": 64}}, r"circuit: imperfections\.drive_bits must be an integer in \[0, 32\], "
                                            r"got 64"),
    ({"imperfections": {"adc_range": 0.0}}, r"circuit: imperfections\.adc_range must be a finite number > 0 V, got 0\.0"),
    ({"imperfection_scale": 12}, r"circuit: imperfections\.capacitor_tolerance must be a number in \[0, 1\), got 1\.2 "
                                 r"\(after imperfection_scale 12\)"),
    ({"components": {"ct": -33e-9}}, r"circuit: components\.ct must be a finite number > 0 F, got -3\.3e-08"),
    ({"unit": -1}, r"circuit: unit must be an integer in \[0, 4294967296\), got -1"),
    ({"n_inputs": 0}, r"circuit: n_inputs must be an integer ≥ 1, got 0"),
    ({"output_dim": 61}, r"circuit: output_dim must be at most the 60 ADC samples of the drive window "
                         r"\(\(n_inputs \+ n_params\) × timing\.t_segment × timing\.adc_rate\), got 61"),
    ({"backend": "spice"}, r"circuit: backend must be 'ngspice' or 'ode', got 'spice'"),
    ({"output_node": "emitter"}, r"circuit: output_node must be 'collector' or 'base', got 'emitter'"),
])
def test_a_bad_option_is_refused_in_one_line_before_anything_runs(options, message, monkeypatch) -> None:
    import pnnkit.labs.circuit as circuit
    from pnnkit.errors import ConfigError

    monkeypatch.setattr(circuit.subprocess, "run", lambda *a, **kw: pytest.fail("ngspice ran"))
    with pytest.raises(ConfigError, match=f"^{message}$"):
        make_lab("circuit", **{"n_inputs": 4, "n_params": 2, "output_dim": 4, **options})


@pytest.mark.parametrize(("options", "message"), [  # straight to the class (make_lab's option check comes first)
    ({"timing": "fast"}, r"circuit: timing must be CircuitTiming\(…\) or a mapping of its fields \(t_segment, t_rise, "
                         r"adc_rate\), got 'fast'"),
    ({"dtype": "float16"}, r"circuit: dtype must be float32 or float64, got 'float16'"),
    ({"dtype": torch.complex128}, r"circuit: dtype must be float32 or float64, got torch\.complex128"),
    ({"ideal": "no"}, r"circuit: ideal must be true or false, got 'no'"),
])
def test_a_bad_option_to_the_class_is_refused_in_one_line(options, message) -> None:
    from pnnkit.errors import ConfigError
    from pnnkit.labs.circuit import CircuitLab

    with pytest.raises(ConfigError, match=f"^{message}$"):
        CircuitLab(4, 2, 4, backend="ode", **options)


def test_the_edges_of_the_allowed_ranges_and_the_electronic_examples_build() -> None:
    from pathlib import Path

    import yaml

    from pnnkit.labs.circuit import CircuitLab

    lab = make_lab("circuit", n_inputs=4, n_params=2, output_dim=4, backend="ode", ideal=True, input_max=10.0,
                   workers=None, dtype="float32", imperfections={"drive_bits": 0, "drive_range": 10.0})
    assert (lab.spec.input_high, lab.dtype, lab.workers >= 1) == (10.0, torch.float32, True)
    lab = CircuitLab(4, 2, 4, backend="ode", timing={"t_segment": 5e-6}, dtype="float64")
    assert (lab.timing.samples_per_segment, lab.dtype) == (1, torch.float64)
    make_lab("circuit", n_inputs=4, n_params=2, output_dim=4, backend="ode", imperfection_scale=9.9)
    for path in sorted(Path(__file__).parents[1].glob("examples/mnist_electronic*.yaml")):
        options = yaml.safe_load(path.read_text())["lab"]["options"]
        assert make_lab("circuit", **{**options, "backend": "ode"}).n_samples == 73, path.name


def test_a_failing_ngspice_gives_a_one_line_error_with_its_last_output(tmp_path) -> None:
    from pnnkit.errors import DeviceError
    from pnnkit.labs.circuit import run_ngspice

    fake = tmp_path / "ngspice"
    fake.write_text("#!/bin/sh\necho 'Error: line one'\necho ''\necho 'Error: timestep too small' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(DeviceError) as err:
        run_ngspice("* empty\n.end\n", ngspice=str(fake))
    assert str(err.value) == "ngspice failed (exit 1): Error: line one / Error: timestep too small"


def test_a_circuit_without_parameters_plays_its_inputs_in_order() -> None:
    from pnnkit.labs.circuit import CircuitLab, drive_order

    assert drive_order(5, 0).tolist() == [0, 1, 2, 3, 4] and drive_order(4, 4).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    lab = CircuitLab(n_inputs=8, n_params=0, output_dim=8, backend="ode", ideal=True)
    x = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(2, 8)
    assert torch.equal(lab.drive_levels(x, {}), x)
    assert torch.allclose(lab(x, {}), lab.ideal_twin().double()(x, {}), atol=1e-6)


@needs_ngspice
def test_the_base_node_ngspice_agrees_with_the_ode_and_sits_at_the_operating_point() -> None:
    """``output_node="base"`` records v(B): at rest it is ngspice's own ``.op`` base voltage, it agrees with the ODE
    model over the full ±1 V range, and it is a different signal from the collector's (fast, junction-clamped)."""
    kw = dict(ideal=True, n_inputs=8, n_params=8, output_dim=16)
    lab, lab_c = make_lab("circuit", output_node="base", **kw), make_lab("circuit", **kw)
    assert lab.spec.meta["records"] == "base voltage" and lab_c.spec.meta["records"] == "collector voltage"
    x0, th0 = torch.zeros(1, 8, dtype=F64), {"theta": torch.zeros(8, dtype=F64)}
    assert lab(x0, th0) == pytest.approx(torch.full((1, 16), lab.operating_point(0.0)["v_b"], dtype=F64), abs=2e-4)
    x, th = _drive(6, 8, 8)
    y, y_c = lab(x, th), lab_c(x, th)
    with torch.no_grad():
        ym = lab.ideal_twin()(x, th)
    assert float(((y - ym).pow(2).mean() / y.var()).sqrt()) < 0.03
    assert 0.3 < float(y.min()) and float(y.max()) < 0.75  # below the junction's clamp, never below the ground
    assert float(torch.corrcoef(torch.stack([y.flatten(), y_c.flatten()]))[0, 1]) > -0.99  # not the collector mirrored


def test_the_base_node_loop_and_adjoint_equal_torchdiffeq_autograd() -> None:
    timing = CircuitTiming(t_segment=5e-6)
    twin = make_lab("circuit", backend="ode", n_inputs=9, n_params=5, output_dim=7, timing=timing,
                    output_node="base").ideal_twin()
    comp, tr = twin.values()
    frozen_c, frozen_t = {k: v.detach() for k, v in comp.items()}, {k: v.detach() for k, v in tr.items()}
    g = torch.Generator().manual_seed(4)
    levels = (torch.rand(5, 14, generator=g, dtype=F64) * 2 - 1).requires_grad_(True)
    ref = simulate_ode(levels, comp, tr, timing, node="base")
    fast = simulate_ode(levels, frozen_c, frozen_t, timing, node="base")
    coll = simulate_ode(levels, frozen_c, frozen_t, timing)
    assert "_DriveAdjointBackward" in _graph_nodes(fast)
    w = torch.randn(ref.shape, generator=g, dtype=F64)
    (g_ref,) = torch.autograd.grad(ref, levels, w)
    (g_fast,) = torch.autograd.grad(fast, levels, w)
    assert (fast - ref).abs().max() <= 1e-12 * ref.abs().max()
    assert (g_fast - g_ref).abs().max() <= 1e-10 * g_ref.abs().max()
    assert float((fast - coll).detach().abs().min()) > 1.0  # the base (≈ 0.6 V), not the collector (≈ 4–5 V)
    assert torch.autograd.gradcheck(lambda v: simulate_ode(v, frozen_c, frozen_t, timing, node="base"),
                                    (levels.detach()[:2, :].clone().requires_grad_(True),), eps=1e-6, atol=1e-7)


def test_a_twin_of_one_node_is_refused_for_a_lab_recording_the_other(tmp_path) -> None:
    from pnnkit.errors import ConfigError, TwinError

    kw = dict(backend="ode", n_inputs=3, n_params=2, output_dim=5)
    lab_b, lab_c = make_lab("circuit", output_node="base", **kw), make_lab("circuit", **kw)
    lab_c.ideal_twin().save(tmp_path / "twin_c")
    with pytest.raises(TwinError, match="records collector voltage vs base voltage"):
        DigitalTwin.load(tmp_path / "twin_c", lab_b.spec)
    assert DigitalTwin.load(tmp_path / "twin_c", lab_c.spec).output_node == "collector"
    lab_b.ideal_twin().save(tmp_path / "twin_b")
    assert DigitalTwin.load(tmp_path / "twin_b", lab_b.spec).output_node == "base"
    with pytest.raises(ConfigError, match="predicts the base voltage but its lab records the collector"):
        CircuitODETwin(lab_c.spec, 3, 2, 5, output_node="base")
