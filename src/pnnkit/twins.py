"""Digital twins: differentiable models ``f_m(x, θ) ≈ f_p(x, θ)`` fitted to measurements, saved as safetensors + JSON."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import operator
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from .checkpoint import write_safetensors
from .config import SEED_LIMIT
from .errors import ConfigError, DataError, ShapeError, TwinError
from .measurements import MeasurementSet, keep_existing
from .spec import SystemSpec

TWIN_FORMAT = "pnnkit.twin/1"
_REGISTRY: dict[str, type["DigitalTwin"]] = {}


def register_twin(cls: type["DigitalTwin"]) -> type["DigitalTwin"]:
    """Class decorator: make a twin class loadable by name from a saved file."""
    _REGISTRY[cls.kind] = cls
    return cls


def twin_kinds() -> list[str]:
    return sorted(_REGISTRY)


def _import_lab_twin_kinds() -> None:
    """Physics twins are defined (and registered) in their lab modules, which load lazily: import them all, so a
    saved twin of any built-in kind loads without its lab having been used first."""
    import importlib

    from .labs import _LAB_MODULES

    for module in _LAB_MODULES.values():
        importlib.import_module(module)


def _flat_params(spec: SystemSpec, params: dict[str, Tensor], batch: int) -> Tensor:
    """Concatenate parameter blocks to ``(batch, n_params)`` (shared θ is broadcast over the batch)."""
    cols = []
    for p in spec.params:
        v = params[p.name]
        if v.dim() == len(p.shape):
            v = v.reshape(1, p.numel).expand(batch, p.numel)
        else:
            v = v.reshape(batch, p.numel)
        cols.append(v)
    return torch.cat(cols, dim=1) if cols else torch.zeros(batch, 0)


class DigitalTwin(nn.Module):
    """Base class: a differentiable ``forward(x, params) -> y`` for a system with ``spec``.

    Subclasses set ``kind`` (registry name) and implement ``config()`` (JSON-able constructor kwargs beyond the
    spec) so a saved twin can be rebuilt. ``report`` holds the last fit's validation metrics.
    """

    kind: ClassVar[str] = "base"

    def __init__(self, spec: SystemSpec) -> None:
        super().__init__()
        self.spec = spec
        self.report: FitReport | None = None

    def config(self) -> dict[str, Any]:
        return {}

    def __call__(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """``forward(x, params)`` after checking shapes against :attr:`spec` (θ shared, or one row per sample)."""
        spec = self.spec
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != spec.input_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"twin of {spec.name!r}: x must have shape (batch, {spec.input_dim}), got {got}")
        missing = [n for n in spec.param_names if n not in params]
        if missing:
            raise ShapeError(f"twin of {spec.name!r}: parameters {missing} missing (it takes {spec.param_names})")
        for p in spec.params:
            v = params[p.name]
            if not isinstance(v, Tensor) or tuple(v.shape) not in (p.shape, (x.shape[0], *p.shape)):
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ShapeError(f"twin of {spec.name!r}: parameter {p.name!r} must have shape {p.shape} or "
                                 f"{(x.shape[0], *p.shape)}, got {got}")
        return super().__call__(x, params)

    # --- persistence --------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors weights) and ``path`` with suffix ``.json`` (kind, spec, config, report).
        A twin already saved there is kept: both files are renamed ``<stem>.<its time>``, as measurements are."""
        path = _twin_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keep_existing(path, companions=(".json",))
        tensors = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        write_safetensors(tensors, path, metadata={"format": TWIN_FORMAT, "kind": self.kind})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        meta = {
            "format": TWIN_FORMAT,
            "kind": self.kind,
            "spec": self.spec.to_dict(),
            "config": self.config(),
            "report": asdict(self.report) if self.report else None,
            "weights": path.name,
            "sha256": digest,
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        return path

    @staticmethod
    def load(path: str | Path, expect_spec: SystemSpec | None = None) -> "DigitalTwin":
        """Load a twin saved by :meth:`save`; raise :class:`TwinError` if it is missing, corrupt or mismatched."""
        wpath = _twin_path(path)
        jpath = wpath.with_suffix(".json")
        if wpath.exists() and not jpath.exists():
            raise TwinError(f"{wpath} has no {jpath.name} beside it, so it is not a twin saved by pnnkit (a twin is "
                            "a .safetensors + .json pair; network weights are model/checkpoint.safetensors)")
        for p in (wpath, jpath):
            if not p.exists():
                raise TwinError(f"twin file missing: {p}")
        try:
            meta = json.loads(jpath.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise TwinError(f"twin description {jpath} is not a text JSON file (byte 0x{e.object[e.start]:02x} at "
                            f"offset {e.start})") from None
        except json.JSONDecodeError as e:
            raise TwinError(f"twin description {jpath} is not valid JSON: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != TWIN_FORMAT:
            raise TwinError(f"{jpath} is not a pnnkit twin description (format {TWIN_FORMAT} expected)")
        if hashlib.sha256(wpath.read_bytes()).hexdigest() != meta.get("sha256"):
            raise TwinError(f"twin weights {wpath} do not match the checksum in {jpath.name} (corrupt or replaced)")
        kind = meta.get("kind")
        if not isinstance(kind, str):
            raise TwinError(f"{jpath}: the twin kind must be a name, got {kind!r}")
        if kind not in _REGISTRY:
            _import_lab_twin_kinds()
        if kind not in _REGISTRY:
            raise TwinError(f"unknown twin kind {kind!r} in {jpath}; known: {twin_kinds()}")
        try:
            spec = SystemSpec.from_dict(meta["spec"])
        except (TypeError, KeyError, ConfigError) as e:
            raise TwinError(f"twin {jpath} has an invalid system spec: {e}") from e
        if expect_spec is not None and not spec.same_interface(expect_spec):
            raise TwinError(
                f"twin {wpath.name} was fitted to system {spec.name!r}, which does not match {expect_spec.name!r}: "
                + "; ".join(spec.interface_differences(expect_spec)) + " (the twin's vs the system's)"
            )
        try:
            tensors = load_file(str(wpath))
        except (SafetensorError, OSError) as e:
            raise TwinError(f"cannot read twin weights {wpath}: {e}") from e
        try:
            twin = _REGISTRY[kind].from_config(spec, meta.get("config") or {})
        except (TypeError, ValueError, ConfigError) as e:  # a config key the class does not take, a wrong type
            raise TwinError(f"twin {jpath} has an invalid config for a {kind} twin: {e}") from None
        try:
            twin.load_state_dict(tensors, strict=True)
        except RuntimeError as e:  # torch's first line only says "Error(s) in loading state_dict": keep the details
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
            raise TwinError(f"twin weights {wpath} do not fit a {kind} twin: {detail[:300]}") from e
        if meta.get("report"):
            try:
                twin.report = FitReport(**meta["report"])
            except TypeError as e:
                raise TwinError(f"twin {jpath} has an invalid fit report: {e}") from None
        twin.eval().requires_grad_(False)
        return twin

    @classmethod
    def from_config(cls, spec: SystemSpec, config: dict[str, Any]) -> "DigitalTwin":
        return cls(spec, **config)


def _twin_path(path: str | Path) -> Path:
    """The ``.safetensors`` file of the twin pair named by ``path`` (either file of the pair, or no suffix)."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise TwinError(f"{path} is a directory; give a twin's .safetensors (or .json) file")
    if path.suffix not in ("", ".safetensors", ".json"):
        raise TwinError(f"{path} is not a twin: a twin is the .safetensors + .json pair written by "
                        "DigitalTwin.save and `pnnkit twin fit`")
    return path.with_suffix(".safetensors")


@register_twin
class MLPTwin(DigitalTwin):
    """Black-box twin: MLP on ``[x, θ]`` mapped from their hard ranges to [−1, 1]; outputs standardised.

    Args:
        spec: the system's spec.
        hidden: widths of the hidden layers.
        activation: ``"silu"``, ``"tanh"`` or ``"gelu"`` (smooth, so the VJP is meaningful).
    """

    kind: ClassVar[str] = "mlp"
    _ACT: ClassVar[dict[str, type[nn.Module]]] = {"silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}

    def __init__(self, spec: SystemSpec, hidden: tuple[int, ...] | list[int] = (256, 256), activation: str = "silu") -> None:
        super().__init__(spec)
        if activation not in self._ACT:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(self._ACT)}")
        try:
            widths = [operator.index(h) for h in hidden]
        except TypeError:
            widths = None
        if widths is None or isinstance(hidden, str) or any(isinstance(h, bool) or w < 1 for h, w in zip(hidden, widths)):
            raise ConfigError(f"MLPTwin: hidden must be a sequence of integer widths ≥ 1 (e.g. (256, 256)), got "
                              f"{hidden!r}")
        self.hidden = tuple(widths)
        self.activation = activation
        n_in = spec.input_dim + spec.n_params
        lows = [spec.input_low] * spec.input_dim
        highs = [spec.input_high] * spec.input_dim
        for p in spec.params:
            lows += [p.low] * p.numel
            highs += [p.high] * p.numel
        lo, hi = torch.tensor(lows), torch.tensor(highs)
        self.register_buffer("in_center", (lo + hi) / 2)
        self.register_buffer("in_halfwidth", (hi - lo) / 2)
        self.register_buffer("out_mean", torch.zeros(spec.output_dim))
        self.register_buffer("out_std", torch.ones(spec.output_dim))
        layers: list[nn.Module] = []
        width = n_in
        for h in self.hidden:
            layers += [nn.Linear(width, h), self._ACT[activation]()]
            width = h
        layers.append(nn.Linear(width, spec.output_dim))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "activation": self.activation}

    def set_output_stats(self, y: Tensor) -> None:
        self.out_mean.copy_(y.mean(0))
        self.out_std.copy_(y.std(0).clamp_min(1e-8 * (y.abs().max() + 1e-30)).clamp_min(1e-12))

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Computed in the twin's own precision (its weights'); returned in ``x``'s, like a device's reading."""
        dt = self.in_center.dtype
        z = torch.cat([x.to(dt), _flat_params(self.spec, params, x.shape[0]).to(dt)], dim=1)
        z = (z - self.in_center) / self.in_halfwidth
        return (self.net(z) * self.out_std + self.out_mean).to(x.dtype)


@dataclass
class FitReport:
    """Validation metrics of a twin fit. NRMSE = RMSE / std of the measured output (per output and pooled)."""

    train_samples: int
    val_samples: int
    val_nrmse: float
    val_nrmse_per_output: list[float]
    epochs: int
    noise_floor_nrmse: float | None = None
    seconds: float | None = None  #: wall time of the fit (s); None in twins saved before it was recorded

    def summary(self) -> str:
        s = f"twin: {self.train_samples} train / {self.val_samples} val samples, val NRMSE {self.val_nrmse:.4f}"
        if self.noise_floor_nrmse is not None:
            s += f" (measurement-noise floor {self.noise_floor_nrmse:.4f})"
        if self.seconds is not None:
            s += f", fitted in {self.seconds:.1f} s"
        return s


def nrmse(pred: Tensor, target: Tensor) -> tuple[float, list[float]]:
    """Pooled and per-output RMSE normalised by the std of ``target`` over samples."""
    err = (pred - target).pow(2).mean(0)
    var = target.var(0, unbiased=False).clamp_min(1e-30)
    per = (err / var).sqrt()
    pooled = math.sqrt(float(err.sum() / var.sum()))
    return pooled, [float(v) for v in per]


def fit_twin(
    twin: DigitalTwin,
    data: MeasurementSet,
    *,
    epochs: int = 200,
    lr: float = 2e-3,
    batch_size: int = 512,
    val_fraction: float = 0.15,
    patience: int = 20,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    fixed: Collection[str] = (),
) -> FitReport:
    """Fit ``twin`` to ``data``: MSE on standardised outputs, AdamW (decoupled ``weight_decay``), cosine LR, early
    stopping on a held-out split.

    ``fixed``: names of the twin's parameters (as in ``twin.named_parameters()``) held at their current values.

    Restores the best validation weights, freezes the twin (eval mode, no grad) and returns its :class:`FitReport`
    (also stored as ``twin.report``).
    """
    if not twin.spec.same_interface(data.spec):
        a, b = twin.spec, data.spec
        raise TwinError(f"twin for {a.name!r} (in {a.input_dim}, out {a.output_dim}, params {a.param_names}) cannot "
                        f"be fitted to measurements of {b.name!r} (in {b.input_dim}, out {b.output_dim}, params "
                        f"{b.param_names}): " + "; ".join(a.interface_differences(b)) + " (the twin's vs the data's)")
    for name, v in {"epochs": epochs, "batch_size": batch_size, "patience": patience, "seed": seed}.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ConfigError(f"fit_twin: {name} must be an integer, got {v!r}")
    if (epochs < 1 or batch_size < 1 or patience < 1 or not 0 < lr < math.inf or not 0 < val_fraction < 1
            or not 0 <= weight_decay < math.inf or not 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"fit_twin: need epochs, batch_size, patience ≥ 1, a finite lr > 0, 0 < val_fraction < 1, "
                          f"a finite weight_decay ≥ 0 and 0 ≤ seed < 2**32; got epochs={epochs}, "
                          f"batch_size={batch_size}, patience={patience}, lr={lr}, val_fraction={val_fraction}, "
                          f"weight_decay={weight_decay}, seed={seed}")
    names = dict(twin.named_parameters())
    fixed = (fixed,) if isinstance(fixed, str) else tuple(fixed)
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ConfigError(f"fit_twin: fixed names parameters the twin does not have: {', '.join(unknown)} (its "
                          f"parameters: {', '.join(names) or 'none'})")
    bad = int((~torch.isfinite(data.y)).flatten(1).any(1).sum()) + int((~torch.isfinite(data.x)).any(1).sum())
    if bad:
        raise DataError(f"fit_twin: {bad} measurements contain NaN or inf; drop them first (a log's "
                        "to_measurements() does)")
    t0 = time.perf_counter()
    n = len(data)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 2:
        raise ConfigError(f"too few measurements ({n}) to fit a twin: {n_val} held out for validation leaves "
                          f"{n - n_val} to fit on; need at least 2")
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    dtype = next((p.dtype for p in twin.parameters()), torch.get_default_dtype())
    x = data.x.to(dtype)
    y = data.y_mean.to(dtype)
    params = {k: v.to(dtype) for k, v in data.params.items()}
    if isinstance(twin, MLPTwin):
        twin.set_output_stats(y[tr_idx])
    scale = y[tr_idx].std(0).clamp_min(1e-12)
    twin.train().requires_grad_(True)
    for name in fixed:
        names[name].requires_grad_(False)
    trainable = [p for p in twin.parameters() if p.requires_grad]
    if not trainable:
        raise TwinError("twin has no trainable parameters to fit" + (" (all are fixed)" if names else ""))
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(tr_idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    def predict(idx: Tensor) -> Tensor:
        outs = []
        for i in range(0, len(idx), 4096):
            b = idx[i : i + 4096]
            outs.append(twin(x[b], {k: v[b] for k, v in params.items()}))
        return torch.cat(outs)

    best, best_state, stale_epochs, epoch = math.inf, copy.deepcopy(twin.state_dict()), 0, 0
    it = range(epochs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"fitting {twin.kind} twin", unit="epoch")
    for epoch in it:
        twin.train()
        order = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
        for i in range(0, len(order), batch_size):
            b = order[i : i + batch_size]
            pred = twin(x[b], {k: v[b] for k, v in params.items()})
            loss = ((pred - y[b]) / scale).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        twin.eval()
        with torch.no_grad():
            val = float((((predict(val_idx) - y[val_idx]) / scale).pow(2)).mean())
        if not math.isfinite(val):
            raise TwinError(f"twin fit diverged at epoch {epoch} (validation loss {val}); lower the learning rate")
        if val < best - 1e-9:
            best, best_state, stale_epochs = val, copy.deepcopy(twin.state_dict()), 0
        else:
            stale_epochs += 1
            if stale_epochs >= patience:
                break
    twin.load_state_dict(best_state)
    twin.eval().requires_grad_(False)
    with torch.no_grad():
        pooled, per = nrmse(predict(val_idx), y[val_idx])
    floor = None
    noise = data.noise_std()
    if noise is not None:
        var = y[val_idx].var(0, unbiased=False).clamp_min(1e-30)
        floor = math.sqrt(float((noise.to(dtype).pow(2) / data.y.shape[1]).sum() / var.sum()))
    twin.report = FitReport(len(tr_idx), len(val_idx), pooled, per, epoch + 1, floor, time.perf_counter() - t0)
    return twin.report


def evaluate_twin(twin: DigitalTwin, data: MeasurementSet) -> tuple[float, list[float]]:
    """NRMSE of ``twin`` on a (fresh) measurement set."""
    dtype = next((p.dtype for p in twin.parameters()), torch.get_default_dtype())
    with torch.no_grad():
        pred = twin(data.x.to(dtype), {k: v.to(dtype) for k, v in data.params.items()})
    return nrmse(pred, data.y_mean.to(dtype))
