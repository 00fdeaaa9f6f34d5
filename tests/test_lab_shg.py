"""SHG virtual lab: physics checks against analytic results, imperfections, noise, twin."""

from __future__ import annotations

import math
import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pnnkit.errors import ConfigError, RangeError
from pnnkit.labs import lab_names, make_lab
from pnnkit.labs.shg import (
    CrystalDispersion,
    SHGImperfections,
    SHGLab,
    SHGPhysicsTwin,
    bbo_type1_dispersion,
)
from pnnkit.twins import DigitalTwin

F64 = torch.float64
NO_DISPERSION = CrystalDispersion(0.0, 0.0, 0.0)
QUIET = SHGImperfections.none()  # every defect and noise source off


def _batch(lab: SHGLab, b: int, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    dt = lab.dtype
    x = torch.rand(b, lab.spec.input_dim, generator=g, dtype=dt)
    return x, {"theta": torch.rand(lab.spec.n_params, generator=g, dtype=dt)}


def _shaped(lab: SHGLab, x: torch.Tensor, theta: torch.Tensor) -> np.ndarray:
    """The shaped field rebuilt independently from the documented layout and laser envelope."""
    n = lab.spec.input_dim + lab.spec.n_params
    v = np.zeros((x.shape[0], n))
    v[:, lab.spec.meta["input_pixels"]] = x.numpy()
    v[:, lab.spec.meta["param_pixels"]] = theta.numpy()
    return v * lab.design.envelope


def test_registered() -> None:
    assert "shg" in lab_names()
    lab = make_lab("shg")
    assert isinstance(lab, SHGLab)
    assert lab.spec.input_dim == 12 and lab.spec.output_dim == 12 and lab.spec.n_params == 52
    assert (lab.spec.input_low, lab.spec.input_high) == (0.0, 1.0)
    assert (lab.spec.params[0].low, lab.spec.params[0].high) == (0.0, 1.0)


def test_bbo_dispersion_literature_values() -> None:
    d, theta = bbo_type1_dispersion(800.0)
    assert 28.5 < theta < 29.5  # type-I phase-matching angle at 800 nm ≈ 29°
    assert -200 < d.gvm_fs_per_mm < -180  # 800/400 nm group-velocity mismatch ≈ 190 fs/mm
    assert 65 < d.gvd_fundamental_fs2_per_mm < 80  # o-wave GVD at 800 nm ≈ 75 fs²/mm
    assert 180 < d.gvd_sh_fs2_per_mm < 205  # e-wave GVD at 400 nm ≈ 195 fs²/mm


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_autoconvolution_without_dispersion(method: str) -> None:
    lab = SHGLab(10, 30, 8, dispersion=NO_DISPERSION, ideal=True, method=method, dtype=F64)
    x, p = _batch(lab, 5)
    a = _shaped(lab, x, p["theta"])
    expect = np.stack([np.convolve(r, r) for r in a])
    np.testing.assert_allclose(lab.sh_field(x, p).numpy(), expect, rtol=1e-10, atol=1e-12)
    # the spectrometer output through the guarded call: binned |B|², over the fixed design reference
    y = lab(x, p).numpy()
    np.testing.assert_allclose(y, (np.abs(expect) ** 2 @ lab.binning.numpy()) / lab.design.p_ref, rtol=1e-10)
    # the reference is the brightest bin with every pixel at 0.5
    half = torch.full((1, 10), 0.5, dtype=F64)
    assert float(lab(half, {"theta": torch.full((30,), 0.5, dtype=F64)}).max()) == pytest.approx(1.0, rel=1e-12)


def test_direct_and_fft_agree_with_full_dispersion() -> None:
    kw = dict(crystal_length_mm=3.0, window_nm=40.0, imperfections=replace(QUIET, residual_gdd_fs2=300.0,
              residual_tod_fs3=3000.0), unit=3, dtype=F64)
    a, b = SHGLab(12, 60, 10, method="direct", **kw), SHGLab(12, 60, 10, method="fft", **kw)
    x, p = _batch(a, 6)
    fa, fb = a.sh_field(x, p), b.sh_field(x, p)
    assert float((fa - fb).abs().max() / fa.abs().max()) < 1e-10
    torch.testing.assert_close(a(x, p), b(x, p), rtol=1e-9, atol=1e-12)


def test_sh_power_quadratic_in_input_power() -> None:
    lab = SHGLab(ideal=True, dtype=F64)
    x, p = _batch(lab, 4)
    scales = np.array([0.02, 0.05, 0.1, 0.2])
    sh = [float(lab(s * x, {"theta": s * p["theta"]}).sum()) for s in scales]
    fundamental = scales**2  # pixel amplitude s → fundamental power s²
    slope = np.polyfit(np.log(fundamental), np.log(sh), 1)[0]
    assert slope == pytest.approx(2.0, abs=1e-9)


def test_phase_matching_bandwidth_scales_inverse_length() -> None:
    """|B(w)|²/|A∗A(w)|² follows sinc²(GVM·w·L/2): FWHM = 4·1.39156/(|GVM|·L)."""
    d, _ = bbo_type1_dispersion(800.0)
    widths = []
    for length in (1.0, 2.0, 4.0):
        lab = SHGLab(8, 248, 8, crystal_length_mm=length, window_nm=40.0, ideal=True, method="fft", dtype=F64)
        x = torch.ones(1, 8, dtype=F64)
        p = {"theta": torch.ones(248, dtype=F64)}
        a = _shaped(lab, x, p["theta"])[0]
        conv = np.convolve(a, a)
        w = lab.sh_offsets
        keep = np.abs(w) < 0.06
        h = (lab.sh_field(x, p)[0].abs().numpy() ** 2 / conv**2)[keep]
        w = w[keep]
        assert h.max() == pytest.approx(1.0, abs=2e-3)  # phase-matched at the carrier
        above = np.flatnonzero(h >= 0.5)
        lo, hi = above[0], above[-1]
        w_lo = np.interp(0.5, [h[lo - 1], h[lo]], [w[lo - 1], w[lo]])
        w_hi = np.interp(0.5, [h[hi + 1], h[hi]], [w[hi + 1], w[hi]])
        widths.append(w_hi - w_lo)
        assert widths[-1] == pytest.approx(4 * 1.39156 / (abs(d.gvm_fs_per_mm) * length), rel=0.03)
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.02)
    assert widths[1] / widths[2] == pytest.approx(2.0, rel=0.02)


