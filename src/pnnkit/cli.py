"""Command-line interface: ``pnnkit demo | run | twin fit | train | evaluate | toy-gap | labs``."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .bench.cli import bench_app
from .errors import PnnkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Physical neural networks with physics-aware training.")
twin_app = typer.Typer(no_args_is_help=True, help="Measure a system and fit / inspect digital twins.")
app.add_typer(twin_app, name="twin")
app.add_typer(bench_app, name="bench")
console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes (tables still fit the width)
err_console = Console(stderr=True, soft_wrap=True)  # errors go to stderr, like the runs' `note:` lines


def _fail(e: Exception) -> None:
    """Print ``e`` as one line on stderr (its text verbatim: never read as rich markup) and exit with status 2."""
    from rich.text import Text

    err_console.print(Text("error: ", style="bold red") + Text(str(e)), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


#: ``--set KEY=VALUE`` (repeatable): override a config entry, e.g. ``--set training.epochs=3``
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE",
                 help="override a config entry (dotted key, YAML value; repeatable), e.g. --set training.epochs=3"),
]


def demo_config_text() -> str:
    return resources.files("pnnkit").joinpath("presets/demo.yaml").read_text()


def _sets(set_: Optional[list[str]], key: str) -> bool:
    """Whether one of the ``--set`` items sets ``key``."""
    return any(item.partition("=")[0].strip() == key for item in set_ or ())


def _print_results(results: dict) -> None:
    t = Table(title=f"{results['task']} on {results['system']} (unit {results['unit']})")
    for c in ("method", "physical test acc", "twin test acc", "device queries", "train s"):
        t.add_column(c, justify="right")
    for m, r in results["methods"].items():
        twin = "—" if r.get("twin_test_accuracy") is None else f"{r['twin_test_accuracy']:.3f}"
        t.add_row(m, f"{r['test_accuracy']:.3f}", twin, str(r["physical_queries"]), f"{r['train_seconds']:.1f}")
    console.print(t)
    if results.get("twin"):
        tw = results["twin"]
        console.print(f"twin: {tw['kind']}, {tw['train_samples']} training samples, validation NRMSE {tw['val_nrmse']:.4f}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("demo-out"),
    show_config: Annotated[bool, typer.Option(help="print the embedded config and exit")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="override training epochs (quick runs)")] = None,
    set_: SetOption = None,
) -> None:
    """The main job: digits on a two-layer oscillator PNN, PAT vs in-silico, evaluated on the lab."""
    from .config import parse_yaml, validate_config
    from .experiments import run_experiment

    text = demo_config_text()
    if show_config:
        typer.echo(text)
        return
    try:
        if epochs is not None and _sets(set_, "training.epochs"):
            raise PnnkitError("--epochs and --set training.epochs both set the number of epochs; give one of them")
        data = parse_yaml(text, "demo")
        if epochs is not None:
            data["training"]["epochs"] = epochs
        cfg = validate_config(data, "demo", set_ or ())
        results = run_experiment(cfg, out, progress=sys.stderr.isatty())
    except PnnkitError as e:
        _fail(e)
    _print_results(results)
    console.print(f"wrote {out / 'results.json'}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    out: Annotated[Path, typer.Option(help="output directory")],
    resume: Annotated[bool, typer.Option(help="resume each method from its checkpoint in OUT")] = False,
    set_: SetOption = None,
) -> None:
    """Run an experiment config: measure, fit the twin, train every method, evaluate on the lab."""
    from .config import load_config
    from .experiments import run_experiment

    try:
        cfg = load_config(config, set_ or ())
        results = run_experiment(cfg, out, progress=sys.stderr.isatty(), resume=resume)
    except PnnkitError as e:
        _fail(e)
    _print_results(results)
    console.print(f"wrote {out / 'results.json'}")


@twin_app.command("fit")
def twin_fit(
    config: Annotated[Path, typer.Argument(help="experiment YAML (its lab and twin sections are used)")],
    out: Annotated[Path, typer.Option(help="output directory for measurements and twin")],
    set_: SetOption = None,
) -> None:
    """Measure the lab on a space-filling design, fit the twin, save HDF5 data + safetensors/JSON twin."""
    from .config import load_config
    from .experiments import build_lab, check_twin_config, make_twin, writable_dir

    try:
        cfg = load_config(config, set_ or ())
        if cfg.twin.path:
            raise PnnkitError(f"twin.path is set ({cfg.twin.path}): `twin fit` measures the lab and fits a new twin; "
                              "remove twin.path, or inspect that twin with `pnnkit twin show`")
        lab = build_lab(cfg.lab)
        check_twin_config(lab, cfg.twin)
        writable_dir(out)  # before the lab is measured
        res = make_twin(lab, cfg.twin, out, progress=sys.stderr.isatty())
    except PnnkitError as e:
        _fail(e)
    rep = res.twin.report
    console.print(rep.summary() if rep else "twin loaded")
    console.print(f"wrote {out / 'twin.safetensors'}, {out / 'twin.json'}, {out / 'twin_measurements.h5'}")


@twin_app.command("show")
def twin_show(path: Annotated[Path, typer.Argument(help="twin .safetensors or .json")]) -> None:
    """Print a saved twin's kind, system and validation report (verifies the checksum)."""
    from .twins import DigitalTwin

    try:
        if path.is_dir():
            raise PnnkitError(f"{path} is a directory; give its twin.safetensors or twin.json")
        if path.suffix not in (".safetensors", ".json"):
            raise PnnkitError(f"{path} is not a twin file: `twin show` takes the .safetensors or .json that "
                              "`twin fit` or `run` wrote")
        if not path.exists():  # named as given (the loader would name the .safetensors of the pair)
            raise PnnkitError(f"twin file not found: {path}")
        weights = path.with_suffix(".safetensors")
        if path.suffix == ".json" and not weights.exists():
            raise PnnkitError(f"{path} has no {weights.name} beside it; a twin is a .safetensors + .json pair")
        tw = DigitalTwin.load(path)
    except PnnkitError as e:
        _fail(e)
    console.print(f"{tw.kind} twin for {tw.spec.name!r}: in={tw.spec.input_dim}, out={tw.spec.output_dim}, "
                  f"params={tw.spec.n_params}")
    if tw.report:
        console.print(tw.report.summary())


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    out: Annotated[Path, typer.Option(help="output directory")],
    method: Annotated[str, typer.Option(help="pat | in_silico | exact")] = "pat",
    twin: Annotated[Optional[Path], typer.Option(help="saved twin to use instead of fitting one")] = None,
    resume: Annotated[bool, typer.Option(help="resume from OUT/METHOD/checkpoint")] = False,
    set_: SetOption = None,
) -> None:
    """Train one method; saves OUT/METHOD/model.safetensors and OUT/METHOD/result.json."""
    from .config import load_config
    from .experiments import build_pieces, init_label, make_twin, start_run, train_method, twin_to_use, versions
    from .machine import machine_summary

    try:
        cfg = load_config(config, set_ or ())
        if method not in ("pat", "in_silico", "exact"):
            raise PnnkitError(f"unknown method {method!r}; choose pat, in_silico or exact")
        if method == "exact" and twin is not None:
            raise PnnkitError("--twin is not used by --method exact (it differentiates the lab's simulation "
                              "itself); drop --twin, or train pat or in_silico")
        if method == "pat" and cfg.training.pat_init == "in_silico":
            raise PnnkitError("training.pat_init: in_silico needs the in_silico network, which `train` does not "
                              "build; run `pnnkit run`, or train --method in_silico first, then --method pat "
                              "--twin OUT/twin.safetensors --set training.init_weights=OUT/in_silico/model.safetensors "
                              "--set training.pat_init=fresh")
        if twin is not None:
            cfg.twin.path = str(twin)
        task, system, _ = build_pieces(cfg)  # fails before anything is measured or written
        start_run(cfg, out / method, resume)  # OUT/METHOD/config.json; --resume refuses a changed config
        tw = make_twin(system, twin_to_use(cfg.twin, out, resume), out, reuse=resume) if method != "exact" else None
        model, res = train_method(cfg, task, system, tw.twin if tw else None, method, out / method,
                                  sys.stderr.isatty(), resume)
    except PnnkitError as e:
        _fail(e)
    (out / method / "result.json").write_text(
        json.dumps({**res.summary(), **({"init": init_label(cfg, method)} if init_label(cfg, method) else {}),
                    "versions": versions(), "machine": machine_summary()}, indent=2))
    console.print(f"{method}: physical test accuracy {res.test_accuracy:.4f} "
                  f"({res.physical_queries} device queries, {res.train_seconds:.1f} s)")


