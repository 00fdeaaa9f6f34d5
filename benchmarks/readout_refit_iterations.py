"""How many L-BFGS iterations does a readout refit need? Training loss, accuracy and time against the iteration cap.

Loads a run directory of ``pnnkit run`` (its ``config.json``, twin and ``<method>/checkpoint.safetensors``), measures
the features that reach the network's readout (the last physical layer's outputs after its rescale) for the
*training* images on the run's lab (device queries: every training sample through every channel once; ngspice with
``--workers``), and fits the checkpoint's readout to them with :func:`pnnkit.training.fit_readout` (no penalty)
for each cap in ``--iters``, each time from the checkpoint's readout — as ``training.refit_readout_every`` does
after an epoch, starting from the previous epoch's fit. Test images are never loaded into the fit or the report.
``--save FILE`` keeps the measured features (a safetensors file) and ``--features FILE`` reuses them.

Usage: PNNKIT_DATA_DIR=... .venv/bin/python benchmarks/readout_refit_iterations.py RUN_DIR [--method pat]
       [--iters 10,20,50,100,200,500] [--workers 2] [--save F | --features F]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pnnkit.checkpoint import load_checkpoint
from pnnkit.experiments import rebuild_run
from pnnkit.layers import using_mode
from pnnkit.training import fit_readout, split_readout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--method", default="pat")
    ap.add_argument("--iters", default="10,20,50,100,200,500", help="comma-separated L-BFGS iteration caps")
    ap.add_argument("--workers", type=int, default=None, help="ngspice workers (default: the config's)")
    ap.add_argument("--save", type=Path, default=None, help="write the measured training features here")
    ap.add_argument("--features", type=Path, default=None, help="reuse features written by --save")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, task, lab, model = rebuild_run(args.run_dir, args.workers)
    model.load_state_dict(load_checkpoint(args.run_dir / args.method / "checkpoint.safetensors")["model"])
    model.eval()
    body, readout = split_readout(model)
    if args.features:
        feats = load_file(str(args.features))["features"]
        print(f"features {tuple(feats.shape)} from {args.features}")
    else:
        t0 = time.perf_counter()
        with torch.no_grad(), using_mode(model, "physical"):
            feats = torch.cat([body(task.x_train[i : i + 512]) for i in range(0, len(task.x_train), 512)])
        print(f"measured {tuple(feats.shape)} training features on the lab in {time.perf_counter() - t0:.0f} s "
              f"({lab.queries} device queries)")
        if args.save:
            save_file({"features": feats.contiguous()}, str(args.save))
    for cap in [int(v) for v in args.iters.split(",") if v]:
        r = copy.deepcopy(readout)
        t0 = time.perf_counter()
        info = fit_readout(r, feats, task.y_train, 0.0, cap)
        print(f"max_iter {cap:4d}: training loss {info['train_loss_before']:.4f} -> {info['train_loss_after']:.4f}  "
              f"accuracy {info['train_accuracy_before']:.4f} -> {info['train_accuracy_after']:.4f}  "
              f"{time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
