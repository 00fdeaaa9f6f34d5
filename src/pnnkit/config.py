"""Experiment configuration (YAML → pydantic). Unknown or invalid keys are named in a one-line error."""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from .errors import ConfigError
from .networks import NetworkConfig
from .options import StrictModel


SEED_LIMIT = 2**32
"""Seeds (and lab units, which seed a unit's fixed defects) lie in ``[0, SEED_LIMIT)``: scikit-learn takes at most
32-bit seeds (``seed`` → the cross-validation folds), and the labs and the trainer derive torch seeds from them by
multiplying with up to ~10⁶ (``1_000_003 * (unit + 1)``, ``seed * 100_003 + …``), which must stay below 2⁶⁴."""

Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT, description="0 ≤ seed < 2**32")]
Width = Annotated[int, Field(ge=1, description="hidden layer width (≥ 1)")]


class TaskConfig(StrictModel):
    """Data set: a registered task name and its loader options (e.g. ``data_dir``, ``seed``)."""

    name: str = "digits"
    options: dict[str, Any] = {}


class LabConfig(StrictModel):
    """The physical system: a registered lab, its physical ``unit`` (fixed defects), noise ``seed``, options."""

    name: str = "oscillators"
    unit: Seed = 0
    seed: Seed = 0
    imperfection_scale: float = Field(1.0, ge=0)
    options: dict[str, Any] = {}

    @field_validator("options")
    @classmethod
    def _not_a_field(cls, v: dict[str, Any]) -> dict[str, Any]:
        own = [k for k in ("unit", "seed", "imperfection_scale") if k in v]
        if own:
            raise ValueError(f"{own[0]} is set as lab.{own[0]}, not as lab.options.{own[0]}")
        return v


