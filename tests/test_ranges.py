"""A physical system never receives a value outside its declared hard ranges."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import tanh_model, tanh_spec
from pnnkit import FunctionSystem, PhysicalLayer, RangeError, project_parameters


class RecordingSystem(FunctionSystem):
    """Records the extremes of everything that reaches ``measure`` (i.e. passed the guard)."""

    def __init__(self):
        super().__init__(tanh_model, tanh_spec(4))
        self.seen: list[tuple[float, float, dict]] = []

    def measure(self, x, params):
        self.seen.append((float(x.min()), float(x.max()), {k: (float(v.min()), float(v.max())) for k, v in params.items()}))
        return super().measure(x, params)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    constraint=st.sampled_from(["clamp", "sigmoid"]),
    lr=st.floats(min_value=1e-3, max_value=1e3),
    steps=st.integers(min_value=1, max_value=4),
    scale=finite,
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    mode=st.sampled_from(["pat", "physical"]),
)
def test_optimizer_steps_and_inputs_never_leave_the_range(constraint, lr, steps, scale, seed, mode):
    system = RecordingSystem()
    g = torch.Generator().manual_seed(seed)
    layer = PhysicalLayer(system, tanh_model, mode=mode, input_constraint=constraint, param_constraint=constraint,
                          generator=g)
    opt = torch.optim.SGD(layer.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g) * scale
        y = layer(x)
        if mode == "pat":
            (y * torch.randn(y.shape, generator=g) * 1e3).sum().backward()
            opt.step()
            opt.zero_grad()
            project_parameters(layer)
    spec = system.spec
    assert len(system.seen) == steps
    for xmin, xmax, ps in system.seen:
        assert spec.input_low <= xmin and xmax <= spec.input_high
        for p in spec.params:
            lo, hi = ps[p.name]
            assert p.low <= lo and hi <= p.high


def test_direct_out_of_range_call_is_refused_before_the_device():
    system = RecordingSystem()
    params = {"W": torch.zeros(4, 4), "b": torch.zeros(4)}
    with pytest.raises(RangeError, match=r"input outside its hard range \[-1.0, 1.0\]"):
        system(torch.full((2, 4), 1.5), params)
    with pytest.raises(RangeError, match=r"parameter 'W' outside its hard range \[-2.0, 2.0\]"):
        system(torch.zeros(2, 4), {"W": torch.full((4, 4), 3.0), "b": torch.zeros(4)})
    with pytest.raises(RangeError, match="NaN"):
        system(torch.full((2, 4), float("nan")), params)
    assert system.seen == []


def test_projection_keeps_stored_parameters_in_range():
    system = RecordingSystem()
    layer = PhysicalLayer(system, tanh_model)
    with torch.no_grad():
        layer.theta["W"].fill_(10.0)
    project_parameters(nn.Sequential(layer))
    assert float(layer.theta["W"].detach().max()) == 2.0
