"""Building deep physical / hybrid networks from a small declarative description."""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import torch
from pydantic import Field
from torch import nn

from .errors import ConfigError
from .layers import ElementwiseRescale, ParallelPhysical, PhysicalLayer, PixelViews, Pool, Repeat, Slice
from .options import StrictModel
from .pat import Twin
from .system import PhysicalSystem


class PhysicalBlock(StrictModel):
    """One physical layer: the lab, with its own trainable θ (same device reused layer after layer)."""

    type: Literal["physical"]
    input_constraint: Literal["clamp", "sigmoid"] = "clamp"
    param_constraint: Literal["clamp", "sigmoid"] = "clamp"


class ParallelBlock(StrictModel):
    """One physical layer made of ``channels`` uses of the same lab side by side, each with its own θ
    (the paper's several physical channels / sub-layers per layer).

    ``input: split`` (default) cuts the incoming features into ``channels`` consecutive chunks of the lab's
    ``input_dim`` (the incoming width must be ``channels · input_dim``): channel k drives the device with chunk k.
    ``input: shared`` drives every channel with the same incoming features (width ``input_dim``). The channels'
    outputs are concatenated (width ``channels · output_dim``). Each channel is a separate device call per batch
    (``channels`` queries per sample); ``without_physical`` baselines drop the block like a ``physical`` one.
    ``batched: true`` sends all channels to the device (and its twin) as one call of ``channels × batch`` samples,
    each with its own channel's θ: same queries, fewer calls (faster where a call has a fixed cost, e.g. a
    simulator's per-step overhead); the device's noise is then drawn in a different order than with separate calls.
    Needs a lab that accepts per-sample θ.
    """

    type: Literal["parallel"]
    channels: int = Field(ge=1)
    input: Literal["split", "shared"] = "split"
    batched: bool = False
    input_constraint: Literal["clamp", "sigmoid"] = "clamp"
    param_constraint: Literal["clamp", "sigmoid"] = "clamp"


class RescaleBlock(StrictModel):
    """Trainable elementwise ``a ⊙ x + b``: initialised to ``a = scale``, ``b = bias`` (``init: fixed``), or
    (``init: data``) so that its outputs have per-feature mean ``bias`` and std ``scale`` on a batch of training
    data at the start of training (see :func:`pnnkit.layers.init_from_data`)."""

    type: Literal["rescale"]
    scale: float = 1.0
    bias: float = 0.0
    init: Literal["fixed", "data"] = "fixed"


class LinearBlock(StrictModel):
    """Digital dense layer to ``out`` features."""

    type: Literal["linear"]
    out: int = Field(gt=0)
    bias: bool = True


class SliceBlock(StrictModel):
    """Keep features ``[start, stop)``."""

    type: Literal["slice"]
    start: int = Field(0, ge=0)
    stop: int = Field(gt=0)


class PoolBlock(StrictModel):
    """Average features into ``out`` groups (no parameters).

    ``order: consecutive`` (default) averages runs of neighbouring features (like coarser detector bins);
    ``order: interleaved`` puts feature ``j`` into group ``j mod out`` — with a time-binned physical output, class
    ``c`` then averages bins ``c, c + out, c + 2·out, …`` spread over the whole record (a causal device's late bins
    only see the end of the drive; interleaving gives every class early and late bins alike). Preceded by an
    elementwise ``rescale``, either order is a sparse linear readout with one weight per feature.
    """

    type: Literal["pool"]
    out: int = Field(gt=0)
    order: Literal["consecutive", "interleaved"] = "consecutive"


class RepeatBlock(StrictModel):
    """The incoming features tiled ``times`` times (no parameters): width ``times × n``.

    ``[repeat, rescale, pool (interleaved)]`` makes each feature feed ``times`` groups with its own weight in each
    (copy ``m`` of feature ``i`` goes to group ``(m·n + i) mod out``): a sparse linear readout with ``times``
    weights per feature instead of one.
    """

    type: Literal["repeat"]
    times: int = Field(ge=2)


class ViewsBlock(StrictModel):
    """The incoming square image's pixels in several playback orders, concatenated (no parameters).

    ``rows``: raster order, row by row (the features' own order); ``columns``: column by column (the transposed
    image); ``hilbert``: along a Hilbert curve (pixels a few steps apart in time are 2-D neighbours);
    ``hilbert_transposed``: the same curve over the transposed image. A time-multiplexed device (circuit, plate)
    mixes pixels that are played close together in time, so a ``columns`` view gives it vertical neighbourhoods
    where ``rows`` gives horizontal ones, and ``hilbert`` compact patches. Output width
    ``len(views) × n_pixels``; follow it with a ``parallel`` block of split channels.
    """

    type: Literal["views"]
    views: list[Literal["rows", "columns", "hilbert", "hilbert_transposed"]] = Field(min_length=1)


