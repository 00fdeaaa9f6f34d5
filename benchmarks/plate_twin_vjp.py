"""Time of the plate twin's vector–Jacobian product (what PAT's backward and in-silico training cost per layer).

Compares the hand-written drive adjoint (a frozen twin: PAT, in silico) with autograd through the time-stepping
loop (what the twin used before, and still uses while its physics is being fitted), at the size of the MNIST
config of rounds 3–4 (196 inputs, 64 θ, 196 bins, 40 modes, batch 128; round 5's config drives 49 inputs per
plate use). Also checks that both give the same gradients.

Usage: .venv/bin/python benchmarks/plate_twin_vjp.py [--batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch

from pnnkit import make_lab
from pnnkit.bench.common import twin_vjp_timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lab = make_lab("plate", n_inputs=196, output_dim=196)
    twin = lab.ideal_twin()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 196, generator=g) * 2 - 1
    th = torch.rand(64, generator=g) - 0.5
    w = torch.randn(args.batch, 196, generator=g)

    print(f"torch {torch.__version__}, 1 intra-op thread, batch {args.batch}, plate 196 in / 64 θ / 196 bins")
    t = twin_vjp_timings(twin, x, {"theta": th}, w, args.repeats)
    print(f"twin forward (no grad)             {t['forward_ms']:8.1f} ms")
    print(f"forward + VJP, drive adjoint       {t['frozen_ms']:8.1f} ms")
    print(f"forward + VJP, autograd (previous) {t['trainable_ms']:8.1f} ms   speed-up {t['trainable_ms'] / t['frozen_ms']:.2f}×")
    print(f"max relative gradient difference   {t['max_rel_diff']:.1e} (float32)")


if __name__ == "__main__":
    main()
