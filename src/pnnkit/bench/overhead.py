"""Overhead of a PAT training step over the sum of its unavoidable parts, and against the authors' formulation.

For each lab, batch and depth, a network ``[PhysicalLayer, ElementwiseRescale] × depth`` (MSE loss on a random
target, AdamW) is timed three ways (single intra-op thread, so every op runs on the calling thread; the clock is that thread's
CPU time — the work itself, not the time other jobs on a shared machine hold the core — and the fastest of
interleaved repeats is kept; wall-clock figures are reported beside it):

* **step** — one full pnnkit PAT training step: zero_grad, forward (every layer measured on the device),
  loss, backward (twin VJP at the measured inputs), optimizer step, projection of θ into its hard ranges;
* **parts alone** — the same work with no framework around it: every layer's device call on the inputs the step
  measured (``system(x_l, θ_l)``), every layer's twin forward + VJP (``twin_vjp``) at those inputs, and the
  optimizer step alone. ``overhead = step / (device + twin + optimizer)`` (the goal's definition), where each
  side is the fastest of its per-round totals (``overhead_median``: the median over rounds of the same ratio);
* **digital alone** (reported beside it, not part of the goal) — the network's own digital work that the step also
  does: zero_grad, the rescale layers' forward and backward on the outputs the step measured, the loss and its
  backward, the projection of θ. ``overhead_incl_digital = step / (device + twin + optimizer + digital)`` is what is
  left for pnnkit's glue (input/θ clamps, the autograd function, the guard's bookkeeping);
* **authors** — the formulation of the authors' public code, written independently here: a custom
  ``autograd.Function`` whose backward re-runs the twin through ``torch.autograd.functional.vjp``. Same network,
  same θ, same measurement noise (the lab's noise state is replayed) — the gradients are compared element-wise.

The process keeps freed heap memory for reuse (:mod:`pnnkit.allocator`, applied by pnnkit's PAT path for every
user; ``PNNKIT_RETAIN_HEAP=0`` reproduces glibc's default, under which the SHG steps page-fault their temporaries
in anew every step); the setting in effect is recorded in the JSON (``settings.allocator``).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..allocator import allocator_state, auto_retain
from ..layers import ElementwiseRescale, PhysicalLayer, project_parameters
from ..pat import twin_vjp
from .common import available_labs, bench_lab, cpu_clock, goal, machine_info, result

if TYPE_CHECKING:
    from ..system import PhysicalSystem
    from ..twins import DigitalTwin

BATCHES = (32, 128, 256, 1024)
DEPTHS = (1, 2, 3, 4, 5)
REPEATS = 15  # minimum interleaved rounds per configuration
MAX_ROUNDS = 60
ROUND_SECONDS = 3.0


# --- the authors' formulation, written independently -------------------------------------------------------------
def authors_function(system: PhysicalSystem, twin: DigitalTwin, names: list[str]) -> type[torch.autograd.Function]:
    """A custom autograd.Function in the style of the authors' code: backward = ``autograd.functional.vjp``."""

    class AuthorsPAT(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *thetas):  # type: ignore[override]
            ctx.save_for_backward(x, *thetas)
            return system(x, dict(zip(names, thetas)))

        @staticmethod
        def backward(ctx, grad_output):  # type: ignore[override]
            x, *thetas = ctx.saved_tensors

            def f_model(x_, *thetas_):
                return twin(x_, dict(zip(names, thetas_)))

            _, grads = torch.autograd.functional.vjp(f_model, (x, *thetas), grad_output)
            return grads

    return AuthorsPAT


class AuthorsLayer(nn.Module):
    """Uses the θ and input constraint of an existing :class:`PhysicalLayer`, but the authors' autograd function."""

    def __init__(self, base: PhysicalLayer) -> None:
        super().__init__()
        self.base = base
        self.names = list(base.system.spec.param_names)
        self.fn = authors_function(base.system, base.twin, self.names)

    def forward(self, x):
        theta = self.base.params()
        return self.fn.apply(self.base.constrain_input(x), *[theta[n] for n in self.names])


