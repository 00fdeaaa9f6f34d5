"""Device queries needed to reach fixed test accuracies: PAT vs in-silico vs gradient-free optimisers.

Task: scikit-learn's 8×8 digits average-pooled to 4×4 (16 features in [0, 1]; 10 classes; stratified
1,437 train / 360 test). Network, identical for every method (188 trainable numbers)::

    Rescale(16) → PhysicalLayer(oscillators n=16, default unit-0 defects and noise) → Slice(0, 10) → Rescale(10)

(A 2-D moons task with a 26-number network was tried first: there every method, gradient-free included, stalls
at the ≈ 0.87 a near-linear boundary gives within a few thousand queries, so it cannot separate the methods.)

A *query* is one sample through one physical-layer call (``PhysicalSystem.queries``); everything a method sends
to the training device counts, including PAT's twin-calibration measurements. Test accuracy is measured on a
second instance of the same physical unit (same defects, its own noise stream) whose queries are not counted —
monitoring is not part of any method. Every method sees the same stream of size-64 minibatches and minimises
the same cross-entropy.

Methods and their step-size grids (each run once per grid value, seed 0; the value reaching the main target in
fewest queries is kept, ties broken by final accuracy):
  * ``pat`` — physics twin (design ODE + 4 calibration factors) fitted to 512 measurements, then Adam with the
    twin VJP; lr ∈ {0.01, 0.03, 0.1}.
  * ``in_silico`` — same twin and data, Adam through the twin only; lr ∈ {0.01, 0.03, 0.1}.
  * ``spsa`` — written here (Spall's gains a_k = a/(k+1+A)^0.602, c_k = c/(k+1)^0.101, A = 10 % of the steps,
    Rademacher perturbations, both evaluations on the same minibatch); a ∈ {0.03, 0.1, 0.3}, c = 0.05.
  * ``cma`` — ``cma.CMAEvolutionStrategy``, default population (19), each generation on one minibatch;
    σ₀ ∈ {0.05, 0.15, 0.5}.
  * ``nevergrad`` — ``NGOpt`` (nevergrad chooses the algorithm from budget and dimension), one candidate per
    minibatch; mutation σ ∈ {0.05, 0.15, 0.5}.
  * ``fd`` — forward finite differences (189 evaluations per gradient, h = 0.05, on one minibatch) driving Adam;
    lr ∈ {0.01, 0.03, 0.1}.
Gradient-free candidates are evaluated in batches (population × minibatch in one device call, with per-sample
parameters), which saves wall time but not queries.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..labs import make_lab
from ..layers import ElementwiseRescale, PhysicalLayer, Slice, project_parameters, set_mode, using_mode
from ..measurements import acquire
from ..system import clamp_to_range
from ..twins import fit_twin
from .common import goal, machine_info, result

if TYPE_CHECKING:
    from ..system import PhysicalSystem
    from ..twins import DigitalTwin

Digits = tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_test, y_test (small_digits)

N_OSC = 16
N_CLASSES = 10
BATCH = 64
TARGETS = (0.60, 0.75)


def small_digits(seed: int = 0) -> Digits:
    """scikit-learn 8×8 digits average-pooled to 4×4 (16 features in [0, 1]); stratified 1,437 / 360 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16).astype(np.float32) / 16.0
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=360, stratify=y, random_state=seed)
    t = torch.as_tensor
    return t(x[tr]), t(y[tr]), t(x[te]), t(y[te])


def build(lab: PhysicalSystem, twin: DigitalTwin | None = None) -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    return nn.Sequential(ElementwiseRescale(N_OSC, scale=2.0, bias=-1.0), PhysicalLayer(lab, twin, generator=g),
                         Slice(0, N_CLASSES), ElementwiseRescale(N_CLASSES, scale=3.0))


