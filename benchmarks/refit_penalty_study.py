"""Does the end refit generalise better with its L2 penalty chosen by cross-validation? A paired comparison on
one trained network.

Loads a ``pnnkit run`` directory and one checkpoint of a method (by default the network before its end refit,
``checkpoint_before_readout_refit``). The training images and the evaluation images (the test split, or the
validation split of a run made with ``task.options.validation``) go once through the network's body up to its
last physical layer, measured on the run's lab (``--mode in_silico``: on its twin). From the checkpoint's readout:
  A  the end refit as the run's config has it (``refit_l2``, 500 L-BFGS iterations at most);
  B  the penalty chosen from ``--grid`` by ``--folds``-fold stratified cross-validation on the same training
     features (:func:`select_l2`: each value fitted on the other folds from the checkpoint's readout, at most
     ``--cv-max-iter`` L-BFGS iterations, scored by held-out cross-entropy), then the same fit on all of them.
Both classify the same evaluation features. Prints the cross-validation table, both accuracies and McNemar's exact
test (``pnnkit.bench.common.paired_comparison``); ``--json`` writes them with the per-image record. ``--pool A.json
B.json …`` pools saved records of one split and mode instead (discordant images summed over networks).

Caveat, found with this script (docs/experiments/mnist.md, round 19): the cross-validation table is optimistic. pnnkit's
refit penalty pulls toward the readout before the fit, p₀, and each fold's fit also starts from p₀ with a capped
number of iterations; a trained network's p₀ (and its θ) were fitted on all the training images, held-out folds
included. On the electronic networks it favoured the largest penalty, which kept B close to p₀, and the held-out
gain did not appear on validation images. That is why this selector stays a study tool, not a training option.

Usage: PNNKIT_DATA_DIR=... .venv/bin/python benchmarks/refit_penalty_study.py RUN_DIR [--method pat]
       [--checkpoint checkpoint_before_readout_refit] [--grid 0 1e-5 1e-4 1e-3 1e-2] [--folds 3]
       [--cv-max-iter 100] [--max-iter 500] [--workers 2] [--mode physical] [--json OUT.json]
       .venv/bin/python benchmarks/refit_penalty_study.py --pool A.json B.json ...
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from sklearn.model_selection import StratifiedKFold
from torch import Tensor, nn
from torch.nn import functional as F

from pnnkit.bench.common import format_paired, machine_info, paired_comparison
from pnnkit.checkpoint import load_checkpoint
from pnnkit.errors import PnnkitError
from pnnkit.experiments import rebuild_run
from pnnkit.layers import using_mode
from pnnkit.training import PRE_REFIT_CHECKPOINT, fit_readout, split_readout

GRID = [0.0, 1e-5, 1e-4, 1e-3, 1e-2]


def select_l2(
    readout: nn.Module, feats: Tensor, y: Tensor, grid: list[float], folds: int, max_iter: int, seed: int,
) -> tuple[float, list[dict[str, float]]]:
    """The penalty of ``fit_readout`` with the smallest mean held-out cross-entropy over ``folds`` stratified folds
    (the first such in ``grid`` on a tie), and per value the mean held-out cross-entropy and accuracy. Each value is
    fitted on the other folds from a copy of ``readout`` (at most ``max_iter`` iterations); the fits run in threads,
    one per usable CPU (each is deterministic, and the sums are taken in job order)."""
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(feats[:, :1].numpy(), y.numpy())
    jobs = [(torch.as_tensor(tr), torch.as_tensor(ho), i) for tr, ho in splits for i in range(len(grid))]

    def held_out(job: tuple[Tensor, Tensor, int]) -> tuple[int, float, float]:
        tr, ho, i = job
        r = copy.deepcopy(readout)
        fit_readout(r, feats[tr], y[tr], grid[i], max_iter)
        with torch.no_grad():
            logits = r(feats[ho])
        return i, float(F.cross_entropy(logits, y[ho], reduction="sum")), float((logits.argmax(1) == y[ho]).sum())

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=min(cpus, len(jobs))) as pool:
        scores = list(pool.map(held_out, jobs))
    loss, right = [0.0] * len(grid), [0.0] * len(grid)
    for i, lo, ri in scores:
        loss[i] += lo / len(y)
        right[i] += ri / len(y)
    best = loss.index(min(loss))
    return float(grid[best]), [{"l2": float(v), "cv_loss": a, "cv_accuracy": b} for v, a, b in zip(grid, loss, right)]


def _split(description: object) -> str:
    """"validation" or "test" from a task's split description (older records hold the whole description)."""
    return "validation" if "validation" in str(description) else "test"


