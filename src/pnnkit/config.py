"""Experiment configuration (YAML → pydantic). Unknown or invalid keys are named in a one-line error."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .networks import NetworkConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    """Data set: a registered task name and its loader options (e.g. ``data_dir``, ``seed``)."""

    name: str = "digits"
    options: dict[str, Any] = {}


class LabConfig(_Strict):
    """The physical system: a registered lab, its physical ``unit`` (fixed defects), noise ``seed``, options."""

    name: str = "oscillators"
    unit: int = 0
    seed: int = 0
    imperfection_scale: float = Field(1.0, ge=0)
    options: dict[str, Any] = {}


class TwinFitConfig(_Strict):
    """Twin fitting: Adam with cosine decay, early stopping on a held-out split."""

    epochs: int = Field(200, gt=0)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(512, gt=0)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    patience: int = Field(20, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class TwinConfig(_Strict):
    """Digital twin: ``mlp`` (black box) or ``physics`` (the lab's design model with fitted calibration).

    ``samples`` measurements are taken on a ``design`` (sobol/lhs) over the declared ranges, each setting of θ
    with ``inputs_per_setting`` inputs, repeated ``repeats`` times. ``path`` loads a saved twin instead.
    """

    kind: Literal["mlp", "physics"] = "mlp"
    hidden: list[int] = [256, 256]
    activation: Literal["silu", "tanh", "gelu"] = "silu"
    samples: int = Field(20000, ge=2)
    inputs_per_setting: int = Field(64, gt=0)
    design: Literal["sobol", "lhs", "random"] = "sobol"
    repeats: int = Field(2, ge=1)
    seed: int = 0
    fit: TwinFitConfig = TwinFitConfig()
    path: str | None = None


class AugmentConfig(_Strict):
    """Random affine distortion of each training batch (image tasks only; see :class:`pnnkit.augment.RandomAffine`).
    Each sample gets its own uniform shift in [−shift, shift] pixels per axis, rotation in [−rotate, rotate]
    degrees and zoom factor in [1 − scale, 1 + scale]; test data is never distorted."""

    shift: float = Field(0.0, ge=0, description="pixels of the task's image")
    rotate: float = Field(0.0, ge=0, description="degrees")
    scale: float = Field(0.0, ge=0, lt=1, description="relative zoom")


class TrainingConfig(_Strict):
    """Optimisation (see :class:`pnnkit.training.TrainConfig`)."""

    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(0.01, gt=0)
    physical_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    monitor_physical: bool = True
    monitor_every: int = Field(1, ge=1, description="with monitor_physical: measure the test accuracy on the lab "
                               "after every monitor_every-th epoch and the last")
    record_measurements: bool = Field(True, description="log every device call during training to HDF5")
    init_samples: int = Field(256, ge=2, description="training samples for rescale layers with init: data")
    augment: AugmentConfig | None = Field(None, description="training-batch augmentation (image tasks)")
    overlap: bool = Field(False, description="pat: twin forward pass in a thread while the device measures")
    refit_readout: bool = Field(False, description="after training, fit the digital readout (everything after the "
                                "last physical layer) to the training set's features with L-BFGS")
    refit_l2: float = Field(1e-4, ge=0, description="L2 penalty of the readout refit on the change of the "
                            "readout's parameters")
    refit_readout_start: bool = Field(False, description="also fit the readout that way once before the first epoch "
                                      "(after the data init), so θ trains against a readout at its optimum")
    refit_readout_every: int = Field(0, ge=0, description="also fit it after every k-th epoch, on the features that "
                                     "epoch's forward passes produced (no extra queries; 0: off; with refit_readout "
                                     "the last epoch is left to that)")
    refit_every_max_iter: int = Field(500, ge=1, description="L-BFGS iterations at most for each of those refits")
    readout_lr: float | None = Field(None, ge=0, description="Adam lr of the readout (the digital blocks after the "
                                     "last physical layer) if not lr; 0: only the refits change it")


class DigitalBaselineConfig(_Strict):
    """A digital classifier on the same features, for context.

    ``without_physical``: the experiment's own network with its physical blocks removed (same digital
    parameters); ``mlp``: an MLP with ``hidden`` widths; ``logistic``: a single linear layer.
    """

    kind: Literal["without_physical", "mlp", "logistic"] = "mlp"
    hidden: list[int] = [32]
    epochs: int | None = Field(None, gt=0, description="default: training.epochs")
    lr: float | None = Field(None, gt=0, description="default: training.lr")


class ExperimentConfig(_Strict):
    """One experiment: task, lab, twin, network and training, run for each of ``methods``."""

    name: str = "experiment"
    seed: int = 0
    task: TaskConfig = TaskConfig()
    lab: LabConfig = LabConfig()
    twin: TwinConfig = TwinConfig()
    network: NetworkConfig = NetworkConfig()
    training: TrainingConfig = TrainingConfig()
    methods: list[Literal["pat", "in_silico", "exact"]] = ["pat", "in_silico"]
    cv_folds: int = Field(0, ge=0, description="k-fold cross-validation of every method (0: off)")
    digital_baseline: DigitalBaselineConfig | None = None
    depth_sweep: list[int] = Field([], description="network depths to train every method at (same lab and twin)")
    imperfection_sweep: list[float] = Field([], description="imperfection scales; the twin is refitted per scale")
    sweep_seeds: list[int] = Field(
        [], description="network seeds (initial weights, batch order) for every sweep point; rows report the mean "
        "over seeds, its std and the per-seed values ([]: the config's seed only)")


def _fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc`` inside ``model`` (for 'did you mean')."""
    cur: Any = model
    for part in loc[:-1]:
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            return []
        cur = f.annotation
    return list(getattr(cur, "model_fields", {}))


