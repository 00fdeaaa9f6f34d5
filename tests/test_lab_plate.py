"""Physics tests of the plate lab (speaker → multimode plate → microphone)."""

from __future__ import annotations

import math
import re
from dataclasses import fields, replace

import pytest
import torch

from pnnkit import ConfigError, DigitalTwin, RangeError, make_lab
from pnnkit.labs.plate import (
    PlateDesign,
    PlateImperfections,
    PlateLab,
    simulate_plate,
    simulate_reference,
    transfer_function,
)

F64 = torch.float64
FS = 8000.0


def _rand(shape: tuple[int, ...], seed: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64)


def _prony(u: torch.Tensor, h: float) -> tuple[float, float]:
    """Frequency (rad/s) and decay rate (1/s) of one damped sinusoid u[n] = A rⁿ cos(θn + φ)."""
    X = torch.stack([u[1:-1], u[:-2]], 1)
    a1, a2 = torch.linalg.lstsq(X, u[2:].unsqueeze(1)).solution.squeeze(1).tolist()
    r = math.sqrt(-a2)
    return math.acos(a1 / (2 * r)) / h, -math.log(r) / h


# --- linear regime ---------------------------------------------------------------------------------------
def test_small_signal_response_matches_analytic_transfer_function() -> None:
    """Steady-state response to a (ZOH-held) sinusoid at mode frequencies = |H(ω)|·ZOH, amplitude and phase."""
    n = 2800  # 0.35 s
    lab = PlateLab(n_inputs=n, n_params=0, output_dim=1, n_tail=0, drive_scale=1e-3, ideal=True, dtype=F64)
    f = torch.cat([lab.mode_frequencies[[22, 30, 39]], torch.tensor([1234.5], dtype=F64)])
    t_dac = torch.arange(n, dtype=F64) / FS
    x = torch.sin(2 * math.pi * f[:, None] * t_dac)
    y = lab.record(x, {})  # normalised by the preamp gain 1/drive_scale → y = H · x
    t = lab.sample_times
    keep = t > 0.25  # transients (τ ≤ 32 ms for these modes, 2.5 ms for the speaker) have decayed
    w = torch.hann_window(int(keep.sum()), periodic=False, dtype=F64)
    ph = torch.exp(-2j * math.pi * f[:, None] * t[keep])
    measured = 2 * (w * y[:, keep] * ph).sum(1) / w.sum()
    wT = 2 * math.pi * f / FS
    zoh = torch.exp(-0.5j * wT) * torch.sin(wT / 2) / (wT / 2)
    expected = -1j * transfer_function(lab.physics, f) * zoh
    rel = ((measured - expected).abs() / expected.abs()).max().item()
    assert rel < 2e-3, rel
    # on resonance the plate term dominates: the response there is much larger than between modes
    assert expected[:3].abs().min() > 3 * expected[3].abs()


def test_superposition_and_scaling_at_small_drive() -> None:
    lab = PlateLab(n_inputs=96, n_params=16, n_tail=32, output_dim=8, n_modes=24, drive_scale=1e-3, ideal=True,
                   dtype=F64)
    x1, x2 = _rand((3, 96), 1), _rand((3, 96), 2)
    z = {"theta": torch.zeros(16, dtype=F64)}
    y1, y2, y12 = lab.record(x1, z), lab.record(x2, z), lab.record(0.5 * x1 + 0.5 * x2, z)
    assert ((y12 - 0.5 * (y1 + y2)).norm() / y12.norm()).item() < 1e-6
    # features are energies: quadratic in the drive
    f1, f_half = lab(x1, z), lab(0.5 * x1, z)
    assert torch.allclose(f_half, 0.25 * f1, rtol=1e-6)


