"""Throughput of the SHG virtual lab (samples/s at batch 256), both field methods, ideal and default unit.

Usage::

    .venv/bin/python benchmarks/lab_shg_throughput.py [--batch 256] [--threads 2] [--repeats 40]
    .venv/bin/python benchmarks/lab_shg_throughput.py --facts   # design numbers and imperfection gaps (docs)

Prints the median and the best time per batch over ``repeats`` timed batches (after warm-up) for the guarded
call ``lab(x, params)`` (no autograd) and for one twin forward + backward (what a PAT step costs on top).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace

import torch

from pnnkit.labs.shg import C_NM_PER_FS, SHGImperfections, SHGLab, bbo_type1_dispersion


def _time(fn, repeats: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def facts() -> None:
    """Numbers quoted in docs/labs/shg.md."""
    d, theta = bbo_type1_dispersion(800.0)
    print(f"BBO type I @800 nm: theta_pm={theta:.2f} deg, GVM={d.gvm_fs_per_mm:.1f} fs/mm, "
          f"k2_F={d.gvd_fundamental_fs2_per_mm:.1f} fs^2/mm, k2_SH={d.gvd_sh_fs2_per_mm:.1f} fs^2/mm")
    lab = SHGLab()
    de = lab.design
    print(f"laser spectrum FWHM = {0.441 / 100 * 800**2 / C_NM_PER_FS:.2f} nm (100 fs transform-limited Gaussian)")
    print(f"shaper: {de.n} pixels over 16 nm = {16 / de.n:.3f} nm/pixel; spectral amplitude at the edge pixels "
          f"{de.envelope[0]:.2f}")
    print(f"GVM*L = {abs(d.gvm_fs_per_mm) * 0.5:.0f} fs for L = 0.5 mm")
    fw = 4 * 1.39156 / (abs(d.gvm_fs_per_mm) * 0.5)
    print(f"phase-matching FWHM (L = 0.5 mm) = {fw:.4f} rad/fs = {fw * de.sh_nm_per_rad_fs:.2f} nm at 400 nm")
    print(f"spectrometer window = {(de.edges[-1] - de.edges[0]) * de.sh_nm_per_rad_fs:.2f} nm, bin = "
          f"{(de.edges[1] - de.edges[0]) * de.sh_nm_per_rad_fs:.3f} nm, SH sample spacing "
          f"{de.du * de.sh_nm_per_rad_fs:.4f} nm; FFT quadrature nodes {de.z.size}")
    print(f"amplitude floor = {lab.amplitude_floor:.4f}; counts per output unit = {lab.counts_per_unit:.1f}; "
          f"spec.noise_std = {lab.spec.noise_std:.4f}")
    imp = lab.imperfections
    det = math.sqrt(imp.shot_noise**2 * lab.counts_per_unit + imp.read_noise_counts**2) / lab.counts_per_unit
    print(f"at output 1.0: shot + read noise {100 * det:.2f} %, laser noise on the SH {200 * imp.laser_noise:.2f} %")
    print(f"unit 0 draws: calibration offset {lab.calibration_offset_nm:+.3f} nm, residual GDD "
          f"{lab.residual_gdd_fs2:+.0f} fs^2, TOD {lab.residual_tod_fs3:+.0f} fs^3")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1024, 12, generator=g)
    p = {"theta": torch.rand(52, generator=g)}
    yi = SHGLab(ideal=True)(x, p)
    print(f"1024 random pixel settings: ideal output mean {float(yi.mean()):.3f}, max {float(yi.max()):.3f}")
    none, full = SHGImperfections.none(), SHGImperfections()

    def gaps(imp: SHGImperfections, unit: int) -> tuple[float, float]:
        y = SHGLab(imperfections=imp, unit=unit)(x, p)
        ref = float(yi.pow(2).mean().sqrt())
        gain = (y * yi).sum(0) / yi.pow(2).sum(0)
        return float((y - yi).pow(2).mean().sqrt()) / ref, float((y - gain * yi).pow(2).mean().sqrt()) / ref

    groups = {
        "crosstalk": ["crosstalk"], "extinction_leakage": ["extinction_leakage"], "gamma_error": ["gamma_error"],
        "pixel_bits": ["pixel_bits"], "residual GDD + TOD": ["residual_gdd_fs2", "residual_tod_fs3"],
        "laser_noise": ["laser_noise"], "drift (1024 samples)": ["drift"],
        "calibration_offset_nm": ["calibration_offset_nm"], "resolution_nm": ["resolution_nm"],
        "shot + read noise": ["shot_noise", "read_noise_counts"], "adc_bits": ["adc_bits"], "all (default)": [],
    }
    print("relative RMS gap to the ideal design [after the best per-bin gain], units 0..4:")
    for name, keys in groups.items():
        imp = replace(none, **{k: getattr(full, k) for k in keys}) if keys else full
        cells = [gaps(imp, u) for u in range(5)]
        print(f"  {name:24s} " + "  ".join(f"{a:.4f} [{b:.4f}]" for a, b in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--sizes", default="12x52,16x84", help="comma-separated n_inputs x n_params")
    ap.add_argument("--facts", action="store_true", help="print the design numbers quoted in the docs and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.facts:
        facts()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, float32")
    print(f"{'pixels':>6} {'method':>6} {'unit':>7} {'call median ms':>15} {'best ms':>8} {'samples/s':>10} "
          f"{'twin fwd+bwd ms':>16}")
    for size in args.sizes.split(","):
        n_in, n_par = (int(v) for v in size.split("x"))
        for method in ("direct", "fft"):
            for ideal in (True, False):
                lab = SHGLab(n_in, n_par, 12, method=method, ideal=ideal)
                g = torch.Generator().manual_seed(0)
                x = torch.rand(args.batch, n_in, generator=g)
                p = {"theta": torch.rand(n_par, generator=g)}
                med, best = _time(lambda: lab(x, p), args.repeats)
                twin = lab.ideal_twin()
                xg = x.clone().requires_grad_(True)
                th = p["theta"].clone().requires_grad_(True)

                def step() -> None:
                    twin(xg, {"theta": th}).sum().backward()

                tmed, _ = _time(step, args.repeats)
                print(f"{n_in + n_par:>6} {method:>6} {'ideal' if ideal else 'default':>7} {1e3 * med:>15.2f} "
                      f"{1e3 * best:>8.2f} {args.batch / med:>10.0f} {1e3 * tmed:>16.2f}")


if __name__ == "__main__":
    main()
