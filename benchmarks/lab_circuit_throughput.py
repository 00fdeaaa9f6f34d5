"""Throughput of the ngspice circuit lab at batch 256: serial vs parallel, one circuit per run vs batched netlists.

Usage:  .venv/bin/python benchmarks/lab_circuit_throughput.py [--batch 256] [--workers N] [--repeats 2]

Prints samples/s for each way of running ngspice and the speed-ups over the serial one-circuit-per-process
baseline. Needs ngspice on PATH (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pnnkit.labs import make_lab
from pnnkit.labs.circuit import MAX_CIRCUITS_PER_RUN


def rate(lab, x, params, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        lab(x, params)
        best = min(best, time.perf_counter() - t0)
    return x.shape[0] / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-inputs", type=int, default=16)
    ap.add_argument("--n-params", type=int, default=16)
    ap.add_argument("--output-dim", type=int, default=16)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, a.n_inputs, generator=g, dtype=torch.float64) * 2 - 1
    params = {"theta": torch.rand(a.n_params, generator=g, dtype=torch.float64) * 2 - 1}
    dims = dict(n_inputs=a.n_inputs, n_params=a.n_params, output_dim=a.output_dim)
    print(f"circuit lab, batch {a.batch}, {a.n_inputs}+{a.n_params} drive segments, {a.workers} workers "
          f"({os.cpu_count()} CPUs)")
    per = min(MAX_CIRCUITS_PER_RUN, -(-a.batch // a.workers))
    modes = {
        "serial, 1 circuit per ngspice run": dict(workers=1, circuits_per_run=1),
        f"{a.workers} workers, 1 circuit per run": dict(workers=a.workers, circuits_per_run=1),
        f"serial, all {a.batch} circuits in one netlist": dict(workers=1, circuits_per_run=a.batch),
        f"serial, {MAX_CIRCUITS_PER_RUN} circuits per netlist": dict(workers=1),
        f"{a.workers} workers, {per} circuits per netlist (default)": dict(workers=a.workers),
    }
    rates = {}
    for name, opts in modes.items():
        lab = make_lab("circuit", **dims, **opts)
        rates[name] = rate(lab, x, params, a.repeats)
        print(f"  {name:<50s} {rates[name]:9.1f} samples/s")
    base = next(iter(rates.values()))
    for name, r in list(rates.items())[1:]:
        print(f"  speed-up over serial one-circuit-per-run: {r / base:5.1f}x  ({name})")
    lab = make_lab("circuit", **dims, backend="ode")
    r = rate(lab, x, params, a.repeats)
    print(f"  {'(torch ODE back end, for comparison)':<50s} {r:9.1f} samples/s")


if __name__ == "__main__":
    main()
