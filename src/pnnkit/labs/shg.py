"""Virtual lab: ultrafast second-harmonic generation (SHG) of a spectrally shaped pulse (Wright et al. 2022).

A ~100 fs pulse around 800 nm is dispersed onto an amplitude-only pulse shaper (liquid-crystal SLM between
polarisers, one macro-pixel per spectral bin). Input values and trainable parameters are both written as pixel
transmissions in [0, 1] (separate pixels, interleaved by default). The shaped field is frequency-doubled in a
type-I BBO crystal and the SH spectrum is read by a spectrometer, integrated into ``output_dim`` bins.

Physics (undepleted pump, collinear, one polarisation pair; frequencies as offsets u, v from the carrier ω₀ in
rad/fs, SH offset w = u + v from 2ω₀)::

    A(u)  = E(u) · t(u) · exp(iφ(u))                         shaped fundamental field
    B(w)  = Σ_{u+v=w} A(u) A(v) · sinc(ΔkL/2) · exp(iΔkL/2)    SH field
    Δk    = Δk₀ + (k'_F − k'_SH)·w + ½k''_F (u² + v²) − ½k''_SH w²
    S_o   = Σ_w |B(w)|² R[w, o]                               spectrometer bin o

``E`` is the laser's Gaussian spectral amplitude, ``t`` the pixel transmission, ``φ`` the residual spectral phase
of the optics, and ``R`` the spectrometer's binning (resolution blur and calibration offset included). The sum over
pairs is an all-to-all quadratic map of the pixel values. It is evaluated either directly (outer product times a
precomputed pair tensor, anti-diagonal sums) or with FFT autoconvolutions (exact when k''_F = 0; otherwise a
quadrature over the crystal length (Filon-type weights at Chebyshev nodes), since sinc(ΔkL/2)e^{iΔkL/2} = (1/L)∫₀ᴸ e^{iΔk z} dz and the
integrand factorises per z). Output: bin power divided by a fixed reference of the design (the brightest bin
with every pixel at 0.5), so outputs are O(1) and samples never couple.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import ndtr
from torch import Tensor, nn

from ..errors import ConfigError
from ..spec import ParamSpec, SystemSpec
from ..system import Params
from . import VirtualLab, dataclass_of, register_lab, resolve_imperfections
from .checks import MAX_BITS, check, check_fields, check_unit_and_seed, finite, float_dtype, nonneg, positive
from ..twins import DigitalTwin, register_twin

C_NM_PER_FS = 299.792458  # speed of light, nm/fs
C_MM_PER_FS = 2.99792458e-4  # speed of light, mm/fs
FULL_SCALE_COUNTS = 65535.0  # 16-bit spectrometer ADC (design full scale, also without ADC quantisation)
# fundamental wavelengths (nm) at which the Sellmeier equations below phase-match type-I SHG in BBO (the default
# crystal); below, the only other solutions (≈ 204–211 nm) come from the Sellmeier pole, not from BBO
BBO_TYPE1_RANGE_NM = (409.0, 5042.0)


# --- option checks ----------------------------------------------------------------------------------------
_check = functools.partial(check, "shg")  # one-line "shg: <option> must be …, got …" errors
_check_fields = functools.partial(check_fields, "shg")
_float_dtype = functools.partial(float_dtype, "shg")
_STD = ("a finite number ≥ 0", nonneg)
_BITS = (f"an integer from 0 (off) to {MAX_BITS}", lambda v: 0 <= v <= MAX_BITS)


# --- crystal ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrystalDispersion:
    """Taylor coefficients of the phase mismatch about the carrier (see the module docstring).

    Attributes:
        gvm_fs_per_mm: group-velocity mismatch k'_F − k'_SH (fs/mm); sets the phase-matching bandwidth ∝ 1/L.
        gvd_fundamental_fs2_per_mm: k''_F, group-velocity dispersion of the fundamental (fs²/mm).
        gvd_sh_fs2_per_mm: k''_SH, group-velocity dispersion of the second harmonic (fs²/mm).
        phase_mismatch_per_mm: Δk₀ at the carrier (1/mm); 0 = phase-matched at 2ω₀.
        name: label.
    """

    gvm_fs_per_mm: float
    gvd_fundamental_fs2_per_mm: float
    gvd_sh_fs2_per_mm: float
    phase_mismatch_per_mm: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        _check_fields(self, "dispersion", {
            "gvm_fs_per_mm": ("a finite number (fs/mm)", finite),
            "gvd_fundamental_fs2_per_mm": ("a finite number (fs²/mm)", finite),
            "gvd_sh_fs2_per_mm": ("a finite number (fs²/mm)", finite),
            "phase_mismatch_per_mm": ("a finite number (1/mm)", finite),
        })


def _bbo_n2(lam_um: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """BBO ordinary / extraordinary n² (Sellmeier of Eimerl et al., J. Appl. Phys. 62, 1968 (1987); λ in µm)."""
    l2 = np.asarray(lam_um, dtype=np.float64) ** 2
    no2 = 2.7405 + 0.0184 / (l2 - 0.0179) - 0.0155 * l2
    ne2 = 2.3730 + 0.0128 / (l2 - 0.0156) - 0.0044 * l2
    return no2, ne2


def bbo_type1_dispersion(wavelength_nm: float = 800.0) -> tuple[CrystalDispersion, float]:
    """Dispersion of type-I (o + o → e) SHG in BBO at ``wavelength_nm``, from the Sellmeier equations.

    Returns the :class:`CrystalDispersion` (phase-matched at the carrier) and the phase-matching angle (deg).
    At 800 nm: θ ≈ 29.0°, GVM ≈ −189 fs/mm, k''_F ≈ 72 fs²/mm, k''_SH ≈ 193 fs²/mm.
    """
    lam = wavelength_nm / 1000.0
    no2_f, _ = _bbo_n2(lam)
    no2_s, ne2_s = _bbo_n2(lam / 2)
    s2 = (1 / no2_f - 1 / no2_s) / (1 / ne2_s - 1 / no2_s)
    if not 0.0 < s2 < 1.0:
        raise ConfigError(f"type-I SHG in BBO cannot be phase-matched at {wavelength_nm} nm")
    theta = math.asin(math.sqrt(s2))

    def k_f(w: float) -> float:
        return float(np.sqrt(_bbo_n2(2 * np.pi * C_NM_PER_FS / w / 1000.0)[0]) * w / C_MM_PER_FS)

    def k_sh(w: float) -> float:
        no2, ne2 = _bbo_n2(2 * np.pi * C_NM_PER_FS / w / 1000.0)
        n = (math.cos(theta) ** 2 / no2 + math.sin(theta) ** 2 / ne2) ** -0.5
        return float(n * w / C_MM_PER_FS)

    w0, h = 2 * np.pi * C_NM_PER_FS / wavelength_nm, 1e-3

    def d12(k: Any, w: float) -> tuple[float, float]:
        return (k(w + h) - k(w - h)) / (2 * h), (k(w + h) - 2 * k(w) + k(w - h)) / h**2

    k1f, k2f = d12(k_f, w0)
    k1s, k2s = d12(k_sh, 2 * w0)
    return CrystalDispersion(k1f - k1s, k2f, k2s, 0.0, f"BBO type I, {wavelength_nm:g} nm"), math.degrees(theta)


# --- imperfections ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SHGImperfections:
    """Defects of one SHG unit. Per-unit draws are seeded by ``unit``; per-measurement noise by ``seed``.

    Pulse shaper (liquid-crystal SLM, amplitude mode between polarisers):
        crosstalk: fraction of the transmission difference to each neighbour that leaks across a pixel boundary
            (fringing fields of the LC cell and the finite focal spot of each frequency on the mask). Mean 0.03,
            drawn per boundary and unit with ±25 % relative spread.
        extinction_leakage: intensity transmission of a fully "off" pixel (1 / extinction ratio). 0.002 ≈ 500:1,
            typical of LC-SLM + polariser shapers (amplitude floor √0.002 ≈ 0.045).
        gamma_error: std of the per-pixel exponent error t = v^(1+ε) left after calibrating the voltage lookup
            table (residual nonlinearity of the LC response). 0.05, drawn per pixel and unit.
        pixel_bits: pixel values are written through an 8-bit lookup table (256 levels); 0 = continuous.
        residual_gdd_fs2, residual_tod_fs3: std of the residual spectral phase φ(u) = ½·GDD·u² + ⅙·TOD·u³ left by
            the compressor / shaper optics, drawn per unit. 200 fs² and 2000 fs³ (a well-aligned prism or grating
            compressor).

    Laser:
        laser_noise: relative rms shot-to-shot (per measurement) pulse-energy noise, 0.005 (Ti:sapphire
            oscillator over a spectrometer exposure); the SH power fluctuates twice as much.
        drift: relative rms of slow pulse-energy drift, 0.01; a sum of four sinusoids (seeded by ``seed``) with
            periods around ``drift_timescale`` measurements, advancing with the number of samples measured.
        drift_timescale: typical drift period in measurements, 10,000.

    Spectrometer:
        calibration_offset_nm: std of the per-unit wavelength-calibration offset of the bin edges (nm at the SH
            wavelength). 0.1 nm, typical after calibrating a compact grating spectrometer with a lamp.
        resolution_nm: FWHM of the spectrometer's Gaussian line-spread function, 0.2 nm.
        shot_noise: multiplier of photon shot noise (σ = √counts, 1 photoelectron per count); 1 = physical,
            0 = off. Gaussian approximation of Poisson statistics.
        read_noise_counts: rms read noise per output bin, 10 counts (CCD read noise after hardware binning).
        adc_bits: ADC resolution, 16 bits: counts are rounded and clipped to [0, 2^bits − 1]; 0 = off.
    """

    crosstalk: float = 0.03
    extinction_leakage: float = 0.002
    gamma_error: float = 0.05
    pixel_bits: int = 8
    residual_gdd_fs2: float = 200.0
    residual_tod_fs3: float = 2000.0
    laser_noise: float = 0.005
    drift: float = 0.01
    drift_timescale: float = 10_000.0
    calibration_offset_nm: float = 0.1
    resolution_nm: float = 0.2
    shot_noise: float = 1.0
    read_noise_counts: float = 10.0
    adc_bits: int = 16

    _DISCRETE: ClassVar[tuple[str, ...]] = ("pixel_bits", "adc_bits", "drift_timescale")
    # allowed values: the field's name → (rule, test); the unit is that of the field
    _RULES: ClassVar[dict[str, tuple[str, Callable[[Any], bool]]]] = {
        # t'_i = t_i + c_{i−1}(t_{i−1} − t_i) + c_i(t_{i+1} − t_i) stays a weighted mean of neighbours for c < ½
        "crosstalk": ("a number in [0, 0.5)", lambda v: 0 <= v < 0.5),
        # an "off" pixel's intensity transmission: 1 would be a shaper that cannot attenuate at all
        "extinction_leakage": ("a number in [0, 1)", lambda v: 0 <= v < 1),
        "gamma_error": _STD,
        "pixel_bits": _BITS,
        "residual_gdd_fs2": ("a finite number ≥ 0 fs²", nonneg),
        "residual_tod_fs3": ("a finite number ≥ 0 fs³", nonneg),
        "laser_noise": _STD,
        "drift": _STD,
        "drift_timescale": ("a finite number > 0 measurements", positive),
        "calibration_offset_nm": ("a finite number ≥ 0 nm", nonneg),
        "resolution_nm": ("a finite number ≥ 0 nm", nonneg),
        "shot_noise": _STD,
        "read_noise_counts": ("a finite number ≥ 0 counts", nonneg),
        "adc_bits": _BITS,
    }

    def __post_init__(self) -> None:
        _check_fields(self, "imperfections", self._RULES, integers=("pixel_bits", "adc_bits"))

    def scaled(self, factor: float) -> "SHGImperfections":
        """Every magnitude × ``factor``; bit depths and the drift timescale unchanged (turned off at factor 0)."""
        if factor < 0:
            raise ConfigError("imperfection_scale must be ≥ 0")
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self._DISCRETE:
                kw[f.name] = v if (factor > 0 or f.name == "drift_timescale") else 0
            else:
                kw[f.name] = v * factor
        return SHGImperfections(**kw)

    @classmethod
    def none(cls) -> "SHGImperfections":
        return cls().scaled(0.0)


# --- the design (shared by the lab and its ideal twin) --------------------------------------------------------
def _pixel_layout(n_inputs: int, n_params: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    n = n_inputs + n_params
    if layout == "blocks":
        return np.arange(n_inputs), np.arange(n_inputs, n)
    if layout == "interleaved":
        inp = np.floor((np.arange(n_inputs) + 0.5) * n / n_inputs).astype(np.int64)
        par = np.setdiff1d(np.arange(n), inp)
        return inp, par
    raise ConfigError(f"unknown pixel layout {layout!r}; choose 'interleaved' or 'blocks'")


def _check_design(cfg: dict[str, Any]) -> None:
    """Refuse a numeric design option outside its physical range (before anything is computed)."""
    _check("n_inputs", cfg["n_inputs"], "an integer ≥ 1", lambda v: v >= 1, integer=True)
    _check("n_params", cfg["n_params"], "an integer ≥ 0", nonneg, integer=True)
    _check("output_dim", cfg["output_dim"], "an integer ≥ 1", lambda v: v >= 1, integer=True)
    _check("crystal_length_mm", cfg["crystal_length_mm"], "a finite number > 0 mm", positive)
    lam = _check("wavelength_nm", cfg["wavelength_nm"], "a finite number > 0 nm", positive)
    _check("pulse_fwhm_fs", cfg["pulse_fwhm_fs"], "a finite number > 0 fs", positive)
    # the window in frequency, 2πc·window/λ², must stay below 2ω₀ = 4πc/λ: no pixel at a frequency ≤ 0
    _check("window_nm", cfg["window_nm"], f"a finite number > 0 nm and < 2 × wavelength_nm = {2 * lam:g} nm",
           lambda v: 0 < v < 2 * lam)
    _check("spectrometer_span", cfg["spectrometer_span"],
           "a number in (0, 1] (the fraction of the SH spectrum that the bins cover)", lambda v: 0 < v <= 1)


def _gauss_int(e: np.ndarray, lo: np.ndarray, hi: np.ndarray, sigma: float) -> np.ndarray:
    """∫_lo^hi Φ((e − s)/σ) ds (σ = 0: the length of [lo, hi] left of e)."""
    if sigma <= 0:
        return np.clip(e - lo, 0.0, None) - np.clip(e - hi, 0.0, None)

    def g(z: np.ndarray) -> np.ndarray:
        return z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    return sigma * (g((e - lo) / sigma) - g((e - hi) / sigma))


class _Design:
    """Numerical design of an SHG unit: frequency grid, envelope, mixing factors, spectrometer binning."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        _check_design(cfg)
        n_in, n_par, out = int(cfg["n_inputs"]), int(cfg["n_params"]), int(cfg["output_dim"])
        self.n = n = n_in + n_par
        if n < 2:
            raise ConfigError(f"shg: n_inputs + n_params must be ≥ 2 (shaper pixels), got {n}")
        self.length = float(cfg["crystal_length_mm"])
        self.input_pixels, self.param_pixels = _pixel_layout(n_in, n_par, cfg["layout"])
        lam = float(cfg["wavelength_nm"])
        lam_sh = lam / 2
        span = 2 * np.pi * C_NM_PER_FS * float(cfg["window_nm"]) / lam**2  # rad/fs across the shaper
        self.du = span / n
        self.u = (np.arange(n) - (n - 1) / 2) * self.du
        fwhm = 2 * np.pi * 0.441 / float(cfg["pulse_fwhm_fs"])  # transform-limited Gaussian, intensity FWHM
        self.envelope = np.exp(-2 * math.log(2) * (self.u / fwhm) ** 2)  # spectral amplitude
        self.w = (np.arange(2 * n - 1) - (n - 1)) * self.du  # SH offsets u_i + u_j
        d = cfg["dispersion"]
        self.gvm, self.k2f, self.k2s, self.dk0 = (
            float(d["gvm_fs_per_mm"]), float(d["gvd_fundamental_fs2_per_mm"]), float(d["gvd_sh_fs2_per_mm"]),
            float(d["phase_mismatch_per_mm"]),
        )
        # phase mismatch of every pair (direct method)
        ui, uj = self.u[:, None], self.u[None, :]
        wij = ui + uj
        dk = self.dk0 + self.gvm * wij + 0.5 * self.k2f * (ui**2 + uj**2) - 0.5 * self.k2s * wij**2
        half = dk * self.length / 2
        self.pair = np.sinc(half / np.pi) * np.exp(1j * half)
        # FFT method. sinc(ΔkL/2)e^{iΔkL/2} = (1/L)∫₀ᴸ e^{iΔk z} dz with Δk = β(w) + ½k''_F(u² + v²): the fast
        # factor e^{iβ(w)z} is integrated exactly against a Chebyshev interpolant of the slow, pair-separable
        # factor e^{i½k''_F(u²+v²)z} (Filon-type quadrature); one FFT autoconvolution per Chebyshev node.
        beta = self.dk0 + self.gvm * self.w - 0.5 * self.k2s * self.w**2
        self.separable = self.k2f == 0.0
        if self.separable:
            bh = beta * self.length / 2
            self.z = np.zeros(1)
            self.out_factor = (np.sinc(bh / np.pi) * np.exp(1j * bh))[None, :]
        else:
            slow = abs(self.k2f) * float(np.max(self.u**2)) * self.length  # max |½k''_F(u²+v²)|·L
            nz = int(min(48, max(4, math.ceil(4 + 3 * slow))))
            j = np.arange(nz)
            self.z = self.length / 2 * (1 - np.cos((2 * j + 1) * np.pi / (2 * nz)))  # Chebyshev nodes
            bary = (-1.0) ** j * np.sin((2 * j + 1) * np.pi / (2 * nz))
            m = int(min(40_000, math.ceil(float(np.abs(beta).max()) * self.length + 64)))
            xg, wg = np.polynomial.legendre.leggauss(m)
            zeta = (xg + 1) / 2 * self.length
            c = bary[None, :] / (zeta[:, None] - self.z[None, :])
            basis = c / c.sum(1, keepdims=True)  # (m, nz) Lagrange basis at the fine nodes
            fast = np.exp(1j * zeta[:, None] * beta[None, :])  # (m, 2N−1)
            self.out_factor = ((wg / 2)[:, None] * basis).T @ fast  # (nz, 2N−1)
        self.in_phase = np.exp(0.5j * self.k2f * self.z[:, None] * self.u[None, :] ** 2)  # (nz, N)
        self.nfft = 1 << (2 * n - 2).bit_length()
        # spectrometer window: centred on 2ω₀, a fraction of the SH support, uniform bins in frequency
        width = float(cfg["spectrometer_span"]) * (2 * n - 1) * self.du
        self.edges = np.linspace(-width / 2, width / 2, out + 1)
        self.sh_nm_per_rad_fs = lam_sh**2 / (2 * np.pi * C_NM_PER_FS)  # dλ/dω at the SH wavelength
        self.binning = self.binning_matrix(0.0, 0.0)
        # fixed output reference: brightest bin of the ideal design with every pixel at 0.5
        a_ref = torch.as_tensor(0.5 * self.envelope, dtype=torch.complex128)[None, :]
        p = sh_field_direct(a_ref, torch.as_tensor(self.pair)).abs().pow(2)[0].numpy()
        self.p_ref = float((p @ self.binning).max())
        if not (math.isfinite(self.p_ref) and self.p_ref > 0):  # e.g. a laser spectrum far narrower than a pixel
            raise ConfigError(f"shg: no second-harmonic power reaches the spectrometer bins of this design (reference "
                              f"{self.p_ref:g}); widen the laser spectrum (a shorter pulse_fwhm_fs) or the window_nm")

    def binning_matrix(self, offset_nm: float, resolution_nm: float) -> np.ndarray:
        """(2N−1, output_dim): fraction of SH sample k's power (spread over its interval) read in bin o."""
        shift = offset_nm / self.sh_nm_per_rad_fs
        sigma = resolution_nm / self.sh_nm_per_rad_fs / (2 * math.sqrt(2 * math.log(2)))
        lo, hi = (self.w - self.du / 2)[:, None], (self.w + self.du / 2)[:, None]
        e = (self.edges + shift)[None, :]
        cum = _gauss_int(e, lo, hi, sigma) / self.du  # fraction left of each edge
        return np.clip(np.diff(cum, axis=1), 0.0, None)

    # --- torch evaluation ---------------------------------------------------------------------------------
    def tensors(self, dtype: torch.dtype) -> dict[str, Tensor]:
        cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
        return {
            "envelope": torch.as_tensor(self.envelope, dtype=dtype),
            "u": torch.as_tensor(self.u, dtype=dtype),
            "pair": torch.as_tensor(self.pair, dtype=cdt),
            "in_phase": torch.as_tensor(self.in_phase, dtype=cdt),
            "out_factor": torch.as_tensor(self.out_factor, dtype=cdt),
            "binning": torch.as_tensor(self.binning, dtype=dtype),
        }


