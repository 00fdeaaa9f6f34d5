"""The physics-aware training estimator as one autograd function.

Forward: the **physical system** measures ``y = f_p(x, θ)``; that measured ``y`` flows on.
Backward: the vector–Jacobian product of the **digital twin** ``f_m`` taken at the *measured* layer input ``x``
and the current ``θ``:  ``[g_x, g_θ] = J_{f_m}(x, θ)ᵀ g_y``. The twin's own prediction is discarded.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from .allocator import auto_retain
from .errors import TwinError
from .system import PhysicalSystem

Twin = Callable[[Tensor, Mapping[str, Tensor]], Tensor]


def twin_vjp(
    twin: Twin, x: Tensor, params: Mapping[str, Tensor], grad_y: Tensor, *, need_x: bool = True, where: str = ""
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Return ``(g_x, {name: g_θ})`` = ``J_{f_m}(x, θ)ᵀ grad_y``, evaluated at the given (measured) point.
    ``where`` (the system's name) starts the message of a shape mismatch."""
    return _walk_graph(_twin_graph(twin, x, params, need_x), list(params), grad_y, need_x, where)


def _twin_graph(twin: Twin, x: Tensor, params: Mapping[str, Tensor], need_x: bool):
    """Run the twin at (x, θ) with grad enabled; return the graph's ends ``(y_m, x, θ)`` for the VJP."""
    with torch.enable_grad():
        xs = x.detach().requires_grad_(need_x)
        ps = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        return twin(xs, ps), xs, ps


def _system_name(system: PhysicalSystem) -> str:
    """The system's name for a message (its spec's), or its class name."""
    spec = getattr(system, "spec", None)
    return str(getattr(spec, "name", None) or type(system).__name__)


def _walk_graph(graph, names: Sequence[str], grad_y: Tensor, need_x: bool, where: str = ""):
    """VJP of the recorded twin graph with ``grad_y``; unused inputs get zero gradients."""
    ym, xs, ps = graph
    if ym.shape != grad_y.shape:
        raise TwinError(f"{where or 'twin'}: the twin returned shape {tuple(ym.shape)} but the system measured "
                        f"{tuple(grad_y.shape)}; the twin does not match its system's output")
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
        ctx.where = _system_name(system)
        ctx.save_for_backward(x, *thetas)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        x, *thetas = ctx.saved_tensors
        params = dict(zip(ctx.names, thetas))
        gx, gp = twin_vjp(ctx.twin, x, params, grad_y, need_x=ctx.needs_input_grad[3], where=ctx.where)
        return (None, None, None, gx, *[gp[n] for n in ctx.names])


# --- overlap: the twin's work hidden behind the device's time ---------------------------------------------------
# The Jacobian PAT needs is taken at (x, θ) — the layer's *input*, known before the device is even called. So the
# twin's forward pass (which records the graph the VJP will walk) can run in a worker thread while the device
# measures the very same layer; the backward then only walks that graph. Same ops, same inputs, same order:
# the gradients are bit-identical to the plain path. Worth it when device calls are slow (instruments, sleeps,
# subprocesses) or release the GIL; a pure-Python simulation holding the GIL gains little.

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pnnkit-twin")
            atexit.register(_POOL.shutdown, wait=False)
        return _POOL


def _twin_graph_in_worker(twin: Twin, x: Tensor, params: Mapping[str, Tensor], need_x: bool, threads: int):
    """:func:`_twin_graph` on the worker thread (grad mode and OpenMP thread count are per thread)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return _twin_graph(twin, x, params, need_x)


class _PATOverlap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, system: PhysicalSystem, twin: Twin, names: Sequence[str], x: Tensor, *thetas: Tensor) -> Tensor:  # type: ignore[override]
        params = dict(zip(names, thetas))
        need_x = bool(ctx.needs_input_grad[3])
        fut: Future = _pool().submit(_twin_graph_in_worker, twin, x, params, need_x, torch.get_num_threads())
        try:
            y = system(x, params)
        except BaseException:
            fut.cancel()
            raise
        ctx.fut, ctx.names, ctx.need_x, ctx.where = fut, tuple(names), need_x, _system_name(system)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        graph = ctx.fut.result()  # re-raises the twin's own error, if any
        ctx.fut = None  # free the graph as soon as it has been walked
        gx, gp = _walk_graph(graph, ctx.names, grad_y, ctx.need_x, ctx.where)
        return (None, None, None, gx, *[gp[n] for n in ctx.names])


def pat_forward(
    system: PhysicalSystem, twin: Twin, x: Tensor, params: Mapping[str, Tensor], *, overlap: bool = False
) -> Tensor:
    """Measure ``system(x, params)`` and attach the twin's VJP (at the measured ``x``) as its gradient.

    ``overlap=True`` runs the twin's forward pass in a worker thread while the device measures (same gradients,
    bit for bit; less wall time when device calls are slow). Without autograd it is the plain path.

    The first call lets glibc keep freed heap memory for the next step (:mod:`pnnkit.allocator`; opt out with
    ``PNNKIT_RETAIN_HEAP=0``): without it the large temporaries of a step are page-faulted in anew every step.
    """
    auto_retain()
    names = list(params)
    thetas = [params[n] for n in names]
    if overlap and torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in thetas)):
        return _PATOverlap.apply(system, twin, names, x, *thetas)
    return _PAT.apply(system, twin, names, x, *thetas)
