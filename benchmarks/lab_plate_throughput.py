"""Throughput of the plate lab at batch 256 (samples/s), default configuration.

Usage: .venv/bin/python benchmarks/lab_plate_throughput.py [--batch 256] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pnnkit import make_lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, batch {args.batch}")
    for label, options in (("plate (default unit)", {}), ("plate ideal", {"ideal": True})):
        lab = make_lab("plate", **options)
        spec = lab.spec
        x = torch.rand(args.batch, spec.input_dim, generator=g) * 2 - 1
        params = {p.name: torch.rand(p.shape, generator=g) * (p.high - p.low) + p.low for p in spec.params}
        lab(x, params)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            lab(x, params)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{label:22s} measure: {med * 1e3:7.1f} ms/batch  {args.batch / med:8.0f} samples/s "
              f"(best {args.batch / min(times):.0f})")
    twin = make_lab("plate").ideal_twin().requires_grad_(False)  # frozen, as after fit_twin (the PAT backward)
    x = (torch.rand(args.batch, 196, generator=g) * 2 - 1).requires_grad_(True)
    th = {"theta": torch.zeros(64, requires_grad=True)}
    times = []
    for _ in range(max(2, args.repeats // 2)):
        t0 = time.perf_counter()
        twin(x, th).sum().backward()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{'frozen twin fwd+bwd':22s}        : {med * 1e3:7.1f} ms/batch  {args.batch / med:8.0f} samples/s")


if __name__ == "__main__":
    main()