def test_range_errors_through_the_call() -> None:
    lab = SHGLab()
    x, p = _batch(lab, 3)
    with pytest.raises(RangeError):
        lab(x + 1.0, p)
    with pytest.raises(RangeError):
        lab(x - 1.0, p)
    with pytest.raises(RangeError):
        lab(x, {"theta": p["theta"] + 1.0})
    with pytest.raises(RangeError):
        lab(x, {"theta": -p["theta"] - 0.01})
    assert lab.calls == 0  # nothing reached the device


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError):
        SHGLab(method="magic")
    with pytest.raises(ConfigError):
        SHGLab(layout="random")
    with pytest.raises(ConfigError):
        SHGLab(crystal_length_mm=0.0)
    with pytest.raises(ConfigError):
        make_lab("shg", imperfection_scale=-1.0)


_WINDOW = "a finite number > 0 nm and < 2 × wavelength_nm = 1600 nm"
_SPAN = "a number in (0, 1] (the fraction of the SH spectrum that the bins cover)"


def _names(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


@pytest.mark.parametrize(("options", "message"), [
    ({"pulse_fwhm_fs": 0.0}, "pulse_fwhm_fs must be a finite number > 0 fs, got 0.0"),
    ({"pulse_fwhm_fs": -100.0}, "pulse_fwhm_fs must be a finite number > 0 fs, got -100.0"),
    ({"crystal_length_mm": math.inf}, "crystal_length_mm must be a finite number > 0 mm, got inf"),
    ({"wavelength_nm": -800.0}, "wavelength_nm must be a finite number > 0 nm, got -800.0"),
    ({"wavelength_nm": 210.0}, "wavelength_nm must be in [409, 5042] nm, where type-I SHG in BBO (the default "
                               "crystal) phase-matches (or give a dispersion), got 210.0"),
    ({"window_nm": math.nan}, f"window_nm must be {_WINDOW}, got nan"),
    ({"window_nm": 0.0}, f"window_nm must be {_WINDOW}, got 0.0"),
    ({"window_nm": -16.0}, f"window_nm must be {_WINDOW}, got -16.0"),
    ({"window_nm": 1600.0}, f"window_nm must be {_WINDOW}, got 1600.0"),
    ({"spectrometer_span": 0.0}, f"spectrometer_span must be {_SPAN}, got 0.0"),
    ({"spectrometer_span": 5.0}, f"spectrometer_span must be {_SPAN}, got 5.0"),
    ({"spectrometer_span": -1.0}, f"spectrometer_span must be {_SPAN}, got -1.0"),
    ({"n_inputs": 0}, "n_inputs must be an integer ≥ 1, got 0"),
    ({"output_dim": 2.5}, "output_dim must be an integer ≥ 1, got 2.5"),
    ({"unit": -1}, "unit must be an integer in [0, 2**32), got -1"),
    ({"dtype": "float16"}, "dtype must be float32 or float64, got 'float16'"),
    ({"dtype": torch.float16}, "dtype must be float32 or float64, got torch.float16"),
    ({"dispersion": "BBO"},
     f"dispersion must be CrystalDispersion(…) or a mapping of its fields ({_names(CrystalDispersion)}), got 'BBO'"),
    ({"dispersion": {"gvm_fs_per_mm": math.nan, "gvd_fundamental_fs2_per_mm": 0.0, "gvd_sh_fs2_per_mm": 0.0}},
     "dispersion.gvm_fs_per_mm must be a finite number (fs/mm), got nan"),
    ({"imperfections": "none"},
     f"imperfections must be SHGImperfections(…) or a mapping of its fields ({_names(SHGImperfections)}), got 'none'"),
    ({"pulse_fwhm_fs": 1e7}, "no second-harmonic power reaches the spectrometer bins of this design (reference 0); "
                             "widen the laser spectrum (a shorter pulse_fwhm_fs) or the window_nm"),
])
def test_bad_options_are_named_when_the_lab_is_built(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"shg: {message}") + "$"):
        SHGLab(**options)


