"""Declarative network building: widths checked per block, pooling, digital parameter count."""

from __future__ import annotations

import pytest
import torch

from pnnkit import ConfigError, make_lab
from pnnkit.layers import init_from_data, set_mode
from pnnkit.networks import NetworkConfig, build_network, count_digital_parameters


def test_widths_are_checked_and_named():
    lab = make_lab("oscillators", n=6)
    bad = NetworkConfig(depth=1, head=[{"type": "linear", "out": 10}])
    with pytest.raises(ConfigError, match=r"block 0 \(physical\): incoming width 64 ≠ system input_dim 6"):
        build_network(bad, 64, 10, lab, None)
    with pytest.raises(ConfigError, match="ends with width 6 but the task has 10 classes"):
        build_network(NetworkConfig(depth=1, stem=[{"type": "linear", "out": 6}]), 64, 10, lab, None)
    with pytest.raises(ConfigError, match=r"block 1 \(pool\): cannot pool width 6 into 8"):
        build_network(NetworkConfig(depth=0, stem=[{"type": "linear", "out": 6}, {"type": "pool", "out": 8}]),
                      64, 8, None, None)


def test_pool_averages_groups_and_counts_parameters():
    cfg = NetworkConfig(depth=1, stem=[{"type": "linear", "out": 6}], layer=[{"type": "physical"}, {"type": "rescale"}],
                        head=[{"type": "pool", "out": 3}])
    lab = make_lab("oscillators", n=6, ideal=True)
    net = build_network(cfg, 64, 3, lab, lab.ideal_twin())
    assert count_digital_parameters(net) == 64 * 6 + 6 + 2 * 6
    pool = net[-1]
    x = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(pool(x), x.reshape(2, 3, 2).mean(-1))


def test_data_init_standardises_every_rescale_in_order_without_touching_the_device_in_silico():
    lab = make_lab("oscillators", n=6, ideal=True)
    cfg = NetworkConfig(depth=2, stem=[{"type": "linear", "out": 6}],
                        layer=[{"type": "rescale", "scale": 0.5, "bias": 0.2, "init": "data"}, {"type": "physical"}],
                        head=[{"type": "rescale", "scale": 2.0, "init": "data"}])
    net = build_network(cfg, 64, 6, lab, lab.ideal_twin())
    set_mode(net, "in_silico")
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    seen: list[tuple[float, float, torch.Tensor]] = []
    for m in net:
        if getattr(m, "init", None) == "data":
            m.register_forward_hook(lambda mod, a, out: seen.append((*mod.target, out.detach())))
    q0 = lab.queries
    assert init_from_data(net, x) == 3
    assert lab.queries == q0  # in silico: only the twin was used
    seen.clear()
    with torch.no_grad():
        net(x)  # the same batch through the initialised network (in silico: deterministic)
    assert [(s, b) for s, b, _ in seen] == [(0.5, 0.2), (0.5, 0.2), (2.0, 0.0)]  # all three rescales, in order
    for scale, bias, out in seen:  # each rescale's output on the init batch: mean = bias, std = scale per feature
        std, mean = torch.std_mean(out, dim=0)
        assert torch.allclose(mean, torch.full_like(mean, bias), atol=1e-5)
        assert torch.allclose(std, torch.full_like(std, scale), rtol=1e-4)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [v for k, v in state.items() if k.endswith("initialised")]
    assert len(flags) == 3 and all(bool(f) for f in flags)
    assert init_from_data(net, torch.randn(128, 64)) == 0  # already initialised: left alone
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_data_init_rejects_a_single_sample_and_unknown_modes():
    from pnnkit import ElementwiseRescale, ShapeError

    with pytest.raises(ConfigError, match="rescale init must be 'fixed' or 'data'"):
        ElementwiseRescale(3, init="batch")
    with pytest.raises(ShapeError, match="needs a batch"):
        ElementwiseRescale(3, init="data").set_from_batch(torch.ones(1, 3))


def test_data_init_gives_constant_features_the_median_gain_not_a_huge_one():
    from pnnkit import ElementwiseRescale

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g) * torch.tensor([1.0, 2.0, 4.0, 0.0])  # feature 3: blank in every sample
    r = ElementwiseRescale(4, scale=0.5, init="data")
    r.set_from_batch(x)
    std = x[:, :3].std(0)
    assert torch.allclose(r.scale[:3], 0.5 / std)
    assert torch.isclose(r.scale[3], 0.5 / std.median())  # not 0.5 / 0
    assert torch.allclose(r(x)[:, 3], torch.zeros(64))  # still centred on the target mean
    r2 = ElementwiseRescale(2, init="data")
    r2.set_from_batch(torch.ones(8, 2))  # nothing varies at all: unit gain, centred
    assert torch.equal(r2.scale.detach(), torch.ones(2)) and torch.equal(r2(torch.ones(8, 2)), torch.zeros(8, 2))


# --- F10: Slice keeps the outputs it names -------------------------------------------------------------------
def test_slice_keeps_the_named_outputs():
    from pnnkit import Slice
    from pnnkit.networks import NetworkConfig, build_network

    x = torch.arange(24.0).reshape(2, 12)
    assert torch.equal(Slice(3, 10)(x), x[:, 3:10]) and torch.equal(Slice(0, 10)(x), x[:, :10])
    net = build_network(NetworkConfig(depth=0, head=[{"type": "slice", "start": 3, "stop": 10}]), 12, 7, None, None)
    assert torch.equal(net(x), x[:, 3:10])