def test_modes_ring_at_their_frequency_with_their_decay() -> None:
    """Free ring-down of each modal coordinate after a resonant burst: fitted ω_d and σ match the unit's values."""
    for lab in (PlateLab(ideal=True, dtype=F64), PlateLab(unit=3, dtype=F64)):
        ph = lab.physics
        modes = [0, 3, 11, 24, 39]
        f = (ph.omega[modes] / (2 * math.pi))[:, None]
        n_on, n_off = 400, 800
        t = torch.arange(n_on, dtype=F64) / FS
        # tiny drive: at 1e-3 V the fundamental (u ≈ 0.006 thicknesses) already shifts by 3γu²/8 ≈ 1e-5
        drive = torch.cat([1e-6 * torch.sin(2 * math.pi * f * t), torch.zeros(len(modes), n_off, dtype=F64)], 1)
        _, states = simulate_plate(drive, ph, sample_rate=FS, substeps=4, return_states=True)
        h = 1 / (4 * FS)
        start = (n_on + 320) * 4  # 40 ms after the drive stops: the speaker (τ ≈ 2.5 ms) is at rest
        for b, k in enumerate(modes):
            w_fit, s_fit = _prony(states[b, start:, 2 + k], h)
            w0, z0 = ph.omega[k].item(), ph.zeta[k].item()
            assert w_fit == pytest.approx(w0 * math.sqrt(1 - z0**2), rel=1e-7)
            assert s_fit == pytest.approx(z0 * w0, rel=1e-5)
    # unit 3's modes really are off nominal (1.5 % std) and its Q spread is ≈ 15 %
    dev = lab.mode_frequencies / lab.nominal.omega * 2 * math.pi - 1
    assert 0.005 < dev.std().item() < 0.03
    q_dev = (lab.mode_q * 2 * lab.nominal.zeta * lab.nominal.omega / lab.nominal.omega).log()
    assert 0.07 < q_dev.std().item() < 0.3


def test_design_spectrum_follows_thin_plate_theory() -> None:
    lab = PlateLab(n_modes=40, ideal=True)
    f = lab.mode_frequencies
    assert f[0].item() == pytest.approx(100.0)
    assert bool((f[1:] >= f[:-1]).all())
    r2 = 1 / 0.73**2  # f_mn ∝ m² + n² (a/b)²
    assert f[1].item() == pytest.approx(100.0 * (4 + r2) / (1 + r2))  # (2, 1)
    assert 2000 < f[-1].item() < 4000  # audio range, below the DAC Nyquist frequency
    q = lab.mode_q
    assert 45 < q.min().item() and q.max().item() < 260


# --- nonlinear regime ------------------------------------------------------------------------------------
def test_nonlinearity_only_at_large_drive() -> None:
    x = _rand((8, 196), 5)
    th = {"theta": torch.zeros(64, dtype=F64)}

    def feats(ds: float) -> torch.Tensor:
        return PlateLab(drive_scale=ds, ideal=True, dtype=F64)(x, th)

    base = feats(1e-4)  # outputs are normalised by the preamp gain: equal in the linear regime

    def dev(ds: float) -> float:
        return ((feats(ds) - base).norm() / base.norm()).item()

    assert dev(0.01) < 1e-4
    assert dev(0.1) < 3e-3
    assert 0.03 < dev(1.0) < 0.3  # default drive: a few % to tens of %
    assert dev(3.0) > 0.3


def test_duffing_hardening_of_the_fundamental() -> None:
    """The stretching nonlinearity is hardening: the fundamental rings faster at large amplitude."""
    lab = PlateLab(ideal=True, dtype=F64)
    ph = lab.physics
    t = torch.arange(240, dtype=F64) / FS
    burst = torch.sin(2 * math.pi * 100.0 * t)
    drive = torch.cat([burst, torch.zeros(800, dtype=F64)])[None] * torch.tensor([[1e-3], [6.0]], dtype=F64)
    _, st = simulate_plate(drive, ph, sample_rate=FS, substeps=4, return_states=True)
    seg = slice((240 + 80) * 4, (240 + 80) * 4 + 200)  # 6 ms, starting 10 ms after the burst
    w_small, _ = _prony(st[0, seg, 2], 1 / (4 * FS))
    w_large, _ = _prony(st[1, seg, 2], 1 / (4 * FS))
    amp = st[1, seg, 2].abs().max().item()
    assert amp > 0.5  # half a plate thickness
    assert w_large / w_small - 1 > 0.05