def assemble_pixels(x: Tensor, theta: Tensor, input_pixels: Tensor, param_pixels: Tensor) -> Tensor:
    """Pixel values (B, N) from inputs (B, n_in) and parameters (n_par,) or (B, n_par)."""
    b = x.shape[0]
    n = input_pixels.numel() + param_pixels.numel()
    v = x.new_zeros(b, n)
    v = v.index_copy(1, input_pixels, x)
    if param_pixels.numel():
        th = theta.to(x.dtype)
        th = th.expand(b, -1) if th.dim() == 1 else th
        v = v.index_copy(1, param_pixels, th)
    return v


def sh_field_direct(a: Tensor, pair: Tensor) -> Tensor:
    """B_k = Σ_{i+j=k} a_i a_j pair_ij for complex ``a`` (B, N): outer product, then anti-diagonal sums."""
    if a.shape[0] > 256:  # bound the (B, N, N) intermediate
        return torch.cat([sh_field_direct(c, pair) for c in a.split(256)])
    bsz, n = a.shape
    x = a[:, :, None] * a[:, None, :] * pair  # (B, N, N)
    # shift row i right by i: pad rows to 2N, re-read with row length 2N−1, sum the rows
    x = torch.nn.functional.pad(x, (0, n)).reshape(bsz, 2 * n * n)[:, : n * (2 * n - 1)]
    return x.reshape(bsz, n, 2 * n - 1).sum(1)


