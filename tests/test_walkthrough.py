"""The README's and docs/guide.md's snippets for a device of your own, run as written (tiny sizes, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pnnkit as pk


class FakeInstrument:
    """A made-up bench instrument: square-law actuator with a 7 % gain error and 0.02 µm readout noise."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.bias = np.zeros(8)

    def write_bias(self, b: np.ndarray) -> None:
        self.bias = b

    def read(self, v: np.ndarray) -> np.ndarray:
        return 1.07 * 0.05 * (v + 0.3 * self.bias) ** 2 + 0.02 * self.rng.standard_normal(8)


# docs/guide.md, "Wrapping your own device", as written
spec = pk.SystemSpec(
    "mems-array", input_dim=8, output_dim=8, input_low=0.0, input_high=5.0, input_unit="V", output_unit="µm",
    params=(pk.ParamSpec("bias", (8,), 0.0, 10.0, unit="V", doc="DC bias per actuator"),),
    noise_std=0.02)


class MemsArray(pk.PhysicalSystem):
    spec = spec

    def __init__(self, instrument):
        self.inst = instrument                       # e.g. a PyVISA resource

    def measure(self, x, params):                    # x: (B, 8) tensor, params["bias"]: (8,) tensor
        self.inst.write_bias(params["bias"].numpy())
        return np.stack([self.inst.read(v) for v in x.numpy()])


@pytest.fixture
def fitted(tmp_path, monkeypatch):
    """docs/guide.md, "Fitting a twin", at a tenth of the size."""
    monkeypatch.chdir(tmp_path)
    device = MemsArray(FakeInstrument())
    data = pk.acquire(device, 1_000, inputs_per_setting=64, design="sobol", repeats=2, seed=0)
    data.save("mems.h5")
    twin = pk.MLPTwin(device.spec, hidden=(32, 32))
    report = pk.fit_twin(twin, data, epochs=5, patience=20)
    twin.save("mems_twin.safetensors")
    return device, data, twin, report


def test_guide_wrap_refuses_bad_calls_before_the_device():
    device = MemsArray(FakeInstrument())
    ok = {"bias": torch.full((8,), 5.0)}
    assert device(torch.full((3, 8), 2.0), ok).shape == (3, 8)
    assert (device.calls, device.queries) == (1, 3)
    with pytest.raises(pk.RangeError, match=r"input outside its hard range \[0.0, 5.0\] V"):
        device(torch.full((3, 8), 6.0), ok)
    with pytest.raises(pk.RangeError, match="parameter 'bias' outside its hard range"):
        device(torch.full((3, 8), 2.0), {"bias": torch.full((8,), 11.0)})
    with pytest.raises(pk.ShapeError, match=r"x must have shape \(batch, 8\)"):
        device(torch.full((3, 7), 2.0), ok)
    with pytest.raises(pk.ShapeError, match="missing \\['bias'\\]; unknown \\['bais'\\]"):
        device(torch.full((3, 8), 2.0), {"bais": torch.zeros(8)})
    assert device.queries == 3  # none of the refused calls reached the instrument

    def timeout(v):
        raise TimeoutError("VISA timeout")

    device.inst.read = timeout
    with pytest.raises(pk.DeviceError, match=r"measure\(\) failed on call 2 \(batch of 3\): TimeoutError") as e:
        device(torch.full((3, 8), 2.0), ok)
    assert isinstance(e.value.__cause__, TimeoutError)
    assert (device.calls, device.queries) == (2, 6)  # the failed call reached the instrument: it counts


def test_function_system_gets_numpy():
    seen = {}

    def fn(x, params):
        seen["types"] = (type(x), type(params["bias"]))
        return 0.05 * x ** 2

    dev = pk.FunctionSystem(fn, spec, numpy=True)
    assert dev(torch.ones(2, 8), {"bias": torch.zeros(8)}).shape == (2, 8)
    assert seen["types"] == (np.ndarray, np.ndarray)


def test_guide_fit_saves_reloads_and_keeps_the_old_twin(fitted, tmp_path):
    device, data, twin, report = fitted
    # n_samples is rounded up to whole settings: ceil(1000 / 64) = 16 settings of 64, each measured twice
    assert len(data) == 16 * 64 and tuple(data.y.shape) == (1024, 2, 8)
    assert device.queries == 2 * 1024
    assert "val NRMSE" in report.summary() and len(report.val_nrmse_per_output) == 8
    assert 0 < report.noise_floor_nrmse < report.val_nrmse
    loaded = pk.DigitalTwin.load("mems_twin.safetensors", expect_spec=device.spec)
    x, th = torch.full((4, 8), 2.5), {"bias": torch.full((8,), 5.0)}
    with torch.no_grad():
        assert torch.equal(loaded(x, th), twin(x, th))
    assert pk.MeasurementSet.load("mems.h5").y.shape == data.y.shape
    twin.save("mems_twin.safetensors")  # saving again keeps the earlier pair under another name
    kept = sorted(p.name for p in tmp_path.glob("mems_twin.*"))
    assert len(kept) == 4 and "mems_twin.json" in kept and "mems_twin.safetensors" in kept
    other = pk.SystemSpec("other", 8, 8, 0.0, 5.0)
    with pytest.raises(pk.TwinError, match="mems_twin.safetensors was fitted to system 'mems-array'"):
        pk.DigitalTwin.load("mems_twin.safetensors", expect_spec=other)
    with pytest.raises(pk.TwinError, match="twin file missing: nope.safetensors"):
        pk.DigitalTwin.load("nope.safetensors")