@app.command()
def evaluate(
    config: Annotated[Path, typer.Argument(help="experiment YAML the weights were trained with")],
    weights: Annotated[Path, typer.Option(help="METHOD/model.safetensors (or checkpoint.safetensors) of a run")],
    unit: Annotated[Optional[int], typer.Option(help="evaluate on another physical unit")] = None,
    log: Annotated[Optional[Path],
                   typer.Option(help="directory for the device log (default: beside the weights)")] = None,
    set_: SetOption = None,
) -> None:
    """Deploy trained weights on the lab (physical mode), print the test accuracy, and keep every measurement in
    LOG/evaluate_unit<N>.h5."""
    from .config import load_config
    from .checkpoint import load_weights
    from .experiments import build_lab, writable_dir
    from .networks import build_network
    from .tasks import load_task
    from .training import accuracy, attach_device_logs, detach_device_logs

    try:
        if unit is not None and _sets(set_, "lab.unit"):
            raise PnnkitError("--unit and --set lab.unit both choose the physical unit; give one of them")
        cfg = load_config(config, set_ or (), [(f"--unit {unit}", f"lab.unit={unit}")] if unit is not None else ())
        task = load_task(cfg.task.name, **cfg.task.options)
        system = build_lab(cfg.lab)
        model = build_network(cfg.network, task.n_features, task.n_classes, system, None, seed=cfg.seed)
        load_weights(model, weights)
        log_dir = log if log is not None else weights.parent
        writable_dir(log_dir, "log directory" if log is not None else "log directory (beside the weights; choose "
                     "another with --log)")
        logs = attach_device_logs(model, log_dir, fresh=True, name=f"evaluate_unit{cfg.lab.unit}")
        try:
            acc = accuracy(model, task.x_test, task.y_test, "physical")
        finally:
            detach_device_logs(model, logs)
    except PnnkitError as e:
        _fail(e)
    console.print(f"physical test accuracy on {system.spec.name} unit {cfg.lab.unit}: {acc:.4f}")
    console.print(f"device log: {logs[0].path if logs else 'none (no physical layer)'}", soft_wrap=True)


