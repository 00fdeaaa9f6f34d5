"""A reading is the caller's own: a driver that measures into one buffer it reuses cannot change earlier readings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from helpers import tanh_model, tanh_spec
from pnnkit import ElementwiseRescale, FunctionSystem, PhysicalLayer, SystemSpec, acquire
from pnnkit.system import PhysicalSystem
from pnnkit.training import refit_readout


def _numpy_buffer_driver(dtype=np.float32, noise: float = 0.0):
    """An instrument driver that reads into one preallocated array and returns (a view of) it."""
    buf = np.empty((64, 2), dtype)
    rng = np.random.default_rng(0)

    def driver(x, p):
        out = buf[: len(x)]
        np.tanh(x, out=out, casting="unsafe")
        if noise:
            out += rng.normal(0, noise, out.shape).astype(dtype)
        return out

    return driver


class _TensorBuffer(PhysicalSystem):
    """A torch system that returns its internal output tensor, overwritten by the next call."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.spec = SystemSpec("tbuf", 2, 2, -1.0, 1.0)
        self.buf = torch.empty(64, 2, dtype=dtype)

    def measure(self, x: Tensor, params) -> Tensor:
        out = self.buf[: len(x)]
        torch.tanh(x.to(out.dtype), out=out)
        return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_numpy_buffer_reused_by_the_driver_leaves_earlier_readings_as_measured(dtype):
    system = FunctionSystem(_numpy_buffer_driver(dtype), SystemSpec("buf", 2, 2, -1.0, 1.0), numpy=True)
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    a = system(torch.full((4, 2), 0.1, dtype=tdtype), {})
    first = a.clone()
    b = system(torch.full((4, 2), 0.9, dtype=tdtype), {})
    assert torch.equal(a, first) and not torch.equal(a, b)
    assert a.dtype == b.dtype == tdtype  # values and dtype as the driver returned them
    assert torch.equal(a, torch.from_numpy(np.tanh(np.full((4, 2), 0.1, dtype))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_internal_tensor_returned_by_the_system_is_copied(dtype):
    system = _TensorBuffer(dtype)
    a = system(torch.full((3, 2), 0.2, dtype=dtype), {})
    first = a.clone()
    system(torch.full((3, 2), -0.7, dtype=dtype), {})
    assert torch.equal(a, first) and a.dtype == dtype
    assert a.data_ptr() != system.buf.data_ptr()


def test_repeats_of_a_buffer_reusing_driver_are_distinct_readings():
    system = FunctionSystem(_numpy_buffer_driver(np.float32, noise=0.01), SystemSpec("buf", 2, 2, -1.0, 1.0),
                            numpy=True)
    m = acquire(system, 8, inputs_per_setting=4, repeats=2, seed=0)
    assert not torch.equal(m.y[:, 0], m.y[:, 1])
    noise = m.noise_std()
    assert noise is not None and bool((noise > 0.003).all())


def test_pat_gradients_do_not_depend_on_whether_the_driver_reuses_its_buffer():
    buf = np.empty((8, 4), np.float64)

    def reuse(x, p):
        np.tanh(x @ p["W"].T + p["b"], out=buf[: len(x)])
        return buf[: len(x)]

    def fresh(x, p):
        return np.tanh(x @ p["W"].T + p["b"])

    x0 = torch.rand(8, 4, dtype=torch.float64) * 2 - 1
    got = []
    for fn in (fresh, reuse):
        s = FunctionSystem(fn, tanh_spec(4), numpy=True)
        g = torch.Generator().manual_seed(1)
        m = nn.Sequential(PhysicalLayer(s, tanh_model, generator=g, dtype=torch.float64),
                          ElementwiseRescale(4, 1.3, 0.1, dtype=torch.float64),
                          PhysicalLayer(s, tanh_model, generator=g, dtype=torch.float64))
        y = m(x0)
        y.sum().backward()
        got.append([y.detach()] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*got):
        assert torch.equal(a, b)


def test_readout_features_measured_in_batches_are_each_batchs_own():
    spec = SystemSpec("buf", 2, 2, -1.0, 1.0)
    x = torch.linspace(-0.9, 0.9, 16).reshape(8, 2)
    y = torch.tensor([0, 1] * 4)
    feats = []
    for fn in (lambda x, p: np.tanh(x), _numpy_buffer_driver(np.float32)):
        s = FunctionSystem(fn, spec, numpy=True)
        model = nn.Sequential(PhysicalLayer(s, lambda x, p: torch.tanh(x)), nn.Linear(2, 2))
        seen = []
        model[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
        refit_readout(model, x, y, "physical", max_iter=1, batch_size=3)
        feats.append(seen[0])
    assert torch.equal(feats[0], feats[1])


def test_integer_readings_are_still_converted_to_float64_and_copied():
    codes = np.arange(8, dtype=np.int64).reshape(4, 2)
    s = FunctionSystem(lambda x, p: codes, SystemSpec("adc", 2, 2, -1.0, 1.0), numpy=True)
    y = s(torch.zeros(4, 2, dtype=torch.float64), {})
    codes[:] = -1
    assert y.dtype == torch.float64 and torch.equal(y, torch.arange(8, dtype=torch.float64).reshape(4, 2))
