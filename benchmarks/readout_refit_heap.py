"""Seconds per L-BFGS evaluation of a readout refit, with glibc's heap policy of pnnkit.allocator off and on.

The electronic MNIST readout (two per-bin rescales, an interleaved pool into 10 classes, a per-class rescale) is
fitted by :func:`pnnkit.training.fit_readout` to synthetic features of the config's size (8,000 training images ×
1,168 bins, float32: 37 MB per full-batch tensor, above the 32 MiB beyond which glibc maps every block anew). The
policy is process-wide, so each setting runs in its own child process: ``PNNKIT_RETAIN_HEAP=0`` (blocks mapped and
unmapped one by one), and the default (:func:`pnnkit.allocator.retain_freed_memory`: kept on the heap). Prints the
seconds per evaluation (median of ``--repeats`` fits), the peak RSS, and the fitted loss and parameter hash, which
must agree: the policy changes where memory waits, not any number.

Usage: .venv/bin/python benchmarks/readout_refit_heap.py [--samples 8000] [--features 1168] [--iters 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def child(samples: int, features: int, iters: int, repeats: int) -> None:
    import hashlib
    import resource
    import statistics
    import time

    import torch
    from torch import nn

    from pnnkit import allocator
    from pnnkit.layers import ElementwiseRescale, Pool
    from pnnkit.training import fit_readout

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(samples, features, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    per_eval, info, digest = [], {}, ""
    for _ in range(repeats):
        torch.manual_seed(0)
        ro = nn.Sequential(ElementwiseRescale(features), ElementwiseRescale(features), Pool(10, "interleaved"),
                           ElementwiseRescale(10))
        calls = [0]
        ro.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        t0 = time.perf_counter()
        info = fit_readout(ro, feats, y, 0.0, iters)
        per_eval.append((time.perf_counter() - t0) / calls[0])
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in ro.parameters())).hexdigest()[:16]
    print(json.dumps({"allocator": allocator.allocator_state(), "seconds_per_evaluation": statistics.median(per_eval),
                      "evaluations": calls[0], "loss": info["train_loss_after"], "parameters_sha256": digest,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def compare(samples: int, features: int, iters: int, repeats: int) -> dict[str, dict]:
    """One child process per setting (the policy is process-wide): off (``PNNKIT_RETAIN_HEAP=0``), then the
    default; each child's record (:func:`child`) under its label."""
    rows = {}
    for label, value in (("mapped anew (PNNKIT_RETAIN_HEAP=0)", "0"), ("kept on the heap (default)", "")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        env.update(PNNKIT_RETAIN_HEAP=value, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--child", "--samples", str(samples), "--features",
                              str(features), "--iters", str(iters), "--repeats", str(repeats)],
                             capture_output=True, text=True, env=env, check=True)
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--features", type=int, default=1168)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.samples, a.features, a.iters, a.repeats)
        return
    mb = a.samples * a.features * 4 / 1e6
    print(f"readout fit on {a.samples} × {a.features} float32 features ({mb:.1f} MB per full-batch tensor), "
          f"{a.iters} L-BFGS iterations at most, 1 torch thread, median of {a.repeats}")
    rows = compare(a.samples, a.features, a.iters, a.repeats)
    for label, r in rows.items():
        print(f"  {label:38s} {1e3 * r['seconds_per_evaluation']:7.1f} ms / evaluation ({r['evaluations']} per fit)"
              f"   peak RSS {r['peak_rss_mb']:6.0f} MB   loss {r['loss']:.10f}   params {r['parameters_sha256']}")
    a_, b_ = rows.values()
    same = (a_["loss"], a_["parameters_sha256"]) == (b_["loss"], b_["parameters_sha256"])
    print(f"  speed-up {a_['seconds_per_evaluation'] / b_['seconds_per_evaluation']:.2f}×; "
          f"same loss and parameters: {same}")


if __name__ == "__main__":
    main()
