"""Training a physical neural network in any mode, with logs, checkpoints and resume."""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .allocator import auto_retain
from .augment import RandomAffine
from .checkpoint import check_stored_values, load_checkpoint, save_checkpoint
from .config import SEED_LIMIT
from .errors import ConfigError, DataError, DivergenceError
from .layers import (
    Mode, init_from_data, physical_layers, project_parameters, set_mode, set_overlap, using_mode,
)
from .options import check_options
from .system import PhysicalSystem
from .tasks import ClassificationTask

#: With ``refit_readout``, the checkpoint of the network as trained, saved beside ``checkpoint`` before the end
#: refit replaces its readout (to compare the two readouts on the same features).
PRE_REFIT_CHECKPOINT = "checkpoint_before_readout_refit"


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: passes over the training set.
        batch_size: samples per step (one device call per physical layer per step in ``pat`` mode).
        lr: Adam learning rate for all parameters (θ in physical units, digital weights).
        physical_lr: learning rate for physical θ if different from ``lr``.
        weight_decay: AdamW weight decay on digital parameters.
        lr_schedule: ``"cosine"`` or ``"constant"``.
        seed: training seed: batch order, the ``init_samples`` subset and the augmentation draws. The initial θ
            and digital weights are drawn when the network is built (``pnnkit run`` builds it from the config's
            seed; from Python, seed torch before building it). The lab has its own seeds.
        monitor_physical: measure test accuracy on the physical system after every epoch (costs eval queries).
        monitor_every: with ``monitor_physical``, measure it only after every ``monitor_every``-th epoch and the
            last one (1: every epoch).
        progress: show a progress bar.
        init_samples: training samples (a seeded random subset) for the data-dependent initialisation of
            ``ElementwiseRescale(init="data")`` layers at the start of a fresh run (in ``pat`` mode these are
            device queries, counted with the training queries).
        record_measurements: with an ``out_dir``, append every device call of the method (training, monitoring,
            readout refits and the final evaluation, in every mode; inputs, θ, measured outputs) to
            ``out_dir/device_log[_k].h5`` — nothing measured is lost.
        augment: random affine distortion of each training batch, ``{"shift": px, "rotate": deg, "scale":
            fraction}`` (see :class:`pnnkit.augment.RandomAffine`); needs an image task (``task.meta["image_shape"]``).
            Test data and the data-dependent initialisation are never distorted.
        overlap: in ``pat`` mode, run each physical layer's twin forward pass in a worker thread while the device
            measures (:func:`pnnkit.pat.pat_forward`): bit-identical gradients, less wall time when device calls
            wait on instruments or subprocesses (e.g. ngspice). ``True``/``False`` set it on every physical layer;
            ``None`` (default) leaves each layer's own setting (``PhysicalLayer(overlap=...)``) alone.
        refit_readout: after the last epoch, hold everything up to the last physical layer fixed, take its
            outputs on the whole training set once (measured on the device in ``pat`` mode — these queries count
            as training queries and are logged — from the twin in ``in_silico`` mode) and fit the digital modules
            after it (the readout) with full-batch L-BFGS, at most 500 iterations (:func:`refit_readout`). Given the
            features the readout problem is often nearly convex, and minibatch Adam can leave it short of its
            optimum (docs/experiments/mnist.md, round 7). With an ``out_dir``, the network before the refit is
            kept as ``checkpoint_before_readout_refit.safetensors/.json``.
        refit_l2: L2 penalty of that fit on the readout parameters' change (sum of squares).
        refit_readout_start: also fit the readout the same way once before the first epoch (after the data-dependent
            initialisation; measured on the device in ``pat`` mode), so that θ trains against a readout at its
            optimum from the first step instead of one that minibatch Adam is still fitting.
        refit_readout_every: also fit the readout the same way after every ``k``-th epoch (0: never), on the
            features that epoch's own forward passes produced (measured in ``pat`` mode; no extra device queries).
            θ moves during the epoch, so the early batches' features are slightly stale. With ``refit_readout`` the
            last epoch is left to that refit's measured pass.
        refit_every_max_iter: L-BFGS iterations at most for each of those refits (each starts from the readout
            fitted after the previous epoch; the start and end refits take up to 500).
        readout_lr: Adam learning rate of the readout's parameters if different from ``lr`` (0 leaves the readout
            to the refits alone).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.01
    physical_lr: float | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    seed: int = 0
    monitor_physical: bool = True
    monitor_every: int = 1
    progress: bool = True
    record_measurements: bool = True
    init_samples: int = 256
    augment: dict[str, float] | None = None
    overlap: bool | None = None
    refit_readout: bool = False
    refit_l2: float = 1e-4
    refit_readout_start: bool = False
    refit_readout_every: int = 0
    refit_every_max_iter: int = 500
    readout_lr: float | None = None