def test_readme_network_runs_in_every_mode(fitted):
    device, _, twin, _ = fitted
    net = torch.nn.Sequential(pk.ElementwiseRescale(8, scale=5.0), pk.PhysicalLayer(device, twin),
                              pk.ElementwiseRescale(8), pk.PhysicalLayer(device, twin), torch.nn.Linear(8, 10))
    x = torch.rand(16, 8)
    q0 = device.queries
    pk.set_mode(net, "pat")
    net(x).sum().backward()
    assert device.queries - q0 == 2 * 16  # two physical layers, one call each
    theta = net[1].theta["bias"]
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    pk.set_mode(net, "in_silico")
    net(x)
    assert device.queries - q0 == 2 * 16  # the twin only
    with pk.using_mode(net, "physical"):
        assert net(x).shape == (16, 10)
    assert net[1].mode == "in_silico"
    with pytest.raises(pk.ConfigError, match="unknown mode 'PAT'"):
        pk.set_mode(net, "PAT")
    with pytest.raises(pk.ShapeError, match=r"expected input \(batch, 8\), got \(16, 7\)"):
        net[1](torch.rand(16, 7))


def _task(seed: int = 0) -> pk.ClassificationTask:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(4, 8, generator=g)

    def draw(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return (centres[y] + 0.1 * torch.randn(n, 8, generator=g)).clamp(0, 1), y

    (x_train, y_train), (x_test, y_test) = draw(96), draw(32)
    return pk.ClassificationTask("my-task", x_train, y_train, x_test, y_test, classes=["a", "b", "c", "d"])


def test_guide_training_from_python_trains_saves_and_reloads(fitted, tmp_path):
    device, _, twin, _ = fitted
    task = _task()
    results = {}
    for mode in ("pat", "in_silico"):
        torch.manual_seed(0)                  # initial θ and digital weights are drawn when the network is built
        net = torch.nn.Sequential(pk.ElementwiseRescale(8, scale=5.0), pk.PhysicalLayer(device, twin),
                                  pk.ElementwiseRescale(8), torch.nn.Linear(8, 4))
        cfg = pk.TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=0, progress=False)
        result = pk.Trainer(net, task, mode, cfg, out_dir=f"train-{mode}").fit()
        results[mode] = result
        pk.save_weights(net, f"net-{mode}.safetensors")
        assert 0.0 <= result.test_accuracy <= 1.0
        files = {p.name for p in (tmp_path / f"train-{mode}").iterdir()}
        assert {"log.csv", "tb", "checkpoint.safetensors", "checkpoint.json", "device_log.h5"} <= files
    assert results["pat"].physical_queries == 96 and results["in_silico"].physical_queries == 0
    assert results["in_silico"].twin_test_accuracy is not None and results["pat"].twin_test_accuracy is None

    # reload: rebuild the network on the loaded twin, load the state_dict, deploy on the device
    twin2 = pk.DigitalTwin.load("mems_twin.safetensors", expect_spec=spec)
    net2 = torch.nn.Sequential(pk.ElementwiseRescale(8, scale=5.0), pk.PhysicalLayer(device, twin2),
                               pk.ElementwiseRescale(8), torch.nn.Linear(8, 4))
    from safetensors.torch import load_file

    state = load_file("net-pat.safetensors")
    assert "1.theta.bias" in state and not any("twin" in k for k in state)
    pk.load_weights(net2, "net-pat.safetensors")
    assert all(torch.equal(v, state[k]) for k, v in net2.state_dict().items())
    pk.set_mode(net2, "physical")
    assert net2(task.x_test).shape == (32, 4)
    bias = net2[1].params()["bias"].detach()
    assert float(bias.min()) >= 0.0 and float(bias.max()) <= 10.0


def test_trainer_refuses_a_bad_task_or_mode_before_any_device_time(fitted):
    device, _, twin, _ = fitted
    net = torch.nn.Sequential(pk.PhysicalLayer(device, twin), torch.nn.Linear(8, 4))
    t = _task()
    q0 = device.queries
    bad = pk.ClassificationTask("my-task", t.x_train, t.y_train + 4, t.x_test, t.y_test, t.classes)
    with pytest.raises(pk.ConfigError, match=r"train labels must lie in 0 … 3"):
        pk.Trainer(net, bad, "pat", pk.TrainConfig(epochs=1, progress=False))
    with pytest.raises(pk.ConfigError, match="training mode must be 'pat', 'in_silico' or 'exact'"):
        pk.Trainer(net, t, "PAT")
    with pytest.raises(pk.ConfigError, match="batch_size must be ≥ 1"):
        pk.Trainer(net, t, "pat", pk.TrainConfig(batch_size=0))
    assert device.queries == q0


def test_config_typo_is_named_with_a_suggestion(tmp_path):
    from pnnkit.config import load_config

    cfg = tmp_path / "my.yaml"
    cfg.write_text("name: my-experiment\ntask: {name: digits}\nlab: {name: oscillators, options: {n: 64}}\n"
                   "training: {epoch: 10, batch_size: 64}\n")
    with pytest.raises(pk.ConfigError, match=r"unknown key 'training.epoch' \(did you mean 'epochs'\?\)"):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace("epoch:", "epochs:"))
    assert load_config(cfg, ["training.epochs=3", "twin.path=runs/tw/twin.safetensors"]).twin.path is not None
    with pytest.raises(pk.ConfigError, match="did you mean 'epochs'"):
        load_config(cfg, ["training.epoch=3"])
