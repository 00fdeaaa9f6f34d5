"""What the plate twin's per-mode corrections buy over its four global factors (docs/labs/plate.md, *Twin*).

Measures a plate unit once on a space-filling design (`acquire`), then fits the physics twin to those same
measurements twice with `fit_twin`: with its four global factors only (the per-mode frequency, damping and pick-up
corrections frozen at the design) and with every correction. Prints each fit's validation NRMSE and the mean
absolute error of the twin's mode frequencies against the unit's true ones (without drift).

Usage: .venv/bin/python benchmarks/plate_twin_calibration.py [--samples 768] [--repeats 2] [--epochs 8]
       [--lr 0.02] [--n-inputs 196] [--output-dim 196] [--unit 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from pnnkit import acquire, fit_twin, make_lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-inputs", type=int, default=196)
    ap.add_argument("--output-dim", type=int, default=196)
    ap.add_argument("--unit", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lab = make_lab("plate", n_inputs=args.n_inputs, output_dim=args.output_dim, unit=args.unit)
    t0 = time.perf_counter()
    data = acquire(lab, args.samples, repeats=args.repeats, seed=0)
    print(f"plate unit {args.unit}: {args.n_inputs} inputs, {lab.spec.param_names} θ, {args.output_dim} bins; "
          f"{len(data)} settings × {args.repeats} repeats measured in {time.perf_counter() - t0:.1f} s")
    true_omega = lab.physics.omega
    for name, per_mode in (("global factors only", False), ("global + per-mode", True)):
        twin = lab.ideal_twin()
        fixed = () if per_mode else ("mode_freq", "mode_log_damping", "mode_pickup")
        t0 = time.perf_counter()
        rep = fit_twin(twin, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch, patience=args.epochs,
                       seed=0, fixed=fixed)
        err = (twin.calibrated_physics().omega / true_omega - 1).abs().mean()
        before = (twin.nominal.omega / true_omega - 1).abs().mean()
        floor = "n/a: 1 repeat" if rep.noise_floor_nrmse is None else f"{rep.noise_floor_nrmse:.3f}"
        print(f"{name:22s} val NRMSE {rep.val_nrmse:.3f} (noise floor {floor}), mode-frequency "
              f"error {100 * float(err):.2f} % (design: {100 * float(before):.2f} %), {rep.epochs} epochs, "
              f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