# --- one configuration ---------------------------------------------------------------------------------------------
def _network(lab, twin, depth: int, seed: int = 0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    dim = lab.spec.output_dim
    mods: list[nn.Module] = []
    for _ in range(depth):
        mods += [PhysicalLayer(lab, twin, generator=g), ElementwiseRescale(dim)]
    return nn.Sequential(*mods)


def _inputs(spec, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lo, hi = spec.input_low, spec.input_high
    x = lo + (hi - lo) * (0.1 + 0.8 * torch.rand(batch, spec.input_dim, generator=g))
    return x, torch.randn(batch, spec.output_dim, generator=g)


def measure_config(lab_name: str, lab: PhysicalSystem, twin: DigitalTwin, batch: int, depth: int, repeats: int,
                   min_seconds: float = 0.0) -> dict[str, Any]:
    spec = lab.spec
    model = _network(lab, twin, depth)
    authors = nn.Sequential(*[AuthorsLayer(m) if isinstance(m, PhysicalLayer) else m for m in model])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x, target = _inputs(spec, batch, seed=batch * 10 + depth)

    def step(net):
        opt.zero_grad(set_to_none=True)
        loss = (net(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        project_parameters(model)

    # gradients: ours vs the authors', same θ and the same measurement noise
    state = lab.get_state()
    grads = []
    for net in (model, authors):
        lab.set_state(state)
        model.zero_grad(set_to_none=True)
        (net(x) - target).pow(2).mean().backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
    max_abs = max(float((a - b).abs().max()) for a, b in zip(*grads))
    scale = max(float(a.abs().max()) for a in grads[0])
    identical = all(torch.equal(a, b) for a, b in zip(*grads))

    # the inputs each layer measured and the outputs it returned (for the parts timed alone), from one step
    seen: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
    measured: list[torch.Tensor] = []

    def record(mod, inp, out):
        seen.append((mod.constrain_input(inp[0]).detach(), {k: v.detach() for k, v in mod.params().items()}))
        measured.append(out.detach())

    hooks = [m.register_forward_hook(record) for m in model if isinstance(m, PhysicalLayer)]
    step(model)
    for h in hooks:
        h.remove()
    gy = torch.randn(batch, spec.output_dim)
    digital_mods = [m for m in model if not isinstance(m, PhysicalLayer)]
    assert len(digital_mods) == len(measured) == depth
    # gradients the step's digital layers receive from the physical layer after them (any values do: same ops)
    gouts = [torch.randn(batch, spec.output_dim) for _ in range(depth - 1)]

    def device_alone():
        for xl, th in seen:
            lab(xl, th)

    def twin_alone():
        for i, (xl, th) in enumerate(seen):
            twin_vjp(twin, xl, th, gy, need_x=i > 0)  # the first layer's input needs no gradient, as in the step

    def opt_alone():
        opt.step()

    def digital_alone():
        # what the step does besides device, twin and optimizer, on the same shapes: zero_grad, every rescale
        # layer's forward and backward (input gradient included, as in the step), the loss, the projection
        opt.zero_grad(set_to_none=True)
        outs = [m(y.requires_grad_(True)) for m, y in zip(digital_mods, measured)]
        loss = (outs[-1] - target).pow(2).mean()
        torch.autograd.backward([*outs[:-1], loss], [*gouts, None])
        project_parameters(model)
        for y in measured:
            y.grad = None

    # interleave everything so that load changes hit all of them alike; ``digital`` runs last in each round, so
    # the optimizer alone always finds the gradients the (authors') step left
    t: dict[str, list[float]] = {k: [] for k in ("step", "authors", "device", "twin", "opt", "digital")}
    wall: dict[str, list[float]] = {k: [] for k in t}
    fns = {"step": lambda: step(model), "authors": lambda: step(authors), "device": device_alone,
           "twin": twin_alone, "opt": opt_alone, "digital": digital_alone}
    w0 = time.perf_counter()
    for f in fns.values():  # warm-up (also sizes the number of rounds)
        f()
    one_round = time.perf_counter() - w0
    # at least ``repeats`` rounds; more, up to MAX_ROUNDS, while a round is short (≈ ROUND_SECONDS of timing per
    # configuration): the small SHG configurations cost milliseconds, and more rounds make their minimum stable
    rounds = max(repeats, min(MAX_ROUNDS, math.ceil(min_seconds / max(one_round, 1e-9))))
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for k, f in fns.items():
                w0, t0 = time.perf_counter(), cpu_clock()
                f()
                t[k].append(cpu_clock() - t0)
                wall[k].append(time.perf_counter() - w0)
    finally:
        gc.enable()
    best = {k: min(v) for k, v in t.items()}  # fastest of the interleaved rounds (thread CPU time), per piece
    # The parts' total is compared with the step as a total of the same kind: each round gives one sample of the
    # step and one of device + twin + optimizer, and the fastest of each is kept. (Adding the fastest of each part
    # separately — sum of minima ≤ minimum of sums — credits the parts with a clean window each, which under load
    # biases the ratio against the step; that figure is kept in the JSON as ``overhead_sum_of_min``.)
    parts_rounds = [d + w + o for d, w, o in zip(t["device"], t["twin"], t["opt"])]
    parts = min(parts_rounds)
    parts_digital = min(p + g for p, g in zip(parts_rounds, t["digital"]))
    wall_parts = min(d + w + o for d, w, o in zip(wall["device"], wall["twin"], wall["opt"]))
    return {
        "lab": lab_name, "batch": batch, "depth": depth,
        "step_ms": 1e3 * best["step"], "device_ms": 1e3 * best["device"], "twin_ms": 1e3 * best["twin"],
        "opt_ms": 1e3 * best["opt"], "parts_ms": 1e3 * parts, "overhead": best["step"] / parts,
        "overhead_median": statistics.median(s / p for s, p in zip(t["step"], parts_rounds)),
        "overhead_sum_of_min": best["step"] / (best["device"] + best["twin"] + best["opt"]),
        "digital_ms": 1e3 * best["digital"], "overhead_incl_digital": best["step"] / parts_digital,
        "authors_ms": 1e3 * best["authors"], "ours_vs_authors": best["step"] / best["authors"],
        "grad_max_abs_diff": max_abs, "grad_scale": scale, "grads_identical": identical,
        "rounds": rounds,
        "step_wall_ms": 1e3 * min(wall["step"]),
        "overhead_wall": min(wall["step"]) / wall_parts,
    }


def run(quick: bool = False, labs: list[str] | None = None, threads: int = 1, batches: list[int] | None = None,
        depths: list[int] | None = None, repeats: int | None = None) -> dict[str, Any]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        auto_retain()  # what pnnkit's PAT path does on its first call, here before anything is allocated
        machine = machine_info(threads)
        labs = labs or available_labs()
        d_batches, d_depths, d_repeats = ((32, 128), (1,), 2) if quick else (BATCHES, DEPTHS, REPEATS)
        batches, depths = tuple(batches or d_batches), tuple(depths or d_depths)
        repeats = int(repeats or d_repeats)
        rows = []
        for name in labs:
            lab, twin = bench_lab(name, **({"n": 4, "steps": 5} if quick and name == "oscillators" else {}))
            for b in batches:
                for d in depths:
                    rows.append(measure_config(name, lab, twin, b, d, repeats, 0.0 if quick else ROUND_SECONDS))
        goals = []
        for name in labs:
            big = [r for r in rows if r["lab"] == name and r["batch"] >= 128]
            if big:
                worst = max(big, key=lambda r: r["overhead"])
                med = sorted(r["overhead"] for r in big)[len(big) // 2]
                goals.append(goal(f"{name}: PAT step / (device + twin + optimizer), worst at batch ≥ 128",
                                  worst["overhead"], 1.10, "<=",
                                  f"worst at batch {worst['batch']}, depth {worst['depth']}; median over the "
                                  f"{len(big)} rows {med:.3f}"))
        ratios = [r["ours_vs_authors"] for r in rows]
        gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        worst_a = max(rows, key=lambda r: r["ours_vs_authors"])
        med_a = sorted(ratios)[len(ratios) // 2]
        goals.append(goal("pnnkit step time / authors' formulation (geometric mean over all rows)", gm, 1.0, "<=",
                          f"median row {med_a:.3f}; worst row {worst_a['ours_vs_authors']:.3f} at {worst_a['lab']} "
                          f"batch {worst_a['batch']} depth {worst_a['depth']}"))
        rel = max(r["grad_max_abs_diff"] / max(r["grad_scale"], 1e-30) for r in rows)
        goals.append(goal("gradients vs authors' formulation: max |difference| / max |gradient|", rel, 0.0, "<=",
                          "0 = identical element-wise in every row" if rel == 0 else ""))
        return result("overhead", machine, rows, goals, settings={
            "threads": threads, "min_rounds": repeats, "max_rounds": MAX_ROUNDS,
            "seconds_per_config": 0.0 if quick else ROUND_SECONDS,
            "network": "[PhysicalLayer, ElementwiseRescale] x depth, MSE, AdamW",
            "labs": {n: ("oscillators n=8, T=3, 30 RK4 steps, physics twin" if n == "oscillators"
                         else f"{n} default size, physics twin") for n in labs},
            "why_one_thread": "parts and step compared on equal terms; the machine is shared, so extra threads add "
                              "contention noise rather than speed",
            "clock": "thread CPU time (time.thread_time), fastest of the interleaved rounds (at least min_rounds, more "
                     "while a round is short, up to max_rounds; column rounds); *_wall figures: wall clock",
            "batches": list(batches), "depths": list(depths),
            "allocator": allocator_state(),
        })
    finally:
        torch.set_num_threads(old)


COLUMNS = ("lab", "batch", "depth", "step_ms", "device_ms", "twin_ms", "opt_ms", "parts_ms", "overhead",
           "overhead_median", "digital_ms", "overhead_incl_digital", "authors_ms", "ours_vs_authors", "grads_identical",
           "step_wall_ms", "overhead_wall")
