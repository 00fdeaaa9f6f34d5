"""Shared pieces of the benchmarks: machine description, timing, goals, the JSON contract and rich tables."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..machine import machine_summary
from ..provenance import source_revision

if TYPE_CHECKING:
    from ..system import PhysicalSystem
    from ..twins import DigitalTwin

#: 1-minute load average above which timings are flagged as taken under load.
LOAD_WARN = 1.5


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU, cores, torch version, threads, load average at start (and a flag when the machine is loaded), and the
    code's commit (``source``: :func:`pnnkit.provenance.source_revision`, None outside a git checkout)."""
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = [float("nan")] * 3
    return {
        **machine_summary(threads),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "source": source_revision(),
        "load_average_start": [round(v, 2) for v in load],
        "loaded": bool(load[0] > LOAD_WARN),
        "load_note": (f"1-min load {load[0]:.2f} > {LOAD_WARN}: the machine was shared during this run; "
                      "timings are noisier and slower than on an idle machine") if load[0] > LOAD_WARN else "",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def goal(name: str, value: float, target: float, direction: str, note: str = "") -> dict[str, Any]:
    """One goal row; ``met`` is computed, never asserted."""
    if direction not in ("<=", ">="):
        raise ValueError(direction)
    v = float(value)
    met = (v <= target) if direction == "<=" else (v >= target)
    out: dict[str, Any] = {"name": name, "value": v, "target": float(target), "direction": direction,
                           "met": bool(met and v == v)}
    if note:
        out["note"] = note
    return out


#: CPU time of the calling thread. With one intra-op thread every op of a step runs on the calling thread, so
#: this is the step's work; unlike wall time it does not count the time other jobs on a shared machine hold
#: the core (a many-millisecond step is preempted far more often than a sub-millisecond part, which biases
#: wall-time ratios under load). Use it only where nothing runs in other threads or sleeps.
cpu_clock = time.thread_time


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn()`` over ``repeats`` runs (after ``warmup`` untimed runs); GC off while timing."""
    return statistics.median(_times(fn, repeats, warmup, clock))


def min_time(fn: Callable[[], Any], repeats: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> float:
    """Fastest of ``repeats`` runs: on a shared machine other jobs only ever add time, so the minimum is the
    best estimate of the work itself."""
    return min(_times(fn, repeats, warmup, clock))


def _times(fn: Callable[[], Any], repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = clock()
            fn()
            times.append(clock() - t0)
    finally:
        if was:
            gc.enable()
    return times


def twin_vjp_timings(twin: torch.nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor], weight: torch.Tensor,
                     repeats: int) -> dict[str, float]:
    """A twin's cost for PAT's backward: median ms of the forward pass without grad (``forward_ms``), of forward +
    VJP with the twin frozen (``frozen_ms``: the path PAT and in-silico training use) and with its parameters
    trainable (``trainable_ms``: the path while a twin is fitted), and the largest relative difference of the two
    VJPs w.r.t. ``x`` and every θ (``max_rel_diff``). Leaves the twin frozen."""

    def vjp() -> tuple[torch.Tensor, ...]:
        leaves = [x.clone().requires_grad_(True), *(v.clone().requires_grad_(True) for v in params.values())]
        y = twin(leaves[0], dict(zip(params, leaves[1:])))
        return torch.autograd.grad((y * weight).sum(), leaves)

    twin.requires_grad_(False)
    with torch.no_grad():
        fwd = median_time(lambda: twin(x, params), repeats)
    frozen = median_time(vjp, repeats)
    g_frozen = vjp()
    twin.requires_grad_(True)
    trainable = median_time(vjp, repeats)
    g_trainable = vjp()
    twin.requires_grad_(False)
    rel = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g_frozen, g_trainable))
    return {"forward_ms": fwd * 1e3, "frozen_ms": frozen * 1e3, "trainable_ms": trainable * 1e3, "max_rel_diff": rel}


def result(benchmark: str, machine: dict[str, Any], rows: list[dict[str, Any]], goals: list[dict[str, Any]],
           **extra: Any) -> dict[str, Any]:
    out = {"benchmark": benchmark, "machine": machine, "rows": rows, "goals": goals}
    out.update(extra)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "—"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e5 or a < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    if v is None:
        return "—"
    return str(v)


def write_and_print(res: dict[str, Any], out: Path | None, columns: Sequence[str] | None = None,
                    title: str | None = None) -> bool:
    """Print the rows and goals as rich tables, then write the JSON (if ``out``; see :func:`save_results`).
    Returns False when the JSON could not be written to ``out``."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200) if not Console().is_terminal else Console()
    rows = res["rows"]
    cols = list(columns) if columns else (list(rows[0]) if rows else [])
    t = Table(title=title or f"pnnkit bench {res['benchmark']}")
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*[_fmt(r.get(c)) for c in cols])
    console.print(t)
    g = Table(title="goals")
    for c in ("goal", "value", "target", "met"):
        g.add_column(c, justify="right")
    for x in res["goals"]:
        g.add_row(x["name"], _fmt(x["value"]), f"{x['direction']} {_fmt(x['target'])}",
                  "[green]met[/]" if x["met"] else "[red]NOT met[/]")
    console.print(g)
    m = res["machine"]
    console.print(f"machine: {m['cpu']} ({m.get('cpu_capability', '?')} kernels), {m['cores']} cores, "
                  f"torch {m['torch']}, {m['torch_threads']} thread(s), "
                  f"load {m['load_average_start']}" + (f" — {m['load_note']}" if m.get("load_note") else ""))
    if out is not None:
        return save_results(res, Path(out), console)
    return True