def test_split_integrator_matches_torchdiffeq_rk4_in_the_nonlinear_regime() -> None:
    lab = PlateLab(n_inputs=40, n_params=8, n_tail=8, n_modes=8, drive_scale=2.0, ideal=True, dtype=F64)
    x, th = _rand((2, 40), 7), _rand((2, 8), 8)
    v = lab.model.dac_signal(x, {"theta": th}) * 2.0
    lin = simulate_plate(v * 1e-4, lab.physics, sample_rate=FS, substeps=4) * 1e4
    errs = []
    for m, k in ((4, 8), (8, 4)):
        ref = simulate_reference(v, lab.physics, sample_rate=FS, substeps=m, rk4_steps=k)
        y = simulate_plate(v, lab.physics, sample_rate=FS, substeps=m)
        errs.append(((y - ref).norm() / ref.norm()).item())
        if m == 4:
            nl = ((lin - ref).norm() / ref.norm()).item()
    assert nl > 0.02  # the regime is genuinely nonlinear
    assert errs[0] < 0.1 * nl
    assert errs[1] < errs[0] / 3  # second-order convergence


# --- lab contract ----------------------------------------------------------------------------------------
def test_registered_spec_and_out_of_range_inputs_raise() -> None:
    lab = make_lab("plate", n_modes=20)
    spec = lab.spec
    assert (spec.input_dim, spec.output_dim, spec.input_low, spec.input_high) == (196, 16, -1.0, 1.0)
    assert spec.param_names == ["theta"] and spec.param("theta").shape == (64,)
    x = torch.zeros(2, 196)
    th = {"theta": torch.zeros(64)}
    with pytest.raises(RangeError, match="hard range"):
        lab(x + 1.5, th)
    with pytest.raises(RangeError, match="theta"):
        lab(x, {"theta": torch.full((64,), -1.2)})
    lab_b = make_lab("plate", n_modes=10, n_inputs=32, n_params=0, bias=True)
    assert lab_b.spec.param_names == ["bias"]
    with pytest.raises(RangeError, match="bias"):
        lab_b(torch.zeros(1, 32), {"bias": torch.full((32,), 0.6)})
    y = lab(x, th)
    assert y.shape == (2, 16) and y.dtype == torch.float32 and bool(torch.isfinite(y).all())


def test_units_differ_and_seeds_reproduce() -> None:
    x, th = _rand((4, 196), 11).float(), {"theta": _rand((64,), 12).float()}
    a = make_lab("plate", unit=0, seed=5)(x, th)
    a2 = make_lab("plate", unit=0, seed=5)(x, th)
    b = make_lab("plate", unit=1, seed=5)(x, th)
    c = make_lab("plate", unit=0, seed=6)(x, th)
    assert torch.equal(a, a2)
    assert ((a - b).norm() / a.norm()).item() > 0.05  # another unit: different defects
    noise = ((a - c).norm() / a.norm()).item()  # same unit, other noise draw
    assert 0 < noise < 0.02


def test_state_resumes_noise_and_drift_exactly() -> None:
    lab = make_lab("plate", n_modes=12, n_inputs=48, n_params=8, seed=3)
    x, th = _rand((3, 48), 13).float(), {"theta": torch.zeros(8)}
    lab(x, th)
    state = lab.get_state()
    y1 = lab(x, th)
    lab.set_state(state)
    y2 = lab(x, th)
    assert torch.equal(y1, y2)
    assert lab.get_state()["count"] == 6


def test_temperature_drift_is_slow_and_bounded() -> None:
    lab = PlateLab(unit=2)
    d = torch.tensor([lab.drift(n) for n in range(0, 40_000, 500)])
    assert d.abs().max().item() <= 2.6e-4 + 1e-12
    assert d.max().item() - d.min().item() > 4e-4  # a full temperature cycle within 20 000 samples
    assert abs(lab.drift(1) - lab.drift(0)) < 1e-7  # slow: negligible between consecutive samples
    assert PlateLab(ideal=True).drift(12345) == 0.0


