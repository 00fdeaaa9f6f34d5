"""``pnnkit bench`` sub-commands (registered in :mod:`pnnkit.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Performance benchmarks (each writes a JSON with goals).")


def _holds_other_data(out: Path) -> bool:
    """True when ``out`` is a non-empty file that is not a results JSON of ``pnnkit bench`` (a config, weights, a
    run's results): that is never overwritten."""
    import json

    if out.stat().st_size == 0:
        return False
    try:
        with open(out, "rb") as f:
            head = f.read(1 << 20)
        prev = json.loads(head.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return True
    return not (isinstance(prev, dict) and "benchmark" in prev and "goals" in prev)


def out_problem(out: Path, results: bool = True) -> str | None:
    """Why the results JSON could not be written to ``out`` (None when it can): checked before a benchmark runs,
    so that a bad path costs nothing. Writability is probed (open for append / a temporary file that is removed
    at once) rather than read from the permission bits, which root ignores and read-only mounts do not show."""
    import tempfile

    if out.is_dir():
        return f"{out} is a directory; give a file path, e.g. {out / 'results.json'}"
    if out.exists():
        if not out.is_file():  # /dev/null and the like: nothing to probe (a FIFO would block the probe)
            return None
        try:
            with open(out, "a"):  # appends nothing: the file is left as it is
                pass
            if results and _holds_other_data(out):
                return (f"{out} exists and is not a pnnkit bench result; it is never overwritten: choose a new "
                        "file (or remove it first)")
        except OSError as e:
            return f"{out} exists and cannot be written ({e.strerror or type(e).__name__})"
        return None
    parent = out.absolute().parent
    while not parent.exists():  # the nearest existing folder above: the missing ones are created there
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {out}: {parent} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".pnnkit-write-probe-"):
            pass
    except OSError as e:
        return f"cannot create {out}: cannot write in {parent} ({e.strerror or type(e).__name__})"
    return None


def _check_out(value: Optional[Path]) -> Optional[Path]:
    if value is not None:
        try:
            problem = out_problem(value)
        except OSError as e:  # e.g. a folder on the way that may not be looked into
            problem = f"cannot check {value} ({e.strerror or type(e).__name__})"
        if problem:
            raise typer.BadParameter(problem)
    return value


Out = Annotated[Optional[Path], typer.Option("--out", callback=_check_out, help="write the results JSON here")]
Quick = Annotated[bool, typer.Option("--quick", help="tiny sizes, for tests (seconds, not minutes)")]


def _finish(res: dict[str, Any], out: Optional[Path], columns) -> None:
    from .common import write_and_print

    if not write_and_print(res, out, columns):  # the tables are printed and the JSON saved elsewhere (said where)
        raise typer.Exit(2)


@bench_app.command()
def overhead(
    out: Out = None,
    quick: Quick = False,
    lab: Annotated[Optional[list[str]], typer.Option("--lab", help="lab(s) to run (repeatable; default: all)")] = None,
    batch: Annotated[Optional[list[int]], typer.Option("--batch", min=1, help="batch size(s) (repeatable; default 32 128 256 1024)")] = None,
    depth: Annotated[Optional[list[int]], typer.Option("--depth", min=1, help="depth(s) (repeatable; default 1–5)")] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", min=1, help="interleaved timing rounds (default 15)")] = None,
) -> None:
    """PAT step vs the sum of its parts (device, twin VJP, optimizer) and vs the authors' formulation."""
    from . import overhead as m
    from .common import available_labs

    unknown = sorted(set(lab or []) - set(available_labs()))
    if unknown:
        raise typer.BadParameter(f"unknown lab(s) {unknown}; choose from {available_labs()}", param_hint="--lab")

    def once(v):  # a repeated value would only measure the same configuration twice
        return list(dict.fromkeys(v)) if v else v

    _finish(m.run(quick=quick, labs=once(lab), batches=once(batch), depths=once(depth), repeats=repeats), out,
            m.COLUMNS)


@bench_app.command()
def latency(out: Out = None, quick: Quick = False) -> None:
    """Step time over the device-bound limit for slow device calls, with and without twin/device overlap."""
    from . import latency as m

    _finish(m.run(quick=quick), out, m.COLUMNS)


@bench_app.command()
def queries(out: Out = None, quick: Quick = False) -> None:
    """Device queries to reach fixed accuracies: PAT, in-silico, SPSA, CMA-ES, nevergrad, finite differences."""
    from . import queries as m

    if out is not None:  # the plot goes beside the JSON, as <out>.png
        plot = out.with_suffix(".png")
        if plot == out:
            raise typer.BadParameter(f"{out}: the plot is written to <out>.png, which would be the results file "
                                     "itself; give a .json path", param_hint="'--out'")
        problem = (f"the plot goes beside the results, to {plot}, which is a directory; choose another --out"
                   if plot.is_dir() else out_problem(plot, results=False))
        if problem:
            raise typer.BadParameter(problem, param_hint="'--out'")
    res = m.run(quick=quick, out=out)
    if res.get("plot_error"):
        typer.echo(f"warning: {res['plot_error']}; the results are kept all the same")
    _finish(res, out, m.COLUMNS)


@bench_app.command()
def labs(out: Out = None, quick: Quick = False) -> None:
    """Samples/s of each lab at batch 256 beside a compute floor (with a profile where the gap is large)."""
    from . import labs as m

    _finish(m.run(quick=quick), out, m.COLUMNS)


@bench_app.command()
def scaling(out: Out = None, quick: Quick = False) -> None:
    """Time and peak memory vs batch and depth (fitted exponents); RSS over a long PAT run."""
    from . import scaling as m

    _finish(m.run(quick=quick), out, m.COLUMNS)
