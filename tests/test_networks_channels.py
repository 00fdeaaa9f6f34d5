"""Interleaved pooling and parallel physical channels (issue 4's time-domain MNIST networks)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
import torch

from pnnkit import ConfigError, Repeat, ShapeError, make_lab
from pnnkit.config import validate_config
from pnnkit.experiments import _without_physical
from pnnkit.layers import PhysicalLayer, physical_layers, set_mode
from pnnkit.layers import ParallelPhysical
from pnnkit.networks import NetworkConfig, build_network, count_digital_parameters


def test_interleaved_pool_gives_every_group_features_from_the_whole_record():
    cfg = NetworkConfig(depth=0, stem=[{"type": "pool", "out": 3, "order": "interleaved"}])
    net = build_network(cfg, 7, 3, None, None)
    x = torch.arange(14.0).reshape(2, 7)
    want = torch.stack([x[:, [0, 3, 6]].mean(1), x[:, [1, 4]].mean(1), x[:, [2, 5]].mean(1)], 1)
    assert torch.allclose(net(x), want)
    assert count_digital_parameters(net) == 0
    cons = build_network(NetworkConfig(depth=0, stem=[{"type": "pool", "out": 3}]), 6, 3, None, None)
    assert torch.allclose(cons(torch.arange(6.0)[None]), torch.tensor([[0.5, 2.5, 4.5]]))  # default: consecutive


def test_repeat_then_rescale_and_interleaved_pool_gives_each_feature_two_weighted_groups():
    cfg = NetworkConfig(depth=0, head=[{"type": "repeat", "times": 2}, {"type": "rescale"},
                                       {"type": "pool", "out": 3, "order": "interleaved"}])
    net = build_network(cfg, 5, 3, None, None)
    assert count_digital_parameters(net) == 2 * (2 * 5)  # a scale and a bias per copy
    x = torch.arange(10.0).reshape(2, 5)
    assert torch.equal(net[0](x), torch.cat([x, x], 1))  # copy m of feature i at m·n + i
    # which groups each input feature reaches: copy 0 of feature i → group i mod 3, copy 1 → (5 + i) mod 3
    jac = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], torch.ones(5))  # (groups, features)
    reach = [set(torch.nonzero(jac[:, i]).flatten().tolist()) for i in range(5)]
    assert reach == [{0, 2}, {1, 0}, {2, 1}, {0, 2}, {1, 0}]
    with torch.no_grad():  # the two copies carry separate weights: a weight on copy 1 moves only its group
        net[1].scale[5 + 1] = 3.0
    jac2 = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], torch.ones(5))
    assert torch.equal(jac2[1, 1], jac[1, 1]) and not torch.equal(jac2[0, 1], jac[0, 1])
    with pytest.raises(ValidationError, match="times"):
        NetworkConfig(depth=0, head=[{"type": "repeat", "times": 1}])
    with pytest.raises(ConfigError, match="repeat needs times ≥ 1, got 0"):
        Repeat(0)
    with pytest.raises(ShapeError, match=r"repeat: expected input \(batch, features\), got \(5,\)"):
        net[0](torch.ones(5))


def test_parallel_split_channels_have_their_own_theta_and_see_their_own_chunk():
    lab = make_lab("oscillators", n=4, ideal=True)
    cfg = NetworkConfig(depth=1, layer=[{"type": "parallel", "channels": 3}, {"type": "rescale"}],
                        head=[{"type": "pool", "out": 2, "order": "interleaved"}])
    net = build_network(cfg, 12, 2, lab, lab.ideal_twin())
    par = net[0]
    assert isinstance(par, ParallelPhysical) and len(list(physical_layers(net))) == 3
    thetas = [torch.cat([p.flatten() for p in ch.theta.values()]) for ch in par.channels]
    assert not torch.equal(thetas[0], thetas[1])  # independently initialised θ per channel
    assert count_digital_parameters(net) == 2 * 12  # the θ of every channel is physical, not digital
    set_mode(net, "physical")
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(0))
    y = par(x)
    assert y.shape == (5, 12)
    for k, ch in enumerate(par.channels):  # channel k = the device on chunk k with channel k's θ
        assert torch.allclose(y[:, 4 * k : 4 * k + 4], ch(x[:, 4 * k : 4 * k + 4]))
    q0 = lab.queries
    par(x)
    assert lab.queries - q0 == 3 * 5  # one device call per channel
    # PAT: gradients reach every channel's θ and the input
    set_mode(net, "pat")
    xg = x.clone().requires_grad_(True)
    net(xg).sum().backward()
    assert xg.grad is not None and all(p.grad is not None for ch in par.channels for p in ch.theta.values())


def test_parallel_shared_input_and_width_errors():
    lab = make_lab("oscillators", n=4, ideal=True)
    shared = NetworkConfig(depth=1, layer=[{"type": "parallel", "channels": 2, "input": "shared"}],
                           head=[{"type": "pool", "out": 2}])
    net = build_network(shared, 4, 2, lab, lab.ideal_twin())
    set_mode(net, "physical")
    x = torch.rand(3, 4)
    y = net[0](x)
    assert y.shape == (3, 8) and torch.allclose(y[:, 4:], net[0].channels[1](x))
    bad = NetworkConfig(depth=1, layer=[{"type": "parallel", "channels": 3}], head=[])
    with pytest.raises(ConfigError, match=r"block 0 \(parallel, 3 channels, input split\): incoming width 8 ≠ 12"):
        build_network(bad, 8, 12, lab, lab.ideal_twin())
    with pytest.raises(ConfigError, match="no system"):
        build_network(bad, 12, 12, None, None)
    with pytest.raises(ConfigError, match="channels"):
        validate_config({"network": {"layer": [{"type": "parallel", "channels": 0}]}})


def test_without_physical_drops_parallel_blocks_and_keeps_digital_parameters():
    lab = make_lab("oscillators", n=4, ideal=True)
    cfg = NetworkConfig(depth=2, stem=[{"type": "rescale"}],
                        layer=[{"type": "parallel", "channels": 2}, {"type": "rescale"}],
                        head=[{"type": "pool", "out": 4, "order": "interleaved"}, {"type": "rescale"}])
    net = build_network(cfg, 8, 4, lab, lab.ideal_twin())
    base = build_network(_without_physical(cfg), 8, 4, None, None)
    assert not any(isinstance(m, PhysicalLayer) for m in base.modules())
    assert count_digital_parameters(base) == count_digital_parameters(net) == 2 * (8 + 8 + 8 + 4)


def test_pixel_views_play_the_image_row_by_row_and_column_by_column():
    cfg = NetworkConfig(depth=0, stem=[{"type": "views", "views": ["rows", "columns"]},
                                       {"type": "pool", "out": 2, "order": "consecutive"}])
    net = build_network(cfg, 9, 2, None, None)
    views = net[0]
    img = torch.arange(9.0).reshape(3, 3)  # rows 0 1 2 / 3 4 5 / 6 7 8
    out = views(img.flatten()[None])
    assert out.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 3, 6, 1, 4, 7, 2, 5, 8]]
    assert count_digital_parameters(net) == 0
    with pytest.raises(ConfigError, match="not a square image"):
        build_network(cfg, 8, 2, None, None)
    with pytest.raises(ValidationError, match="Input should be 'rows', 'columns', 'hilbert' or 'hilbert_transposed'"):
        NetworkConfig(depth=0, stem=[{"type": "views", "views": ["diagonal"]}])


def test_hilbert_views_are_permutations_that_keep_2d_neighbours_close():
    from pnnkit.layers import PixelViews, hilbert_order

    # the order-2 Hilbert curve: playback position of each pixel of a 4 × 4 image
    position = {cell: i for i, cell in enumerate(hilbert_order(4))}
    assert [[position[(r, c)] for c in range(4)] for r in range(4)] == [
        [0, 1, 14, 15], [3, 2, 13, 12], [4, 7, 8, 11], [5, 6, 9, 10]]
    for side in (4, 7, 14):
        views = PixelViews(side, ["hilbert", "hilbert_transposed"])
        n = side * side
        idx = views.index
        assert sorted(idx[:n].tolist()) == list(range(n)) == sorted(idx[n:].tolist())
        img = torch.arange(float(n))[None]
        played = views(img)[0]
        r, c = played[:n] // side, played[:n] % side
        steps = (r.diff().abs() + c.diff().abs())
        # a space-filling curve: on a power-of-two side every step is to a grid neighbour; clipping the curve to
        # the image only adds a few jumps
        assert (steps == 1).sum() >= n - 1 - (0 if side == 4 else side)
        rt, ct = played[n:] // side, played[n:] % side
        assert torch.equal(rt, c) and torch.equal(ct, r)  # the same curve on the transposed image
    # pixels played 2–8 steps apart are closer in the image than in raster order (mean distance, 14 × 14)
    def mean_distance(order: torch.Tensor, lag: int) -> float:
        r, c = (order // 14).float(), (order % 14).float()
        return float(((r[lag:] - r[:-lag]) ** 2 + (c[lag:] - c[:-lag]) ** 2).sqrt().mean())

    hilbert, rows = PixelViews(14, ["hilbert"]).index, PixelViews(14, ["rows"]).index
    for lag in range(2, 9):
        assert mean_distance(hilbert, lag) < 0.6 * mean_distance(rows, lag)


@pytest.mark.parametrize("shared", [False, True])
def test_batched_channels_equal_separate_calls_in_one_device_call(shared: bool):
    """``batched: true`` gives the same outputs and gradients as one call per channel (noiseless lab), with one
    device call of channels × batch samples."""
    lab = make_lab("oscillators", n=4, ideal=True)
    calls = []
    inner = lab.measure
    lab.measure = lambda x, p: (calls.append(x.shape[0]), inner(x, p))[1]  # type: ignore[method-assign]
    layer = {"type": "parallel", "channels": 3, "input": "shared" if shared else "split"}
    width = 4 if shared else 12
    nets = []
    for batched in (False, True):
        cfg = NetworkConfig(depth=1, layer=[{**layer, "batched": batched}, {"type": "rescale"}],
                            head=[{"type": "pool", "out": 2, "order": "interleaved"}])
        nets.append(build_network(cfg, width, 2, lab, lab.ideal_twin().requires_grad_(False), seed=1))
    x = torch.rand(5, width, generator=torch.Generator().manual_seed(0))
    outs, grads = [], []
    for net in nets:
        set_mode(net, "pat")
        calls.clear()
        xg = x.clone().requires_grad_(True)
        y = net(xg)
        outs.append(y.detach())
        n_calls = list(calls)
        y.square().sum().backward()
        grads.append([xg.grad] + [p.grad for ch in net[0].channels for p in ch.theta.values()])
        assert n_calls == ([5, 5, 5] if net is nets[0] else [15])
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_batched_channels_need_a_lab_with_per_sample_theta():
    from pnnkit.system import FunctionSystem
    from pnnkit.spec import ParamSpec, SystemSpec

    spec = SystemSpec("f", 2, 2, -1.0, 1.0, params=(ParamSpec("theta", (2,), -1.0, 1.0),))
    system = FunctionSystem(lambda x, p: x * p["theta"], spec)
    cfg = NetworkConfig(depth=1, layer=[{"type": "parallel", "channels": 2, "batched": True}],
                        head=[{"type": "pool", "out": 2}])
    with pytest.raises(ConfigError, match="per-sample θ"):
        build_network(cfg, 4, 2, system, None)


@pytest.mark.parametrize("batched", [False, True])
def test_parallel_layer_names_a_wrong_input_width(batched: bool):
    from pnnkit.errors import ShapeError

    lab = make_lab("oscillators", n=4, ideal=True)
    for shared, width in ((False, 12), (True, 4)):
        cfg = NetworkConfig(depth=1, layer=[{"type": "parallel", "channels": 3, "batched": batched,
                                             "input": "shared" if shared else "split"}], head=[])
        par = build_network(cfg, width, 3 * 4, lab, lab.ideal_twin())[0]
        set_mode(par, "physical")
        with pytest.raises(ShapeError, match=rf"parallel layer: expected input \(batch, {width}\), got \(2, 5\)"):
            par(torch.rand(2, 5))


@pytest.mark.parametrize("name, block", [("mnist_mechanical", ("layer", 0)), ("mnist_hybrid_shg", ("layer", 1))])
def test_example_configs_batched_channels_equal_separate_calls_on_the_noiseless_lab(name, block):
    """The MNIST mechanical and hybrid configs send their channels in one call (round 15, for speed): on the lab
    without noise or defects that is the same network, outputs and gradients, as one call per channel."""
    from pathlib import Path

    import yaml

    d = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / f"{name}.yaml").read_text())
    assert d["network"][block[0]][block[1]]["batched"] is True
    lab = make_lab(d["lab"]["name"], ideal=True, **d["lab"]["options"])
    twin = lab.ideal_twin().requires_grad_(False)
    x = torch.rand(3, 196, generator=torch.Generator().manual_seed(0))
    res = []
    for batched in (False, True):
        d["network"][block[0]][block[1]]["batched"] = batched
        net = build_network(validate_config(d, name).network, 196, 10, lab, twin, seed=3)
        set_mode(net, "pat")
        xg = x.clone().requires_grad_(True)
        y = net(xg)
        y.square().sum().backward()
        res.append([y.detach(), xg.grad] + [p.grad for p in net.parameters() if p.grad is not None])
    assert len(res[0]) == len(res[1]) > 4
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