@pytest.mark.parametrize(("fields", "message"), [
    ({"crosstalk": 0.5}, "crosstalk must be a number in [0, 0.5), got 0.5"),
    ({"extinction_leakage": 1.0}, "extinction_leakage must be a number in [0, 1), got 1.0"),
    ({"gamma_error": -0.05}, "gamma_error must be a finite number ≥ 0, got -0.05"),
    ({"laser_noise": math.inf}, "laser_noise must be a finite number ≥ 0, got inf"),
    ({"drift_timescale": 0.0}, "drift_timescale must be a finite number > 0 measurements, got 0.0"),
    ({"resolution_nm": math.nan}, "resolution_nm must be a finite number ≥ 0 nm, got nan"),
    ({"pixel_bits": 8.5}, "pixel_bits must be an integer from 0 (off) to 32, got 8.5"),
    ({"adc_bits": 64}, "adc_bits must be an integer from 0 (off) to 32, got 64"),
])
def test_bad_imperfections_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"shg: imperfections.{message}") + "$"):
        SHGLab(imperfections=SHGImperfections(**fields))


def test_options_at_the_edge_of_their_range_build() -> None:
    assert SHGLab(spectrometer_span=1.0, dtype="float64", ideal=True).dtype == torch.float64
    assert make_lab("shg", imperfections={"crosstalk": 0.0, "extinction_leakage": 0.0, "pixel_bits": 0}) is not None
    assert SHGLab(dispersion={"gvm_fs_per_mm": -190.0, "gvd_fundamental_fs2_per_mm": 0.0,
                              "gvd_sh_fs2_per_mm": 0.0}, wavelength_nm=1030.0).config["dispersion"]["gvm_fs_per_mm"] == -190.0