# --- flat parameter vectors (for the gradient-free methods) ----------------------------------------------------
def shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def flat(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def load_flat(model: nn.Module, v: np.ndarray) -> None:
    with torch.no_grad():
        off = 0
        for p in model.parameters():
            p.copy_(torch.as_tensor(v[off: off + p.numel()], dtype=p.dtype).reshape(p.shape))
            off += p.numel()
    project_parameters(model)


def batched_logits(lab: PhysicalSystem, model: nn.Module, cands: np.ndarray, x: Tensor) -> Tensor:
    """Logits (K, B, classes) of K candidate vectors on x, in one device call of K·B queries (per-sample θ)."""
    c = torch.as_tensor(cands, dtype=torch.float32)
    k, b = c.shape[0], x.shape[0]
    parts, off = {}, 0
    for n, s in shapes(model):
        m = math.prod(s)
        parts[n] = c[:, off: off + m].reshape(k, *s)
        off += m
    layer: PhysicalLayer = model[1]
    h = x[None] * parts["0.scale"][:, None, :] + parts["0.bias"][:, None, :]
    h = layer.constrain_input(h).reshape(k * b, N_OSC)
    theta = {}
    for p in lab.spec.params:
        v = clamp_to_range(parts[f"1.theta.{p.name}"], p.low, p.high)
        theta[p.name] = v[:, None].expand(k, b, *p.shape).reshape(k * b, *p.shape)
    y = lab(h, theta).reshape(k, b, N_OSC)[..., :N_CLASSES]
    return y * parts["3.scale"][:, None, :] + parts["3.bias"][:, None, :]


def batched_loss(lab: PhysicalSystem, model: nn.Module, cands: np.ndarray, x: Tensor,
                 y: Tensor) -> np.ndarray:
    logits = batched_logits(lab, model, cands, x)
    k = logits.shape[0]
    return F.cross_entropy(logits.reshape(-1, N_CLASSES), y.repeat(k), reduction="none").reshape(k, -1).mean(1).double().numpy()


# --- the run harness --------------------------------------------------------------------------------------------
class Run:
    """Minibatch stream, query budget and the accuracy-vs-queries curve of one method at one setting."""

    def __init__(self, data: Digits, budget: int, eval_every: int, seed: int = 0) -> None:
        self.xtr, self.ytr, self.xte, self.yte = data
        self.budget, self.eval_every = budget, eval_every
        self.lab = make_lab("oscillators", n=N_OSC, unit=0, seed=seed)
        self.eval_lab = make_lab("oscillators", n=N_OSC, unit=0, seed=seed + 12345)
        self.eval_model = build(self.eval_lab)
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(self.xtr), generator=self.gen), 0
        self.curve: list[tuple[int, float]] = []
        self.next_eval = 0

    @property
    def queries(self) -> int:
        return self.lab.queries

    def batch(self) -> tuple[Tensor, Tensor]:
        if self.pos + BATCH > len(self.order):
            self.order, self.pos = torch.randperm(len(self.xtr), generator=self.gen), 0
        idx = self.order[self.pos: self.pos + BATCH]
        self.pos += BATCH
        return self.xtr[idx], self.ytr[idx]

    def record(self, params_from: nn.Module | np.ndarray, force: bool = False) -> None:
        if not force and self.queries < self.next_eval:
            return
        if isinstance(params_from, np.ndarray):
            load_flat(self.eval_model, params_from)
        else:
            self.eval_model.load_state_dict(params_from.state_dict())
        with torch.no_grad(), using_mode(self.eval_model, "physical"):
            acc = float((self.eval_model(self.xte).argmax(1) == self.yte).float().mean())
        self.curve.append((self.queries, acc))
        # log-spaced checkpoints (10 % apart, at least eval_every queries) resolve early progress finely
        self.next_eval = self.queries + max(self.eval_every, self.queries // 10)

    @property
    def done(self) -> bool:
        return self.queries >= self.budget


def fit_physics_twin(run: Run, samples: int = 512) -> DigitalTwin:
    data = acquire(run.lab, samples, inputs_per_setting=64, seed=1)
    twin = run.lab.ideal_twin()
    fit_twin(twin, data, epochs=30 if samples >= 512 else 3, lr=0.02, patience=8, seed=0)
    return twin


def run_gradient(method: str, lr: float, data: Digits, budget: int, eval_every: int, twin_samples: int) -> Run:
    run = Run(data, budget, eval_every)
    twin = fit_physics_twin(run, twin_samples)
    model = build(run.lab, twin)
    set_mode(model, "pat" if method == "pat" else "in_silico")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    run.record(model, force=True)
    steps, max_steps = 0, budget // BATCH + 1
    while not run.done and steps < max_steps:  # in-silico never spends device queries: cap by the same steps
        x, y = run.batch()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        project_parameters(model)
        steps += 1
        if method == "in_silico":
            if steps % 8 == 0:
                run.record(model, force=True)
        else:
            run.record(model)
    run.record(model, force=True)
    return run


def run_spsa(a: float, data: Digits, budget: int, eval_every: int, c: float = 0.05) -> Run:
    run = Run(data, budget, eval_every)
    model = build(run.lab)
    theta = flat(model)
    rng = np.random.default_rng(0)
    n_steps = budget // (2 * BATCH)
    big_a = 0.1 * n_steps
    run.record(theta, force=True)
    k = 0
    while not run.done:
        ak, ck = a / (k + 1 + big_a) ** 0.602, c / (k + 1) ** 0.101
        delta = rng.choice([-1.0, 1.0], size=theta.shape)
        x, y = run.batch()
        lp, lm = batched_loss(run.lab, model, np.stack([theta + ck * delta, theta - ck * delta]), x, y)
        theta = theta - ak * (lp - lm) / (2 * ck) * delta  # 1/Δ = Δ for ±1
        load_flat(model, theta)  # keep θ of the physical layer inside its hard range
        theta = flat(model)
        k += 1
        run.record(theta)
    run.record(theta, force=True)
    return run


def run_cma(sigma0: float, data: Digits, budget: int, eval_every: int) -> Run:
    import cma

    run = Run(data, budget, eval_every)
    model = build(run.lab)
    es = cma.CMAEvolutionStrategy(flat(model), sigma0, {"seed": 1, "verbose": -9})
    run.record(flat(model), force=True)
    while not run.done:
        cands = np.asarray(es.ask())
        x, y = run.batch()
        es.tell(list(cands), list(batched_loss(run.lab, model, cands, x, y)))
        run.record(np.asarray(es.mean))
    run.record(np.asarray(es.mean), force=True)
    return run


def run_nevergrad(sigma: float, data: Digits, budget: int, eval_every: int) -> Run:
    import nevergrad as ng

    run = Run(data, budget, eval_every)
    model = build(run.lab)
    param = ng.p.Array(init=flat(model)).set_mutation(sigma=sigma)
    param.random_state = np.random.RandomState(0)
    opt = ng.optimizers.NGOpt(parametrization=param, budget=budget // BATCH, num_workers=1)
    run.record(flat(model), force=True)
    while not run.done:
        cand = opt.ask()
        x, y = run.batch()
        opt.tell(cand, float(batched_loss(run.lab, model, np.asarray(cand.value)[None], x, y)[0]))
        if run.queries >= run.next_eval:
            run.record(np.asarray(opt.provide_recommendation().value))
    run.record(np.asarray(opt.provide_recommendation().value), force=True)
    run.algorithm = str(getattr(opt, "optim", opt))  # type: ignore[attr-defined]
    return run


def run_fd(lr: float, data: Digits, budget: int, eval_every: int, h: float = 0.05) -> Run:
    run = Run(data, budget, eval_every)
    model = build(run.lab)
    theta = torch.as_tensor(flat(model)).requires_grad_(False)
    p = theta.numel()
    opt_var = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([opt_var], lr=lr)
    run.record(opt_var.detach().numpy(), force=True)
    while not run.done:
        base = opt_var.detach().numpy()
        cands = np.concatenate([base[None], base[None] + h * np.eye(p)])
        x, y = run.batch()
        losses = batched_loss(run.lab, model, cands, x, y)
        opt_var.grad = torch.as_tensor((losses[1:] - losses[0]) / h, dtype=opt_var.dtype)
        opt.step()
        load_flat(model, opt_var.detach().numpy())
        with torch.no_grad():
            opt_var.copy_(torch.as_tensor(flat(model)))
        run.record(opt_var.detach().numpy())
    run.record(opt_var.detach().numpy(), force=True)
    return run


def queries_to(curve: list[tuple[int, float]], target: float) -> int | None:
    for q, acc in curve:
        if acc >= target:
            return q
    return None


GRIDS: dict[str, tuple[float, ...]] = {
    "pat": (0.01, 0.03, 0.1), "in_silico": (0.01, 0.03, 0.1), "spsa": (0.03, 0.1, 0.3),
    "cma": (0.05, 0.15, 0.5), "nevergrad": (0.05, 0.15, 0.5), "fd": (0.01, 0.03, 0.1),
}
SETTING = {"pat": "lr", "in_silico": "lr", "spsa": "a", "cma": "sigma0", "nevergrad": "sigma", "fd": "lr"}
GRADIENT_FREE = ("spsa", "cma", "nevergrad", "fd")


def run(quick: bool = False, out: Path | None = None) -> dict[str, Any]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        machine = machine_info(1)
        data = small_digits()
        if quick:
            budgets = {"pat": 640, "in_silico": 640, **{m: 1_500 for m in GRADIENT_FREE}}
            grids = {m: g[1:2] for m, g in GRIDS.items()}
            twin_samples, eval_every = 128, 500
        else:
            budgets = {"pat": 20_000, "in_silico": 20_000, **{m: 200_000 for m in GRADIENT_FREE}}
            grids = dict(GRIDS)
            twin_samples, eval_every = 512, 256
        runners = {
            "pat": lambda v, b, e: run_gradient("pat", v, data, b, e, twin_samples),
            "in_silico": lambda v, b, e: run_gradient("in_silico", v, data, b, e, twin_samples),
            "spsa": lambda v, b, e: run_spsa(v, data, b, e),
            "cma": lambda v, b, e: run_cma(v, data, b, e),
            "nevergrad": lambda v, b, e: run_nevergrad(v, data, b, e),
            "fd": lambda v, b, e: run_fd(v, data, b, e),
        }
        rows, curves = [], {}
        for method, grid in grids.items():
            for v in grid:
                ev = eval_every
                t0 = time.perf_counter()
                r = runners[method](v, budgets[method], ev)
                row = {
                    "method": method, "setting": f"{SETTING[method]}={v}", "budget": budgets[method],
                    "queries_used": r.queries, "final_accuracy": r.curve[-1][1],
                    "best_accuracy": max(a for _, a in r.curve),
                    **{f"queries_to_{t:.2f}": queries_to(r.curve, t) for t in TARGETS},
                    "seconds": time.perf_counter() - t0,
                }
                if hasattr(r, "algorithm"):
                    row["algorithm"] = r.algorithm
                rows.append(row)
                curves[(method, v)] = r.curve
        # pick each method's best setting: fewest queries to the main target, then the best final accuracy
        main = f"queries_to_{TARGETS[0]:.2f}"
        best: dict[str, dict[str, Any]] = {}
        for method in grids:
            cand = [r for r in rows if r["method"] == method]
            pick = min(cand, key=lambda r: (r[main] is None, r[main] or 0, -r["final_accuracy"]))
            pick["chosen"] = True
            best[method] = pick
        for r in rows:
            r.setdefault("chosen", False)
        goals = []
        for t in TARGETS:
            key = f"queries_to_{t:.2f}"
            pat_q = best["pat"][key]
            gf = [(best[m][key], m) for m in GRADIENT_FREE if m in best]
            reached = [(q, m) for q, m in gf if q is not None]
            if pat_q is None:
                goals.append(goal(f"target {t:.2f}: best gradient-free queries / PAT queries", 0.0, 10.0, ">=",
                                  "PAT did not reach the target within its budget"))
                continue
            if reached:
                q, m = min(reached)
                goals.append(goal(f"target {t:.2f}: best gradient-free queries / PAT queries (incl. twin data)",
                                  q / pat_q, 10.0, ">=", f"PAT {pat_q}, best gradient-free {m} {q}"))
            else:
                lb = min(best[m]["queries_used"] for m in GRADIENT_FREE if m in best)
                goals.append(goal(f"target {t:.2f}: best gradient-free queries / PAT queries (incl. twin data)",
                                  lb / pat_q, 10.0, ">=",
                                  f"lower bound: no gradient-free method reached {t:.2f} within its budget "
                                  f"({lb} queries); PAT {pat_q}"))
        plot, plot_error = None, None
        if out is not None:
            plot = Path(out).with_suffix(".png")
            plot_error = save_plot({m: curves[(m, float(best[m]["setting"].split("=")[1]))] for m in best}, best,
                                   plot)
            if plot_error:
                plot = None
        return result("queries", machine, rows, goals, settings={
            "task": "sklearn digits pooled to 4x4, 1437 train / 360 test", "batch": BATCH, "targets": list(TARGETS),
            "network": "Rescale(16) -> oscillators n=16 (unit 0, default defects) -> Slice(0,10) -> Rescale(10); 188 numbers",
            "budgets": budgets, "grids": {m: list(g) for m, g in grids.items()}, "twin_samples": twin_samples,
            "eval": "test accuracy on a second instance of the same unit (uncounted), at checkpoints "
                    f"max({eval_every}, 10 % of the queries so far) apart",
            "seed": 0, "threads": 1,
        }, curves={f"{m}@{v}": c for (m, v), c in curves.items()}, plot=str(plot) if plot else None,
            **({"plot_error": plot_error} if plot_error else {}))
    finally:
        torch.set_num_threads(old)


def save_plot(curves: dict[str, list[tuple[int, float]]], best: dict[str, dict[str, Any]], path: Path) -> str | None:
    """Draw the accuracy-vs-queries plot to ``path``; a plot that cannot be written must not cost the measured
    rows, so a failure comes back as a one-line reason (None when the plot was written)."""
    try:
        _plot(curves, best, path)
    except OSError as e:
        return f"could not write the plot to {path} ({e.strerror or type(e).__name__})"
    return None


def _plot(curves: dict[str, list[tuple[int, float]]], best: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"pat": "tab:blue", "in_silico": "tab:orange", "spsa": "tab:green", "cma": "tab:red",
              "nevergrad": "tab:purple", "fd": "tab:brown"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, c in curves.items():
        if m == "in_silico":  # all its training happens at the twin's data count: show the spread and the end
            q0, accs = c[-1][0], [b for _, b in c[1:]] or [c[-1][1]]
            ax.vlines(q0, min(accs), max(accs), color="tab:orange", lw=1, alpha=0.6)
            ax.plot([q0], [c[-1][1]], "o", color="tab:orange",
                    label=f"in_silico ({best[m]['setting']}; twin data only, range over training, final)")
            continue
        q = [max(1, a) for a, _ in c]
        ax.plot(q, [b for _, b in c], label=f"{m} ({best[m]['setting']})", color=colors.get(m))
    for t in TARGETS:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("device queries (samples × physical-layer calls; PAT includes twin data)")
    ax.set_ylabel("test accuracy (measured on the unit)")
    ax.set_title("4×4 digits on a 16-oscillator PNN: accuracy vs device queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


COLUMNS = ("method", "setting", "chosen", "budget", "queries_used", "final_accuracy", "best_accuracy",
           *(f"queries_to_{t:.2f}" for t in TARGETS), "seconds")
