"""Device latency: how close a PAT step gets to the device-bound limit, with and without twin/device overlap.

A real instrument answers each call after a round trip (fixed latency) plus a time per sample.
:class:`LatencyDevice` wraps a lab and adds ``latency + per_sample·B`` of sleep to every call, after the lab's
own simulation (an instrument's wait leaves the CPU free). The **device-bound limit**
of a step is the device's own time in it: the wall time spent inside the wrapper's ``measure``, summed over the
step's calls. ``ratio = step time / device-bound limit`` (1.0 = the step costs only what the device costs).

``overlap=True`` (:class:`pnnkit.PhysicalLayer`) runs each layer's twin forward pass — the graph the VJP walks —
in a worker thread while the device measures that same layer (PAT takes the Jacobian at the layer *input*, known
before the call). What remains exposed is the walk of that graph in the backward pass, the optimizer and the
digital layers. Two twins: the oscillator physics twin (an ODE solve; large VJP) and a small MLP twin
(64-64 SiLU; the "twin VJP is small" case of the goal).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..layers import ElementwiseRescale, PhysicalLayer, project_parameters, set_overlap
from ..pat import twin_vjp
from ..system import PhysicalSystem
from ..twins import MLPTwin
from .common import bench_lab, goal, machine_info, result

LATENCIES_MS = (5.0, 20.0, 100.0)


class LatencyDevice(PhysicalSystem):
    """Wrap ``inner``, adding ``latency_s + per_sample_s·B`` of sleep (the instrument round trip) to every call."""

    def __init__(self, inner: PhysicalSystem, latency_s: float, per_sample_s: float) -> None:
        self.inner, self.latency_s, self.per_sample_s = inner, float(latency_s), float(per_sample_s)
        self.spec = inner.spec
        self.batched_params = inner.batched_params
        self.device_seconds = 0.0

    def measure(self, x, params):
        t0 = time.perf_counter()
        y = self.inner.measure(x, params)
        time.sleep(self.latency_s + self.per_sample_s * x.shape[0])
        self.device_seconds += time.perf_counter() - t0
        return y

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def _twin(kind: str, lab):
    if kind == "physics":
        return lab.ideal_twin().eval().requires_grad_(False)
    torch.manual_seed(0)
    return MLPTwin(lab.spec, hidden=(64, 64)).eval().requires_grad_(False)  # timing only: weights untrained


def measure_config(twin_kind: str, latency_ms: float, per_sample_us: float, batch: int, depth: int,
                   repeats: int, n: int = 8, steps: int = 30) -> list[dict[str, Any]]:
    lab, _ = bench_lab("oscillators", n=n, steps=steps)
    twin = _twin(twin_kind, lab)
    dev = LatencyDevice(lab, latency_ms / 1e3, per_sample_us / 1e6)
    g = torch.Generator().manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(depth):
        mods += [PhysicalLayer(dev, twin, generator=g), ElementwiseRescale(n)]
    model = nn.Sequential(*mods)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = (torch.rand(batch, n, generator=g) * 1.6 - 0.8)
    target = torch.randn(batch, n, generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        (model(x) - target).pow(2).mean().backward()
        opt.step()
        project_parameters(model)

    # gradients with and without overlap at the same θ and the same measurement noise
    state = dev.get_state()
    grads = []
    for ov in (False, True):
        set_overlap(model, ov)
        dev.set_state(state)
        model.zero_grad(set_to_none=True)
        (model(x) - target).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    identical = all(torch.equal(a, b) for a, b in zip(*grads))

    # the twin's own work per step, timed alone (forward + VJP at each layer's input)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(
        (mod.constrain_input(inp[0]).detach(), {k: v.detach() for k, v in mod.params().items()})))
        for m in model if isinstance(m, PhysicalLayer)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    gy = torch.randn(batch, n)
    tw = []
    for _ in range(max(2, repeats)):
        t0 = time.perf_counter()
        for i, (xl, th) in enumerate(seen):
            twin_vjp(twin, xl, th, gy, need_x=i > 0)
        tw.append(time.perf_counter() - t0)
    twin_s = min(tw)

    per_mode: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for ov in (False, True):  # warm-up both paths
        set_overlap(model, ov)
        step()
    for _ in range(repeats):  # interleave plain / overlap
        for ov in (False, True):
            set_overlap(model, ov)
            d0 = dev.device_seconds
            t0 = time.perf_counter()
            step()
            per_mode[ov].append((time.perf_counter() - t0, dev.device_seconds - d0))
    rows = []
    for ov, samples in per_mode.items():
        best = min(samples, key=lambda s: s[0] / s[1])  # the least disturbed repeat
        step_s, dev_s = best
        rows.append({
            "twin": twin_kind, "latency_ms": latency_ms, "per_sample_us": per_sample_us, "batch": batch,
            "depth": depth, "overlap": ov, "step_ms": 1e3 * step_s, "device_bound_ms": 1e3 * dev_s,
            "twin_alone_ms": 1e3 * twin_s, "ratio": step_s / dev_s,
            "ratio_median": sorted(a / b for a, b in samples)[len(samples) // 2],
            "grads_identical": identical,
        })
    return rows


def run(quick: bool = False, threads: int = 1) -> dict[str, Any]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        machine = machine_info(threads)
        latencies = (20.0,) if quick else LATENCIES_MS
        twins = ("mlp",) if quick else ("mlp", "physics")
        repeats = 2 if quick else 7
        batch, depth, per_sample_us = (32, 2, 20.0) if quick else (64, 3, 20.0)
        rows = []
        for tk in twins:
            for lat in latencies:
                rows += measure_config(tk, lat, per_sample_us, batch, depth, repeats, n=4 if quick else 8,
                                       steps=5 if quick else 30)
        goals = []
        for ov in (True, False):  # the goal row (small twin VJP, overlap on) and the same row before overlap
            r = next((r for r in rows if r["twin"] == "mlp" and r["latency_ms"] == 20.0 and r["overlap"] is ov), None)
            if r is not None:
                goals.append(goal("step / device-bound limit at 20 ms per call, small (MLP) twin VJP, "
                                  + ("overlap on" if ov else "plain path (before)"), r["ratio"], 1.10, "<=",
                                  f"twin forward+VJP alone {r['twin_alone_ms']:.1f} ms per step"))
        goals.append(goal("gradients identical with and without overlap (fraction of configurations)",
                          sum(r["grads_identical"] for r in rows) / len(rows), 1.0, ">="))
        return result("latency", machine, rows, goals, settings={
            "threads": threads, "repeats": repeats, "batch": batch, "depth": depth,
            "per_sample_us": per_sample_us, "lab": "oscillators n=8 (wrapped by LatencyDevice)",
            "network": "[PhysicalLayer, ElementwiseRescale] x depth, MSE, AdamW",
            "ratio": "fastest-relative repeat (step / device time of that same step); ratio_median also given",
        })
    finally:
        torch.set_num_threads(old)


COLUMNS = ("twin", "latency_ms", "overlap", "step_ms", "device_bound_ms", "twin_alone_ms", "ratio", "ratio_median",
           "grads_identical")
