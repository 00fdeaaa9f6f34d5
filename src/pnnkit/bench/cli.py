"""``pnnkit bench`` sub-commands (registered in :mod:`pnnkit.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Performance benchmarks (each writes a JSON with goals).")

Out = Annotated[Optional[Path], typer.Option("--out", help="write the results JSON here")]
Quick = Annotated[bool, typer.Option("--quick", help="tiny sizes, for tests (seconds, not minutes)")]


@bench_app.command()
def overhead(
    out: Out = None,
    quick: Quick = False,
    lab: Annotated[Optional[list[str]], typer.Option("--lab", help="lab(s) to run (repeatable; default: all)")] = None,
    batch: Annotated[Optional[list[int]], typer.Option("--batch", help="batch size(s) (repeatable; default 32 128 256 1024)")] = None,
    depth: Annotated[Optional[list[int]], typer.Option("--depth", help="depth(s) (repeatable; default 1–5)")] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", min=1, help="interleaved timing rounds (default 15)")] = None,
) -> None:
    """PAT step vs the sum of its parts (device, twin VJP, optimizer) and vs the authors' formulation."""
    from . import overhead as m
    from .common import available_labs, write_and_print

    unknown = sorted(set(lab or []) - set(available_labs()))
    if unknown:
        raise typer.BadParameter(f"unknown lab(s) {unknown}; choose from {available_labs()}", param_hint="--lab")
    write_and_print(m.run(quick=quick, labs=lab, batches=batch, depths=depth, repeats=repeats), out, m.COLUMNS)


@bench_app.command()
def latency(out: Out = None, quick: Quick = False) -> None:
    """Step time over the device-bound limit for slow device calls, with and without twin/device overlap."""
    from . import latency as m
    from .common import write_and_print

    write_and_print(m.run(quick=quick), out, m.COLUMNS)


@bench_app.command()
def queries(out: Out = None, quick: Quick = False) -> None:
    """Device queries to reach fixed accuracies: PAT, in-silico, SPSA, CMA-ES, nevergrad, finite differences."""
    from . import queries as m
    from .common import write_and_print

    write_and_print(m.run(quick=quick, out=out), out, m.COLUMNS)


@bench_app.command()
def labs(out: Out = None, quick: Quick = False) -> None:
    """Samples/s of each lab at batch 256 beside a compute floor (with a profile where the gap is large)."""
    from . import labs as m
    from .common import write_and_print

    write_and_print(m.run(quick=quick), out, m.COLUMNS)


@bench_app.command()
def scaling(out: Out = None, quick: Quick = False) -> None:
    """Time and peak memory vs batch and depth (fitted exponents); RSS over a long PAT run."""
    from . import scaling as m
    from .common import write_and_print

    write_and_print(m.run(quick=quick), out, m.COLUMNS)