class TwinFitConfig(StrictModel):
    """Twin fitting: AdamW (decoupled weight_decay) with cosine decay, early stopping on a held-out split."""

    epochs: int = Field(200, gt=0)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(512, gt=0)
    val_fraction: float = Field(0.15, gt=0, le=0.5, description="share of the measurements held out for early "
                                "stopping (at least one; the rest, at least two, train)")
    patience: int = Field(20, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    fixed: list[str] = Field(default_factory=list, description="twin parameters held at their initial values "
                             "(names as in twin.named_parameters()), e.g. a physics twin's separately calibrated "
                             "constants")


class TwinConfig(StrictModel):
    """Digital twin: ``mlp`` (black box) or ``physics`` (the lab's design model with fitted calibration).

    ``samples`` measurements are taken on a ``design`` (sobol/lhs) over the declared ranges, each setting of θ
    with ``inputs_per_setting`` inputs, repeated ``repeats`` times. ``path`` loads a saved twin instead.
    """

    kind: Literal["mlp", "physics"] = "mlp"
    hidden: list[Width] = [256, 256]
    activation: Literal["silu", "tanh", "gelu"] = "silu"
    samples: int = Field(20000, ge=2)
    inputs_per_setting: int = Field(64, gt=0)
    design: Literal["sobol", "lhs", "random"] = "sobol"
    repeats: int = Field(2, ge=1)
    seed: Seed = 0
    fit: TwinFitConfig = TwinFitConfig()
    path: str | None = None

    @model_validator(mode="after")
    def _consistent_sizes(self) -> "TwinConfig":
        if self.path:  # a saved twin is loaded; nothing is measured or fitted
            return self
        if self.inputs_per_setting > self.samples:
            raise ValueError(
                f"inputs_per_setting ({self.inputs_per_setting}) is larger than samples ({self.samples}): samples is "
                f"the total number of measurements and inputs_per_setting how many of them share one setting of θ "
                f"(ceil(samples / inputs_per_setting) settings are measured), so it cannot exceed samples")
        n_val = max(1, int(round(self.fit.val_fraction * self.samples)))  # as pnnkit.twins.fit_twin splits
        if self.samples - n_val < 2:
            raise ValueError(
                f"samples ({self.samples}) with fit.val_fraction {self.fit.val_fraction} leaves "
                f"{self.samples - n_val} measurement(s) to fit on after the {n_val} held out; need at least 2")
        return self


class AugmentConfig(StrictModel):
    """Random affine distortion of each training batch (image tasks only; see :class:`pnnkit.augment.RandomAffine`).
    Each sample gets its own uniform shift in [−shift, shift] pixels per axis, rotation in [−rotate, rotate]
    degrees and zoom factor in [1 − scale, 1 + scale]; test data is never distorted."""

    shift: float = Field(0.0, ge=0, description="pixels of the task's image")
    rotate: float = Field(0.0, ge=0, description="degrees")
    scale: float = Field(0.0, ge=0, lt=1, description="relative zoom")


class TrainingConfig(StrictModel):
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
    record_measurements: bool = Field(True, description="log every device call of each method (training, "
                                      "monitoring, readout refits, final evaluation) to HDF5; false keeps "
                                      "none of them")
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
    readout_lr: float | None = Field(None, ge=0, description="AdamW lr of the readout (the digital blocks after the "
                                     "last physical layer) if not lr; 0: only the refits change it")
    init_weights: str | None = Field(None, description="weights every method starts from instead of the seeded "
                                     "initial ones: a run's METHOD/model.safetensors or checkpoint.safetensors "
                                     "of the same network (e.g. to fine-tune an earlier run)")
    pat_init: Literal["fresh", "in_silico"] = Field("fresh", description="in_silico: PAT starts from the network "
                                                    "the in_silico method trained on the twin (θ and digital "
                                                    "weights; needs in_silico in methods, which then runs first)")
    pat_epochs: int | None = Field(None, gt=0, description="PAT's epochs if not epochs (e.g. a short fine-tune "
                                   "after pat_init: in_silico)")
    pat_lr: float | None = Field(None, gt=0, description="PAT's lr if not lr (e.g. a lower lr to fine-tune after "
                                 "pat_init: in_silico); physical_lr and readout_lr, if set, still apply")


class DigitalBaselineConfig(StrictModel):
    """A digital classifier on the same features, for context.

    ``without_physical``: the experiment's own network with its physical blocks removed (same digital
    parameters); ``mlp``: an MLP with ``hidden`` widths; ``logistic``: a single linear layer.
    """

    kind: Literal["without_physical", "mlp", "logistic"] = "mlp"
    hidden: list[Width] = [32]
    epochs: int | None = Field(None, gt=0, description="default: training.epochs")
    lr: float | None = Field(None, gt=0, description="default: training.lr")
    background: bool | None = Field(
        None, description="train it in a separate process (one torch thread) while the methods train, instead of "
        "after them; the same result either way (with one torch thread in the run). Default: when this process may "
        "use 2 or more CPUs")


class ExperimentConfig(StrictModel):
    """One experiment: task, lab, twin, network and training, run for each of ``methods``."""

    name: str = "experiment"
    seed: Seed = 0
    task: TaskConfig = TaskConfig()
    lab: LabConfig = LabConfig()
    twin: TwinConfig = TwinConfig()
    network: NetworkConfig = NetworkConfig()
    training: TrainingConfig = TrainingConfig()
    methods: list[Literal["pat", "in_silico", "exact"]] = Field(["pat", "in_silico"], min_length=1)
    cv_folds: int = Field(0, ge=0, description="k-fold cross-validation of every method (0: off)")
    digital_baseline: DigitalBaselineConfig | None = None
    depth_sweep: list[Annotated[int, Field(ge=1)]] = Field(
        [], description="network depths to train every method at (same lab and twin)")
    imperfection_sweep: list[Annotated[float, Field(ge=0)]] = Field(
        [], description="imperfection scales; the twin is refitted per scale")
    sweep_seeds: list[Seed] = Field(
        [], description="network seeds (initial weights, batch order) for every sweep point; rows report the mean "
        "over seeds, its std and the per-seed values ([]: the config's seed only)")

    @field_validator("methods", "depth_sweep", "imperfection_sweep", "sweep_seeds")
    @classmethod
    def _distinct(cls, v: list[Any]) -> list[Any]:
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"each entry may be listed once; listed more than once: {', '.join(map(repr, dup))}")
        return v

    @model_validator(mode="after")
    def _starts(self) -> "ExperimentConfig":
        if self.training.pat_init == "in_silico" and "pat" in self.methods and "in_silico" not in self.methods:
            raise ValueError("training.pat_init: in_silico starts PAT from the in_silico network, but methods has "
                             "no in_silico; add it to methods, or set pat_init: fresh")
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (off) or at least 2 (folds of a cross-validation), got 1")
        studies = [k for k, on in (("cv_folds", self.cv_folds), ("depth_sweep", self.depth_sweep),
                                   ("sweep_seeds", self.sweep_seeds)) if on]
        if self.training.init_weights and studies:
            raise ValueError(f"training.init_weights cannot be used with {', '.join(studies)}: those train from "
                             "fresh networks (other folds, depths or seeds); run the study without init_weights")
        return self


