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
import statistics
import time

import torch

from pnnkit import make_lab


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

        def vjp() -> tuple[torch.Tensor, torch.Tensor]:
            xs, ts = x.clone().requires_grad_(True), th.clone().requires_grad_(True)
            return torch.autograd.grad((twin(xs, {"theta": ts}) * w).sum(), (xs, ts))  # type: ignore[return-value]

        def timed(f) -> float:  # type: ignore[no-untyped-def]
            f()
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts) * 1e3

        twin.requires_grad_(False)
        with torch.no_grad():
            fwd = timed(lambda: twin(x, {"theta": th}))
        adj = timed(vjp)
        ga = vjp()
        twin.requires_grad_(True)  # calibration being fitted → torchdiffeq + autograd (the previous path)
        auto = timed(vjp)
        gb = vjp()
        rel = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ga, gb))
        print(f"batch {batch}")
        print(f"  twin forward (no grad)                   {fwd:8.1f} ms")
        print(f"  forward + VJP, RK4 loop + adjoint        {adj:8.1f} ms")
        print(f"  forward + VJP, torchdiffeq + autograd    {auto:8.1f} ms   speed-up {auto / adj:.2f}×")
        print(f"  max relative gradient difference         {rel:.1e}")


if __name__ == "__main__":
    main()
