"""The supplement's toy study: why PAT's gradients stay honest when in-silico ones do not.

Reality ``f(x) = 2 x^1.1``; twin ``f_m(x) = 2.01 x^1.1``; ``x⁽⁰⁾ = 1``; ``n`` layers chained. Computed with the
library's own machinery (a :class:`FunctionSystem`, :class:`PhysicalLayer` in each mode, autograd), in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import PhysicalLayer, set_mode
from .spec import SystemSpec
from .system import FunctionSystem

REALITY_GAIN, TWIN_GAIN, POWER = 2.0, 2.01, 1.1


@dataclass
class ToyRow:
    n: int
    forward_gap: float  # |twin chain − reality chain| / reality chain
    in_silico_grad_gap: float  # |d/dx0 in silico − true| / |true|
    pat_grad_gap: float  # |d/dx0 PAT − true| / |true|


def _chain(n: int) -> nn.Sequential:
    spec = SystemSpec("toy-power", 1, 1, 0.0, 1e30)  # x grows to ~1e17 at n = 20
    system = FunctionSystem(lambda x, p: REALITY_GAIN * x.pow(POWER), spec, differentiable=True)
    twin = lambda x, p: TWIN_GAIN * x.pow(POWER)  # noqa: E731
    return nn.Sequential(*[PhysicalLayer(system, twin, dtype=torch.float64) for _ in range(n)])


def toy_row(n: int) -> ToyRow:
    net = _chain(n)
    out = {}
    for mode in ("exact", "in_silico", "pat"):
        set_mode(net, mode)  # type: ignore[arg-type]
        x0 = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
        y = net(x0)
        (g,) = torch.autograd.grad(y.sum(), x0)
        out[mode] = (float(y.detach()), float(g))
    true_y, true_g = out["exact"]
    return ToyRow(
        n,
        abs(out["in_silico"][0] - true_y) / true_y,
        abs(out["in_silico"][1] - true_g) / abs(true_g),
        abs(out["pat"][1] - true_g) / abs(true_g),
    )


def toy_table(ns: tuple[int, ...] = (1, 5, 10, 20)) -> list[ToyRow]:
    return [toy_row(n) for n in ns]