@dataclass
class TrainResult:
    mode: str
    test_accuracy: float
    twin_test_accuracy: float | None
    physical_queries: int
    eval_queries: int
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    readout_refit: dict[str, Any] | None = None
    readout_refit_start: dict[str, Any] | None = None
    readout_refits_epoch: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {
            "test_accuracy": self.test_accuracy,
            "twin_test_accuracy": self.twin_test_accuracy,
            "physical_queries": self.physical_queries,
            "eval_queries": self.eval_queries,
            "train_seconds": self.train_seconds,
            "epochs": len(self.history),
        }
        if self.readout_refit_start is not None:
            out["readout_refit_start"] = self.readout_refit_start
        if self.readout_refits_epoch:
            out["readout_refits_epoch"] = self.readout_refits_epoch
        if self.readout_refit is not None:
            out["readout_refit"] = self.readout_refit
        return out


def _systems(model: nn.Module) -> list[PhysicalSystem]:
    out: list[PhysicalSystem] = []
    for layer in physical_layers(model):
        if all(layer.system is not s for s in out):
            out.append(layer.system)
    return out


def _queries(model: nn.Module) -> int:
    return sum(s.queries for s in _systems(model))


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, mode: Mode, batch_size: int = 512) -> Tensor:
    """Class predictions of ``model`` in ``mode`` (``physical`` = measured on the device)."""
    was_training = model.training
    model.eval()
    try:
        with using_mode(model, mode):
            preds = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    finally:  # a device error mid-way leaves the model in the mode it came in
        model.train(was_training)
    return preds


def accuracy(model: nn.Module, x: Tensor, y: Tensor, mode: Mode, batch_size: int = 512) -> float:
    return float((predict(model, x, mode, batch_size) == y).float().mean())


def confusion_matrix(pred: Tensor, y: Tensor, n_classes: int) -> list[list[int]]:
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long)
    cm.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    return cm.tolist()