def test_units_differ_and_seeds_reproduce() -> None:
    x, p = _batch(SHGLab(), 16)
    y0 = SHGLab(unit=0, seed=5)(x, p)
    y0b = SHGLab(unit=0, seed=5)(x, p)
    y1 = SHGLab(unit=1, seed=5)(x, p)
    assert torch.equal(y0, y0b)
    assert float((y0 - y1).abs().mean()) > 0.01  # different fixed defects, far above the noise
    # noiseless units still differ: the difference is the fixed defects, not the noise
    quiet = replace(SHGImperfections(), laser_noise=0.0, drift=0.0, shot_noise=0.0, read_noise_counts=0.0)
    q0, q1 = SHGLab(unit=0, imperfections=quiet)(x, p), SHGLab(unit=1, imperfections=quiet)(x, p)
    assert float((q0 - q1).abs().mean()) > 0.01
    assert torch.equal(q0, SHGLab(unit=0, imperfections=quiet, seed=99)(x, p))


def test_ideal_equals_ideal_twin_and_scale_zero() -> None:
    for dt in (torch.float32, F64):
        lab = SHGLab(ideal=True, dtype=dt)
        x, p = _batch(lab, 32)
        twin = lab.ideal_twin()
        torch.testing.assert_close(twin(x, p), lab(x, p), rtol=1e-6 if dt == torch.float32 else 1e-12, atol=0)
    # all imperfection magnitudes scaled to 0 is the ideal design
    x, p = _batch(SHGLab(), 8)
    torch.testing.assert_close(make_lab("shg", imperfection_scale=0.0)(x, p), make_lab("shg", ideal=True)(x, p))
    # and the default unit is measurably different from it
    assert float((make_lab("shg")(x, p) - make_lab("shg", ideal=True)(x, p)).abs().mean()) > 0.01


def test_twin_save_load_and_gradients(tmp_path: Path) -> None:
    lab = SHGLab(6, 20, 5, method="fft")
    twin = lab.ideal_twin()
    with torch.no_grad():
        twin.log_gain.add_(0.1)
        twin.gdd_fs2.fill_(150.0)
    twin.save(tmp_path / "t")
    back = DigitalTwin.load(tmp_path / "t", expect_spec=lab.spec)
    assert isinstance(back, SHGPhysicsTwin)
    x, p = _batch(lab, 4)
    torch.testing.assert_close(back(x, p), twin(x, p))
    # twin and the (non-ideal) lab in exact mode give finite gradients w.r.t. inputs and parameters
    xg = x.clone().requires_grad_(True)
    th = p["theta"].clone().requires_grad_(True)
    twin(xg, {"theta": th}).sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(th.grad).all() and th.grad.abs().sum() > 0
    xg.grad = None
    lab(xg, {"theta": th}, grad=True).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_twin_gradient_matches_finite_differences() -> None:
    lab = SHGLab(4, 12, 4, ideal=True, dtype=F64)
    twin = lab.ideal_twin()
    x, p = _batch(lab, 2)
    x = x.requires_grad_(True)
    w = torch.linspace(-1, 1, 4, dtype=F64)
    (twin(x, p) @ w).sum().backward()
    eps = 1e-6
    for i in range(4):
        d = torch.zeros_like(x)
        d[0, i] = eps
        with torch.no_grad():
            fd = float(((twin(x + d, p) - twin(x - d, p)) @ w).sum() / (2 * eps))
        assert float(x.grad[0, i]) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_laser_noise_statistics() -> None:
    """Pulse-energy noise σ makes the SH power fluctuate with relative std 2σ (P_SH ∝ P²)."""
    sigma = 0.01
    lab = SHGLab(imperfections=replace(QUIET, laser_noise=sigma), dtype=F64)
    x, p = _batch(lab, 1)
    y = lab(x.expand(4000, -1).contiguous(), p)
    rel = (y.std(0) / y.mean(0)).numpy()
    np.testing.assert_allclose(rel, 2 * sigma, rtol=0.06)
    # every bin fluctuates together (one pulse energy per measurement)
    assert np.corrcoef(y[:, 0].numpy(), y[:, -1].numpy())[0, 1] > 0.99