def test_noise_quantisation_and_jitter_models() -> None:
    imp0 = PlateImperfections.none()
    x = torch.zeros(64, 196, dtype=F64)
    th = {"theta": torch.zeros(64, dtype=F64)}
    # acoustic noise at zero drive: rms = acoustic_noise / drive_scale (preamp gain follows the drive)
    lab = PlateLab(imperfections=replace(imp0, acoustic_noise=1e-3), drive_scale=0.5, dtype=F64, n_modes=8)
    rms = lab.record(x, th).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(2e-3, rel=0.02)
    # ADC: values on the 16-bit grid over ±16
    lab = PlateLab(imperfections=replace(imp0, adc_bits=16, electronic_noise=1e-3), dtype=F64, n_modes=8)
    y = lab.record(_rand((4, 196), 14), th)
    lsb = 32.0 / 2**16
    assert torch.allclose(y / lsb, (y / lsb).round(), atol=1e-6)
    # jitter: recordings shifted by τ ~ N(0, 10 µs); estimate τ from y(t−τ) ≈ y − τ ẏ
    lab = PlateLab(imperfections=replace(imp0, jitter=10e-6), dtype=F64, n_modes=20)
    xx = _rand((1, 196), 15).expand(200, 196)
    y = lab.record(xx, th)
    y0 = PlateLab(ideal=True, dtype=F64, n_modes=20).record(xx[:1], th)[0]
    dy = torch.gradient(y0, spacing=1 / (4 * FS))[0]
    tau = -((y - y0) * dy).sum(1) / dy.pow(2).sum()
    assert tau.std().item() == pytest.approx(10e-6, rel=0.2)
    assert abs(tau.mean().item()) < 3e-6


def test_ideal_variant_equals_ideal_twin_and_twin_roundtrips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = {"n_modes": 16, "n_inputs": 64, "n_params": 16, "output_dim": 8, "n_tail": 16}
    lab = make_lab("plate", ideal=True, **cfg)
    real = make_lab("plate", **cfg)
    twin = real.ideal_twin()
    x = _rand((5, 64), 21).float()
    th = {"theta": _rand((5, 16), 22).float()}  # per-sample θ (batched_params)
    y_lab, y_twin = lab(x, th), twin(x, th)
    assert torch.equal(y_lab, y_twin)
    path = twin.save(tmp_path / "plate_twin")
    loaded = DigitalTwin.load(path, expect_spec=real.spec)
    assert torch.equal(loaded(x, th), y_twin)
    # the twin is differentiable w.r.t. inputs and θ
    xg = x.clone().requires_grad_(True)
    tg = th["theta"].clone().requires_grad_(True)
    twin(xg, {"theta": tg}).sum().backward()
    assert bool(torch.isfinite(xg.grad).all()) and xg.grad.abs().sum() > 0 and tg.grad.abs().sum() > 0


def test_exact_mode_gradient_through_the_noisy_lab() -> None:
    lab = make_lab("plate", n_modes=8, n_inputs=32, n_params=8, output_dim=4)
    x = _rand((2, 32), 31).float().requires_grad_(True)
    th = torch.zeros(8, requires_grad=True)
    lab(x, {"theta": th}, grad=True).sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0 and th.grad.abs().sum() > 0


@pytest.mark.parametrize("amp", [0.05, 3.0])  # linear regime; speaker limit and plate stretching both active
def test_drive_adjoint_equals_autograd_through_the_loop(amp: float) -> None:
    """The hand-written reverse pass (drive-only gradients) is the same math as autograd through the loop."""
    from pnnkit.labs.plate import _simulate

    lab = PlateLab(n_modes=12, n_inputs=16, n_params=4, output_dim=8, n_tail=8, dtype=F64)
    d = amp * _rand((3, 20), 51)
    d1, d2 = d.clone().requires_grad_(True), d.clone().requires_grad_(True)
    y1 = simulate_plate(d1, lab.physics, sample_rate=FS, substeps=3)  # → _DriveAdjoint
    y2 = _simulate(d2, lab.physics, sample_rate=FS, substeps=3)  # autograd graph of the loop
    assert y1.grad_fn is not None and "DriveAdjoint" in type(y1.grad_fn).__name__
    g = _rand(tuple(y1.shape), 52)
    (ga,) = torch.autograd.grad(y1, d1, g)
    (gb,) = torch.autograd.grad(y2, d2, g)
    assert torch.equal(y1.detach(), y2.detach())
    assert torch.allclose(ga, gb, rtol=1e-9, atol=1e-12 * float(gb.abs().max()))
    small = (amp * _rand((2, 3), 53)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: simulate_plate(v, lab.physics, sample_rate=FS, substeps=2), (small,))