def _members(tp: Any) -> tuple[list[Any], str | None]:
    """``tp`` without ``Annotated``/``None``: its union members (one, if it is no union) and the union's
    discriminator (if any)."""
    disc = None
    while typing.get_origin(tp) is Annotated:
        tp, *meta = typing.get_args(tp)
        disc = next((m.discriminator for m in meta if isinstance(m, FieldInfo) and m.discriminator), disc)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [m for a in typing.get_args(tp) if a is not type(None) for m in _members(a)[0]]
        return members, disc
    return [tp], None


def _tag_values(model: Any, disc: str) -> tuple[Any, ...]:
    field = getattr(model, "model_fields", {}).get(disc)
    return typing.get_args(field.annotation) if field is not None else ()


def _user_loc(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """The dotted path the user wrote for pydantic's error ``loc`` inside ``model`` — without the union tags
    pydantic inserts (``network.layer.0.physical.foo`` → ``network.layer.0.foo``) — and the valid keys of the
    mapping that holds its last part (for 'did you mean')."""
    path, keys, _ = _walk(model, loc)
    return path, keys


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[str], Any]:
    """:func:`_user_loc`, and the annotation found at ``loc`` (None where it could not be followed)."""
    path: list[str] = []
    tp: Any = model
    keys: list[str] = []
    for i, part in enumerate(loc):
        members, disc = _members(tp)
        if len(members) > 1:  # pydantic names the union member it tried (the tag, or the class name)
            match = [m for m in members
                     if (part in _tag_values(m, disc) if disc else getattr(m, "__name__", None) == part)]
            if len(match) == 1:
                tp = match[0]
                continue
        tp = members[0] if len(members) == 1 else None
        fields = getattr(tp, "model_fields", None)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        keys = list(fields) if fields is not None else []
        if fields is not None and part in fields:
            tp = fields[part].annotation
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
            tp = args[0]
        elif origin is dict and len(args) == 2:
            tp = args[1]
        else:
            tp = None
        path.append(str(part))
        if tp is None:
            path.extend(str(p) for p in loc[i + 1 :])
            if i < len(loc) - 1:
                keys = []
            break
    return ".".join(path), keys, tp