def split_readout(model: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """``(body, readout)`` of a sequential ``model``: everything up to and including the last module that holds a
    physical layer, and the digital modules after it (the whole model is the readout if it has no physical layer)."""
    if not isinstance(model, nn.Sequential):
        raise ConfigError("the readout options (refit_readout*, readout_lr) need an nn.Sequential network (a pnnkit "
                          f"network), got {type(model).__name__}")
    last = max((i for i, m in enumerate(model) if any(True for _ in physical_layers(m))), default=-1)
    return model[: last + 1], model[last + 1 :]


def refit_readout(
    model: nn.Module, x: Tensor, y: Tensor, mode: Mode, l2: float = 1e-4, max_iter: int = 500, batch_size: int = 512,
) -> dict[str, Any]:
    """Fit the digital modules after the last physical layer of a sequential ``model`` (all of it if it has none)
    to ``(x, y)`` with full-batch L-BFGS (:func:`fit_readout`), the features held fixed.

    The features (the last physical layer's outputs, and whatever precedes it) are computed once, in ``mode``
    (``"pat"`` measures them on the device, like PAT's forward pass). Returns the training loss and accuracy
    before and after, the number of parameters refitted and the device queries spent.
    """
    body, readout = split_readout(model)
    if not any(p.requires_grad for p in readout.parameters()):  # before spending any device queries
        raise ConfigError("refit_readout: there are no trainable digital parameters after the last physical layer")
    q0 = _queries(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), using_mode(model, "physical" if mode == "pat" else mode):
            feats = torch.cat([body(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        queries = _queries(model) - q0
        info = fit_readout(readout, feats, y, l2, max_iter)
    finally:  # a device error or a diverged fit leaves the model in the mode it came in
        model.train(was_training)
    return {**info, "device_queries": queries}


def fit_readout(readout: nn.Module, feats: Tensor, y: Tensor, l2: float = 1e-4, max_iter: int = 500) -> dict[str, Any]:
    """Fit ``readout``'s trainable parameters p to the fixed features ``feats`` and labels ``y`` by full-batch L-BFGS
    on cross-entropy + ``l2`` · Σ (p − p₀)². The penalty pulls toward the parameters p₀ before the fit (not toward
    0, since a data-initialised rescale's scale can be in the thousands)."""
    params = [p for p in readout.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("refit_readout: there are no trainable digital parameters after the last physical layer")
    auto_retain()  # every evaluation allocates and frees full-batch temporaries (pnnkit.allocator)
    start = [p.detach().clone() for p in params]

    def objective() -> tuple[Tensor, Tensor]:
        logits = readout(feats)
        return F.cross_entropy(logits, y) + l2 * sum((p - p0).square().sum() for p, p0 in zip(params, start)), logits

    with torch.no_grad():
        loss0, logits0 = objective()
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss, _ = objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss1, logits1 = objective()
    if not torch.isfinite(loss1):
        raise DivergenceError(f"refit_readout: the loss became {float(loss1)}; raise refit_l2")
    return {
        "parameters": sum(p.numel() for p in params),
        "l2": l2,
        "train_loss_before": float(loss0),
        "train_loss_after": float(loss1),
        "train_accuracy_before": float((logits0.argmax(1) == y).float().mean()),
        "train_accuracy_after": float((logits1.argmax(1) == y).float().mean()),
    }


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    phys = [p for layer in physical_layers(model) for p in layer.theta.values()]
    ids = {id(p) for p in phys}
    readout: list[nn.Parameter] = []
    if cfg.readout_lr is not None:
        readout = [p for p in split_readout(model)[1].parameters() if p.requires_grad and id(p) not in ids]
        ids |= {id(p) for p in readout}
    digital = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    groups = []
    if phys:
        groups.append({"params": phys, "lr": cfg.lr if cfg.physical_lr is None else cfg.physical_lr,
                       "weight_decay": 0.0})
    if digital:
        groups.append({"params": digital, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    if readout:
        groups.append({"params": readout, "lr": cfg.readout_lr, "weight_decay": cfg.weight_decay})
    if not groups:
        raise ConfigError("model has no trainable parameters")
    return torch.optim.AdamW(groups)


def augmentation(spec: dict[str, float] | None, task: ClassificationTask) -> RandomAffine | None:
    """The :class:`RandomAffine` that ``TrainConfig.augment`` asks for on ``task`` (None when off); a one-line
    :class:`ConfigError` for unknown settings or a task without ``meta["image_shape"]``."""
    if not spec:
        return None
    unknown = set(spec) - {"shift", "rotate", "scale"}
    if unknown:
        raise ConfigError(f"augment: unknown setting(s) {sorted(unknown)}; use shift, rotate, scale")
    shape = task.meta.get("image_shape")
    if shape is None:
        raise ConfigError(f"augment needs an image task; task {task.name!r} has no meta['image_shape']")
    aug = RandomAffine((int(shape[0]), int(shape[1])), **{k: float(v) for k, v in spec.items()})
    return aug if aug.active else None


class _FeatureRecorder:
    """Records what reaches a sequential model's readout (the output of its last module holding a physical layer,
    or the model's input if it has none) in every forward pass, detached; ``labels`` is filled by the caller."""

    def __init__(self, model: nn.Module) -> None:
        body, _ = split_readout(model)
        self.feats: list[Tensor] = []
        self.labels: list[Tensor] = []
        if len(body):
            self.handle = body[-1].register_forward_hook(lambda m, i, o: self.feats.append(o.detach()))
        else:
            self.handle = model.register_forward_pre_hook(lambda m, i: self.feats.append(i[0].detach()))

    def close(self) -> tuple[Tensor, Tensor]:
        self.handle.remove()
        return torch.cat(self.feats), torch.cat(self.labels)


def attach_device_logs(model: nn.Module, directory: Path, fresh: bool, name: str = "device_log") -> list[Any]:
    """Append every call of each physical system in ``model`` to ``directory/<name>[_k].h5`` (k-th system) until
    :func:`detach_device_logs`. ``fresh``: a new run, so an existing file is first kept under another name."""
    from .measurements import MeasurementLog, keep_existing

    logs: list[Any] = []
    systems = _systems(model)
    try:
        for k, s in enumerate(systems):
            path = directory / f"{name}{'' if k == 0 else f'_{k}'}.h5"
            if fresh:
                keep_existing(path)
            try:
                logs.append(MeasurementLog(path, s.spec))
            except DataError as e:  # a damaged log, or not this system's: kept under another name, a new one begun
                kept = keep_existing(path)
                print(f"note: {e}; it is kept as {kept} and a new log begins", file=sys.stderr)
                logs.append(MeasurementLog(path, s.spec))
            s.push_log(logs[-1])
    except BaseException:  # the logs opened so far go back: each system keeps the log it had before
        detach_device_logs(model, logs)
        raise
    return logs


def detach_device_logs(model: nn.Module, logs: list[Any]) -> None:
    """Close the logs of :func:`attach_device_logs`; each system goes back to the log it had before (if any)."""
    for s, lg in zip(_systems(model), logs):
        s.pop_log()
        if lg is not None:
            lg.close()


def _check_settings(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its values of the annotated types (``3.0`` → 3 for an int), or a one-line error for settings
    that mean nothing: another type, a fraction or a boolean for a count, a non-finite number, a value out of
    range (checked before any device time is spent)."""
    cfg = replace(cfg, **check_options("training", TrainConfig, asdict(cfg)))
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"training: option {f.name!r} must be a finite number, got {v}")
    if not 0 <= cfg.seed < SEED_LIMIT:
        raise ConfigError(f"training: option 'seed' must be in 0 … 2**32 − 1, got {cfg.seed}")
    for name in ("weight_decay", "refit_l2"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be ≥ 0, got {getattr(cfg, name)}")
    for name in ("epochs", "batch_size", "init_samples"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be ≥ 1, got {getattr(cfg, name)}")
    if not cfg.lr >= 0:
        raise ConfigError(f"lr must be ≥ 0 (0 freezes the network), got {cfg.lr}")
    for name in ("physical_lr", "readout_lr"):
        v = getattr(cfg, name)
        if v is not None and not v >= 0:
            raise ConfigError(f"{name} must be ≥ 0 (0 freezes those parameters), got {v}")
    return cfg


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s first floating-point parameter (what its inputs must have), or None."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _check_task(task: ClassificationTask, dtype: torch.dtype | None) -> ClassificationTask:
    """The task's tensors fit a classification of a network with parameters of ``dtype``: non-empty, matching
    lengths, features of that dtype, integer labels 0 … n_classes − 1. Returns the task with its labels as int64
    (what the loss and the confusion matrix index with)."""
    for part in ("train", "test"):
        x, y = getattr(task, f"x_{part}"), getattr(task, f"y_{part}")
        for name, v in ((f"x_{part}", x), (f"y_{part}", y)):
            if not isinstance(v, torch.Tensor):
                raise ConfigError(f"task {task.name!r}: {name} must be a torch.Tensor, got {type(v).__name__} "
                                  "(convert with torch.as_tensor)")
        if x.dim() != 2:
            raise ConfigError(f"task {task.name!r}: x_{part} must be 2-D (samples, features), got shape "
                              f"{tuple(x.shape)}")
        if y.dim() != 1:
            raise ConfigError(f"task {task.name!r}: y_{part} must be 1-D class indices, got shape {tuple(y.shape)}"
                              + (" (one-hot labels? use y.argmax(1))" if y.dim() == 2 else ""))
        if len(x) == 0:
            raise ConfigError(f"task {task.name!r}: the {part} set is empty")
        if len(x) != len(y):
            raise ConfigError(f"task {task.name!r}: {len(x)} {part} samples but {len(y)} labels")
        if dtype is not None and x.dtype != dtype:
            hint = {torch.float32: "x.float()", torch.float64: "x.double()"}.get(dtype, f"x.to({dtype})")
            raise ConfigError(f"task {task.name!r}: x_{part} is {x.dtype} but the network's parameters are {dtype} "
                              f"(convert with {hint})")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).any(dim=1).sum())
            raise ConfigError(f"task {task.name!r}: x_{part} contains NaN or inf ({bad} of {len(x)} samples)")
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ConfigError(f"task {task.name!r}: {part} labels must be integers (class indices), got {y.dtype}")
        if int(y.min()) < 0 or int(y.max()) >= task.n_classes:
            raise ConfigError(f"task {task.name!r}: {part} labels must lie in 0 … {task.n_classes - 1} "
                              f"({task.n_classes} classes), got {int(y.min())} … {int(y.max())}")
    if task.x_test.shape[1] != task.x_train.shape[1]:
        raise ConfigError(f"task {task.name!r}: x_test has {task.x_test.shape[1]} features but x_train "
                          f"{task.x_train.shape[1]}")
    if task.y_train.dtype == task.y_test.dtype == torch.int64:
        return task
    return replace(task, y_train=task.y_train.long(), y_test=task.y_test.long())


class Trainer:
    """Train ``model`` on ``task`` in ``mode``; test accuracy is always measured on the physical system.

    Writes to ``out_dir`` (if given): ``log.csv``, TensorBoard events in ``tb/``, and ``checkpoint.*`` after every
    epoch (and before its monitoring pass). ``resume=True`` continues from the checkpoint there (same final
    parameters as an uninterrupted run with the same seeds, for labs whose noise state is checkpointable).
    """

    def __init__(
        self,
        model: nn.Module,
        task: ClassificationTask,
        mode: Mode,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        self.model, self.task, self.mode = model, task, mode
        self.cfg = _check_settings(config or TrainConfig())
        self.out_dir = Path(out_dir) if out_dir else None
        if self.out_dir is not None and self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"out_dir {self.out_dir} is a file, not a directory for the run's logs and checkpoints")
        self.task = task = _check_task(task, _float_dtype(model))
        has_physical = any(True for _ in physical_layers(model))
        if mode not in ("pat", "in_silico", "exact", "physical") or (mode == "physical" and has_physical):
            raise ConfigError(f"training mode must be 'pat', 'in_silico' or 'exact', got {mode!r}"
                              + (" ('physical' trains only networks without physical layers: it has no gradient "
                                 "through the device)" if mode == "physical" else ""))
        set_mode(model, mode)
        if self.cfg.overlap is not None:
            set_overlap(model, self.cfg.overlap)
        if mode == "pat" and not has_physical:
            raise ConfigError("pat mode needs at least one PhysicalLayer in the model")
        self.opt = _optimizer(model, self.cfg)
        steps = self.cfg.epochs * math.ceil(len(task.x_train) / self.cfg.batch_size)
        self.sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, steps))
            if self.cfg.lr_schedule == "cosine"
            else torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)
        )
        if self.cfg.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"lr_schedule must be 'cosine' or 'constant', got {self.cfg.lr_schedule!r}")
        self.augment = augmentation(self.cfg.augment, task)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_queries = 0
        self.eval_queries = 0
        self.train_seconds = 0.0
        self.readout_refit: dict[str, Any] | None = None
        self.readout_refit_start: dict[str, Any] | None = None
        if self.cfg.monitor_every < 1:
            raise ConfigError(f"monitor_every must be ≥ 1, got {self.cfg.monitor_every}")
        if self.cfg.refit_readout_every < 0:
            raise ConfigError(f"refit_readout_every must be ≥ 0, got {self.cfg.refit_readout_every}")
        if self.cfg.refit_every_max_iter < 1:
            raise ConfigError(f"refit_every_max_iter must be ≥ 1, got {self.cfg.refit_every_max_iter}")
        self.readout_refits_epoch: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None  # the final evaluation, as read back from a checkpoint on resume
        # an epoch trained and checkpointed whose test-set measurement (and log row) is still to come
        self.unmonitored: dict[str, Any] | None = None
        # an epoch trained but not yet refitted (refit_readout_every): its loss, correct count, measured features
        self.pending_refit: dict[str, Any] | None = None

    # --- checkpoints ----------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint" if self.out_dir else None

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "mode": self.mode,
            "model": dict(self.model.state_dict()),
            "optimizer": self.opt.state_dict(),
            "scheduler": {k: v for k, v in self.sched.state_dict().items() if k != "lr_lambdas"},
            "systems": [s.get_state() for s in _systems(self.model)],
            "history": self.history,
            "train_queries": self.train_queries,
            "eval_queries": self.eval_queries,
            "train_seconds": self.train_seconds,
            "readout_refit": self.readout_refit,
            "readout_refit_start": self.readout_refit_start,
            "readout_refits_epoch": self.readout_refits_epoch,
            "config": asdict(self.cfg),
            "final": self.final,
            "unmonitored_epoch": self.unmonitored,
            "pending_refit": self.pending_refit,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        if st.get("mode") != self.mode:
            raise ConfigError(f"checkpoint was written in mode {st.get('mode')!r}, not {self.mode!r}")
        if isinstance(st.get("model"), dict):  # θ edited or damaged on disk never reaches the device
            check_stored_values(self.model, st["model"], self.checkpoint_path.with_suffix(".safetensors"))
        try:
            self.model.load_state_dict(st["model"])
        except RuntimeError as e:  # torch's message spans lines: keep it on one
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
            raise ConfigError(f"the checkpoint in {self.out_dir} does not fit this network ({detail[:300]}); "
                              "resume with the config it was started with, or start a new run") from None
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict({**self.sched.state_dict(), **st["scheduler"]})
        for s, ss in zip(_systems(self.model), st["systems"]):
            s.set_state(ss)
        self.epoch = int(st["epoch"])
        self.history = list(st["history"])
        self.train_queries = int(st["train_queries"])
        self.eval_queries = int(st["eval_queries"])
        self.train_seconds = float(st["train_seconds"])
        self.readout_refit = st.get("readout_refit")
        self.readout_refit_start = st.get("readout_refit_start")
        self.readout_refits_epoch = list(st.get("readout_refits_epoch") or [])
        self.final = st.get("final")
        self.unmonitored = st.get("unmonitored_epoch")
        self.pending_refit = st.get("pending_refit")

    # --- loop ----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``cfg.epochs`` (resuming from the checkpoint if asked), then evaluate on the physical system."""
        self.train(resume=resume)
        return self.result()

    def train(self, resume: bool = False, stop_after: int | None = None) -> None:
        """The training loop only: to ``cfg.epochs``, or ``stop_after`` more epochs (e.g. an interruption)."""
        cfg, task, model = self.cfg, self.task, self.model
        auto_retain()  # freed step temporaries stay with the process for the next step (pnnkit.allocator)
        if resume and self.checkpoint_path and self.checkpoint_path.with_suffix(".json").exists():
            self.load_state(load_checkpoint(self.checkpoint_path))
        writer = csv_file = None
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out_dir / "tb"))
            new = not (self.out_dir / "log.csv").exists() or self.epoch == 0
            csv_file = open(self.out_dir / "log.csv", "w" if new else "a", newline="")
            fields = ["epoch", "train_loss", "train_accuracy", "test_accuracy_physical", "test_accuracy_twin",
                      "physical_queries", "seconds"]
            log = csv.DictWriter(csv_file, fieldnames=fields, extrasaction="ignore")
            if new:
                log.writeheader()
        n = len(task.x_train)
        steps = math.ceil(n / cfg.batch_size)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.epochs * steps, initial=self.epoch * steps, desc=f"train[{self.mode}]", unit="step",
                       leave=False)
        end = cfg.epochs if stop_after is None else min(cfg.epochs, self.epoch + stop_after)
        recorder: _FeatureRecorder | None = None
        logs: list[Any] = []

        def finish_epoch(row: dict[str, Any]) -> None:
            """The epoch's test-set measurement, its log row, and the checkpoint with both."""
            if self._monitored():
                q1 = _queries(model)
                row["test_accuracy_physical"] = accuracy(model, task.x_test, task.y_test, "physical")
                self.eval_queries += _queries(model) - q1
            self.history.append(row)
            self.unmonitored = None
            if bar:
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", test=f"{row.get('test_accuracy_physical', float('nan')):.3f}")
            if writer:
                for k, v in row.items():
                    if k != "epoch" and v is not None:
                        writer.add_scalar(f"{self.mode}/{k}", v, self.epoch)
                log.writerow(row)
                csv_file.flush()
            if self.checkpoint_path:
                save_checkpoint(self.state(), self.checkpoint_path)

        def epoch_refit(feats: Tensor, labels: Tensor) -> None:
            """The per-epoch readout refit (``refit_readout_every``) on the features the epoch just measured."""
            t1 = time.perf_counter()
            info = fit_readout(split_readout(model)[1], feats, labels, cfg.refit_l2, cfg.refit_every_max_iter)
            info["seconds"] = time.perf_counter() - t1
            self.readout_refits_epoch.append({"epoch": self.epoch + 1, **info})
            if writer:
                writer.add_scalar(f"{self.mode}/refit_epoch_train_accuracy", info["train_accuracy_after"],
                                  self.epoch + 1)

        def close_epoch(tot_loss: float, tot_correct: int) -> None:
            """The trained epoch's log row, its twin accuracy, the checkpoint and the monitoring pass."""
            self.pending_refit = None
            self.epoch += 1
            row: dict[str, Any] = {
                "epoch": self.epoch,
                "train_loss": tot_loss / n,
                "train_accuracy": tot_correct / n,
                "physical_queries": self.train_queries,
                "seconds": self.train_seconds,
            }
            if self.mode == "in_silico":
                row["test_accuracy_twin"] = accuracy(model, task.x_test, task.y_test, "in_silico")
            if self.checkpoint_path and self._monitored():
                # the epoch's training is on disk before the test set is measured: a stop in that pass loses
                # none of it (resume measures the test set from this state, as the uninterrupted run did)
                self.unmonitored = row
                save_checkpoint(self.state(), self.checkpoint_path)
            finish_epoch(row)

        try:
            logs = self._attach_device_logs(fresh=self.epoch == 0)
            if self.pending_refit is not None:  # resumed after a stop in that epoch's readout refit: refit now
                p = self.pending_refit
                t0 = time.perf_counter()
                # fresh (aligned) copies: a tensor read from the checkpoint file can sit at any offset, and CPU
                # kernels round differently on unaligned data; the refit then matches the uninterrupted run's bits
                epoch_refit(p["features"].clone(), p["labels"].clone())
                self.train_seconds += time.perf_counter() - t0
                close_epoch(p["train_loss"], p["train_correct"])
            if self.unmonitored is not None:  # resumed after a stop in that epoch's monitoring: measure it now
                finish_epoch(self.unmonitored)
            if self.epoch < end:  # data-dependent init of rescales not yet initialised (a no-op for most networks)
                q0 = _queries(model)
                g = torch.Generator().manual_seed(cfg.seed * 100_003 + 99_991)
                sub = torch.randperm(n, generator=g)[: max(2, min(n, cfg.init_samples))]
                model.train()
                if init_from_data(model, task.x_train[sub]):
                    self.train_queries += _queries(model) - q0
                if cfg.refit_readout_start and self.epoch == 0 and self.readout_refit_start is None:
                    self.readout_refit_start = self._refit(writer, "refit_start_train_accuracy")
            while self.epoch < end:
                t0 = time.perf_counter()
                q0 = _queries(model)
                model.train()
                order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch))
                g_aug = torch.Generator().manual_seed(cfg.seed * 100_003 + 50_021 + self.epoch)
                tot_loss, tot_correct = 0.0, 0
                k = cfg.refit_readout_every
                last = self.epoch + 1 == cfg.epochs
                refit_now = k > 0 and (self.epoch + 1) % k == 0 and not (last and cfg.refit_readout)
                recorder = _FeatureRecorder(model) if refit_now else None
                for i in range(0, n, cfg.batch_size):
                    idx = order[i : i + cfg.batch_size]
                    xb, yb = task.x_train[idx], task.y_train[idx]
                    if self.augment is not None:
                        xb = self.augment(xb, g_aug)
                    logits = model(xb)
                    if recorder is not None:
                        recorder.labels.append(yb)
                    if logits.dim() != 2 or logits.shape[1] != task.n_classes:
                        raise ConfigError(f"the network's output has shape {tuple(logits.shape)}, but task "
                                          f"{task.name!r} has {task.n_classes} classes: its last block must give "
                                          f"(batch, {task.n_classes})")
                    loss = F.cross_entropy(logits, yb)
                    if not torch.isfinite(loss):
                        raise DivergenceError(f"loss became {loss.item()} at epoch {self.epoch + 1} (counted as in "
                                              "log.csv, from 1); lower the lr")
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    self.sched.step()
                    project_parameters(model)
                    tot_loss += float(loss.detach()) * len(idx)
                    tot_correct += int((logits.argmax(1) == yb).sum())
                    if bar:
                        bar.update(1)
                self.train_queries += _queries(model) - q0
                if recorder is not None:
                    feats, labels = recorder.close()
                    if self.checkpoint_path:  # the trained epoch and what it measured, on disk before the refit:
                        # a stop in the refit loses none of it (resume refits from them)
                        self.train_seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        self.pending_refit = {"train_loss": tot_loss, "train_correct": tot_correct,
                                              "features": feats, "labels": labels}
                        save_checkpoint(self.state(), self.checkpoint_path)
                    epoch_refit(feats, labels)
                self.train_seconds += time.perf_counter() - t0
                close_epoch(tot_loss, tot_correct)
            if cfg.refit_readout and self.epoch == cfg.epochs and self.readout_refit is None:
                if self.checkpoint_path:  # the network as trained, before the end refit replaces its readout
                    save_checkpoint(self.state(), self.checkpoint_path.with_name(PRE_REFIT_CHECKPOINT))
                self.readout_refit = self._refit(writer, "refit_train_accuracy")
                if self.checkpoint_path:
                    save_checkpoint(self.state(), self.checkpoint_path)
        finally:
            if recorder is not None:
                recorder.handle.remove()  # idempotent: also after an interrupted epoch
            detach_device_logs(self.model, logs)
            if bar:
                bar.close()
            if writer:
                writer.close()
            if csv_file:
                csv_file.close()

    def _monitored(self) -> bool:
        """Whether the test set is measured on the physical system after the epoch just trained."""
        cfg = self.cfg
        return cfg.monitor_physical and (self.epoch % cfg.monitor_every == 0 or self.epoch == cfg.epochs)

    def _attach_device_logs(self, fresh: bool) -> list[Any]:
        """With an ``out_dir`` and ``record_measurements``: every device call of the method (training, monitoring,
        readout refits, the final evaluation; any mode) goes to ``device_log[_k].h5`` (:func:`attach_device_logs`)."""
        if not self.out_dir:
            return []
        if not self.cfg.record_measurements:  # the user's opt-out: not into a log attached outside either
            systems = _systems(self.model)
            for s in systems:
                s.push_log(None)
            return [None] * len(systems)
        return attach_device_logs(self.model, self.out_dir, fresh)

    def _refit(self, writer: Any, tag: str) -> dict[str, Any]:
        """:func:`refit_readout` on the whole training set in this trainer's mode; its time and device queries
        count as training."""
        t0 = time.perf_counter()
        info = refit_readout(self.model, self.task.x_train, self.task.y_train, self.mode, self.cfg.refit_l2)
        info["seconds"] = time.perf_counter() - t0
        self.train_queries += info["device_queries"]
        self.train_seconds += info["seconds"]
        if writer:
            writer.add_scalar(f"{self.mode}/{tag}", info["train_accuracy_after"], self.epoch)
        return info

    def result(self) -> TrainResult:
        """Evaluate the trained network on the physical system. With an ``out_dir``, the result and the systems'
        states after it go into the checkpoint, so resuming a finished run returns it without measuring the test
        set again (and the lab's noise continues as in an uninterrupted run)."""
        if self.final is not None and self.epoch == self.cfg.epochs:  # read back from the checkpoint on resume
            done, self.final = self.final, None
            return TrainResult(**done)
        task, model = self.task, self.model
        q1 = _queries(model)
        logs = self._attach_device_logs(fresh=False)
        try:
            pred = predict(model, task.x_test, "physical")
        finally:
            detach_device_logs(self.model, logs)
        self.eval_queries += _queries(model) - q1
        acc = float((pred == task.y_test).float().mean())
        twin_acc = accuracy(model, task.x_test, task.y_test, "in_silico") if self.mode == "in_silico" else None
        set_mode(model, self.mode)
        res = TrainResult(
            self.mode, acc, twin_acc, self.train_queries, self.eval_queries, self.train_seconds, list(self.history),
            confusion_matrix(pred, task.y_test, task.n_classes), self.readout_refit, self.readout_refit_start,
            list(self.readout_refits_epoch),
        )
        if self.checkpoint_path is not None and self.epoch == self.cfg.epochs:
            save_checkpoint({**self.state(), "final": asdict(res)}, self.checkpoint_path)
        return res
