"""Run an experiment config end to end: measure, fit a twin, train each method, evaluate on the lab, report."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .background import BackgroundJob
from .checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from .config import DigitalBaselineConfig, ExperimentConfig, LabConfig, TwinConfig, validate_config
from .errors import ConfigError, DataError, PnnkitError
from .labs import make_lab
from .machine import machine_summary
from .measurements import MeasurementLog, MeasurementSet, acquire, keep_existing
from .networks import LinearBlock, NetworkConfig, ParallelBlock, PhysicalBlock, build_network, count_digital_parameters
from .provenance import versions
from .system import PhysicalSystem
from .tasks import ClassificationTask, load_task
from .layers import physical_layers
from .training import TrainConfig, Trainer, TrainResult, augmentation
from .twins import DigitalTwin, MLPTwin, fit_twin


def build_lab(cfg: LabConfig) -> PhysicalSystem:
    return make_lab(cfg.name, unit=cfg.unit, seed=cfg.seed, imperfection_scale=cfg.imperfection_scale, **cfg.options)


@dataclass
class TwinOutcome:
    twin: DigitalTwin
    data: MeasurementSet | None  #: the measurements it was fitted to in this run (None: a twin loaded from a file)


@contextmanager
def logged(system: PhysicalSystem, path: Path | None) -> Iterator[None]:
    """Log every call of ``system`` into ``path`` (a :class:`MeasurementLog`, appended to) for the block, unless it
    already logs somewhere; calls made inside a method's training go to that method's own log instead."""
    if path is None or getattr(system, "_log", None) is not None:
        yield
        return
    try:
        log = MeasurementLog(path, system.spec)
    except DataError:  # a log of another system (or not a log) is there: keep it under another name
        keep_existing(path)
        log = MeasurementLog(path, system.spec)
    system.push_log(log)
    try:
        yield
    finally:
        system.pop_log()
        log.close()


#: The lab's state (noise generators) right after the twin's measurements, kept in a run's directory: a run resumed
#: on its twin (or on its twin's measurements) restores it, so its methods see the lab as an uninterrupted run's do.
LAB_STATE_AFTER_TWIN = "lab_state_after_twin"


def make_twin(system: PhysicalSystem, cfg: TwinConfig, out_dir: Path | None = None, progress: bool = False,
              reuse: bool = False) -> TwinOutcome:
    """Load ``cfg.path`` or measure ``system`` and fit a twin; saves measurements and the twin into ``out_dir``.

    With ``out_dir``, every measurement is also logged call by call into ``out_dir/device_log.h5`` as it is taken
    (unless the system logs elsewhere already), so a killed acquisition keeps what it measured. With ``reuse``
    (resuming a run), a complete ``out_dir/twin_measurements.h5`` of this design is fitted instead of measuring
    again."""
    state = out_dir / LAB_STATE_AFTER_TWIN if out_dir is not None else None
    saved = out_dir / "twin_measurements.h5" if out_dir is not None else None
    if cfg.path:
        twin = DigitalTwin.load(cfg.path, system.spec)
        if reuse and state is not None and state.with_suffix(".json").exists():
            system.set_state(load_checkpoint(state)["system"])  # the lab as it was after measuring for this twin
        return TwinOutcome(twin, _measured_before(saved, system, cfg) if reuse and saved is not None else None)
    data = _measured_before(saved, system, cfg) if reuse and saved is not None else None
    if data is None:
        data = _measure_for_twin(system, cfg, out_dir, progress)
    else:
        print(f"note: fitting the twin to the measurements already in {saved} (not measured again)", file=sys.stderr)
        if state is not None and state.with_suffix(".json").exists():
            system.set_state(load_checkpoint(state)["system"])
        else:
            print(f"note: the lab's state after those measurements was not saved ({state}.json): the lab's noise "
                  "continues from its seed, so this run's numbers can differ from an uninterrupted run's",
                  file=sys.stderr)
    torch.manual_seed(cfg.seed)  # twin initial weights
    twin = new_twin(system, cfg)
    f = cfg.fit
    fit_twin(twin, data, epochs=f.epochs, lr=f.lr, batch_size=f.batch_size, val_fraction=f.val_fraction,
             patience=f.patience, weight_decay=f.weight_decay, seed=cfg.seed, progress=progress, fixed=f.fixed)
    if out_dir:
        twin.save(out_dir / "twin.safetensors")
    return TwinOutcome(twin, data)


def new_twin(system: PhysicalSystem, cfg: TwinConfig) -> DigitalTwin:
    """The unfitted twin of ``cfg.kind`` for ``system`` (its initial weights from torch's global generator)."""
    if cfg.kind == "physics":
        factory = getattr(system, "ideal_twin", None)
        if factory is None:
            raise ConfigError(f"twin kind 'physics' needs a lab with ideal_twin(); {system.spec.name} has none")
        return factory()
    return MLPTwin(system.spec, hidden=tuple(cfg.hidden), activation=cfg.activation)


def check_twin_config(system: PhysicalSystem, cfg: TwinConfig) -> None:
    """Refuse, before anything is measured for it, a twin ``cfg`` that ``system`` cannot have: a physics twin of a
    lab without one, or ``fit.fixed`` naming a parameter the twin does not have."""
    with torch.random.fork_rng(devices=[]):  # built to be checked only: the run's random state stays as it was
        names = {name for name, _ in new_twin(system, cfg).named_parameters()}
    unknown = sorted(set(cfg.fit.fixed) - names)
    if unknown:
        raise ConfigError(f"twin.fit.fixed: the {cfg.kind} twin of {system.spec.name} has no parameter "
                          f"{', '.join(unknown)}; its parameters: {', '.join(sorted(names))}")


def _measured_before(path: Path, system: PhysicalSystem, cfg: TwinConfig) -> MeasurementSet | None:
    """The measurements in ``path`` if they are there, this lab's, taken on ``cfg``'s design (written only once the
    whole design was measured); else None."""
    try:
        data = MeasurementSet.load(path)
    except DataError:
        return None
    m = data.meta
    n = math.ceil(cfg.samples / cfg.inputs_per_setting) * cfg.inputs_per_setting
    same = (data.spec.same_interface(system.spec) and len(data) == n and data.y.shape[1] == cfg.repeats
            and (m.get("seed"), m.get("design"), m.get("inputs_per_setting")) == (cfg.seed, cfg.design,
                                                                                 cfg.inputs_per_setting))
    return data if same else None


def _measure_for_twin(system: PhysicalSystem, cfg: TwinConfig, out_dir: Path | None, progress: bool) -> MeasurementSet:
    q0, t0 = system.queries, time.perf_counter()
    try:
        with logged(system, out_dir / "device_log.h5" if out_dir is not None else None):
            data = acquire(system, cfg.samples, inputs_per_setting=cfg.inputs_per_setting, design=cfg.design,
                           repeats=cfg.repeats, seed=cfg.seed, progress=progress)
    except BaseException as e:  # keep what was measured before the failure
        partial = getattr(e, "partial_measurements", None)
        if out_dir is None or partial is None:
            raise
        path = partial.save(out_dir / "twin_measurements.partial.h5")
        if isinstance(e, PnnkitError):
            raise type(e)(f"{e} (the {len(partial)} samples measured before are kept in {path})") from e
        print(f"note: the {len(partial)} samples measured before are kept in {path}", file=sys.stderr)
        raise
    data.meta["queries"] = system.queries - q0
    data.meta["seconds"] = time.perf_counter() - t0
    if out_dir:  # the lab's state first: measurements on disk always have theirs beside them (for --resume)
        save_checkpoint({"system": system.get_state()}, out_dir / LAB_STATE_AFTER_TWIN)
        data.save(out_dir / "twin_measurements.h5")
    return data


def train_method(
    cfg: ExperimentConfig,
    task: ClassificationTask,
    system: PhysicalSystem,
    twin: DigitalTwin | None,
    method: str,
    out_dir: Path | None = None,
    progress: bool = False,
    resume: bool = False,
    monitor: bool | None = None,
    init_from: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, TrainResult]:
    """Build the network (same initial weights for every method: seeded, or ``training.init_weights``) and train
    it with ``method``; ``init_from``: a trained network of the same config to start from instead (PAT after
    in silico, ``training.pat_init``)."""
    model = build_network(cfg.network, task.n_features, task.n_classes, system, twin, seed=cfg.seed)
    t = cfg.training
    if init_from is not None:
        model.load_state_dict(init_from.state_dict())
    elif t.init_weights:
        load_weights(model, t.init_weights)
    epochs = t.pat_epochs if method == "pat" and t.pat_epochs else t.epochs
    lr = t.pat_lr if method == "pat" and t.pat_lr else t.lr
    tc = _train_config(cfg, epochs=epochs, lr=lr, physical_lr=t.physical_lr,
                       monitor_physical=t.monitor_physical if monitor is None else monitor,
                       monitor_every=t.monitor_every, progress=progress, record_measurements=t.record_measurements,
                       init_samples=t.init_samples, overlap=t.overlap)
    trainer = Trainer(model, task, method, tc, out_dir)  # type: ignore[arg-type]
    result = trainer.fit(resume=resume)
    if out_dir is not None:  # the trained weights, for `pnnkit evaluate --weights`
        save_weights(model, out_dir / "model.safetensors")
    return model, result


def _train_config(cfg: ExperimentConfig, **kw: Any) -> TrainConfig:
    """``TrainConfig`` with what every training of ``cfg`` shares (batch, schedule, seed, augmentation, readout
    refits), plus the caller's own settings ``kw``."""
    t = cfg.training
    return TrainConfig(batch_size=t.batch_size, weight_decay=t.weight_decay, lr_schedule=t.lr_schedule, seed=cfg.seed,
                       augment=_augment_spec(cfg), refit_readout=t.refit_readout, refit_l2=t.refit_l2,
                       refit_readout_start=t.refit_readout_start, refit_readout_every=t.refit_readout_every,
                       refit_every_max_iter=t.refit_every_max_iter, readout_lr=t.readout_lr, **kw)


def _augment_spec(cfg: ExperimentConfig) -> dict[str, float] | None:
    a = cfg.training.augment
    return a.model_dump() if a else None


def rebuild_run(
    run_dir: str | Path, workers: int | None = None
) -> tuple[ExperimentConfig, ClassificationTask, PhysicalSystem, torch.nn.Module]:
    """The pieces of a ``pnnkit run`` directory, for analysis: its config, task, lab (``workers`` overrides the lab's
    ``workers`` option) and network, built on the run's saved twin (frozen) with untrained weights; load a
    ``<method>/checkpoint.safetensors`` into it for the trained ones."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        inner = sorted(p.parent.name for p in run_dir.glob("*/config.json"))
        hint = f"; `pnnkit train` keeps its config in DIR/<method>: try {run_dir / inner[0]}" if inner else ""
        raise ConfigError(f"{run_dir} holds no config.json of a pnnkit run{hint}")
    try:
        raw = json.loads((run_dir / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{run_dir / 'config.json'} is unreadable ({e})") from None
    cfg = validate_config(raw, str(run_dir), [] if workers is None else [f"lab.options.workers={workers}"])
    task = load_task(cfg.task.name, **cfg.task.options)
    lab = build_lab(cfg.lab)
    twin = DigitalTwin.load(cfg.twin.path or run_dir / "twin.safetensors", lab.spec).requires_grad_(False)
    return cfg, task, lab, build_network(cfg.network, task.n_features, task.n_classes, lab, twin, seed=cfg.seed)


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON-like trees differ (a key present in only one counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".") or "the config"]


def _check_resumed_config(cfg: ExperimentConfig, out: Path) -> None:
    """``resume`` continues OUT's checkpoints, so the config must be the one OUT was started with."""
    path = out / "config.json"
    if not path.exists():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:  # e.g. a file that is not UTF-8 text
        raise ConfigError(f"cannot resume: {path} is unreadable ({e})") from None
    try:  # a run started before a new option existed recorded no value for it: compare with the default filled in
        before = json.loads(ExperimentConfig.model_validate(before).model_dump_json())
    except ValueError:  # no longer a valid config: compare the raw record, which names what differs
        pass
    diff = _differing_keys(before, json.loads(cfg.model_dump_json()))
    if diff:
        shown = ", ".join(diff[:5]) + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise ConfigError(f"cannot resume {out}: this config differs from the one it was started with ({path}) in "
                          f"{shown}; use the same config and --set items, or a new --out")


def prepare_out(out: Path, resume: bool = False) -> Path | None:
    """Make ``out`` ready for a run, never losing an earlier one. Resuming needs ``out/config.json`` (a run
    started there). A fresh run into a directory holding an earlier run (``config.json``, or the
    ``checkpoint.json`` of a method directory) first renames that run to ``<out>.<its time>`` and returns the new
    name; a file, or a non-empty directory that holds no run, is refused."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"output directory {out}: {existing} is a file, not a directory")
    if resume:
        if not (out / "config.json").exists():
            raise ConfigError(f"nothing to resume in {out}: it holds no config.json of an earlier run")
        return None
    if (out / "config.json").exists() or (out / "checkpoint.json").exists():
        return keep_existing(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} is not empty and holds no earlier pnnkit run; choose a new or "
                          "empty directory")
    return None


def writable_dir(out: Path, what: str = "output directory") -> Path:
    """Create ``out`` (and missing parents) and check that a file can be written in it, or raise a one-line
    :class:`ConfigError` naming the path and the reason (a file in the way, no permission, a read-only file system):
    called before any device time is spent, so nothing measured is lost to an unwritable output."""
    import tempfile

    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{what} {out}: {existing} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".pnnkit-write-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {out}: cannot write there ({e.strerror or type(e).__name__})") from None
    return out


def start_run(cfg: ExperimentConfig, out: Path, resume: bool = False) -> None:
    """Keep an earlier run in ``out`` (see :func:`prepare_out`; said on stderr), or, resuming, refuse a config that
    differs from the one ``out`` was started with; then write ``out/config.json`` (the config as run). Call once
    the task, lab and network are known to build, so a config that fails there leaves ``out`` untouched."""
    if not resume and ((out / "config.json").exists() or (out / "checkpoint.json").exists()):
        for key, p in (("training.init_weights", cfg.training.init_weights), ("twin.path", cfg.twin.path)):
            if p and Path(p).resolve().is_relative_to(out.resolve()):
                raise ConfigError(f"{key} {p} lies inside {out}, whose earlier run a new run moves aside; "
                                  "give another --out (or --resume that run)")
    try:
        kept = prepare_out(out, resume)
    except OSError as e:  # keeping an earlier run renames it: that needs write permission where it lies
        raise ConfigError(f"output directory {out}: cannot keep the earlier run there "
                          f"({e.strerror or type(e).__name__})") from None
    if kept is not None:
        print(f"note: {out} held an earlier run; it is kept as {kept}", file=sys.stderr)
    if resume:
        _check_resumed_config(cfg, out)
    writable_dir(out)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))


def twin_to_use(cfg: TwinConfig, out: Path, resume: bool) -> TwinConfig:
    """When resuming into ``out``, continue with the twin already fitted there (``out/twin.safetensors``) rather
    than measuring and fitting a new one; otherwise ``cfg`` as it is."""
    if resume and (out / "twin.json").exists() and not cfg.path:
        return cfg.model_copy(update={"path": str(out / "twin.safetensors")})
    return cfg


def build_pieces(cfg: ExperimentConfig) -> tuple[ClassificationTask, PhysicalSystem, int]:
    """The task and lab of ``cfg``, and the digital parameter count of its network, built before anything is
    measured or written: a bad ``training.augment``, a network that does not fit the task and lab (or has no physical
    layer), a digital baseline that cannot be built, ``cv_folds`` the data cannot split, or a ``twin.path`` that is
    not a twin of this lab fails here."""
    task = load_task(cfg.task.name, **cfg.task.options)
    augmentation(_augment_spec(cfg), task)
    system = build_lab(cfg.lab)
    if cfg.twin.path:
        DigitalTwin.load(cfg.twin.path, system.spec)
    elif any(m in ("pat", "in_silico") for m in cfg.methods):
        check_twin_config(system, cfg.twin)
    net = build_network(cfg.network, task.n_features, task.n_classes, system, None, seed=cfg.seed)
    if not any(True for _ in physical_layers(net)):
        raise ConfigError(f"the network has no physical layer (network.depth is {cfg.network.depth}; a 'physical' or "
                          "'parallel' block in network.layer or network.stem makes one): methods "
                          f"{', '.join(cfg.methods)} train the lab's parameters; a network without the lab is what "
                          "digital_baseline trains")
    if cfg.cv_folds:
        labels = torch.cat([task.y_train, task.y_test])
        fewest = int(torch.bincount(labels.long(), minlength=task.n_classes).min())
        if cfg.cv_folds > fewest:
            raise ConfigError(f"cv_folds {cfg.cv_folds} is more than the {fewest} samples of the task's rarest class "
                              "(each stratified fold needs one of every class)")
    if cfg.training.init_weights:  # a missing file, or weights of another network or lab, fail here
        load_weights(net, cfg.training.init_weights)
    if cfg.digital_baseline is not None:
        with torch.random.fork_rng(devices=[]):  # built to be checked only: the run's random state stays as it was
            baseline_network(cfg, task, cfg.digital_baseline)
    return task, system, count_digital_parameters(net)


def run_experiment(
    cfg: ExperimentConfig, out_dir: str | Path, *, progress: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Run every method of ``cfg``; write ``results.json``, logs, plots, the twin and its measurements."""
    out = Path(out_dir)
    task, system, n_digital = build_pieces(cfg)
    start_run(cfg, out, resume)
    with logged(system, out / "device_log.h5"):  # what the lab measures outside the methods' own logs
        return _run(cfg, out, task, system, n_digital, progress, resume)


def _run(cfg: ExperimentConfig, out: Path, task: ClassificationTask, system: PhysicalSystem, n_digital: int,
         progress: bool, resume: bool) -> dict[str, Any]:
    baseline = None
    if cfg.digital_baseline is not None and baseline_in_background(cfg.digital_baseline):
        baseline = BackgroundJob(_baseline_job, cfg.model_dump_json(), name="pnnkit-digital-baseline")
    try:
        return _run_methods(cfg, out, task, system, n_digital, progress, resume, baseline)
    finally:
        if baseline is not None:
            baseline.cancel()  # only if the run failed before taking its result


def baseline_in_background(b: DigitalBaselineConfig) -> bool:
    """Whether the digital baseline trains in its own process, beside the methods (``background``; by default
    when this process may use 2 or more CPUs)."""
    if b.background is not None:
        return b.background
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return cpus >= 2


def _baseline_job(cfg_json: str) -> dict[str, Any]:
    """The digital baseline of a config, in a background process: the task rebuilt from the config, as the run
    built it."""
    cfg = ExperimentConfig.model_validate_json(cfg_json)
    if cfg.digital_baseline is None:
        raise ConfigError("the background digital baseline was started for a config without digital_baseline")
    return digital_baseline(cfg, load_task(cfg.task.name, **cfg.task.options), cfg.digital_baseline)


def _run_methods(cfg: ExperimentConfig, out: Path, task: ClassificationTask, system: PhysicalSystem, n_digital: int,
                 progress: bool, resume: bool, baseline: BackgroundJob | None) -> dict[str, Any]:
    needs_twin = any(m in ("pat", "in_silico") for m in cfg.methods)
    tw = make_twin(system, twin_to_use(cfg.twin, out, resume), out, progress, reuse=resume) if needs_twin else None
    results: dict[str, Any] = {
        "task": task.name,
        "system": system.spec.name,
        "unit": cfg.lab.unit,
        "seed": cfg.seed,
        "methods": {},
        "twin": None,
        "versions": versions(),
        "machine": machine_summary(),
    }
    if "simulator" in system.spec.meta:  # a lab whose reality is a simulator (the circuit lab: ngspice's version)
        results["versions"]["simulator"] = system.spec.meta["simulator"]
    if tw is not None:
        rep = tw.twin.report
        results["twin"] = {
            "kind": tw.twin.kind,
            "train_samples": rep.train_samples if rep else 0,
            "val_nrmse": rep.val_nrmse if rep else None,
            "val_nrmse_per_output": rep.val_nrmse_per_output if rep else None,
            "noise_floor_nrmse": rep.noise_floor_nrmse if rep else None,
            # the twin's measurements and fit as first done: a resumed run reads them from DIR's files
            "measurement_queries": tw.data.meta.get("queries", 0) if tw.data else 0,
            "measurement_seconds": tw.data.meta.get("seconds") if tw.data else 0.0,
            "fit_seconds": (rep.seconds if rep else None) if tw.data else 0.0,
        }
    histories: dict[str, Any] = {}
    models: dict[str, torch.nn.Module] = {}
    results["methods"] = dict.fromkeys(cfg.methods)  # listed in the config's order, whatever order they train in
    for method in run_order(cfg, cfg.methods):
        models[method], res = train_method(cfg, task, system, tw.twin if tw else None, method, out / method, progress,
                                           resume, init_from=_start(cfg, method, models))
        results["methods"][method] = {**res.summary(), "confusion": res.confusion}
        init = init_label(cfg, method)
        if init:
            results["methods"][method]["init"] = init
        histories[method] = res.history
    results["experiment"] = {
        "name": cfg.name,
        "lab": cfg.lab.model_dump(),
        "n_train": len(task.x_train),
        "n_test": len(task.x_test),
        "split": task.meta.get("split"),  # how train/test were drawn (e.g. a validation hold-out), if the task says
        "digital_parameters": n_digital,
        "classes": task.classes,
    }
    twin = tw.twin if tw else None
    if baseline is not None:
        results["digital_baseline"] = baseline.result()
    elif cfg.digital_baseline is not None:
        results["digital_baseline"] = digital_baseline(cfg, task, cfg.digital_baseline)
    if cfg.cv_folds:
        results["cv"] = cross_validate(cfg, task, system, twin, out / "cv")
    if cfg.depth_sweep:
        results["depth_sweep"] = depth_sweep(cfg, task, system, twin, cfg.depth_sweep, out / "depth_sweep")
    if cfg.imperfection_sweep:
        results["imperfection_sweep"] = imperfection_sweep(cfg, task, cfg.imperfection_sweep, out / "imperfection_sweep")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from .plots import plot_experiment

    plot_experiment(results, histories, out)
    if system.spec.name.startswith("shg"):
        from .plots_shg import plot_shg

        plot_shg(results, models, system, task, out)
    return results


def _methods(cfg: ExperimentConfig) -> list[str]:
    return run_order(cfg, list(cfg.methods))


def run_order(cfg: ExperimentConfig, methods: list[str]) -> list[str]:
    """``methods`` in the order they are trained: as listed, except that with ``training.pat_init: in_silico``
    in_silico comes before pat (PAT starts from its network)."""
    if cfg.training.pat_init == "in_silico" and "pat" in methods and "in_silico" in methods:
        rest = [m for m in methods if m != "in_silico"]
        i = rest.index("pat")
        return rest[:i] + ["in_silico"] + rest[i:]
    return list(methods)


def init_label(cfg: ExperimentConfig, method: str) -> str | None:
    """What ``method`` started from, for ``results.json``: ``"in_silico"`` (``training.pat_init``), the
    ``training.init_weights`` file, or None for the seeded initial weights."""
    if method == "pat" and cfg.training.pat_init == "in_silico":
        return "in_silico"
    return cfg.training.init_weights


def _start(cfg: ExperimentConfig, method: str, trained: dict[str, torch.nn.Module]) -> torch.nn.Module | None:
    """The trained network ``method`` starts from (``training.pat_init``), or None for the initial weights."""
    return trained["in_silico"] if method == "pat" and cfg.training.pat_init == "in_silico" else None


def _accuracies(cfg: ExperimentConfig, task: ClassificationTask, system: PhysicalSystem,
                twin: DigitalTwin | None, seeds: list[int] | None = None,
                out: Path | None = None) -> dict[str, Any]:
    """Train every method (no per-epoch monitoring) and return physical (and twin) test accuracies.

    With ``seeds``, every method is trained once per network seed; the row holds the mean over seeds under the
    method's key, plus ``<key>_std`` and ``<key>_per_seed``. With ``out``, each training keeps its device log,
    weights and training log in ``out/<method>`` (``out/seed<k>/<method>`` with ``seeds``).
    """
    runs: list[dict[str, Any]] = []
    for sd in seeds or [cfg.seed]:
        c = cfg if sd == cfg.seed else cfg.model_copy(update={"seed": sd})
        row: dict[str, Any] = {}
        trained: dict[str, torch.nn.Module] = {}
        for m in _methods(c):
            d = None if out is None else (out / f"seed{sd}" if seeds else out) / m
            trained[m], res = train_method(c, task, system, twin, m, out_dir=d, monitor=False,
                                           init_from=_start(c, m, trained))
            row[m] = res.test_accuracy
            if res.twin_test_accuracy is not None:
                row[f"{m}_twin"] = res.twin_test_accuracy
        runs.append(row)
    if not seeds:
        return runs[0]
    summary: dict[str, Any] = {"seeds": list(seeds)}
    for key in runs[0]:
        v = torch.tensor([r[key] for r in runs], dtype=torch.float64)
        summary[key] = float(v.mean())
        summary[f"{key}_std"] = float(v.std(unbiased=False))
        summary[f"{key}_per_seed"] = [r[key] for r in runs]
    return summary


def cross_validate(cfg: ExperimentConfig, task: ClassificationTask, system: PhysicalSystem,
                   twin: DigitalTwin | None, out: Path | None = None) -> dict[str, Any]:
    """Stratified k-fold CV of every method (same lab, same twin); mean and std of physical test accuracy. With
    ``out``, fold k's trainings keep their logs in ``out/fold<k>``."""
    folds = [_accuracies(cfg, fold, system, twin, out=None if out is None else out / f"fold{k}")
             for k, fold in enumerate(task.cv_folds(cfg.cv_folds, seed=cfg.seed))]
    summary: dict[str, Any] = {"folds": cfg.cv_folds, "per_fold": folds}
    for key in folds[0]:
        v = torch.tensor([f[key] for f in folds], dtype=torch.float64)
        summary[key] = {"mean": float(v.mean()), "std": float(v.std(unbiased=False))}
    return summary


def depth_sweep(cfg: ExperimentConfig, task: ClassificationTask, system: PhysicalSystem,
                twin: DigitalTwin | None, depths: list[int], out: Path | None = None) -> list[dict[str, Any]]:
    """Every method trained at each depth (same lab, same twin); with ``out``, depth n's logs in
    ``out/depth<n>``."""
    rows = []
    for n in depths:
        c = cfg.model_copy(deep=True)
        c.network.depth = n
        d = None if out is None else out / f"depth{n}"
        rows.append({"layers": n, **_accuracies(c, task, system, twin, cfg.sweep_seeds, out=d)})
    return rows


def imperfection_sweep(cfg: ExperimentConfig, task: ClassificationTask, scales: list[float],
                       out: Path | None = None) -> list[dict[str, Any]]:
    """For each scale: a lab with all defects scaled, a twin refitted to it, every method trained. With ``out``,
    scale s keeps its twin, its measurements and its trainings' logs in ``out/scale<s>``."""
    rows = []
    for s in scales:
        c = cfg.model_copy(deep=True)
        c.lab.imperfection_scale = s
        system = build_lab(c.lab)
        d = None if out is None else out / f"scale{s:.12g}"
        with logged(system, None if d is None else d / "device_log.h5"):
            tw = make_twin(system, c.twin, d) if any(m in ("pat", "in_silico") for m in c.methods) else None
            row: dict[str, Any] = {"scale": s}
            if tw and tw.twin.report:
                row["twin_val_nrmse"] = tw.twin.report.val_nrmse
            rows.append({**row, **_accuracies(c, task, system, tw.twin if tw else None, cfg.sweep_seeds, out=d)})
    return rows


def _without_physical(net: NetworkConfig) -> NetworkConfig:
    strip = lambda blocks: [b for b in blocks if not isinstance(b, (PhysicalBlock, ParallelBlock))]  # noqa: E731
    return NetworkConfig(depth=net.depth, stem=strip(net.stem), layer=strip(net.layer), head=strip(net.head))


def baseline_network(cfg: ExperimentConfig, task: ClassificationTask, b: DigitalBaselineConfig) -> torch.nn.Module:
    """The digital baseline's network (built by :func:`build_pieces` too, so one that cannot be built fails before
    anything is measured)."""
    if b.kind == "without_physical":
        net = _without_physical(cfg.network)
    elif b.kind == "logistic":
        net = NetworkConfig(depth=0, head=[LinearBlock(type="linear", out=task.n_classes)])
    else:
        from .networks import ActivationBlock

        blocks: list[Any] = []
        for h in b.hidden:
            blocks += [LinearBlock(type="linear", out=h), ActivationBlock(type="activation", name="relu")]
        net = NetworkConfig(depth=0, stem=blocks, head=[LinearBlock(type="linear", out=task.n_classes)])
    try:
        model = build_network(net, task.n_features, task.n_classes, None, None, seed=cfg.seed)
    except ConfigError as e:
        raise ConfigError(f"digital_baseline {b.kind!r}: {e}; use kind 'mlp' with explicit hidden widths") from e
    return model


def digital_baseline(cfg: ExperimentConfig, task: ClassificationTask, b: DigitalBaselineConfig) -> dict[str, Any]:
    """Train a purely digital classifier on the same features (no device involved)."""
    model = baseline_network(cfg, task, b)
    t = cfg.training
    tc = _train_config(cfg, epochs=b.epochs or t.epochs, lr=b.lr or t.lr, monitor_physical=False, progress=False)
    res = Trainer(model, task, "physical", tc).fit()
    refits = {k: v for k, v in res.summary().items() if k.startswith("readout_refit")}  # as the physical networks'
    return {"kind": b.kind, "parameters": count_digital_parameters(model), "test_accuracy": res.test_accuracy,
            "train_seconds": res.train_seconds, **refits}