class ActivationBlock(StrictModel):
    """Digital elementwise nonlinearity."""

    type: Literal["activation"]
    name: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu"


Block = Annotated[
    Union[PhysicalBlock, ParallelBlock, RescaleBlock, LinearBlock, SliceBlock, PoolBlock, ViewsBlock, RepeatBlock,
          ActivationBlock],
    Field(discriminator="type"),
]


class NetworkConfig(StrictModel):
    """``stem`` once, then ``layer`` repeated ``depth`` times, then ``head`` (whose last width = classes)."""

    depth: int = Field(1, ge=0)
    stem: list[Block] = []
    layer: list[Block] = [PhysicalBlock(type="physical"), RescaleBlock(type="rescale")]
    head: list[Block] = []

    def blocks(self) -> list[Block]:
        return [*self.stem, *(b for _ in range(self.depth) for b in self.layer), *self.head]


_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def build_network(
    cfg: NetworkConfig,
    n_features: int,
    n_classes: int,
    system: PhysicalSystem | None,
    twin: Twin | None,
    *,
    seed: int = 0,
) -> nn.Sequential:
    """Instantiate the network; checks every width and names the block where they disagree."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # digital Linear init
    mods: list[nn.Module] = []
    width = n_features
    for i, b in enumerate(cfg.blocks()):
        if isinstance(b, PhysicalBlock):
            if system is None:
                raise ConfigError(f"network block {i} is physical but no system was given")
            if width != system.spec.input_dim:
                raise ConfigError(
                    f"network block {i} (physical): incoming width {width} ≠ system input_dim {system.spec.input_dim}"
                    " — insert a 'linear' or 'slice' block before it"
                )
            mods.append(PhysicalLayer(system, twin, input_constraint=b.input_constraint,
                                      param_constraint=b.param_constraint, generator=gen))
            width = system.spec.output_dim
        elif isinstance(b, ParallelBlock):
            if system is None:
                raise ConfigError(f"network block {i} is physical (parallel) but no system was given")
            spec = system.spec
            need = spec.input_dim if b.input == "shared" else b.channels * spec.input_dim
            if width != need:
                raise ConfigError(
                    f"network block {i} (parallel, {b.channels} channels, input {b.input}): incoming width {width} ≠ "
                    f"{need}" + ("" if b.input == "shared" else f" = {b.channels} × system input_dim {spec.input_dim}")
                )
            chans = [PhysicalLayer(system, twin, input_constraint=b.input_constraint,
                                   param_constraint=b.param_constraint, generator=gen) for _ in range(b.channels)]
            mods.append(ParallelPhysical(chans, shared=b.input == "shared", batched=b.batched))
            width = b.channels * spec.output_dim
        elif isinstance(b, RescaleBlock):
            mods.append(ElementwiseRescale(width, b.scale, b.bias, init=b.init))
        elif isinstance(b, LinearBlock):
            mods.append(nn.Linear(width, b.out, bias=b.bias))
            width = b.out
        elif isinstance(b, SliceBlock):
            if b.stop > width or b.start >= b.stop:
                raise ConfigError(f"network block {i} (slice): [{b.start}:{b.stop}] does not fit width {width}")
            mods.append(Slice(b.start, b.stop))
            width = b.stop - b.start
        elif isinstance(b, PoolBlock):
            if b.out > width:
                raise ConfigError(f"network block {i} (pool): cannot pool width {width} into {b.out} groups")
            mods.append(Pool(b.out, order=b.order))
            width = b.out
        elif isinstance(b, RepeatBlock):
            mods.append(Repeat(b.times))
            width = b.times * width
        elif isinstance(b, ViewsBlock):
            side = math.isqrt(width)
            if side * side != width:
                raise ConfigError(f"network block {i} (views): incoming width {width} is not a square image")
            mods.append(PixelViews(side, b.views))
            width = len(b.views) * width
        else:
            mods.append(_ACTS[b.name]())
    if width != n_classes:
        raise ConfigError(f"network ends with width {width} but the task has {n_classes} classes")
    return nn.Sequential(*mods)


def count_digital_parameters(model: nn.Module) -> int:
    """Trainable parameters that are not physical θ."""
    phys = {id(p) for m in model.modules() if isinstance(m, PhysicalLayer) for p in m.theta.values()}
    return sum(p.numel() for p in model.parameters() if id(p) not in phys)