def validate_config(data: Any, source: str = "config", overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Validate a parsed YAML mapping, after the ``KEY=VALUE`` ``overrides`` (:func:`apply_overrides`); raise
    :class:`ConfigError` naming the first bad key (and the overrides, if any)."""
    if overrides:
        data = apply_overrides(data, overrides)
        source += " with --set " + ", ".join(overrides)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                key = str(err["loc"][-1])
                near = difflib.get_close_matches(key, _fields(ExperimentConfig, tuple(err["loc"])), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                msgs.append(f"unknown key {loc!r}{hint}")
            else:
                msgs.append(f"{loc}: {err['msg']}")
        raise ConfigError(f"{source}: " + "; ".join(msgs)) from None


_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _parse_value(text: str, item: str) -> Any:
    """A ``--set`` value as YAML (``null``, ``[a, b]``, ``{k: v}``, ``true``), with ``1e-3`` read as a number."""
    if _FLOAT.fullmatch(text.strip()):
        return float(text)  # YAML 1.1 reads 1e-3 (no dot) as a string
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {str(e).splitlines()[0]}") from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """Apply ``KEY=VALUE`` overrides to a parsed config mapping (a deep copy; the input is not changed).

    ``KEY`` is a dotted path (``training.epochs``, ``task.options.validation``; an integer indexes a list:
    ``network.layer.0.channels``). Missing mappings on the way are created; ``VALUE`` is parsed as YAML, so
    ``methods=[in_silico]`` sets a list and ``digital_baseline=null`` clears a section. Unknown keys are reported
    when the result is validated.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or any(not p for p in parts):
            raise ConfigError(f"--set expects KEY=VALUE with a dotted KEY (e.g. training.epochs=3), got {item!r}")
        if not isinstance(data, dict):
            raise ConfigError(f"--set {item!r}: the config is not a mapping")
        cur: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[:i]) or "the config"
            if isinstance(cur, list):
                if not re.fullmatch(r"-?\d+", part) or not -len(cur) <= int(part) < len(cur):
                    raise ConfigError(f"--set {item!r}: {where} is a list of {len(cur)}, so {part!r} is not an index")
                idx: Any = int(part)
            elif isinstance(cur, dict):
                idx = part
            else:
                raise ConfigError(f"--set {item!r}: {where} is {cur!r}, not a mapping or list")
            if last:
                cur[idx] = _parse_value(text, item)
            else:
                if isinstance(cur, dict) and cur.get(idx) is None:
                    cur[idx] = {}
                cur = cur[idx]
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate an experiment YAML, after the ``KEY=VALUE`` ``overrides`` (:func:`apply_overrides`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return validate_config(data, str(path), overrides)