def test_detection_noise_statistics() -> None:
    """Shot + read noise: std = √(counts + read²) counts; the ADC rounds to integer counts."""
    imp = replace(QUIET, shot_noise=1.0, read_noise_counts=10.0, adc_bits=16)
    lab = SHGLab(imperfections=imp, dtype=F64)
    ideal = SHGLab(ideal=True, dtype=F64)
    x, p = _batch(lab, 1)
    xs = x.expand(4000, -1).contiguous()
    y = lab(xs, p)
    counts = y * lab.counts_per_unit
    assert torch.allclose(counts, counts.round(), atol=1e-6)  # integer ADC counts
    mean_counts = ideal(x, p)[0] * lab.counts_per_unit
    expect = (mean_counts + 10.0**2).sqrt()
    np.testing.assert_allclose(counts.std(0).numpy(), expect.numpy(), rtol=0.07)
    np.testing.assert_allclose(counts.mean(0).numpy(), mean_counts.numpy(), rtol=0.01)
    assert lab.spec.noise_std is not None and SHGLab(ideal=True).spec.noise_std is None


def test_drift_advances_with_measurements_and_state_resumes() -> None:
    imp = replace(QUIET, drift=0.02, drift_timescale=2000.0)
    lab = SHGLab(imperfections=imp, dtype=F64)
    x, p = _batch(lab, 1)
    xs = x.expand(500, -1).contiguous()
    total = torch.cat([lab(xs, p).sum(1) for _ in range(8)])  # 4,000 successive measurements
    rel = total / total.mean()
    assert 0.01 < float(rel.std()) < 0.1  # SH drifts by about 2 × 2 % rms
    assert float((rel[1:] - rel[:-1]).abs().max()) < 0.01  # slowly: neighbours nearly equal
    # checkpoint / resume reproduces the noise and the drift phase bit for bit
    noisy = SHGLab(unit=2, seed=3)
    noisy(xs, p)
    state = noisy.get_state()
    a = noisy(xs, p)
    noisy.set_state(state)
    assert torch.equal(a, noisy(xs, p))


def test_batched_parameters_match_shared() -> None:
    lab = SHGLab(ideal=True, dtype=F64)
    x, p = _batch(lab, 5)
    shared = lab(x, p)
    batched = lab(x, {"theta": p["theta"].expand(5, -1).contiguous()})
    torch.testing.assert_close(shared, batched)


def test_outputs_order_one_and_layouts() -> None:
    for layout in ("interleaved", "blocks"):
        lab = SHGLab(layout=layout)
        x, p = _batch(lab, 64)
        y = lab(x, p)
        assert 0.05 < float(y.mean()) < 5.0
        pix = sorted(lab.spec.meta["input_pixels"] + lab.spec.meta["param_pixels"])
        assert pix == list(range(64))
    assert SHGLab(layout="blocks").spec.meta["input_pixels"] == list(range(12))
    inter = SHGLab().spec.meta["input_pixels"]
    assert min(np.diff(inter)) >= 5  # spread across the spectrum


def test_spectrometer_binning_conserves_power_inside_window() -> None:
    lab = SHGLab(ideal=True, dtype=F64)
    r = lab.binning.numpy()
    assert (r >= 0).all()
    inside = np.abs(lab.sh_offsets) < 0.25 * (lab.design.edges[-1] - lab.design.edges[0])
    np.testing.assert_allclose(r[inside].sum(1), 1.0, atol=1e-12)
    # a calibration offset moves the response; the resolution blur spreads it
    real = SHGLab(unit=0, dtype=F64)
    assert real.calibration_offset_nm != 0.0
    assert not np.allclose(real.binning.numpy(), r)
    assert math.isfinite(real.design.p_ref)


def test_the_class_takes_its_dataclass_options_as_mappings_and_names_a_misspelt_field() -> None:
    lab = SHGLab(imperfections={"crosstalk": 0.01}, dispersion={"gvm_fs_per_mm": -190.0,
                                                                "gvd_fundamental_fs2_per_mm": 70.0,
                                                                "gvd_sh_fs2_per_mm": 190.0})
    assert lab.imperfections == SHGImperfections(crosstalk=0.01)
    with pytest.raises(ConfigError, match="^shg: imperfections has no option 'crosstalks' \\(did you mean 'crosstalk'"):
        SHGLab(imperfections={"crosstalks": 0.01})


def test_an_imperfection_scaled_out_of_its_range_names_the_scale() -> None:
    from pnnkit import make_lab

    with pytest.raises(ConfigError, match=re.escape("shg: imperfections.crosstalk must be a number in [0, 0.5), got "
                                                    "0.6 (after imperfection_scale 20)") + "$"):
        make_lab("shg", imperfection_scale=20)
