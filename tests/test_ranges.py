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


# --- the guard's fused check (one min/max reduction) must refuse exactly what the element-wise checks refuse ---------
def _bounds_system(lo: float, hi: float, dtype=torch.float32):
    from pnnkit import ParamSpec, SystemSpec

    spec = SystemSpec("bounds", 3, 3, lo, hi, (ParamSpec("w", (3,), lo, hi),))
    return FunctionSystem(lambda x, p: x * p["w"], spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lo,hi", [(0.7, 1.3), (0.0, 1.0), (-0.3, 0.1)])
def test_values_clamped_to_a_bound_pass_the_guard(dtype, lo, hi):
    # bounds not representable in the dtype: a clamped value equals the bound rounded to the dtype, and the
    # element-wise comparison (x < lo in x's dtype) accepts it; the fused check must accept it too
    system = _bounds_system(lo, hi)
    x = torch.tensor([[lo, hi, (lo + hi) / 2]] * 5, dtype=torch.float64).to(dtype).clamp(lo, hi)
    w = torch.tensor([lo, hi, hi], dtype=torch.float64).to(dtype).clamp(lo, hi)
    assert system(x, {"w": w}).shape == (5, 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 517, 4095])
def test_nan_or_inf_anywhere_is_refused_before_the_device(bad, where):
    system = RecordingSystem()
    x = torch.rand(1024, 4) * 1.8 - 0.9
    x.view(-1)[where] = bad
    params = {"W": torch.zeros(4, 4), "b": torch.zeros(4)}
    with pytest.raises(RangeError, match="input contains NaN or inf"):
        system(x, params)
    w = torch.zeros(4, 4)
    w.view(-1)[where % 16] = bad
    with pytest.raises(RangeError, match="parameter 'W' contains NaN or inf"):
        system(torch.zeros(2, 4), {"W": w, "b": torch.zeros(4)})
    assert system.seen == []


def test_just_outside_the_range_is_refused():
    system = _bounds_system(0.0, 1.0)
    w = torch.full((3,), 0.5)
    for v in (torch.nextafter(torch.tensor(0.0), torch.tensor(-1.0)), torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))):
        x = torch.full((64, 3), 0.5)
        x[37, 1] = v
        with pytest.raises(RangeError, match="input outside its hard range"):
            system(x, {"w": w})
        with pytest.raises(RangeError, match="parameter 'w' outside its hard range"):
            system(torch.full((2, 3), 0.5), {"w": torch.tensor([0.5, float(v), 0.5])})


def test_integer_inputs_and_empty_parameter_blocks_still_checked():
    from pnnkit import ParamSpec, SystemSpec

    spec = SystemSpec("int", 2, 2, 0.0, 3.0, (ParamSpec("none", (0,), 0.0, 1.0),))
    system = FunctionSystem(lambda x, p: x.float(), spec)
    assert system(torch.tensor([[0, 3]]), {"none": torch.zeros(0)}).tolist() == [[0.0, 3.0]]
    with pytest.raises(RangeError, match="input outside its hard range"):
        system(torch.tensor([[0, 4]]), {"none": torch.zeros(0)})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_because_it_rounds_past_the_bounds(dtype):
    from pnnkit import ConfigError, PhysicalLayer, ShapeError

    system = _bounds_system(0.2, 0.7)  # float16(0.7) = 0.7002 > 0.7: a clamp in half precision leaves the range
    x = torch.full((2, 3), 0.7, dtype=torch.float64).to(dtype)
    with pytest.raises(ShapeError, match=f"x is {dtype}; use float32 or float64"):
        system(x, {"w": torch.full((3,), 0.5)})
    with pytest.raises(ShapeError, match=f"parameter 'w' is {dtype}"):
        system(torch.full((2, 3), 0.5), {"w": torch.full((3,), 0.5, dtype=dtype)})
    with pytest.raises(ConfigError, match="use torch.float32 or torch.float64"):
        PhysicalLayer(system, dtype=dtype)


@pytest.mark.parametrize("lo,hi", [(-0.14, 4.7), (-0.3, 0.9), (0.2, 0.7)])
def test_sigmoid_constraints_stay_inside_the_range_when_saturated(lo, hi):
    from pnnkit import ParamSpec, PhysicalLayer, SystemSpec

    seen = []
    spec = SystemSpec("sat", 2, 2, lo, hi, (ParamSpec("w", (2,), lo, hi),))
    system = FunctionSystem(lambda x, p: seen.append((x.clone(), p["w"].clone())) or x * 0 + p["w"].clamp(0, 0), spec)
    layer = PhysicalLayer(system, input_constraint="sigmoid", param_constraint="sigmoid", mode="physical")
    for u in (17.0, 40.0, -17.0, -40.0):  # σ(u) rounds to 1 or 0 in float32: lo + (hi − lo)·σ may round past
        with torch.no_grad():
            layer.theta["w"].fill_(u)
            layer(torch.tensor([[u, -u], [1e9, -1e9]]))
    for x, w in seen:
        for v in (x, w):
            assert float(v.double().min()) >= float(torch.tensor(lo)) and float(v.double().max()) <= float(torch.tensor(hi))


def test_a_device_writing_into_its_input_changes_nothing_outside_and_masked_readings_count_as_invalid():
    import numpy as np

    from pnnkit import DeviceError, SystemSpec

    def scribbler(x, p):
        out = x.copy()
        x[:] = 99.0  # a driver that reuses its input buffer
        return out

    system = FunctionSystem(scribbler, SystemSpec("s", 2, 2, -1.0, 1.0), numpy=True)
    x = torch.full((3, 2), 0.5)
    y = system(x, {})
    assert torch.equal(x, torch.full((3, 2), 0.5)) and torch.equal(y, torch.full((3, 2), 0.5))

    masked = FunctionSystem(lambda x, p: np.ma.masked_array(x, mask=[[0, 1]] + [[0, 0]] * (len(x) - 1)),
                            SystemSpec("m", 2, 2, -1.0, 1.0), numpy=True)
    with pytest.raises(DeviceError, match="NaN/inf for 1 of 3 samples"):
        masked(x, {})
