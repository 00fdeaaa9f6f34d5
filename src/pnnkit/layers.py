"""Physical layers (a physical system as an ``nn.Module`` owning its θ) and small digital layers around them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .errors import ConfigError, ShapeError, TwinError
from .pat import Twin, pat_forward
from .system import PhysicalSystem, clamp_to_range, inner_bounds

Mode = Literal["pat", "in_silico", "physical", "exact"]
MODES: tuple[str, ...] = get_args(Mode)
Constraint = Literal["clamp", "sigmoid"]


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


class PhysicalLayer(nn.Module):
    """A physical system used as a network layer; owns the system's controllable parameters θ.

    Modes (see :func:`set_mode`):
      * ``pat`` — forward on the system, backward = twin VJP at the measured input (physics-aware training);
      * ``in_silico`` — forward and backward through the twin (never touches the system);
      * ``physical`` — forward on the system without gradient (deployment / evaluation);
      * ``exact`` — autograd through a differentiable simulation (to validate PAT).

    Hard ranges are enforced at the call, so the system never receives an out-of-range value:
      * inputs: ``input_constraint="clamp"`` (default) clips to ``[input_low, input_high]`` (zero gradient
        outside); ``"sigmoid"`` maps ℝ smoothly onto the range.
      * parameters: ``param_constraint="clamp"`` (default) stores θ directly, clips it at every call, and
        :func:`project_parameters` (called by the trainer after each optimizer step) projects the stored
        values back into range; ``"sigmoid"`` stores an unconstrained ``u`` with θ = low + (high−low)·σ(u).

    Args:
        system: the physical system.
        twin: differentiable model ``twin(x, params) -> y`` (needed for ``pat`` and ``in_silico``).
        mode: initial mode.
        generator: RNG for initial θ (seeded initialisation).
        overlap: in ``pat`` mode, run the twin's forward pass in a worker thread while the device measures
            (identical gradients; hides the twin's work behind slow device calls). See :func:`set_overlap`.
    """

    def __init__(
        self,
        system: PhysicalSystem,
        twin: Twin | None = None,
        *,
        mode: Mode = "pat",
        input_constraint: Constraint = "clamp",
        param_constraint: Constraint = "clamp",
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        overlap: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(system, PhysicalSystem):
            raise ConfigError("PhysicalLayer: system must be a PhysicalSystem (make_lab(...), FunctionSystem(fn, spec) "
                              f"or a subclass), got {type(system).__name__}")
        system.check_spec()
        if twin is not None and not callable(twin):
            hint = " (a path? load the twin with DigitalTwin.load)" if isinstance(twin, (str, os.PathLike)) else ""
            raise ConfigError(f"PhysicalLayer: twin must be a DigitalTwin or a function twin(x, params), got "
                              f"{type(twin).__name__}{hint}")
        if input_constraint not in ("clamp", "sigmoid") or param_constraint not in ("clamp", "sigmoid"):
            raise ConfigError("input_constraint and param_constraint must be 'clamp' or 'sigmoid'")
        self.system = system
        # The twin is shared, fitted separately and saved separately: keep it out of this module's parameters
        # and state_dict so an optimizer over ``model.parameters()`` can never train it.
        self.twin = twin
        self.mode: str = _check_mode(mode)
        self.overlap = bool(overlap)
        self.input_constraint = input_constraint
        self.param_constraint = param_constraint
        dtype = dtype or torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"{system.spec.name} layer: dtype {dtype} is not supported; use torch.float32 or "
                              "torch.float64 (a half-precision θ or input can round outside the hard ranges)")
        twin_spec = getattr(twin, "spec", None)
        if twin_spec is not None and not twin_spec.same_interface(system.spec):
            raise ConfigError(f"{system.spec.name} layer: the twin is for {twin_spec.name!r}, whose interface "
                              "differs from the system's: " + "; ".join(twin_spec.interface_differences(system.spec))
                              + " (the twin's vs the system's)")
        self.theta = nn.ParameterDict()
        for p in system.spec.params:
            if p.init is not None:
                v = torch.full(p.shape, float(p.init), dtype=dtype)
            else:
                mid, half = (p.low + p.high) / 2, (p.high - p.low) / 2 * p.init_scale
                u = torch.rand(p.shape, generator=generator, dtype=dtype)
                v = mid + half * (2 * u - 1)
            if param_constraint == "sigmoid":
                frac = ((v - p.low) / (p.high - p.low)).clamp(1e-4, 1 - 1e-4)
                v = torch.log(frac) - torch.log1p(-frac)
            self.theta[p.name] = nn.Parameter(v)

    @property
    def twin(self) -> Twin | None:
        """The digital twin (not a submodule: never in ``parameters()`` or ``state_dict()``)."""
        return self.__dict__["_twin"]

    def __setattr__(self, name: str, value: object) -> None:
        if name == "twin":  # bypass nn.Module registration on purpose
            self.__dict__["_twin"] = value
            return
        super().__setattr__(name, value)

    # --- θ and x in physical units --------------------------------------------------------------------------
    def params(self) -> dict[str, Tensor]:
        """θ in physical units, inside the hard ranges (differentiable w.r.t. the stored values)."""
        out = {}
        for p in self.system.spec.params:
            v = self.theta[p.name]
            if self.param_constraint == "sigmoid":  # the clamp only catches rounding past a bound at saturation
                out[p.name] = clamp_to_range(p.low + (p.high - p.low) * torch.sigmoid(v), p.low, p.high)
            else:
                out[p.name] = clamp_to_range(v, p.low, p.high)
        return out

    def constrain_input(self, x: Tensor) -> Tensor:
        lo, hi = self.system.spec.input_low, self.system.spec.input_high
        if self.input_constraint == "sigmoid":  # the clamp only catches rounding past a bound at saturation
            return clamp_to_range(lo + (hi - lo) * torch.sigmoid(x), lo, hi)
        return clamp_to_range(x, lo, hi)

    @torch.no_grad()
    def project_(self) -> None:
        """Project stored θ back into its hard range (no-op for the sigmoid parameterisation)."""
        if self.param_constraint != "clamp":
            return
        for p in self.system.spec.params:
            self.theta[p.name].clamp_(*inner_bounds(p.low, p.high, self.theta[p.name].dtype))

    # --- forward ------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        spec = self.system.spec
        if x.dim() != 2 or x.shape[1] != spec.input_dim:
            raise ShapeError(f"{spec.name} layer: expected input (batch, {spec.input_dim}), got {tuple(x.shape)}")
        if x.is_complex():
            raise ShapeError(f"{spec.name} layer: input is {x.dtype}; a physical layer takes real values")
        return self.run(self.constrain_input(x), self.params())

    def run(self, x: Tensor, theta: dict[str, Tensor]) -> Tensor:
        """The layer's mode applied to an already constrained ``x`` and θ in physical units (θ may be per-sample,
        ``(batch, *shape)``, where the system accepts that: see :class:`ParallelPhysical`)."""
        spec = self.system.spec
        if self.mode in ("pat", "in_silico") and self.twin is None:
            raise ConfigError(f"{spec.name} layer: mode {self.mode!r} needs a digital twin; none was given")
        if self.mode == "pat":
            return pat_forward(self.system, self.twin, x, theta, overlap=self.overlap)  # type: ignore[arg-type]
        if self.mode == "in_silico":
            y = self.twin(x, theta)  # type: ignore[misc]
            if not isinstance(y, Tensor) or tuple(y.shape) != (x.shape[0], spec.output_dim):
                got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise TwinError(f"{spec.name} layer: the twin returned {got}, expected ({x.shape[0]}, "
                                f"{spec.output_dim})")
            return y
        if self.mode == "physical":
            with torch.no_grad():
                return self.system(x, theta)
        return self.system(x, theta, grad=True)  # exact

    def extra_repr(self) -> str:
        return f"system={self.system!r}, mode={self.mode!r}" + (", overlap=True" if self.overlap else "")


class ElementwiseRescale(nn.Module):
    """Trainable elementwise affine map ``y = a ⊙ x + b`` (the paper's digital rescaling between layers).

    ``init="fixed"`` starts at ``a = scale``, ``b = bias``. ``init="data"`` (data-dependent initialisation) sets
    ``a``, ``b`` on the first batch seen by :func:`init_from_data` so that every output feature has mean ``bias``
    and standard deviation ``scale`` over that batch — the next physical layer then sees the *differences*
    between samples in its working range, however small or offset the previous layer's outputs are.
    """

    def __init__(self, dim: int, scale: float = 1.0, bias: float = 0.0, dtype: torch.dtype | None = None,
                 init: str = "fixed") -> None:
        super().__init__()
        if init not in ("fixed", "data"):
            raise ConfigError(f"rescale init must be 'fixed' or 'data', got {init!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"rescale width must be an integer ≥ 1, got {dim!r}")
        self.init = init
        self.target = (float(scale), float(bias))
        self.scale = nn.Parameter(torch.full((dim,), float(scale), dtype=dtype))
        self.bias = nn.Parameter(torch.full((dim,), float(bias), dtype=dtype))
        if init == "data":  # saved with the weights: a trained or resumed network is never re-initialised
            self.register_buffer("initialised", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.scale.shape[0]:  # broadcasting would silently apply one gain to every feature
            raise ShapeError(f"rescale of width {self.scale.shape[0]} got input of width {x.shape[-1]}")
        return x * self.scale + self.bias

    @torch.no_grad()
    def set_from_batch(self, x: Tensor, rel_floor: float = 1e-3) -> None:
        """Choose ``a``, ``b`` so that ``a ⊙ x + b`` has per-feature mean ``bias`` and std ``scale`` on ``x``.

        A feature that is (nearly) constant on the batch (std < ``rel_floor`` × the median std of the others, e.g.
        a pixel blank in every init image) carries no information to standardise by: it gets the median gain of
        the other features instead of an enormous one, so a later sample that does vary there stays in range.
        """
        if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] != self.scale.numel():
            raise ShapeError(f"rescale data init needs a batch (n ≥ 2, {self.scale.numel()}), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ShapeError("rescale data init: the batch reaching it contains NaN or inf")
        std, mean = torch.std_mean(x.to(self.scale.dtype), dim=0)
        varying = std[std > 0]
        ref = varying.median() if varying.numel() else torch.ones((), dtype=std.dtype)
        std = torch.where(std < rel_floor * ref, ref, std)
        a = self.target[0] / std
        self.scale.copy_(a)
        self.bias.copy_(self.target[1] - a * mean)
        if self.init == "data":
            self.initialised.fill_(True)

    def extra_repr(self) -> str:
        return f"dim={self.scale.numel()}" + (", init='data'" if self.init == "data" else "")


class Slice(nn.Module):
    """Keep outputs ``[start, stop)`` (e.g. the class outputs of the last physical layer)."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = int(start), int(stop)
        if not 0 <= self.start < self.stop:
            raise ConfigError(f"slice [{start}:{stop}] keeps nothing: need 0 ≤ start < stop")

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.start : self.stop]

    def extra_repr(self) -> str:
        return f"[{self.start}:{self.stop}]"