def _no_tag(loc: str, tp: Any, value: Any) -> str:
    """The message for a mapping of a tagged union (``network.layer`` entries) without its tag key: which key is
    missing, the tags it takes, and the keys given that no member knows (``tipe`` → did you mean ``type``?)."""
    members, disc = _members(tp)
    disc = disc or "type"
    tags = [str(t) for m in members for t in _tag_values(m, disc)]
    known = {k for m in members for k in getattr(m, "model_fields", {})}
    unknown = [k for k in (value if isinstance(value, dict) else {}) if k not in known]
    hints = []
    for k in unknown:
        near = difflib.get_close_matches(str(k), [disc, *sorted(known - {disc})], n=1)
        hints.append(f"unknown key {k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    need = f"the entry has no {disc!r} key" + (f" (one of {', '.join(tags)})" if tags else "")
    return f"{loc}: " + "; ".join([need, *hints])


def validate_config(data: Any, source: str = "config", overrides: Sequence[str] = (),
                    options: Sequence[tuple[str, str]] = ()) -> ExperimentConfig:
    """Validate a parsed YAML mapping, after the ``KEY=VALUE`` ``overrides`` (:func:`apply_overrides`) and the
    ``(OPTION, KEY=VALUE)`` overrides of command-line ``options`` (``("--unit 7", "lab.unit=7")``); raise
    :class:`ConfigError` naming the first bad key (and the overrides, as the user gave them, if any)."""
    given = [*(["--set " + ", ".join(overrides)] if overrides else []), *(label for label, _ in options)]
    if given:
        data = apply_overrides(data, [*overrides, *(item for _, item in options)])
        source += " with " + " and ".join(given)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc, keys = _user_loc(ExperimentConfig, tuple(err["loc"]))
            if err["type"] == "union_tag_not_found":  # a layer entry without 'type' (or with it misspelt)
                msgs.append(_no_tag(loc, _walk(ExperimentConfig, tuple(err["loc"]))[2], err.get("input")))
            elif err["type"] == "extra_forbidden":
                near = difflib.get_close_matches(str(err["loc"][-1]), keys, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                msgs.append(f"unknown key {loc!r}{hint}")
            else:
                msg = err["msg"].removeprefix("Value error, ") + _got(err)
                msgs.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError(_one_line(f"{source}: " + "; ".join(msgs))) from None


def _got(err: Any) -> str:
    """``, got 'TEXT'`` for text that does not parse as the number a key takes (pydantic's message does not show
    it), with the reason when YAML read a number in exponent notation (``2e4``: no dot, no exponent sign) as text."""
    value = err.get("input")
    if not err["type"].endswith("_parsing") or not isinstance(value, str):  # e.g. int_parsing, float_parsing
        return ""
    text = f" ({value!r})" if ", got " in err["msg"] else f", got {value!r}"
    if _FLOAT.fullmatch(value.strip()):
        number = float(value)
        if err["type"].startswith("int") and not number.is_integer():
            return text  # no plain spelling to suggest: the message already says an integer is needed
        plain = str(int(number)) if number.is_integer() else repr(number)
        text += f" (YAML reads {value} as text: write {plain})"
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (plain PyYAML keeps the last silently).
    Keys merged in with ``<<: *anchor`` may still be overridden."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader itself reports it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A PyYAML error as the end of a one-line message: `` at line L, column C: problem`` (1-based)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is not None and problem:
        return f" at line {mark.line + 1}, column {mark.column + 1}: {_one_line(problem)}"
    return ": " + _one_line((str(e).splitlines() or [type(e).__name__])[0])


def parse_yaml(text: str, source: str = "config") -> Any:
    """Parse YAML ``text`` like ``yaml.safe_load`` but rejecting duplicate keys; raise a one-line
    :class:`ConfigError` (``source``, line, column, problem) if it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.reader.ReaderError as e:  # a control character (e.g. NUL): binary data decoded as UTF-8
        char = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        raise ConfigError(f"{source} is not a text YAML file (control character {char} at position "
                          f"{e.position})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML{_yaml_problem(e)}") from None


_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _parse_value(text: str, item: str) -> Any:
    """A ``--set`` value as YAML (``null``, ``[a, b]``, ``{k: v}``, ``true``), with ``1e-3`` read as a number."""
    if _FLOAT.fullmatch(text.strip()):
        return float(text)  # YAML 1.1 reads 1e-3 (no dot) as a string
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML{_yaml_problem(e)}") from None


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
                    if re.fullmatch(r"-?\d+", parts[i + 1]):
                        here = ".".join(parts[: i + 1])
                        raise ConfigError(f"--set {item!r}: {here} is not in the config, so {parts[i + 1]!r} indexes "
                                          f"nothing; set the whole list instead (--set '{here}=[...]')")
                    cur[idx] = {}
                cur = cur[idx]
    return data


def load_config(path: str | Path, overrides: Sequence[str] = (),
                options: Sequence[tuple[str, str]] = ()) -> ExperimentConfig:
    """Read and validate an experiment YAML, after the ``KEY=VALUE`` ``overrides`` (:func:`apply_overrides`) and
    the command-line ``options`` (:func:`validate_config`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a YAML config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a text YAML file (not UTF-8: byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None
    return validate_config(parse_yaml(text, str(path)), str(path), overrides, options)
