"""Time and peak memory of a PAT step vs batch and depth, and memory over a long run.

* **time** — one PAT training step (network ``[PhysicalLayer(oscillators n=8), ElementwiseRescale] × depth``,
  MSE, AdamW; one thread; thread CPU time, fastest of the repeats) vs batch at depth 2, and vs depth at batch 256. The exponent
  k of ``time ∝ size^k`` is fitted by least squares on log–log; linear growth means k ≤ 1 (a fixed per-call cost
  makes it smaller).
* **peak memory** — the peak of live tensor memory during one (warm) PAT step above its start, from
  ``torch.profiler`` allocator events (``profile_memory=True``, the "Total Allocated" counter). torch's CPU
  allocations are invisible to tracemalloc, and RSS keeps freed heap blocks, so neither measures a step's peak.
  Exponent fitted as for time.
* **long run** — 1,000 PAT steps on a small network (oscillators n=4, depth 2, batch 32), plain and with
  ``overlap=True``: RSS (``/proc/self/statm``) and the number of live Python objects at step 100 and 1,000.
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..layers import ElementwiseRescale, PhysicalLayer, project_parameters
from .common import cpu_clock, goal, machine_info, min_time, result, rss_bytes


def _model(n: int, depth: int, overlap: bool = False, steps: int = 30):
    from ..labs import make_lab

    lab = make_lab("oscillators", n=n, steps=steps)
    twin = lab.ideal_twin().eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(depth):
        mods += [PhysicalLayer(lab, twin, generator=g, overlap=overlap), ElementwiseRescale(n)]
    model = nn.Sequential(*mods)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def make_step(batch: int, seed: int = 0):
        gx = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, n, generator=gx) * 1.6 - 0.8
        target = torch.randn(batch, n, generator=gx)

        def step():
            opt.zero_grad(set_to_none=True)
            (model(x) - target).pow(2).mean().backward()
            opt.step()
            project_parameters(model)

        return step

    return model, make_step


def fit_exponent(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(size)."""
    lx = [math.log(s) for s in sizes]
    ly = [math.log(max(v, 1e-30)) for v in values]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def peak_tensor_mb(step: Callable[[], object]) -> float:
    """Peak of live tensor memory during ``step()`` above its start, from the profiler's allocator events."""
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        Path(path).unlink(missing_ok=True)
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return 0.0
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return (max(e["args"]["Total Allocated"] for e in mem) - start) / 2**20


def long_run(steps: int, overlap: bool, marks: tuple[int, int]) -> dict[str, Any]:
    _, make_step = _model(4, 2, overlap=overlap, steps=10)
    seen: dict[int, tuple[int, int]] = {}
    fns = [make_step(32, seed=s) for s in range(8)]  # a few different batches, as in training
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        fns[i % 8]()
        if i in marks:
            gc.collect()
            seen[i] = (rss_bytes(), len(gc.get_objects()))
    a, b = marks
    return {"overlap": overlap, "steps": steps, f"rss_mb_at_{a}": seen[a][0] / 2**20,
            f"rss_mb_at_{b}": seen[b][0] / 2**20, "rss_growth_mb": (seen[b][0] - seen[a][0]) / 2**20,
            "rss_growth_pct": 100 * (seen[b][0] - seen[a][0]) / seen[a][0],
            "python_objects_growth": seen[b][1] - seen[a][1], "seconds": time.perf_counter() - t0}


def run(quick: bool = False) -> dict[str, Any]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        machine = machine_info(1)
        n, ode_steps = (4, 5) if quick else (8, 30)
        batches = (32, 64) if quick else (64, 128, 256, 512, 1024)
        depths = (1, 2) if quick else (1, 2, 3, 4, 5)
        repeats = 2 if quick else 5
        ref_batch, ref_depth = (64, 1) if quick else (256, 2)
        rows: list[dict[str, Any]] = []
        for sweep, configs in (("batch", [(b, ref_depth) for b in batches]), ("depth", [(ref_batch, d) for d in depths])):
            for b, d in configs:
                _, make_step = _model(n, d, steps=ode_steps)
                t = min_time(make_step(b), repeats, clock=cpu_clock)
                _, make_step = _model(n, d, steps=ode_steps)
                step = make_step(b)
                step()
                rows.append({"sweep": sweep, "batch": b, "depth": d, "step_ms": 1e3 * t,
                             "peak_tensor_mb": peak_tensor_mb(step)})
        long_steps, marks = (20, (5, 20)) if quick else (1000, (100, 1000))
        long_rows = [long_run(long_steps, ov, marks) for ov in (False, True)]
        fits = {}
        goals = []
        for sweep, key in (("batch", "batch"), ("depth", "depth")):
            rs = [r for r in rows if r["sweep"] == sweep]
            for what in ("step_ms", "peak_tensor_mb"):
                k = fit_exponent([r[key] for r in rs], [r[what] for r in rs])
                top = fit_exponent([r[key] for r in rs[-2:]], [r[what] for r in rs[-2:]])
                fits[f"{what} vs {sweep}"] = {"all": k, "last_two_points": top}
                goals.append(goal(f"{'time' if what == 'step_ms' else 'peak tensor memory'} ∝ {sweep}^k: fitted k",
                                  k, 1.10, "<=", f"slope between the two largest sizes {top:.3f}"))
        for r in long_rows:
            goals.append(goal(f"RSS growth from step {marks[0]} to {marks[1]} of a PAT run "
                              f"({'overlap' if r['overlap'] else 'plain'}), %", r["rss_growth_pct"], 1.0, "<=",
                              f"{r['rss_growth_mb']:+.2f} MB; live Python objects {r['python_objects_growth']:+d}"))
        return result("scaling", machine, rows, goals, exponents=fits, long_run=long_rows, settings={
            "threads": 1, "repeats": repeats, "clock": "thread CPU time (time.thread_time)", "lab": f"oscillators n={n} (30 RK4 steps), physics twin",
            "network": "[PhysicalLayer, ElementwiseRescale] x depth, MSE, AdamW",
            "batch_sweep_depth": ref_depth, "depth_sweep_batch": ref_batch,
            "long_run": "oscillators n=4 (10 RK4 steps), depth 2, batch 32, 8 rotating batches",
        })
    finally:
        torch.set_num_threads(old)


COLUMNS = ("sweep", "batch", "depth", "step_ms", "peak_tensor_mb")
