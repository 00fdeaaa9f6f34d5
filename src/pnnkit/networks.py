"""Building deep physical / hybrid networks from a small declarative description."""

from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .errors import ConfigError
from .layers import ElementwiseRescale, PhysicalLayer, Pool, Slice
from .pat import Twin
from .system import PhysicalSystem


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhysicalBlock(_Block):
    """One physical layer: the lab, with its own trainable θ (same device reused layer after layer)."""

    type: Literal["physical"]
    input_constraint: Literal["clamp", "sigmoid"] = "clamp"
    param_constraint: Literal["clamp", "sigmoid"] = "clamp"


class RescaleBlock(_Block):
    """Trainable elementwise ``a ⊙ x + b`` (initialised to ``scale``, ``bias``)."""

    type: Literal["rescale"]
    scale: float = 1.0
    bias: float = 0.0


class LinearBlock(_Block):
    """Digital dense layer to ``out`` features."""

    type: Literal["linear"]
    out: int = Field(gt=0)
    bias: bool = True


class SliceBlock(_Block):
    """Keep features ``[start, stop)``."""

    type: Literal["slice"]
    start: int = Field(0, ge=0)
    stop: int = Field(gt=0)


class PoolBlock(_Block):
    """Average consecutive features into ``out`` groups (like coarser detector bins; no parameters)."""

    type: Literal["pool"]
    out: int = Field(gt=0)


class ActivationBlock(_Block):
    """Digital elementwise nonlinearity."""

    type: Literal["activation"]
    name: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu"


Block = Annotated[
    Union[PhysicalBlock, RescaleBlock, LinearBlock, SliceBlock, PoolBlock, ActivationBlock],
    Field(discriminator="type"),
]


class NetworkConfig(_Block):
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
        elif isinstance(b, RescaleBlock):
            mods.append(ElementwiseRescale(width, b.scale, b.bias))
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
            mods.append(Pool(b.out))
            width = b.out
        else:
            mods.append(_ACTS[b.name]())
    if width != n_classes:
        raise ConfigError(f"network ends with width {width} but the task has {n_classes} classes")
    return nn.Sequential(*mods)


def count_digital_parameters(model: nn.Module) -> int:
    """Trainable parameters that are not physical θ."""
    phys = {id(p) for m in model.modules() if isinstance(m, PhysicalLayer) for p in m.theta.values()}
    return sum(p.numel() for p in model.parameters() if id(p) not in phys)
