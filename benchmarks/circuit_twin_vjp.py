"""Time of the circuit twin's vector–Jacobian product (what PAT's backward and in-silico training cost per layer).

Compares the explicit RK4 loop with its hand-written drive adjoint (a frozen twin: PAT, in silico, evaluation)
with torchdiffeq + autograd (what the twin used before, and still uses while its calibration is being fitted), at
the size of one channel of the electronic MNIST config (49 inputs, 24 θ, 49 bins, t_segment 5 µs) for batch 128
(one channel per call) and 512 (four channels in one call, ``parallel`` with ``batched: true``). Float32, as in
training. Also checks that both give the same gradients.

Usage: .venv/bin/python benchmarks/circuit_twin_vjp.py [--batches 128 512] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch

from pnnkit import make_lab
from pnnkit.bench.common import twin_vjp_timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lab = make_lab("circuit", n_inputs=49, n_params=24, output_dim=49, backend="ode", timing={"t_segment": 5e-6})
    twin = lab.ideal_twin()
    print(f"torch {torch.__version__}, 1 intra-op thread, float32, circuit 49 in / 24 θ / 49 bins, t_segment 5 µs")
    for batch in args.batches:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 49, generator=g) * 2 - 1
        th = torch.rand(batch, 24, generator=g) - 0.5
        w = torch.randn(batch, 49, generator=g)

        t = twin_vjp_timings(twin, x, {"theta": th}, w, args.repeats)
        print(f"batch {batch}")
        print(f"  twin forward (no grad)                   {t['forward_ms']:8.1f} ms")
        print(f"  forward + VJP, RK4 loop + adjoint        {t['frozen_ms']:8.1f} ms")
        print(f"  forward + VJP, torchdiffeq + autograd    {t['trainable_ms']:8.1f} ms   "
              f"speed-up {t['trainable_ms'] / t['frozen_ms']:.2f}×")
        print(f"  max relative gradient difference         {t['max_rel_diff']:.1e}")


if __name__ == "__main__":
    main()
