"""How much does a trained network's readout leave on the table? A dense linear probe on its physical features.

Loads a finished (or checkpointed) run directory of ``pnnkit run`` — its ``config.json``, twin and
``<method>/checkpoint.safetensors`` — computes the features that reach the network's head (the output of the
``stem`` and ``layer`` blocks, i.e. the last physical layer after its rescale) on the run's training and evaluation
images *through the twin* (no device queries), and fits a dense multinomial logistic regression on them
(standardised features, L-BFGS, L2 1e-4). Prints the trained network's own accuracy on the twin, the probe's, and
the same probe on the raw task features. A probe far above the network means its readout, not its physical
features, limits it. Diagnostic only: the probe is a digital dense layer, which the paper-style PNN does not have.

``--refit`` also refits the network's own readout (the digital blocks after the last physical layer, one weight per
bin pooled into classes in the paper-style configs, two with a ``repeat`` block:
:func:`pnnkit.training.refit_readout`, L-BFGS, ``--l2``) on the twin's features, and with ``--lab`` on features
measured on the run's lab (its ``config.json`` lab; device queries: every training and evaluation sample through every
channel once, ngspice with ``--workers``), and prints each refit's accuracy on the twin's and (with ``--lab``) the
lab's evaluation features; with ``--lab`` it also counts the bins whose measured values do not follow the twin's
(correlation < 0.9 over the training images). ``--initial`` uses the network at its initial θ (the rescales
initialised from data as in training) instead of the checkpoint: what a readout gets from the untrained physical
layer.

Two more readout experiments on the same features, with ``--refit``:
``--ridge 1e-6,1e-5`` fits the readout's own sparsity pattern (feature j feeds the classes its Jacobian reaches: one
weight per bin for a pooled readout) as a linear map on *standardised* features with an L2 penalty λ·Σw² on those
weights, for each λ (L-BFGS, 1,000 iterations at most), on twin features and with ``--lab`` on lab features.
``--augment '{"shift": 1, "rotate": 10, "scale": 0.1}' --copies K`` refits the network's readout on the twin features
of the training images plus K randomly distorted copies of them (:class:`pnnkit.augment.RandomAffine`, seeded), for
K = 1 … ``--copies`` (K = 0 is the plain refit): does more (distorted) data help the readout?
``--assign`` asks whether the readout's fixed bin → class assignment (the pool's interleaved order) limits it: the
per-bin readout (logit_c = b_c + Σ_{j → c} w_j z_j on standardised features z, λ = 1e-6) fitted for four
assignments of the bins to the classes, each class getting ⌈bins/10⌉ at most: the interleaved order, a seeded
random one, and two chosen on the training features (each bin to the class it separates best by |d′| = |mean in
the class − mean outside| / std, and by the weight of a dense probe), greedily from the largest score.
``--repeat`` (with ``--refit --lab``) measures the training and evaluation images on the lab a second time: the refit on
the first pass scored on each pass and on their mean, the refit on the mean of both passes, and the bins'
measurement noise (std of the pass difference / √2) against their spread over the images — how much does
measurement noise cost, and would averaging repeated measurements help?

Usage: PNNKIT_DATA_DIR=... .venv/bin/python benchmarks/feature_readout_probe.py RUN_DIR [--method in_silico]
       [--refit [--lab [--workers 2] [--repeat]] [--l2 0] [--initial] [--ridge L1,L2,...] [--augment JSON --copies K]
       [--assign]]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from pnnkit.augment import RandomAffine
from pnnkit.checkpoint import load_checkpoint
from pnnkit.experiments import rebuild_run
from pnnkit.layers import init_from_data, set_mode, using_mode
from pnnkit.training import augmentation, refit_readout, split_readout


def _dense(z: torch.Tensor, y: torch.Tensor) -> torch.nn.Linear:
    """A dense multinomial logistic regression on ``z`` (seeded, L-BFGS, L2 1e-4 on the weights)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(z.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(z), y) + 1e-4 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _logistic(ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor) -> tuple[float, float]:
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    lin = _dense(ftr, ytr)
    with torch.no_grad():
        return float((lin(ftr).argmax(1) == ytr).float().mean()), float((lin(fte).argmax(1) == yte).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--method", default="in_silico")
    ap.add_argument("--refit", action="store_true", help="refit the network's own readout (twin features)")
    ap.add_argument("--lab", action="store_true", help="with --refit: also on features measured on the lab")
    ap.add_argument("--workers", type=int, default=None, help="ngspice workers for --lab (default: the config's)")
    ap.add_argument("--l2", type=float, default=0.0, help="refit_readout's L2 penalty")
    ap.add_argument("--initial", action="store_true", help="the network at its initial θ, not the checkpoint")
    ap.add_argument("--ridge", default="", help="with --refit: comma-separated λ of a standardised ridge readout")
    ap.add_argument("--augment", default="", help='with --refit: RandomAffine settings, e.g. \'{"shift": 1}\'')
    ap.add_argument("--copies", type=int, default=1, help="with --augment: distorted copies of the training set")
    ap.add_argument("--assign", action="store_true", help="with --refit: the per-bin readout for four bin → class assignments")
    ap.add_argument("--repeat", action="store_true", help="with --refit --lab: measure a second time (noise cost)")
    args = ap.parse_args()
    if args.repeat and not (args.refit and args.lab):
        ap.error("--repeat needs --refit --lab")
    torch.set_num_threads(1)
    cfg, task, lab, model = rebuild_run(args.run_dir, args.workers)
    set_mode(model, "in_silico")
    if args.initial:  # the Trainer's data init: same seeded subset of the training set, through the twin
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + 99_991)
        sub = torch.randperm(len(task.x_train), generator=g)[: max(2, min(len(task.x_train), cfg.training.init_samples))]
        model.train()
        init_from_data(model, task.x_train[sub])
        model.eval()
    else:
        model.load_state_dict(load_checkpoint(args.run_dir / args.method / "checkpoint.safetensors")["model"])
    n_body = len(cfg.network.stem) + cfg.network.depth * len(cfg.network.layer)
    body = model[:n_body]

    @torch.no_grad()
    def run(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x[i : i + 1000]) for i in range(0, len(x), 1000)])

    xtr, ytr, xte, yte = task.x_train, task.y_train, task.x_test, task.y_test
    acc = [float((run(model, x).argmax(1) == y).float().mean()) for x, y in ((xtr, ytr), (xte, yte))]
    print(f"{args.run_dir} ({args.method}): {len(xtr)} training and {len(xte)} evaluation samples")
    print(f"trained network on the twin     train {acc[0]:.4f}  eval {acc[1]:.4f}")
    ftr, fte = run(body, xtr), run(body, xte)
    a = _logistic(ftr, ytr, fte, yte)
    print(f"dense probe on its {ftr.shape[1]} features  train {a[0]:.4f}  eval {a[1]:.4f}")
    a = _logistic(xtr, ytr, xte, yte)
    print(f"dense probe on the {xtr.shape[1]} task features train {a[0]:.4f}  eval {a[1]:.4f}")
    if args.refit:
        ridge = [float(v) for v in args.ridge.split(",") if v]
        aug = augmentation(json.loads(args.augment), task) if args.augment else None
        _refits(model, (xtr, ytr, xte, yte), args.lab, args.l2, ridge, aug, args.copies, args.assign,
                args.repeat)