def sh_field_fft(a: Tensor, in_phase: Tensor, out_factor: Tensor, nfft: int) -> Tensor:
    """Same field by FFT autoconvolution at each quadrature depth z (one depth when k''_F = 0)."""
    n = a.shape[1]
    az = a[:, None, :] * in_phase  # (B, nz, N)
    f = torch.fft.fft(az, n=nfft)
    conv = torch.fft.ifft(f * f)[..., : 2 * n - 1]
    return (conv * out_factor).sum(1)


class SHGLab(VirtualLab):
    """Pulse shaper → χ(2) crystal (type-I BBO) → spectrometer; each instance is one physical unit.

    Args:
        n_inputs: shaper pixels carrying the input (input_dim); values in [0, 1] (amplitude transmission).
        n_params: shaper pixels carrying the trainable parameter block ``theta``; values in [0, 1].
        output_dim: spectrometer bins (output_dim).
        crystal_length_mm: crystal length L (mm). Default 0.5 mm (GVM·L ≈ 94 fs, about the pulse duration).
        dispersion: crystal :class:`CrystalDispersion`; default type-I BBO at ``wavelength_nm`` (Sellmeier).
        wavelength_nm: carrier wavelength of the fundamental (800 nm).
        pulse_fwhm_fs: transform-limited pulse duration that sets the Gaussian spectrum (100 fs → 9.4 nm FWHM).
        window_nm: spectral window spanned by the shaper's pixels (16 nm, ±0.85 spectral FWHM).
        spectrometer_span: fraction of the SH support (all sums u_i + u_j) covered by the spectrometer bins (0.6).
        layout: ``"interleaved"`` (input pixels spread evenly among parameter pixels) or ``"blocks"``.
        method: ``"direct"`` (pair tensor), ``"fft"`` (FFT autoconvolutions), or ``"auto"`` (= ``"fft"``, the
            faster one measured by ``benchmarks/lab_shg_throughput.py``; both agree to ~1e-13 in float64).
        unit: seed of this unit's fixed defects.
        ideal: no defects and no noise (the design itself).
        imperfections: defect levels (:class:`SHGImperfections`).
        seed: seed of the per-measurement noise and of the drift.
        dtype: float dtype of the computation, float32 or float64.

    Every option and every field of ``dispersion`` and ``imperfections`` is checked when the lab is built (a
    one-line :class:`ConfigError` naming it; the allowed ranges are listed in ``docs/labs/shg.md``).
    """

    differentiable = True
    batched_params = True

    def __init__(
        self,
        n_inputs: int = 12,
        n_params: int = 52,
        output_dim: int = 12,
        *,
        crystal_length_mm: float = 0.5,
        dispersion: CrystalDispersion | dict[str, Any] | None = None,
        wavelength_nm: float = 800.0,
        pulse_fwhm_fs: float = 100.0,
        window_nm: float = 16.0,
        spectrometer_span: float = 0.6,
        layout: str = "interleaved",
        method: str = "auto",
        unit: int = 0,
        ideal: bool = False,
        imperfections: SHGImperfections | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if method not in ("auto", "direct", "fft"):
            raise ConfigError(f"unknown SHG method {method!r}; choose 'auto', 'direct' or 'fft'")
        # every option is checked before anything is computed
        _check_design({"n_inputs": n_inputs, "n_params": n_params, "output_dim": output_dim,
                       "crystal_length_mm": crystal_length_mm, "wavelength_nm": wavelength_nm,
                       "pulse_fwhm_fs": pulse_fwhm_fs, "window_nm": window_nm, "spectrometer_span": spectrometer_span})
        check_unit_and_seed("shg", unit, seed)
        dtype = _float_dtype(dtype)
        imperfections = dataclass_of("shg", "imperfections", imperfections, SHGImperfections)
        dispersion = dataclass_of("shg", "dispersion", dispersion, CrystalDispersion)
        if dispersion is None:
            lo, hi = BBO_TYPE1_RANGE_NM
            if not lo <= wavelength_nm <= hi:
                raise ConfigError(f"shg: wavelength_nm must be in [{lo:g}, {hi:g}] nm, where type-I SHG in BBO (the "
                                  f"default crystal) phase-matches (or give a dispersion), got {wavelength_nm!r}")
            dispersion, _ = bbo_type1_dispersion(wavelength_nm)
        self.config = {
            "n_inputs": int(n_inputs), "n_params": int(n_params), "output_dim": int(output_dim),
            "crystal_length_mm": float(crystal_length_mm), "dispersion": asdict(dispersion),
            "wavelength_nm": float(wavelength_nm), "pulse_fwhm_fs": float(pulse_fwhm_fs),
            "window_nm": float(window_nm), "spectrometer_span": float(spectrometer_span), "layout": layout,
            "method": "fft" if method == "auto" else method,
        }
        self.design = _Design(self.config)
        self.unit, self.ideal, self.dtype = int(unit), bool(ideal), dtype
        self.imperfections = SHGImperfections.none() if ideal else (imperfections or SHGImperfections())
        imp = self.imperfections
        d = self.design
        t = d.tensors(dtype)
        self._t = t
        self._in_idx = torch.as_tensor(d.input_pixels)
        self._par_idx = torch.as_tensor(d.param_pixels)
        n = d.n

        # fixed defects of this unit (always drawn in the same order, then scaled by the imperfection levels)
        g = torch.Generator().manual_seed(7_919 * (self.unit + 1) + 17)
        f64 = torch.float64
        z_cross = torch.randn(n - 1, generator=g, dtype=f64)
        z_gamma = torch.randn(n, generator=g, dtype=f64)
        z_cal, z_gdd, z_tod = torch.randn(3, generator=g, dtype=f64).tolist()
        c = (imp.crosstalk * (1 + 0.25 * z_cross)).clamp(0.0, 0.45)
        k = torch.eye(n, dtype=f64)
        idx = torch.arange(n - 1)
        k[idx, idx] -= c
        k[idx, idx + 1] += c
        k[idx + 1, idx + 1] -= c
        k[idx + 1, idx] += c
        self.crosstalk_matrix = k.to(dtype)  # t' = t @ K.T
        self.gamma = (1 + imp.gamma_error * z_gamma).clamp_min(0.5).to(dtype)
        self.amplitude_floor = math.sqrt(imp.extinction_leakage)
        self.calibration_offset_nm = imp.calibration_offset_nm * z_cal
        self.residual_gdd_fs2 = imp.residual_gdd_fs2 * z_gdd
        self.residual_tod_fs3 = imp.residual_tod_fs3 * z_tod
        u = d.u
        phase = 0.5 * self.residual_gdd_fs2 * u**2 + self.residual_tod_fs3 * u**3 / 6
        cdt = t["pair"].dtype
        self._phase = torch.as_tensor(np.exp(1j * phase), dtype=cdt)
        self._binning = torch.as_tensor(d.binning_matrix(self.calibration_offset_nm, imp.resolution_nm), dtype=dtype)
        # detection: the brightest design bin at full transmission (16 × the reference) fills 80 % of the ADC
        self.counts_per_unit = 0.8 * FULL_SCALE_COUNTS / 16.0  # counts for an output of 1.0
        # slow drift: four sinusoids seeded by ``seed``
        gd = torch.Generator().manual_seed(104_729 * (int(seed) + 1) + 3)
        periods = imp.drift_timescale * torch.tensor([0.3, 1.0, 3.0, 10.0], dtype=f64)
        periods = periods * (0.7 + 0.6 * torch.rand(4, generator=gd, dtype=f64))
        amps = periods.sqrt()
        self._drift_amp = (amps / (amps.pow(2).sum() / 2).sqrt() * imp.drift)
        self._drift_freq = 2 * math.pi / periods
        self._drift_phase = 2 * math.pi * torch.rand(4, generator=gd, dtype=f64)
        self._init_noise(seed)

        shot_rel = imp.shot_noise / math.sqrt(self.counts_per_unit)
        read_rel = imp.read_noise_counts / self.counts_per_unit
        noise_std = math.sqrt(shot_rel**2 + read_rel**2 + (2 * imp.laser_noise) ** 2)
        self.spec = SystemSpec(
            name="shg" + ("-ideal" if ideal else ""),
            input_dim=int(n_inputs),
            output_dim=int(output_dim),
            input_low=0.0,
            input_high=1.0,
            input_unit="1",
            output_unit="P/P_ref",
            params=(
                ParamSpec("theta", (int(n_params),), 0.0, 1.0, "1", init_scale=0.5,
                          doc="SLM amplitude transmission of the parameter pixels"),
            ),
            noise_std=noise_std or None,
            meta={**self.config, "unit": self.unit, "ideal": self.ideal, "imperfections": asdict(imp),
                  "input_pixels": d.input_pixels.tolist(), "param_pixels": d.param_pixels.tolist()},
        )

    # --- physics --------------------------------------------------------------------------------------------
    def pixel_transmission(self, x: Tensor, params: Params) -> Tensor:
        """Amplitude transmission (B, N) of every pixel for commanded inputs and parameters (unit defects in)."""
        dt = self.dtype
        v = assemble_pixels(x.to(dt), params["theta"].to(dt), self._in_idx, self._par_idx)
        if self.ideal:
            return v
        imp = self.imperfections
        if imp.pixel_bits:
            levels = float(2**imp.pixel_bits - 1)
            v = v + (torch.round(v * levels) / levels - v).detach()  # straight-through quantiser
        if imp.gamma_error:
            v = v.clamp_min(1e-6) ** self.gamma.to(dt)
        if imp.crosstalk:
            v = v @ self.crosstalk_matrix.to(dt).T
        a = self.amplitude_floor
        return a + (1 - a) * v if a else v

    def shaped_field(self, x: Tensor, params: Params) -> Tensor:
        """Complex fundamental field A (B, N) on the pixel grid (laser spectrum × transmission × residual phase)."""
        t = self.pixel_transmission(x, params)
        a = (t * self._t["envelope"]).to(self._phase.dtype)
        return a if self.ideal else a * self._phase

    def sh_field(self, x: Tensor, params: Params) -> Tensor:
        """Complex SH field B (B, 2N−1) at the offsets :attr:`sh_offsets` (no laser noise, no detection)."""
        return self._field(self.shaped_field(x, params))

    @property
    def sh_offsets(self) -> np.ndarray:
        """SH frequency offsets from 2ω₀ (rad/fs) of the samples returned by :meth:`sh_field`."""
        return self.design.w

    @property
    def binning(self) -> Tensor:
        """(2N−1, output_dim) spectrometer response of this unit (calibration offset and resolution in)."""
        return self._binning

    def _field(self, a: Tensor) -> Tensor:
        t = self._t
        if self.config["method"] == "fft":
            return sh_field_fft(a, t["in_phase"], t["out_factor"], self.design.nfft)
        return sh_field_direct(a, t["pair"])

    def _drift(self, b: int) -> Tensor:
        n = torch.arange(self._count, self._count + b, dtype=torch.float64)[:, None]
        return (self._drift_amp * torch.sin(self._drift_freq * n + self._drift_phase)).sum(1)

    def measure(self, x: Tensor, params: Params) -> Tensor:
        dt, b = self.dtype, x.shape[0]
        a = self.shaped_field(x, params)
        imp = self.imperfections
        if not self.ideal and (imp.laser_noise or imp.drift):
            power = 1 + imp.laser_noise * torch.randn(b, generator=self._noise, dtype=dt)
            power = power * (1 + self._drift(b).to(dt))
            a = a * power.clamp_min(0).sqrt().to(a.dtype)[:, None]
        p = self._field(a).abs().pow(2)
        y = (p @ self._binning.to(dt)) / self.design.p_ref
        self._count += b
        if self.ideal:
            return y
        counts = y * self.counts_per_unit
        if imp.shot_noise:
            counts = counts + imp.shot_noise * counts.clamp_min(0).sqrt() * torch.randn(
                counts.shape, generator=self._noise, dtype=dt)
        if imp.read_noise_counts:
            counts = counts + imp.read_noise_counts * torch.randn(counts.shape, generator=self._noise, dtype=dt)
        if imp.adc_bits:
            top = float(2**imp.adc_bits - 1)
            counts = counts + (torch.round(counts) - counts).detach()
            counts = counts.clamp(0.0, top)
        return counts / self.counts_per_unit

    def ideal_twin(self) -> "SHGPhysicsTwin":
        """The design equations as a differentiable twin (calibration gains at their nominal values)."""
        return SHGPhysicsTwin(self.spec, **self.config)


@register_twin
class SHGPhysicsTwin(DigitalTwin):
    """Physics-based twin of the SHG lab: the ideal design with a few fitted calibration factors.

    Learnable: a gain per spectrometer bin (log scale, init 0) and a residual GDD of the optics (fs², init 0).
    Unit defects (per-pixel gamma, crosstalk, extinction floor, calibration offset, TOD) are not modelled.
    At initialisation the twin reproduces the ideal lab exactly.
    """

    kind: ClassVar[str] = "shg_physics"

    def __init__(self, spec: SystemSpec, **config: Any) -> None:
        super().__init__(spec)
        self._cfg = dict(config)
        self.design = _Design(self._cfg)
        if self.design.n != spec.input_dim + spec.n_params or int(self._cfg["output_dim"]) != spec.output_dim:
            raise ConfigError("SHG twin configuration does not match the system spec")
        for k, v in self.design.tensors(torch.float64).items():
            self.register_buffer(k, v, persistent=False)
        self.register_buffer("in_idx", torch.as_tensor(self.design.input_pixels), persistent=False)
        self.register_buffer("par_idx", torch.as_tensor(self.design.param_pixels), persistent=False)
        self.log_gain = nn.Parameter(torch.zeros(spec.output_dim))
        self.gdd_fs2 = nn.Parameter(torch.zeros(()))

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        dt = x.dtype
        cdt = torch.complex128 if dt == torch.float64 else torch.complex64
        v = assemble_pixels(x, params["theta"], self.in_idx, self.par_idx)
        phase = torch.polar(torch.ones_like(self.u, dtype=dt), 0.5 * self.gdd_fs2.to(dt) * self.u.to(dt) ** 2)
        a = (v * self.envelope.to(dt)).to(cdt) * phase.to(cdt)
        if self._cfg["method"] == "fft":
            b = sh_field_fft(a, self.in_phase.to(cdt), self.out_factor.to(cdt), self.design.nfft)
        else:
            b = sh_field_direct(a, self.pair.to(cdt))
        y = (b.abs().pow(2) @ self.binning.to(dt)) / self.design.p_ref
        return y * self.log_gain.exp().to(dt)



def _make(**options: Any) -> SHGLab:
    imp = resolve_imperfections(options, SHGImperfections)
    return SHGLab(imperfections=imp, **options)


register_lab("shg", _make, options_of=SHGLab)

__all__ = [
    "CrystalDispersion", "SHGImperfections", "SHGLab", "SHGPhysicsTwin", "bbo_type1_dispersion",
    "sh_field_direct", "sh_field_fft", "assemble_pixels",
]
