"""The PAT estimator: equal to exact autograd when twin == system; twin VJP at measured inputs otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import tanh_model, tanh_system
from pnnkit import ElementwiseRescale, PhysicalLayer, make_lab, set_mode
from pnnkit.training import TrainConfig, Trainer
from pnnkit.tasks import ClassificationTask


def _grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    model.zero_grad()
    xi = x.clone().requires_grad_(True)
    loss = ((model(xi) - target) ** 2).sum()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()] + [xi.grad.clone()]


def test_pat_equals_exact_autograd_when_twin_is_the_system():
    lab = make_lab("oscillators", n=4, ideal=True, dtype=torch.float64)
    twin = lab.ideal_twin().double()
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        ElementwiseRescale(4, 0.8, 0.0, dtype=torch.float64),
        PhysicalLayer(lab, twin, generator=g, dtype=torch.float64),
        nn.Linear(4, 4).double(),
        PhysicalLayer(lab, twin, generator=g, dtype=torch.float64),
        ElementwiseRescale(4, 1.2, 0.1, dtype=torch.float64),
        nn.Tanh(),
        PhysicalLayer(lab, twin, generator=g, dtype=torch.float64),
    )
    x = torch.rand(16, 4, dtype=torch.float64) * 1.6 - 0.8
    target = torch.randn(16, 4, dtype=torch.float64)
    set_mode(model, "exact")
    exact = _grads(model, x, target)
    set_mode(model, "pat")
    pat = _grads(model, x, target)
    assert len(exact) == len(pat) == 2 + 2 + 2 + 2 + 2 + 2 + 1  # 3×(J, e), Linear W/b, 2 rescales, input
    for a, b in zip(exact, pat):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-10)


def test_pat_uses_twin_vjp_at_measured_inputs():
    """Two tanh layers; the device has a gain error and a ripple the twin lacks. Hand-computed backward."""
    torch.manual_seed(3)
    system = tanh_system(4, reality=True)
    l1 = PhysicalLayer(system, tanh_model, dtype=torch.float64)
    l2 = PhysicalLayer(system, tanh_model, dtype=torch.float64)
    model = nn.Sequential(l1, l2).double()
    x0 = torch.rand(8, 4, dtype=torch.float64) * 2 - 1
    c = torch.randn(8, 4, dtype=torch.float64)  # loss = Σ c ⊙ y₂  ⇒  g_y₂ = c

    def grads(mode):
        set_mode(model, mode)
        model.zero_grad()
        x = x0.clone().requires_grad_(True)
        (model(x) * c).sum().backward()
        return (l1.theta["W"].grad.clone(), l1.theta["b"].grad.clone(), l2.theta["W"].grad.clone(),
                l2.theta["b"].grad.clone(), x.grad.clone())

    pat = grads("pat")
    # hand computation: measured forward, twin derivative at the measured points
    W1, b1, W2, b2 = (v.detach() for v in (l1.theta["W"], l1.theta["b"], l2.theta["W"], l2.theta["b"]))
    x1 = (1.1 * torch.tanh(x0 @ W1.T + b1) + 0.05 * torch.sin(3 * x0)).clamp(-1, 1)  # measured layer-1 output
    d2 = c * (1 - torch.tanh(x1 @ W2.T + b2) ** 2)  # twin VJP of layer 2 at the measured x1
    gW2, gb2, gx1 = d2.T @ x1, d2.sum(0), d2 @ W2
    d1 = gx1 * (x1.abs() < 1) * (1 - torch.tanh(x0 @ W1.T + b1) ** 2)  # clamp gate, then twin VJP of layer 1
    gW1, gb1, gx0 = d1.T @ x0, d1.sum(0), d1 @ W1
    for got, want in zip(pat, (gW1, gb1, gW2, gb2, gx0), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    insilico = grads("in_silico")
    exact = grads("exact")
    for p, s, e in zip(pat, insilico, exact):
        assert not torch.allclose(p, s, rtol=1e-3), "PAT must differ from in-silico when twin ≠ system"
        assert not torch.allclose(p, e, rtol=1e-3), "PAT uses the twin's slopes, not the device's"


def _toy_task(n_features=4, n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, n_features, generator=g)
    y = (x[:, 0] > x[:, 1]).long()
    return ClassificationTask("toy", x, y, x[:16], y[:16], ["a", "b"])


def test_in_silico_never_calls_system_and_pat_calls_once_per_layer_per_batch():
    task = _toy_task()
    for mode in ("in_silico", "pat"):
        system = tanh_system(4)
        model = nn.Sequential(PhysicalLayer(system, tanh_model), PhysicalLayer(system, tanh_model), nn.Linear(4, 2))
        cfg = TrainConfig(epochs=2, batch_size=16, monitor_physical=False, progress=False)
        trainer = Trainer(model, task, mode, cfg)
        for _ in range(2):
            trainer.train(stop_after=1)  # training only; evaluation is separate
        steps = 2 * (64 // 16)
        if mode == "in_silico":
            assert system.calls == 0 and trainer.train_queries == 0
        else:
            assert system.calls == 2 * steps
            assert trainer.train_queries == system.queries == 2 * 2 * 64


def test_a_twin_of_another_interface_is_refused_when_the_layer_is_built():
    from pnnkit.errors import ConfigError

    lab4, lab5 = make_lab("oscillators", n=4), make_lab("oscillators", n=5)
    with pytest.raises(ConfigError, match="the twin is for 'oscillators'.*differs from the system's"):
        PhysicalLayer(lab4, lab5.ideal_twin())