def hilbert_order(side: int) -> list[tuple[int, int]]:
    """The cells ``(row, column)`` of a ``side × side`` grid in the order of a Hilbert curve drawn on the enclosing
    power-of-two grid (cells outside the image skipped). Cells a few steps apart are mostly 2-D neighbours: on
    14 × 14, cells 4 steps apart are 2.2 pixels apart on average, against 5.6 in raster order."""
    n = 1
    while n < side:
        n *= 2
    cells = []
    for d in range(n * n):
        x = y = 0
        t, s = d, 1
        while s < n:  # standard index → (x, y) conversion, one quadrant level per pass
            rx = 1 & (t // 2)
            ry = 1 & (t ^ rx)
            if ry == 0:
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x, y, t, s = x + s * rx, y + s * ry, t // 4, s * 2
        if x < side and y < side:
            cells.append((y, x))
    return cells


PIXEL_VIEWS = ("rows", "columns", "hilbert", "hilbert_transposed")


class PixelViews(nn.Module):
    """A ``side × side`` image (flattened row by row) in several pixel orders, concatenated: ``"rows"`` keeps the
    raster order, ``"columns"`` plays the transposed image (column by column), ``"hilbert"`` follows a Hilbert
    curve (2-D neighbours stay close in time) and ``"hilbert_transposed"`` the same curve on the transposed image.
    No parameters."""

    def __init__(self, side: int, views: Sequence[str]) -> None:
        super().__init__()
        grid = torch.arange(side * side).reshape(side, side)
        curve = hilbert_order(side)
        orders = {
            "rows": grid.flatten(),
            "columns": grid.T.flatten(),
            "hilbert": torch.tensor([int(grid[r, c]) for r, c in curve]),
            "hilbert_transposed": torch.tensor([int(grid[c, r]) for r, c in curve]),
        }
        unknown = [v for v in views if v not in orders]
        if unknown or not views:
            raise ConfigError(f"pixel views must be a non-empty list of {'/'.join(PIXEL_VIEWS)}, got {list(views)!r}")
        self.side, self.views = int(side), list(views)
        self.register_buffer("index", torch.cat([orders[v] for v in views]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.side**2:
            raise ShapeError(f"pixel views: expected input (batch, {self.side ** 2}), got {tuple(x.shape)}")
        return x[:, self.index]

    def extra_repr(self) -> str:
        return f"side={self.side}, views={self.views}"


class Pool(nn.Module):
    """Average features into ``out`` groups (no parameters).

    ``order="consecutive"``: runs of neighbouring features (adaptive average pooling along the feature axis, like
    coarser detector bins). ``order="interleaved"``: feature ``j`` into group ``j mod out`` (with time bins of a
    causal device, every group then gets bins from the whole record).
    """

    def __init__(self, out: int, order: str = "consecutive") -> None:
        super().__init__()
        if order not in ("consecutive", "interleaved"):
            raise ConfigError(f"pool order must be 'consecutive' or 'interleaved', got {order!r}")
        self.out, self.order = int(out), order
        if self.out < 1:
            raise ConfigError(f"pool needs out ≥ 1, got {out}")

    def forward(self, x: Tensor) -> Tensor:
        if self.out > x.shape[1]:  # adaptive pooling would repeat inputs rather than average them
            raise ShapeError(f"pool: cannot pool width {x.shape[1]} into {self.out} groups")
        if self.order == "consecutive":
            return nn.functional.adaptive_avg_pool1d(x.unsqueeze(1), self.out).squeeze(1)
        width = x.shape[1]
        m = torch.zeros(width, self.out, device=x.device)
        m[torch.arange(width), torch.arange(width) % self.out] = 1.0
        return x @ (m / m.sum(0, keepdim=True)).to(x.dtype)  # averaging matrix: one matmul per batch

    def extra_repr(self) -> str:
        return f"out={self.out}" + (", order='interleaved'" if self.order == "interleaved" else "")


class Repeat(nn.Module):
    """The features tiled ``times`` times: ``(batch, n) → (batch, times · n)``, copy ``m`` of feature ``i`` at
    ``m · n + i`` (no parameters).

    Followed by an elementwise rescale and an interleaved :class:`Pool`, each feature then feeds ``times`` groups
    (copy ``m`` of feature ``i`` goes to group ``(m · n + i) mod out``), with its own weight in each: a sparse
    linear readout with ``times`` weights per feature.
    """

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = int(times)
        if self.times < 1:
            raise ConfigError(f"repeat needs times ≥ 1, got {times}")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ShapeError(f"repeat: expected input (batch, features), got {tuple(x.shape)}")
        return x.repeat(1, self.times)

    def extra_repr(self) -> str:
        return f"times={self.times}"


class ParallelPhysical(nn.Module):
    """``len(layers)`` physical layers side by side: split (chunks of the input) or shared input; outputs
    concatenated. See :class:`ParallelBlock`."""

    def __init__(self, layers: list[PhysicalLayer], shared: bool = False, batched: bool = False) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("parallel layer: needs at least one channel")
        wrong = next((m for m in layers if not isinstance(m, PhysicalLayer)), None)
        if wrong is not None:
            raise ConfigError(f"parallel layer: channels must be PhysicalLayers, got {type(wrong).__name__}")
        self.channels = nn.ModuleList(layers)
        self.shared = bool(shared)
        self.batched = bool(batched)
        self.in_dim = layers[0].system.spec.input_dim
        if self.batched:
            first = layers[0]
            if not getattr(first.system, "batched_params", False):
                raise ConfigError(f"parallel layer: batched channels need a system that accepts per-sample θ; "
                                  f"{first.system.spec.name} does not")
            same = all(ch.system is first.system and ch.twin is first.twin
                       and (ch.input_constraint, ch.param_constraint) == (first.input_constraint, first.param_constraint)
                       for ch in layers)
            if not same:
                raise ConfigError("parallel layer: batched channels must share one system, twin and constraints")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.channels)
        width = self.in_dim if self.shared else k * self.in_dim
        if x.dim() != 2 or x.shape[1] != width:
            raise ShapeError(f"parallel layer: expected input (batch, {width}), got {tuple(x.shape)}")
        chunks = [x] * k if self.shared else list(x.split(self.in_dim, dim=1))
        if not self.batched:
            return torch.cat([ch(xk) for ch, xk in zip(self.channels, chunks)], dim=1)
        first = self.channels[0]
        if any(ch.mode != first.mode for ch in self.channels):
            raise ConfigError("parallel layer: batched channels must all be in the same mode")
        b = x.shape[0]
        xs = torch.cat([ch.constrain_input(xk) for ch, xk in zip(self.channels, chunks)], dim=0)
        thetas = [ch.params() for ch in self.channels]
        theta = {n: torch.cat([t[n].expand(b, *t[n].shape) for t in thetas], dim=0) for n in thetas[0]}
        y = first.run(xs, theta)  # one device (and twin) call: k·batch samples, each with its channel's θ
        return torch.cat(y.split(b, dim=0), dim=1)

    def extra_repr(self) -> str:
        return (f"channels={len(self.channels)}, input={'shared' if self.shared else 'split'}"
                + (", batched=True" if self.batched else ""))


def physical_layers(model: nn.Module) -> Iterator[PhysicalLayer]:
    """All physical layers in ``model``, in registration order."""
    return (m for m in model.modules() if isinstance(m, PhysicalLayer))


def set_mode(model: nn.Module, mode: Mode) -> nn.Module:
    """Switch every physical layer in ``model`` to ``mode``; returns ``model``."""
    _check_mode(mode)
    for layer in physical_layers(model):
        layer.mode = mode
    return model


def set_overlap(model: nn.Module, overlap: bool = True) -> nn.Module:
    """Turn twin/device overlap on or off for every physical layer in ``model`` (see :class:`PhysicalLayer`)."""
    for layer in physical_layers(model):
        layer.overlap = bool(overlap)
    return model


@contextlib.contextmanager
def using_mode(model: nn.Module, mode: Mode) -> Iterator[nn.Module]:
    """Temporarily switch every physical layer of ``model`` to ``mode``."""
    old = [(layer, layer.mode) for layer in physical_layers(model)]
    set_mode(model, mode)
    try:
        yield model
    finally:
        for layer, m in old:
            layer.mode = m


def project_parameters(model: nn.Module) -> None:
    """Project the θ of every physical layer back into its hard range (call after each optimizer step)."""
    for layer in physical_layers(model):
        layer.project_()


class _InitDone(Exception):
    """Raised by the last data-initialised rescale to stop the initialisation forward pass early."""


@torch.no_grad()
def init_from_data(model: nn.Module, x: Tensor) -> int:
    """Data-dependent initialisation: one forward pass of ``x`` through ``model`` in its current mode, setting every
    ``ElementwiseRescale(init="data")`` from the batch that reaches it (upstream layers first, so each layer sees
    the already-initialised network before it); rescales initialised before (trained, resumed) are left alone.
    In ``pat``/``physical`` mode this measures on the device (the
    queries are counted as usual); in ``in_silico`` mode it only uses the twin. Returns the number of rescales set.
    """
    targets = [m for m in model.modules()
               if isinstance(m, ElementwiseRescale) and m.init == "data" and not bool(m.initialised)]
    if not targets:
        return 0
    left = len(targets)

    def hook(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        nonlocal left
        mod.set_from_batch(args[0])  # type: ignore[operator]
        left -= 1
        if not left:  # all set: the rest of the network (and its device queries) is not needed
            raise _InitDone

    hooks = [m.register_forward_pre_hook(hook) for m in targets]
    try:
        model(x)
    except _InitDone:
        pass
    finally:
        for h in hooks:
            h.remove()
    return len(targets)
