"""Declarative network building: widths checked per block, pooling, digital parameter count."""

from __future__ import annotations

import pytest
import torch

from pnnkit import ConfigError, make_lab
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