def test_twin_vjp_for_pat_equals_the_recomputed_autograd_path() -> None:
    """A frozen twin (PAT, in silico) takes the adjoint; with trainable physics (fitting) it takes autograd."""
    cfg = {"n_modes": 10, "n_inputs": 24, "n_params": 8, "output_dim": 12, "n_tail": 8, "dtype": F64}
    twin = PlateLab(**cfg).ideal_twin().double()
    x = _rand((4, 24), 61).requires_grad_(True)
    th = _rand((8,), 62).requires_grad_(True)
    w = _rand((4, 12), 63)
    twin.requires_grad_(False)
    gx_adj, gt_adj = torch.autograd.grad((twin(x, {"theta": th}) * w).sum(), (x, th))
    twin.requires_grad_(True)  # physics trainable: the _Recompute path (autograd through the loop)
    gx_ref, gt_ref = torch.autograd.grad((twin(x, {"theta": th}) * w).sum(), (x, th))
    assert torch.allclose(gx_adj, gx_ref, rtol=1e-9, atol=1e-12 * float(gx_ref.abs().max()))
    assert torch.allclose(gt_adj, gt_ref, rtol=1e-9, atol=1e-12 * float(gt_ref.abs().max()))


def test_twin_per_mode_calibration_reproduces_a_unit_and_is_trainable() -> None:
    """The twin's per-mode frequency, damping and pick-up corrections can represent a unit's modal defects."""
    cfg = {"n_modes": 10, "n_inputs": 32, "n_params": 8, "output_dim": 8, "n_tail": 16, "dtype": F64}
    imp = replace(PlateImperfections.none(), freq_error=0.015, q_error=0.15)  # per-mode defects only
    unit = PlateLab(imperfections=imp, unit=3, **cfg)
    twin = PlateLab(ideal=True, **cfg).ideal_twin().double()
    x = _rand((6, 32), 41)
    th = {"theta": _rand((6, 8), 42)}
    y_unit = unit(x, th)
    with torch.no_grad():
        err_nominal = (twin(x, th) - y_unit).norm() / y_unit.norm()
        nom = twin.nominal
        twin.mode_freq.copy_(torch.log(unit.physics.omega / nom.omega) / twin.FREQ_STEP)
        twin.mode_log_damping.copy_(torch.log(unit.physics.zeta / nom.zeta))
        err_cal = (twin(x, th) - y_unit).norm() / y_unit.norm()
    assert err_nominal > 0.05 and err_cal < 1e-6
    # gradients reach every per-mode correction (what fit_twin uses)
    twin.zero_grad()
    twin(x, th).pow(2).sum().backward()
    for p in (twin.mode_freq, twin.mode_log_damping, twin.mode_pickup):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and p.grad.abs().sum() > 0
    # a twin saved before the per-mode corrections existed (global factors only) still loads, at the design
    old = {k: v for k, v in twin.state_dict().items() if not k.startswith("mode_")}
    fresh = PlateLab(ideal=True, **cfg).ideal_twin().double()
    fresh.load_state_dict(old)
    assert float(fresh.mode_freq.detach().abs().sum()) == 0.0


def test_a_samples_acoustic_noise_does_not_depend_on_its_batch() -> None:
    """The band-limited room noise is scaled by the microphone filter's own gain, row by row: the same white-noise
    draw gives the same noise in a batch of one as in a batch of 64 (a batch-rms normalisation would not)."""
    lab = PlateLab(n_modes=8)
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(3), dtype=F64)
    batch = lab._mic_band(w)
    assert torch.allclose(lab._mic_band(w[:1]), batch[:1], rtol=0, atol=1e-15)
    assert torch.allclose(lab._mic_band(2 * w[:1]), 2 * batch[:1], rtol=0, atol=1e-15)
    assert batch.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.05)  # unit rms in expectation
    assert abs(lab._mic_band(w[:1]).pow(2).mean().sqrt().item() - 1.0) > 1e-6  # no per-batch renormalisation