def save_results(res: dict[str, Any], out: Path, console: Any = None) -> bool:
    """Write ``res`` as JSON to ``out``. If that fails (the path became a directory, the disk is full, …) the
    results are not lost: they go to a fresh file in the temporary directory instead, and one line says where it
    tried to write, why it failed and where the results are. Returns whether ``out`` itself was written."""
    import tempfile

    from rich.console import Console

    console = console or Console()
    text = json.dumps(res, indent=2, default=float)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as e:
        why = e.strerror or type(e).__name__
        try:
            fd, fallback = tempfile.mkstemp(prefix=f"pnnkit-bench-{res.get('benchmark', 'results')}-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            saved = f"the results were saved to {fallback} instead"
        except OSError as e2:
            saved = f"saving them to the temporary directory failed too ({e2.strerror or type(e2).__name__}); " \
                    "the tables above hold the measured rows"
        console.print(f"[bold red]error:[/] could not write the results to {out} ({why}); {saved}",
                      highlight=False, soft_wrap=True)
        return False
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)
    return True


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; falls back to the peak from getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_labs() -> list[str]:
    """Labs of the benchmark set (the fast torch labs; plate and circuit are benchmarked by their own scripts)."""
    return ["oscillators", "shg"]


def bench_lab(name: str, *, dtype: torch.dtype = torch.float32,
              **options: Any) -> tuple[PhysicalSystem, DigitalTwin]:
    """The lab at its benchmark size with its physics twin: oscillators n=8 (T=3, 30 RK4 steps), SHG default."""
    from ..labs import make_lab

    if name == "oscillators":
        lab = make_lab("oscillators", n=options.pop("n", 8), dtype=dtype, **options)
    else:
        lab = make_lab(name, dtype=dtype, **options)
    twin = lab.ideal_twin()  # not .to(dtype): the SHG twin keeps complex buffers and casts at its forward
    twin.eval().requires_grad_(False)
    return lab, twin


def paired_comparison(right_a: Sequence[bool] | torch.Tensor, right_b: Sequence[bool] | torch.Tensor) -> dict[str, Any]:
    """Two classifiers scored on the same items: accuracies, the discordant counts, B − A in points, its paired SE
    √(only A + only B)/n and McNemar's exact two-sided p (``scipy.stats.binomtest`` on the discordant items)."""
    from scipy.stats import binomtest

    a, b = torch.as_tensor(right_a, dtype=torch.bool), torch.as_tensor(right_b, dtype=torch.bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_comparison needs two equal non-empty 1-D records, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    d = only_a + only_b
    return {
        "n": n, "accuracy_a": float(a.float().mean()), "accuracy_b": float(b.float().mean()),
        "both_right": int((a & b).sum()), "only_a": only_a, "only_b": only_b, "both_wrong": int((~a & ~b).sum()),
        "b_minus_a_points": (only_b - only_a) / n * 100, "paired_se_points": d**0.5 / n * 100,
        "mcnemar_p": binomtest(only_b, d, 0.5).pvalue if d else 1.0,
    }


def format_paired(c: dict[str, Any]) -> str:
    """The lines :func:`paired_comparison`'s record prints as."""
    return (f"both right {c['both_right']}, only A {c['only_a']}, only B {c['only_b']}, both wrong {c['both_wrong']}\n"
            f"B − A: {c['b_minus_a_points']:+.2f} points, paired SE ≈ √(only A + only B)/n = "
            f"{c['paired_se_points']:.2f} points, McNemar exact p = {c['mcnemar_p']:.3g}")
