"""A physical system never receives a value outside its declared hard ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import tanh_model, tanh_spec
from pnnkit import FunctionSystem, ParamSpec, PhysicalLayer, RangeError, SystemSpec, project_parameters
from pnnkit.system import clamp_to_range


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
def test_values_clamped_into_range_pass_the_guard_and_stay_inside(dtype, lo, hi):
    # bounds a float32 cannot hold (0.7, 1.3, -0.3, 0.1): clamp_to_range rounds them inward, so the values sent
    # lie inside the declared range compared exactly (in float64), and the guard accepts them
    system = _bounds_system(lo, hi)
    x = clamp_to_range(torch.tensor([[lo - 1, hi + 1, (lo + hi) / 2]] * 5, dtype=torch.float64).to(dtype), lo, hi)
    w = clamp_to_range(torch.tensor([lo - 1, hi + 1, hi], dtype=torch.float64).to(dtype), lo, hi)
    assert system(x, {"w": w}).shape == (5, 3)
    for t in (x, w):
        assert lo <= t.double().min().item() and t.double().max().item() <= hi


@pytest.mark.parametrize("lo,hi,outward", [(-0.3, 0.1, True), (0.7, 1.3, True), (0.5, 1.3, False)])
def test_a_bound_rounded_outward_is_refused(lo, hi, outward):
    # a plain float32 clamp rounds 0.1 up to 0.100000001, -0.3 down to -0.300000012 and 0.7 down to 0.699999988
    # (outward), while 1.3 → 1.29999995 and 0.5 stay inside: the guard compares exactly and refuses the first kind
    system = _bounds_system(lo, hi)
    x = torch.tensor([[lo, hi, hi]], dtype=torch.float64).to(torch.float32).clamp(lo, hi)
    assert ((x[0, 0].item() < lo) or (x[0, 1].item() > hi)) == outward
    w = clamp_to_range(torch.full((3,), hi, dtype=torch.float32), lo, hi)
    if outward:
        with pytest.raises(RangeError, match="outside its hard range"):
            system(x, {"w": w})
    else:
        assert system(x, {"w": w}).shape == (1, 3)


def test_a_float32_layer_never_sends_a_value_past_an_unrepresentable_bound():
    from pnnkit import ParamSpec, PhysicalLayer, SystemSpec

    seen = []

    def fn(x, p):
        seen.append((x.copy(), p["w"].copy()))
        return x * p["w"]

    spec = SystemSpec("bounds", 3, 3, -0.3, 0.1, (ParamSpec("w", (3,), -0.3, 0.1),))
    layer = PhysicalLayer(FunctionSystem(fn, spec, numpy=True), mode="physical")
    with torch.no_grad():
        layer.theta["w"].fill_(5.0)
    layer(torch.tensor([[-9.0, 9.0, 0.05]]))
    x, w = seen[-1]
    assert x.dtype == np.float32  # compared in float64: numpy would round the bound to float32 first
    assert float(x.max()) <= 0.1 and float(x.min()) >= -0.3 and float(w.max()) <= 0.1


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


@pytest.mark.parametrize("dtype, why", [(torch.complex64, "the imaginary part would be dropped"),
                                        (torch.float8_e4m3fn, "lower precision rounds values past the hard range"),
                                        (torch.bool, None)])
def test_complex_bool_and_float8_never_reach_the_device(dtype, why):
    from pnnkit import ShapeError

    reached = []
    system = FunctionSystem(lambda x, p: reached.append(x) or x.float(), SystemSpec("d", 2, 2, 0.0, 1.0,
                                                                                  (ParamSpec("b", (2,), 0.0, 1.0),)))
    tail = rf" \(.*{why}\)$" if why else "$"
    x = torch.tensor([[0.5 + 100j, 0.5]]) if dtype.is_complex else torch.tensor([[0.5, 0.5]]).to(dtype)
    with pytest.raises(ShapeError, match=rf"^d: x is {dtype}; use float32 or float64{tail}"):
        system(x.to(dtype), {"b": torch.zeros(2)})
    with pytest.raises(ShapeError, match=rf"^d: parameter 'b' is {dtype}; use float32 or float64{tail}"):
        system(torch.full((1, 2), 0.5), {"b": torch.zeros(2).to(dtype)})
    assert not reached and system.queries == 0
    with pytest.raises(ShapeError, match=r"^d: params must be a mapping of parameter name → tensor \(\['b'\]\), got "
                                         r"NoneType$"):
        system(torch.full((1, 2), 0.5), None)


def test_a_dimensionless_range_is_printed_without_a_unit():
    from pnnkit import RangeError

    system = FunctionSystem(lambda x, p: x, SystemSpec("u", 1, 1, 0.0, 1.0, (ParamSpec("g", (1,), 0.0, 2.0),)))
    with pytest.raises(RangeError, match=r"^u: input outside its hard range \[0.0, 1.0\] \(min 3, max 3\); "):
        system(torch.full((1, 1), 3.0), {"g": torch.ones(1)})
    with pytest.raises(RangeError, match=r"^u: parameter 'g' outside its hard range \[0.0, 2.0\] \(min 5, max 5\)$"):
        system(torch.full((1, 1), 0.5), {"g": torch.full((1,), 5.0)})


def test_integers_beyond_float64s_precision_are_compared_exactly():
    from pnnkit import RangeError

    top = 2**53  # float64 rounds 2**53 + 1 down onto it
    reached = []
    system = FunctionSystem(lambda x, p: reached.append(x) or x.double(), SystemSpec("i", 1, 1, 0.0, float(top)))
    assert system(torch.tensor([[top]]), {}).item() == top
    with pytest.raises(RangeError, match=r"^i: input outside its hard range \[0.0, 9007199254740992.0\] \(min "):
        system(torch.tensor([[top + 1]]), {})
    with pytest.raises(RangeError, match="input outside its hard range"):  # no int8 value lies in [200, 300]
        FunctionSystem(lambda x, p: x.float(), SystemSpec("s", 1, 1, 200.0, 300.0))(torch.tensor([[100]],
                                                                                       dtype=torch.int8), {})
    assert len(reached) == 1


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
            # against the bounds as declared (float64 holds every float32 value exactly), not float32-rounded ones
            assert float(v.double().min()) >= lo and float(v.double().max()) <= hi, (lo, hi, v)


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


# --- F1: the Trainer projects θ back into its hard range after every optimizer step ---------------------------
def test_trainer_projects_theta_into_range_after_every_step():
    from pnnkit import ElementwiseRescale, PhysicalLayer, make_lab
    from pnnkit.tasks import load_task
    from pnnkit.training import TrainConfig, Trainer

    task = load_task("digits")
    task.x_train, task.y_train = task.x_train[:128], task.y_train[:128]
    task.x_test, task.y_test = task.x_test[:32], task.y_test[:32]
    lab = make_lab("oscillators", n=8, seed=5)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), PhysicalLayer(lab, lab.ideal_twin(), generator=g), ElementwiseRescale(8),
                          nn.Linear(8, 10))
    # physical_lr 5: a single Adam step moves θ by ~5, ten times the ±0.5 range
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, physical_lr=5.0, monitor_physical=False, progress=False)
    Trainer(model, task, "pat", cfg).train()
    at_bound = 0
    for p in lab.spec.params:
        v = model[1].theta[p.name].detach()  # the *stored* values, not params() (which clamps at every call)
        assert float(v.min()) >= p.low and float(v.max()) <= p.high, p.name
        at_bound += int(((v == p.low) | (v == p.high)).sum())
    assert at_bound > 0  # the step really left the range, so the projection was exercised


# --- F2: project_parameters projects onto both bounds --------------------------------------------------------
def test_projection_keeps_stored_parameters_in_range_on_both_sides():
    from helpers import tanh_model, tanh_spec
    from pnnkit import FunctionSystem, PhysicalLayer, project_parameters

    layer = PhysicalLayer(FunctionSystem(tanh_model, tanh_spec(4)), tanh_model)
    with torch.no_grad():
        layer.theta["W"].copy_(torch.tensor([10.0, -10.0, 0.3, -0.3]).repeat(4, 1))
        layer.theta["b"].fill_(-7.0)
    project_parameters(nn.Sequential(layer))
    assert torch.equal(layer.theta["W"].detach(), torch.tensor([2.0, -2.0, 0.3, -0.3]).repeat(4, 1))
    assert torch.equal(layer.theta["b"].detach(), torch.full((4,), -1.0))


def test_a_range_narrower_than_the_precision_is_named():
    from pnnkit import ConfigError, inner_bounds

    with pytest.raises(ConfigError, match=r"range \[0.1, 0.1000000000010*1\] holds no torch.float32 value"):
        inner_bounds(0.1, 0.1 + 1e-12, torch.float32)
    assert inner_bounds(0.1, 0.1 + 1e-12, torch.float64) == (0.1, 0.1 + 1e-12)