def _pattern(readout: torch.nn.Module, f: torch.Tensor) -> torch.Tensor:
    """The readout's sparsity pattern: (features, classes), 1 where feature j reaches class c."""
    jac = torch.autograd.functional.jacobian(lambda v: readout(v[None])[0], f)  # (classes, features)
    return (jac != 0).float().T.contiguous()


def _ridge(mask: torch.Tensor, ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor,
           lam: float) -> tuple[float, float]:
    """Train / eval accuracy of the linear map with sparsity pattern ``mask`` (features, classes) fitted on
    standardised features with λ·Σw²."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-8
    ztr, zte = (ftr - mu) / sd, (fte - mu) / sd
    w = torch.zeros_like(mask, requires_grad=True)
    b = torch.zeros(mask.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=1000, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ztr @ (w * mask) + b, ytr) + lam * (w * mask).square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return tuple(float(((z @ (w * mask) + b).argmax(1) == y).float().mean()) for z, y in ((ztr, ytr), (zte, yte)))


def _refits(model: torch.nn.Module, data: tuple[torch.Tensor, ...], lab: bool, l2: float, ridge: list[float],
            aug: RandomAffine | None, copies: int, assign: bool = False, repeat: bool = False) -> None:
    """The network's readout refitted on twin (and lab) features of the training set, scored on both."""
    xtr, ytr, xte, yte = data
    body, readout = split_readout(model)

    @torch.no_grad()
    def features(x: torch.Tensor, mode: str) -> torch.Tensor:
        with using_mode(model, mode):  # type: ignore[arg-type]
            return torch.cat([body(x[i : i + 512]) for i in range(0, len(x), 512)])

    feats = {"twin": (features(xtr, "in_silico"), features(xte, "in_silico"))}
    if lab:
        feats["lab"] = (features(xtr, "physical"), features(xte, "physical"))

    @torch.no_grad()
    def score(r: torch.nn.Module) -> str:
        return "  ".join(f"eval on {k} {float((r(f[1]).argmax(1) == yte).float().mean()):.4f}" for k, f in feats.items())

    print(f"network's readout as is            {score(readout)}")
    if lab:  # bins whose measured values do not follow the twin's across the training images
        a, b = feats["lab"][0], feats["twin"][0]
        sa, sb = a.std(0), b.std(0)
        corr = ((a - a.mean(0)) * (b - b.mean(0))).mean(0) / (sa * sb + 1e-12)
        print(f"bins with lab/twin correlation < 0.9 over the training images: {int((corr < 0.9).sum())} of {len(corr)} "
              f"(their lab std: median {float(sa[corr < 0.9].median()) if bool((corr < 0.9).any()) else 0:.2g})")
    for src, (ftr, _) in feats.items():
        r = copy.deepcopy(readout)
        info = refit_readout(torch.nn.Sequential(*r), ftr, ytr, "physical", l2)
        print(f"readout refit on {src} features      train {info['train_accuracy_after']:.4f}  {score(r)}  (l2 {l2})")
    for src, (ftr, fte) in feats.items():
        for lam in ridge:
            a = _ridge(_pattern(readout, ftr.mean(0)), ftr, ytr, fte, yte, lam)
            print(f"standardised ridge readout on {src} features, λ {lam:g}: train {a[0]:.4f}  eval on {src} {a[1]:.4f}")
    if aug is not None:
        g = torch.Generator().manual_seed(1)
        ftr = feats["twin"][0]
        extra = [features(aug(xtr, g), "in_silico") for _ in range(copies)]
        for k in range(1, copies + 1):
            r = copy.deepcopy(readout)
            info = refit_readout(torch.nn.Sequential(*r), torch.cat([ftr, *extra[:k]]), torch.cat([ytr] * (k + 1)),
                                 "physical", l2)
            print(f"readout refit on twin features + {k} distorted copies  {score(r)}  ({aug})")
    if assign:
        classes = int(ytr.max()) + 1
        for src, (ftr, fte) in feats.items():
            for name, a in _assignments(ftr, ytr, classes).items():
                mask = torch.nn.functional.one_hot(a, classes).float()
                tr, ev = _ridge(mask, ftr, ytr, fte, yte, 1e-6)
                print(f"per-bin readout, {name:27s} assignment, on {src} features: train {tr:.4f}  eval on {src} {ev:.4f}")
    if repeat:
        ftr1, fte1 = feats["lab"]
        ftr2, fte2 = features(xtr, "physical"), features(xte, "physical")

        @torch.no_grad()
        def acc(r: torch.nn.Module, f: torch.Tensor) -> float:
            return float((r(f).argmax(1) == yte).float().mean())

        for name, ftr in (("pass 1", ftr1), ("the mean of passes 1 and 2", (ftr1 + ftr2) / 2)):
            r = copy.deepcopy(readout)
            refit_readout(torch.nn.Sequential(*r), ftr, ytr, "physical", l2)
            print(f"readout refit on lab {name:26s}: eval on pass 1 {acc(r, fte1):.4f}  pass 2 {acc(r, fte2):.4f}  "
                  f"their mean {acc(r, (fte1 + fte2) / 2):.4f}")
        noise = (ftr1 - ftr2).std(0) / 2**0.5
        print(f"lab measurement noise per bin (median over bins) {float(noise.median()):.3g}; spread of the bins over the "
              f"training images (median std) {float(ftr1.std(0).median()):.3g}")


