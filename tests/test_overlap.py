"""Twin/device overlap (``PhysicalLayer(..., overlap=True)``): same gradients as the plain PAT path, bit for bit."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from helpers import tanh_model, tanh_spec, tanh_system
from pnnkit import ElementwiseRescale, FunctionSystem, PhysicalLayer, TwinError, make_lab, set_mode
from pnnkit.layers import set_overlap
from pnnkit.pat import pat_forward
from pnnkit.tasks import ClassificationTask
from pnnkit.training import TrainConfig, Trainer


def _grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor, x_grad: bool = True):
    model.zero_grad()
    xi = x.clone().requires_grad_(x_grad)
    loss = ((model(xi) - target) ** 2).sum()
    loss.backward()
    out = [p.grad.clone() for p in model.parameters()]
    return out + ([xi.grad.clone()] if x_grad else [])


def _oscillator_net(lab, twin, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return nn.Sequential(
        ElementwiseRescale(4, 0.8, 0.0, dtype=dtype),
        PhysicalLayer(lab, twin, generator=g, dtype=dtype),
        nn.Linear(4, 4).to(dtype),
        PhysicalLayer(lab, twin, generator=g, dtype=dtype),
        ElementwiseRescale(4, 1.2, 0.1, dtype=dtype),
        nn.Tanh(),
        PhysicalLayer(lab, twin, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("x_grad", [True, False])
def test_overlap_gradients_identical_on_noisy_oscillator_lab(x_grad):
    lab = make_lab("oscillators", n=4)  # default defects and noise: twin ≠ device
    twin = lab.ideal_twin()
    model = _oscillator_net(lab, twin)
    x = torch.rand(32, 4) * 1.6 - 0.8
    target = torch.randn(32, 4)
    state = lab.get_state()
    set_mode(model, "pat")
    plain = _grads(model, x, target, x_grad)
    lab.set_state(state)  # replay the same measurement noise
    set_overlap(model, True)
    assert all(layer.overlap for layer in model if isinstance(layer, PhysicalLayer))
    over = _grads(model, x, target, x_grad)
    assert len(plain) == len(over)
    for a, b in zip(plain, over):
        assert a.abs().max() > 0
        assert torch.equal(a, b)


def test_overlap_gradients_identical_with_twin_reality_gap_float64():
    torch.manual_seed(3)
    system = tanh_system(4, reality=True)
    model = nn.Sequential(
        PhysicalLayer(system, tanh_model, dtype=torch.float64),
        PhysicalLayer(system, tanh_model, dtype=torch.float64),
    ).double()
    x = torch.rand(8, 4, dtype=torch.float64) * 2 - 1
    c = torch.randn(8, 4, dtype=torch.float64)
    plain = _grads(model, x, c)
    set_overlap(model, True)
    over = _grads(model, x, c)
    for a, b in zip(plain, over):
        assert torch.equal(a, b)


def test_overlap_training_reaches_bit_identical_parameters():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g)
    y = (x[:, 0] > x[:, 1]).long()
    task = ClassificationTask("toy", x, y, x[:16], y[:16], ["a", "b"])
    finals = []
    for overlap in (False, True):
        torch.manual_seed(0)
        lab = make_lab("oscillators", n=4, seed=5)
        model = nn.Sequential(PhysicalLayer(lab, lab.ideal_twin()), nn.Linear(4, 2))
        cfg = TrainConfig(epochs=2, batch_size=16, monitor_physical=False, progress=False, overlap=overlap)
        Trainer(model, task, "pat", cfg).train()
        assert model[0].overlap is overlap  # the Trainer applies TrainConfig.overlap (training.overlap in YAML)
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        assert torch.equal(a, b)


def test_trainer_keeps_a_layers_own_overlap_unless_told():
    task = ClassificationTask("toy", torch.rand(8, 4), torch.zeros(8, dtype=torch.long), torch.rand(4, 4),
                              torch.zeros(4, dtype=torch.long), ["a", "b"])
    lab = make_lab("oscillators", n=4, seed=5)
    layer = PhysicalLayer(lab, lab.ideal_twin(), overlap=True)
    Trainer(nn.Sequential(layer, nn.Linear(4, 2)), task, "pat", TrainConfig(epochs=1, progress=False))
    assert layer.overlap  # TrainConfig.overlap=None (the default) leaves PhysicalLayer(overlap=True) alone
    Trainer(nn.Sequential(layer, nn.Linear(4, 2)), task, "pat", TrainConfig(epochs=1, progress=False, overlap=False))
    assert not layer.overlap


def test_twin_runs_while_the_device_measures():
    """The twin and the device each wait for the other to be running (a barrier of two): a path that runs them one
    after the other, in either order, breaks the barrier after its timeout and fails."""
    both_running = threading.Barrier(2, timeout=60.0)  # generous: only a bug makes it wait
    seen = {}

    def twin(x, p):
        seen["twin_thread"] = threading.get_ident()
        both_running.wait()
        return tanh_model(x, p)

    def device(x, p):
        seen["device_thread"] = threading.get_ident()
        both_running.wait()
        return tanh_model(x, p)

    system = FunctionSystem(device, tanh_spec(4))
    layer = PhysicalLayer(system, twin, overlap=True)
    x = torch.rand(5, 4) * 2 - 1
    layer(x).sum().backward()
    assert not both_running.broken
    assert seen["twin_thread"] != seen["device_thread"]
    assert layer.theta["W"].grad is not None


def test_overlap_reports_twin_errors_at_backward():
    system = tanh_system(4)
    layer = PhysicalLayer(system, lambda x, p: tanh_model(x, p)[:, :3], overlap=True)
    y = layer(torch.rand(5, 4))
    with pytest.raises(TwinError, match="shape"):
        y.sum().backward()


def test_overlap_skips_the_twin_without_autograd():
    calls = []

    def twin(x, p):
        calls.append(1)
        return tanh_model(x, p)

    layer = PhysicalLayer(tanh_system(4), twin, overlap=True)
    with torch.no_grad():
        layer(torch.rand(5, 4))
    assert calls == []
    assert "overlap=True" in repr(layer)


def test_pat_forward_overlap_keyword_matches_plain():
    system = tanh_system(4, reality=True)
    x = (torch.rand(6, 4, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    W = (torch.randn(4, 4, dtype=torch.float64) * 0.5).requires_grad_(True)
    b = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    outs = []
    for overlap in (False, True):
        y = pat_forward(system, tanh_model, x, {"W": W, "b": b}, overlap=overlap)
        outs.append(torch.autograd.grad((y**3).sum(), (x, W, b)))
    for a, b_ in zip(*outs):
        assert torch.equal(a, b_)