@app.command("toy-gap")
def toy_gap() -> None:
    """The supplement's toy: forward and gradient gaps of in-silico vs PAT for 2x^1.1 vs 2.01x^1.1."""
    from .toy import toy_table

    t = Table(title="reality 2x^1.1, twin 2.01x^1.1, x0 = 1, n chained layers")
    for c in ("n", "forward gap (twin chain)", "gradient gap: in silico", "gradient gap: PAT"):
        t.add_column(c, justify="right")
    for r in toy_table():
        t.add_row(str(r.n), f"{100 * r.forward_gap:.2f} %", f"{100 * r.in_silico_grad_gap:.2f} %",
                  f"{100 * r.pat_grad_gap:.2f} %")
    console.print(t)


@app.command()
def labs(
    name: Annotated[str | None, typer.Argument(help="a lab: print its summary, options and defaults")] = None,
) -> None:
    """List the virtual labs; with a NAME, that lab's keys (lab.unit, lab.seed, …), its options (a config's
    lab.options) and their defaults."""
    from .labs import lab_description, lab_names

    if name is None:
        for n in lab_names():
            typer.echo(n)
        return
    try:
        summary, options = lab_description(name)
    except PnnkitError as e:
        _fail(e)
    top = ("unit", "seed", "imperfection_scale")  # LabConfig's own keys, passed on to make_lab
    typer.echo(f"{name}: {summary}")
    typer.echo(f"physics, imperfections and validation: docs/labs/{name}.md")
    own = [(opt, default) for opt, default, _ in options if opt in top]
    if own:
        typer.echo(f"lab keys ({', '.join('lab.' + o for o, _ in own)} in a config, make_lab keyword arguments) "
                   "= default:")
        for opt, default in own:
            typer.echo(f"  {opt} = {default}")
    typer.echo("options (lab.options in a config, make_lab keyword arguments) = default:")
    for opt, default, fields in options:
        if opt in top:
            continue
        typer.echo(f"  {opt} = {default}")
        if fields:  # None means the fields' defaults unless a field has none (then the lab chooses: its docs)
            plain = default == "None" and all(v != "(required)" for _, v in fields)
            typer.echo(f"    fields ({'None: these defaults' if plain else 'a mapping of'}): "
                       + ", ".join(f"{f}={v}" for f, v in fields))


def _out_of_memory(e: BaseException) -> str | None:
    """A one-line description if ``e`` is an allocation failure (Python's or torch's), else None."""
    import re

    if isinstance(e, MemoryError):
        return "out of memory"
    text = str(e)
    if isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()):
        m = re.search(r"allocate (\d+) bytes", text)
        return "out of memory" + (f" (one allocation of {int(m.group(1)) / 2**30:.3g} GiB)" if m else "")
    return None


def main() -> None:
    """Console entry point: :data:`app`, with an allocation failure reported in one line instead of a traceback."""
    try:
        app()
    except OSError as e:  # a file system refusal no check foresaw (disk full, a path that vanished): one line
        where = f"{e.filename}: " if e.filename else ""
        typer.echo(f"error: {where}{e.strerror or e}", err=True)
        raise SystemExit(2) from None
    except (MemoryError, RuntimeError) as e:
        what = _out_of_memory(e)
        if what is None:
            raise
        typer.echo(f"error: {what}; use smaller sizes (batch, samples, channels, depth)", err=True)
        raise SystemExit(2) from None
