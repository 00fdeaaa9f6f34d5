"""Small differentiable systems for tests."""

from __future__ import annotations

import torch

from pnnkit import FunctionSystem, ParamSpec, SystemSpec


def tanh_spec(n: int = 4, name: str = "tanh") -> SystemSpec:
    return SystemSpec(name, n, n, -1.0, 1.0, (ParamSpec("W", (n, n), -2.0, 2.0), ParamSpec("b", (n,), -1.0, 1.0)))


def tanh_model(x, p):
    """f_m(x, θ) = tanh(x Wᵀ + b)."""
    return torch.tanh(x @ p["W"].T + p["b"])


def tanh_reality(x, p):
    """f_p: the model with a gain error and an extra ripple (what the 'device' really does)."""
    return 1.1 * torch.tanh(x @ p["W"].T + p["b"]) + 0.05 * torch.sin(3 * x)


def tanh_system(n: int = 4, reality: bool = False) -> FunctionSystem:
    return FunctionSystem(tanh_reality if reality else tanh_model, tanh_spec(n), differentiable=True)


def tiny_config(epochs: int = 2) -> dict:
    """A config that runs end to end in seconds: 6 oscillators, digits, a small twin, ``epochs`` of training."""
    return {
        "name": "tiny",
        "task": {"name": "digits", "options": {"test_size": 200}},
        "lab": {"name": "oscillators", "options": {"n": 6, "steps": 10}},
        "twin": {"kind": "physics", "samples": 256, "inputs_per_setting": 64, "fit": {"epochs": 3, "lr": 0.02}},
        "network": {"depth": 2, "stem": [{"type": "linear", "out": 6}], "head": [{"type": "linear", "out": 10}]},
        "training": {"epochs": epochs, "batch_size": 256, "lr": 0.02},
    }
