"""How far digital networks get on this machine's MNIST split (context for the hybrid SHG target).

Trains one-hidden-layer ReLU MLPs (pnnkit's ``digital_baseline`` of kind ``mlp``: Adam, cosine schedule, batch 32)
on the 8,000 training images at 14×14, and reports accuracy on 1,000 held-out training images (validation:
train on the other 7,000) and on the 2,000-image test split (train on all 8,000). No device is involved.
``--augment SHIFT ROTATE SCALE`` trains with pnnkit's ``training.augment`` (random affine distortions).

Usage: PNNKIT_DATA_DIR=../shared/data .venv/bin/python benchmarks/mnist_digital_reference.py \
           [--hidden 48 96 256] [--epochs 40] [--downsample 14] [--augment 1 10 0.1]
"""

from __future__ import annotations

import argparse

import torch

from pnnkit.config import DigitalBaselineConfig, validate_config
from pnnkit.experiments import digital_baseline
from pnnkit.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[48, 96, 256])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--downsample", type=int, default=14)
    ap.add_argument("--augment", type=float, nargs=3, metavar=("SHIFT", "ROTATE", "SCALE"), default=None,
                    help="training.augment: shift (pixels), rotate (degrees), scale (relative)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    training = {"epochs": args.epochs, "batch_size": 32, "lr": args.lr}
    if args.augment:
        training["augment"] = dict(zip(("shift", "rotate", "scale"), args.augment))
    cfg = validate_config({"name": "mnist-digital-reference", "seed": 0, "training": training})
    val = load_task("mnist", downsample=args.downsample, validation=1000)
    test = load_task("mnist", downsample=args.downsample)
    print(f"MNIST {args.downsample}×{args.downsample}, {test.meta['split']}; {args.epochs} epochs, batch 32, "
          f"lr {args.lr}; augment {training.get('augment', 'none')}")
    print(f"{'hidden':>7} {'params':>7} {'validation (7k/1k)':>19} {'test (8k/2k)':>13}")
    for h in args.hidden:
        b = DigitalBaselineConfig(kind="mlp", hidden=[h])
        rv, rt = digital_baseline(cfg, val, b), digital_baseline(cfg, test, b)
        print(f"{h:>7} {rt['parameters']:>7} {rv['test_accuracy']:>19.4f} {rt['test_accuracy']:>13.4f}", flush=True)


if __name__ == "__main__":
    main()
