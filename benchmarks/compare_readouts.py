"""Two readouts of one trained network, scored on the same measured features: a paired comparison.

Loads a run directory of ``pnnkit run`` and two checkpoints of one method that share everything up to the last
physical layer (θ, stem, rescales) and differ only in the readout after it — by default the network before and
after the end refit (``checkpoint_before_readout_refit`` and ``checkpoint``, written with
``training.refit_readout``). The task's evaluation images (the test split, or the validation split of a run made
with ``task.options.validation``) go through the shared body once, measured on the run's lab, and both readouts
classify those same features. Prints both accuracies, how many images each gets right that the other does not,
and McNemar's exact two-sided p-value for the difference (``scipy.stats.binomtest`` on the discordant images).
Measuring once for both removes the lab's measurement noise from the comparison.

Usage: PNNKIT_DATA_DIR=... .venv/bin/python benchmarks/compare_readouts.py RUN_DIR [--method pat]
       [--a checkpoint_before_readout_refit] [--b checkpoint] [--workers 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from pnnkit.bench.common import format_paired, paired_comparison
from pnnkit.checkpoint import load_checkpoint
from pnnkit.errors import ConfigError, PnnkitError
from pnnkit.experiments import rebuild_run
from pnnkit.layers import using_mode
from pnnkit.training import PRE_REFIT_CHECKPOINT, split_readout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--method", default="pat")
    ap.add_argument("--a", default=PRE_REFIT_CHECKPOINT,
                    help="first checkpoint: a name inside RUN_DIR/METHOD, or a path with a directory part")
    ap.add_argument("--b", default="checkpoint", help="second checkpoint (as --a)")
    ap.add_argument("--workers", type=int, default=None, help="ngspice workers (default: the config's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, task, lab, model = rebuild_run(args.run_dir, args.workers)

    def state(name: str) -> dict[str, torch.Tensor]:
        p = Path(name)
        return load_checkpoint(p if len(p.parts) > 1 else args.run_dir / args.method / name)["model"]

    sa, sb = state(args.a), state(args.b)
    n_body = len(split_readout(model)[0])
    body_keys = [k for k in sa if int(k.split(".")[0]) < n_body]
    differ = [k for k in body_keys if k not in sb or not torch.equal(sa[k], sb[k])]
    if differ:
        raise ConfigError(f"the two checkpoints differ before the readout ({', '.join(differ[:3])}); "
                          "a paired readout comparison needs the same body")
    model.load_state_dict(sa)
    model.eval()
    body, readout_a = split_readout(model)
    readout_b = copy.deepcopy(readout_a)  # a slice of the model: its modules keep the model's indices as names
    readout_b.load_state_dict({k: v for k, v in sb.items() if k not in body_keys})
    split = task.meta.get("split") or "test"
    t0 = time.perf_counter()
    with torch.no_grad(), using_mode(model, "physical"):
        feats = torch.cat([body(task.x_test[i : i + 512]) for i in range(0, len(task.x_test), 512)])
        right_a = readout_a(feats).argmax(1) == task.y_test
        right_b = readout_b(feats).argmax(1) == task.y_test
    c = paired_comparison(right_a, right_b)
    print(f"{c['n']} evaluation images ({split}), measured once on the lab in {time.perf_counter() - t0:.0f} s "
          f"({lab.queries} device queries)")
    print(f"A {args.a}: accuracy {c['accuracy_a']:.4f}")
    print(f"B {args.b}: accuracy {c['accuracy_b']:.4f}")
    print(format_paired(c))


if __name__ == "__main__":
    try:
        main()
    except PnnkitError as e:
        sys.exit(f"compare_readouts: {e}")
