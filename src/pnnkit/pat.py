"""The physics-aware training estimator as one autograd function.

Forward: the **physical system** measures ``y = f_p(x, θ)``; that measured ``y`` flows on.
Backward: the vector–Jacobian product of the **digital twin** ``f_m`` taken at the *measured* layer input ``x``
and the current ``θ``:  ``[g_x, g_θ] = J_{f_m}(x, θ)ᵀ g_y``. The twin's own prediction is discarded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .errors import TwinError
from .system import PhysicalSystem

Twin = Callable[[Tensor, Mapping[str, Tensor]], Tensor]


def twin_vjp(
    twin: Twin, x: Tensor, params: Mapping[str, Tensor], grad_y: Tensor, *, need_x: bool = True
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Return ``(g_x, {name: g_θ})`` = ``J_{f_m}(x, θ)ᵀ grad_y``, evaluated at the given (measured) point."""
    names = list(params)
    with torch.enable_grad():
        xs = x.detach().requires_grad_(need_x)
        ps = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        ym = twin(xs, ps)
        if ym.shape != grad_y.shape:
            raise TwinError(f"twin returned shape {tuple(ym.shape)} but the system measured {tuple(grad_y.shape)}")
        inputs: list[Tensor] = ([xs] if need_x else []) + [ps[k] for k in names]
        grads = torch.autograd.grad(ym, inputs, grad_y.to(ym.dtype), allow_unused=True)
    grads = [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs)]
    gx = grads[0] if need_x else None
    gp = dict(zip(names, grads[1:] if need_x else grads))
    return gx, gp


class _PAT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, system: PhysicalSystem, twin: Twin, names: Sequence[str], x: Tensor, *thetas: Tensor) -> Tensor:  # type: ignore[override]
        params = dict(zip(names, thetas))
        y = system(x, params)
        ctx.twin = twin
        ctx.names = tuple(names)
        ctx.save_for_backward(x, *thetas)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        x, *thetas = ctx.saved_tensors
        params = dict(zip(ctx.names, thetas))
        gx, gp = twin_vjp(ctx.twin, x, params, grad_y, need_x=ctx.needs_input_grad[3])
        return (None, None, None, gx, *[gp[n] for n in ctx.names])


def pat_forward(system: PhysicalSystem, twin: Twin, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """Measure ``system(x, params)`` and attach the twin's VJP (at the measured ``x``) as its gradient."""
    names = list(params)
    return _PAT.apply(system, twin, names, x, *[params[n] for n in names])