def pool(paths: list[Path]) -> None:
    if len(set(p.resolve() for p in paths)) < len(paths):
        raise SystemExit("refit_penalty_study: --pool was given the same record twice")
    recs = [json.loads(p.read_text()) for p in paths]
    kinds = {(_split(r["split"]), r["mode"]) for r in recs}
    if len(kinds) > 1:
        raise SystemExit(f"refit_penalty_study: --pool needs records of one split and mode, got {sorted(kinds)}")
    right_a = [r for rec in recs for r in rec["right_a"]]
    right_b = [r for rec in recs for r in rec["right_b"]]
    for p, rec in zip(paths, recs):
        c = rec["comparison"]
        print(f"{p}: n {c['n']}, A {c['accuracy_a']:.4f}, B {c['accuracy_b']:.4f} (l2 {rec['l2_b']:g}), "
              f"only A {c['only_a']}, only B {c['only_b']}")
    c = paired_comparison(right_a, right_b)
    print(f"pooled, {c['n']} images ({_split(recs[0]['split'])}, {recs[0]['mode']}): A {c['accuracy_a']:.4f}, "
          f"B {c['accuracy_b']:.4f}, B right on {c['only_b'] - c['only_a']:+d} more images than A")
    print(format_paired(c))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("--method", default="pat")
    ap.add_argument("--checkpoint", default=PRE_REFIT_CHECKPOINT,
                    help="a checkpoint name inside RUN_DIR/METHOD, or a path with a directory part")
    ap.add_argument("--grid", type=float, nargs="+", default=GRID)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--cv-max-iter", type=int, default=100, help="L-BFGS iterations at most per cross-validation fit")
    ap.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations at most per final fit (A and B)")
    ap.add_argument("--workers", type=int, default=None, help="ngspice workers (default: the config's)")
    ap.add_argument("--mode", choices=["physical", "in_silico"], default="physical",
                    help="measure the features on the lab (default) or take them from the run's twin")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--pool", type=Path, nargs="+", default=None)
    args = ap.parse_args()
    if args.pool:
        return pool(args.pool)
    if args.run_dir is None:
        ap.error("give RUN_DIR, or --pool with saved records")
    if not args.grid or not all(math.isfinite(v) and v >= 0 for v in args.grid):
        ap.error(f"--grid needs finite penalties ≥ 0, got {args.grid}")
    if args.folds < 2 or args.cv_max_iter < 1 or args.max_iter < 1:
        ap.error("--folds must be ≥ 2, --cv-max-iter and --max-iter ≥ 1")
    if args.json and not args.json.parent.is_dir():  # checked before anything is measured
        ap.error(f"--json {args.json}: its folder does not exist")
    torch.set_num_threads(1)
    cfg, task, lab, model = rebuild_run(args.run_dir, args.workers)
    p = Path(args.checkpoint)
    ckpt = p if len(p.parts) > 1 else args.run_dir / args.method / args.checkpoint
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    model.eval()
    smallest = int(torch.bincount(task.y_train).min())
    if args.folds > smallest:
        ap.error(f"--folds {args.folds} exceeds the smallest class's {smallest} training images")
    body, readout = split_readout(model)
    split = _split(task.meta.get("split", ""))
    t0 = time.perf_counter()
    with torch.no_grad(), using_mode(model, args.mode):
        f_train = torch.cat([body(task.x_train[i : i + 512]) for i in range(0, len(task.x_train), 512)])
        f_eval = torch.cat([body(task.x_test[i : i + 512]) for i in range(0, len(task.x_test), 512)])
    print(f"{ckpt}: {len(f_train)} training and {len(f_eval)} evaluation images ({split}) through the body on "
          f"the {'lab' if args.mode == 'physical' else 'twin'} in {time.perf_counter() - t0:.0f} s "
          f"({lab.queries} device queries)", flush=True)
    l2_a = cfg.training.refit_l2
    a = copy.deepcopy(readout)
    info_a = fit_readout(a, f_train, task.y_train, l2_a, args.max_iter)
    t0 = time.perf_counter()
    l2_b, table = select_l2(readout, f_train, task.y_train, args.grid, args.folds, args.cv_max_iter, cfg.seed)
    t_cv = time.perf_counter() - t0
    b = copy.deepcopy(readout)
    info_b = fit_readout(b, f_train, task.y_train, l2_b, args.max_iter)
    print(f"cross-validation ({args.folds} folds, seed {cfg.seed}, ≤ {args.cv_max_iter} iterations per fit, "
          f"{t_cv:.0f} s): " + ", ".join(
        f"l2 {r['l2']:g}: loss {r['cv_loss']:.4f} acc {r['cv_accuracy']:.4f}" for r in table))
    with torch.no_grad():
        right_a = (a(f_eval).argmax(1) == task.y_test).tolist()
        right_b = (b(f_eval).argmax(1) == task.y_test).tolist()
    c = paired_comparison(right_a, right_b)
    print(f"A end refit with the config's l2 {l2_a:g}: training accuracy {info_a['train_accuracy_after']:.4f}, "
          f"{split} {c['accuracy_a']:.4f}")
    print(f"B end refit with the cross-validated l2 {l2_b:g}: training accuracy {info_b['train_accuracy_after']:.4f}, "
          f"{split} {c['accuracy_b']:.4f}")
    print(format_paired(c))
    if args.json:
        rec = {"run_dir": str(args.run_dir), "checkpoint": str(ckpt), "mode": args.mode, "split": split,
               "l2_a": l2_a, "l2_b": l2_b, "cv": table, "folds": args.folds, "cv_seed": cfg.seed,
               "cv_max_iter": args.cv_max_iter, "max_iter": args.max_iter, "cv_seconds": t_cv,
               "fit_a": info_a, "fit_b": info_b, "comparison": c, "right_a": right_a, "right_b": right_b,
               "machine": machine_info(1)}
        args.json.write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    try:
        main()
    except PnnkitError as e:
        sys.exit(f"refit_penalty_study: {e}")