def test_a_dac_too_small_for_the_declared_drive_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^plate: the DAC's ±1.2 V \(design.dac_full_scale\) cannot play the "
                                          r"declared drive of ±1.5 V; use dac_full_scale ≥ 1.5$"):
        make_lab("plate", n_modes=4, bias=True, design={"dac_full_scale": 1.2})
    assert make_lab("plate", n_modes=4, design={"dac_full_scale": 1.0}).design.dac_full_scale == 1.0
    # a DAC cannot output beyond its full scale whatever its resolution: refused in the ideal lab too
    with pytest.raises(ConfigError, match=r"^plate: the DAC's ±1.2 V \(design.dac_full_scale\) cannot play the "
                                          r"declared drive of ±1.5 V; use dac_full_scale ≥ 1.5$"):
        make_lab("plate", n_modes=4, ideal=True, bias=True, design={"dac_full_scale": 1.2})


_POINT = "must be two numbers (ξ, η), each in (0, 1) (a point on the plate, as fractions of its sides)"
_DAC = "the DAC's ±0.5 V (design.dac_full_scale) cannot play the declared drive of ±1 V; use dac_full_scale ≥ 1"


def _names(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


@pytest.mark.parametrize(("options", "message"), [
    ({"design": {"f11": 0.0}}, "design.f11 must be a finite number > 0 Hz, got 0.0"),
    ({"design": {"f11": -100.0}}, "design.f11 must be a finite number > 0 Hz, got -100.0"),
    ({"design": {"mic_lowpass": 0.0}}, "design.mic_lowpass must be a finite number > design.mic_highpass = 40 Hz, "
                                       "got 0.0"),
    ({"design": {"adc_full_scale": 0.0}}, "design.adc_full_scale must be a finite number > 0, got 0.0"),
    ({"design": {"rayleigh_beta": math.nan}}, "design.rayleigh_beta must be a finite number ≥ 0 s, got nan"),
    ({"design": {"stretching": -1.0}}, "design.stretching must be a finite number ≥ 0, got -1.0"),
    ({"design": {"drive_point": (2.0, 3.0)}}, f"design.drive_point {_POINT}, got (2.0, 3.0)"),
    ({"design": {"drive_point": (0.45, 0.42, 0.1)}}, f"design.drive_point {_POINT}, got (0.45, 0.42, 0.1)"),
    ({"design": {"mic_point": (0.0, 0.5)}}, f"design.mic_point {_POINT}, got (0.0, 0.5)"),
    ({"design": "foo"}, f"design must be PlateDesign(…) or a mapping of its fields ({_names(PlateDesign)}), "
                        "got 'foo'"),
    ({"design": {"dac_full_scale": 0.5}, "ideal": True}, _DAC),
    ({"design": {"dac_full_scale": 0.5}, "imperfections": PlateImperfections(dac_bits=0)}, _DAC),
    ({"sample_rate": math.nan}, "sample_rate must be a finite number > 0 Hz, got nan"),
    ({"drive_scale": math.inf}, "drive_scale must be a finite number > 0 V/V, got inf"),
    ({"n_modes": 0}, "n_modes must be an integer ≥ 1, got 0"),
    ({"substeps": 2.5}, "substeps must be an integer ≥ 1, got 2.5"),
    ({"n_inputs": 2, "n_tail": 1, "substeps": 2, "output_dim": 7},
     "output_dim must be at most (n_inputs + n_tail) × substeps = 6, the microphone samples it bins, got 7"),
    ({"seed": -1}, "seed must be an integer in [0, 2**32), got -1"),
    ({"dtype": "float16"}, "dtype must be float32 or float64, got 'float16'"),
    ({"imperfections": "none"},
     f"imperfections must be PlateImperfections(…) or a mapping of its fields ({_names(PlateImperfections)}), got 'none'"),
    ({"imperfections": PlateImperfections(jitter=1e-4)},
     "imperfections.jitter must be ≤ one ADC sample period, 1/(sample_rate·substeps) = 3.13e-05 s, got 0.0001"),
])
def test_bad_options_are_named_when_the_lab_is_built(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"plate: {message}") + "$"):
        PlateLab(**{"n_modes": 4, **options})


@pytest.mark.parametrize(("fields", "message"), [
    ({"freq_error": -0.01}, "freq_error must be a finite number ≥ 0, got -0.01"),
    ({"position_error": math.inf}, "position_error must be a finite number ≥ 0 m, got inf"),
    ({"drift_period": 0.0}, "drift_period must be a finite number > 0 samples, got 0.0"),
    ({"tempco": math.nan}, "tempco must be a finite number (1/K), got nan"),
    ({"jitter": -1e-6}, "jitter must be a finite number ≥ 0 s, got -1e-06"),
    ({"dac_bits": 16.5}, "dac_bits must be an integer from 0 (ideal converter) to 32, got 16.5"),
    ({"adc_bits": -1}, "adc_bits must be an integer from 0 (ideal converter) to 32, got -1"),
])
def test_bad_imperfections_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"plate: imperfections.{message}") + "$"):
        PlateLab(n_modes=4, imperfections=PlateImperfections(**fields))