def _assignments(f: torch.Tensor, y: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """Bin → class assignments (one class per bin, at most ⌈bins/classes⌉ bins per class)."""
    n = f.shape[1]
    sd = f.std(0) + 1e-9
    dprime = torch.stack([(f[y == c].mean(0) - f[y != c].mean(0)) / sd for c in range(classes)], 1)
    w = _dense((f - f.mean(0)) / sd, y).weight.detach().T
    return {
        "interleaved (the network's)": torch.arange(n) % classes,
        "random": torch.randperm(n, generator=torch.Generator().manual_seed(0)) % classes,
        "by |d'|": _greedy(dprime.abs(), -(-n // classes)),
        "by dense-probe weight": _greedy((w - w.mean(1, keepdim=True)).abs(), -(-n // classes)),
    }


def _greedy(score: torch.Tensor, cap: int) -> torch.Tensor:
    """Each feature to one class, highest (feature, class) score first, at most ``cap`` features per class."""
    n, classes = score.shape
    out = torch.full((n,), -1, dtype=torch.long)
    count = [0] * classes
    for idx in torch.argsort(score.flatten(), descending=True).tolist():
        j, c = divmod(idx, classes)
        if out[j] < 0 and count[c] < cap:
            out[j] = c
            count[c] += 1
    return out


if __name__ == "__main__":
    main()