def test_options_at_the_edge_of_their_range_build() -> None:
    lab = PlateLab(n_modes=4, dtype="float64", design={"drive_point": [0.5, 0.5], "rayleigh_alpha": 0.0})
    assert lab.dtype == F64 and lab.design.drive_point == (0.5, 0.5)  # a list from a config becomes a tuple
    assert PlateLab(n_modes=4, imperfections=PlateImperfections(jitter=1 / 32000)).imperfections.jitter == 1 / 32000
    assert make_lab("plate", n_modes=4, imperfection_scale=0.0).imperfections == PlateImperfections.none()


def test_the_class_takes_its_dataclass_options_as_mappings_and_names_a_misspelt_field() -> None:
    lab = PlateLab(n_modes=4, imperfections={"jitter": 0.0}, design={"f11": 120.0})
    assert lab.imperfections == PlateImperfections(jitter=0.0) and lab.design == PlateDesign(f11=120.0)
    with pytest.raises(ConfigError, match="^plate: design has no option 'f111' \\(did you mean 'f11'"):
        PlateLab(n_modes=4, design={"f111": 120.0})


def test_an_imperfection_scaled_out_of_its_range_names_the_scale() -> None:
    from pnnkit import make_lab

    with pytest.raises(ConfigError, match=re.escape("got 6e-05 (after imperfection_scale 20)") + "$"):
        make_lab("plate", n_modes=4, imperfection_scale=20)  # the jitter, checked by the lab against its sampling
    with pytest.raises(ConfigError, match="^plate: n_modes must be an integer ≥ 1, got 0$"):  # not a scaled value
        make_lab("plate", n_modes=0, imperfection_scale=2)


def test_converter_codes_stop_one_lsb_below_full_scale() -> None:
    """plate.md: 2^bits two's-complement codes, −full scale … +full scale − 1 LSB; beyond the range clips."""
    from pnnkit.labs.plate import _quantise

    v = torch.linspace(-20.0, 20.0, 4001, dtype=F64)
    q = _quantise(v, 16.0, 3)
    codes = torch.unique(q)
    assert codes.numel() == 2**3 and float(codes.min()) == -16.0 and float(codes.max()) == 16.0 - 4.0
    assert float(_quantise(torch.tensor([16.0, 1e3], dtype=F64), 16.0, 16).max()) == 16.0 - 32.0 / 2**16


def test_jitter_is_truncated_at_one_adc_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the largest accepted jitter (one ADC sample), ±4σ would reach 4 samples: τ stops at ±one sample, the range
    of the 3-point interpolation."""
    import pnnkit.labs.plate as plate

    seen: list[torch.Tensor] = []

    def spy(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        seen.append(d.detach().clone())
        return original(y, d)

    original = plate._delay
    monkeypatch.setattr(plate, "_delay", spy)
    lab = PlateLab(imperfections=replace(PlateImperfections.none(), jitter=1 / 32000), dtype=F64, n_modes=4)
    lab.record(torch.zeros(400, 196, dtype=F64), {"theta": torch.zeros(64, dtype=F64)})
    d = torch.cat(seen).abs()
    assert float(d.max()) == pytest.approx(1.0)  # σ = 1 sample: about a third of the draws reach the bound
    assert float((d == d.max()).double().mean()) == pytest.approx(0.32, abs=0.07)


@pytest.mark.parametrize(("fields", "message"), [
    ({"freq_error": 1.0}, "plate unit 0: imperfections.freq_error 1 drew a mode frequency ≤ 0 Hz"),
    ({"position_error": 1.0}, "plate unit 0: imperfections.position_error 1 m drew the speaker stud off the plate"),
])
def test_a_unit_drawn_off_the_physical_range_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        PlateLab(n_modes=20, imperfections=replace(PlateImperfections(), **fields))
