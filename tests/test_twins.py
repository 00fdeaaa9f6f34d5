"""Measurement acquisition (HDF5) and digital twins (fit, safetensors save/load, clear errors)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pnnkit import DataError, DigitalTwin, MeasurementSet, MLPTwin, TwinError, acquire, evaluate_twin, fit_twin, make_lab


def _lab4():
    return make_lab("oscillators", n=4, unit=0, seed=0)


@pytest.fixture
def lab4():
    """A freshly built lab per test (about a millisecond): no test sees noise another test has drawn."""
    return _lab4()


@pytest.fixture(scope="module")
def data4():
    """The shared (read-only) data set, from its own fresh lab: the same whichever test asks for it first."""
    return acquire(_lab4(), 8192, inputs_per_setting=32, repeats=2, seed=1)


def test_acquisition_covers_declared_ranges_and_roundtrips_hdf5(lab4, data4, tmp_path):
    spec = lab4.spec
    assert len(data4) == 8192 and data4.y.shape == (8192, 2, 4)
    assert data4.x.min() >= spec.input_low and data4.x.max() <= spec.input_high
    # space-filling: every decile of every input dimension is populated about equally
    hist = torch.stack([torch.histc(data4.x[:, i], 10, spec.input_low, spec.input_high) for i in range(4)])
    assert hist.min() > 0.8 * 819 and hist.max() < 1.2 * 819
    J = data4.params["J"]
    assert J.min() >= spec.param("J").low and J.max() <= spec.param("J").high
    # repeats estimate the configured readout noise (0.01 rad) plus input-setting noise
    noise = data4.noise_std()
    assert noise is not None and (noise > 0.009).all() and (noise < 0.04).all()
    path = data4.save(tmp_path / "m.h5")
    back = MeasurementSet.load(path)
    assert torch.equal(back.x, data4.x) and torch.equal(back.y, data4.y)
    assert back.meta["seed"] == 1 and back.spec == spec
    import h5py

    with h5py.File(path) as f:
        assert f["x"].attrs["unit"] == "rad" and f["params"]["J"].attrs["unit"] == "ω0^2"


def test_mlp_twin_reaches_stated_nrmse_and_save_load_is_bit_identical(lab4, data4, tmp_path):
    torch.manual_seed(0)
    twin = MLPTwin(lab4.spec, hidden=(128, 128))
    report = fit_twin(twin, data4, epochs=150, seed=0)
    # Validation NRMSE ≤ 0.10 for the 4-oscillator lab with 8k samples (measured 0.077).
    assert report.val_nrmse < 0.10
    assert report.noise_floor_nrmse is not None and report.noise_floor_nrmse < report.val_nrmse
    fresh = acquire(lab4, 1024, inputs_per_setting=32, seed=7)
    assert evaluate_twin(twin, fresh)[0] < 0.12
    twin.save(tmp_path / "twin")
    loaded = DigitalTwin.load(tmp_path / "twin.safetensors", expect_spec=lab4.spec)
    for (k, a), (k2, b) in zip(twin.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x, p = fresh.x[:64], {k: v[:64] for k, v in fresh.params.items()}
    assert torch.equal(twin(x, p), loaded(x, p))
    assert loaded.report.val_nrmse == report.val_nrmse


def test_physics_twin_calibrates_the_nonlinearity(lab4, data4):
    twin = lab4.ideal_twin()
    sub = data4.subset(torch.arange(2048))
    before = evaluate_twin(twin, sub)[0]
    fit_twin(twin, sub, epochs=8, lr=0.03, batch_size=256, seed=0)
    after = evaluate_twin(twin, sub)[0]
    assert after < before
    assert abs(float(twin.log_alpha.exp()) - 1.10) < 0.03  # the unit's +10 % nonlinearity error


def test_fit_twin_holds_fixed_parameters_and_names_unknown_ones(lab4, data4):
    from pnnkit import ConfigError

    sub = data4.subset(torch.arange(512))
    twin = lab4.ideal_twin()
    start = {k: v.clone() for k, v in twin.state_dict().items()}
    fit_twin(twin, sub, epochs=2, lr=0.03, batch_size=256, seed=0, fixed=("log_alpha", "log_input_gain"))
    after = twin.state_dict()
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    assert moved == {"log_coupling_gain", "log_output_gain"}
    with pytest.raises(ConfigError, match="fixed names parameters the twin does not have: log_alfa \\(its "
                                          "parameters: log_alpha, log_coupling_gain"):
        fit_twin(lab4.ideal_twin(), sub, epochs=1, fixed=["log_alfa"])
    fit_twin(lab4.ideal_twin(), sub, epochs=1, fixed="log_alpha")  # one name as a string
    every = [k for k, _ in twin.named_parameters()]
    with pytest.raises(TwinError, match="no trainable parameters to fit \\(all are fixed\\)"):
        fit_twin(lab4.ideal_twin(), sub, epochs=1, fixed=every)


def test_corrupt_or_mismatched_twin_files_give_clear_errors(lab4, tmp_path):
    twin = MLPTwin(lab4.spec, hidden=(8,))
    path = twin.save(tmp_path / "t")
    with pytest.raises(TwinError, match="twin file missing"):
        DigitalTwin.load(tmp_path / "nope.safetensors")
    other = make_lab("oscillators", n=5)
    with pytest.raises(TwinError, match="does not match 'oscillators': input_dim 4 vs 5; output_dim 4 vs 5"):
        DigitalTwin.load(path, expect_spec=other.spec)
    # same dimensions, another range: the message says which range (the two names alone would read the same)
    narrower = make_lab("oscillators", n=4, input_max=0.9)
    with pytest.raises(TwinError, match=r"input_high 1.0 vs 0.9 \(the twin's vs the system's\)$"):
        DigitalTwin.load(path, expect_spec=narrower.spec)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TwinError, match="do not match the checksum"):
        DigitalTwin.load(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(TwinError, match="not valid JSON"):
        DigitalTwin.load(path)
    # a valid twin whose description names an unknown kind, or another format: each refused for what it is
    path = twin.save(tmp_path / "u")
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "kind": "pickle"}))
    with pytest.raises(TwinError, match="unknown twin kind 'pickle'"):
        DigitalTwin.load(path)
    path.with_suffix(".json").write_text(json.dumps({**meta, "format": "pnnkit.twin/0"}))
    with pytest.raises(TwinError, match="is not a pnnkit twin description"):
        DigitalTwin.load(path)
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert DigitalTwin.load(path).kind == twin.kind  # the untouched description loads


def test_missing_measurement_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="measurement file not found"):
        MeasurementSet.load(tmp_path / "missing.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="cannot read measurement file"):
        MeasurementSet.load(tmp_path / "bad.h5")


def test_saving_measurements_never_replaces_earlier_data(data4, tmp_path):
    small = data4.subset(torch.arange(64))
    small.save(tmp_path / "m.h5")
    small.subset(torch.arange(32)).save(tmp_path / "m.h5")
    files = sorted(p.name for p in tmp_path.glob("m*.h5"))
    assert len(files) == 2 and "m.h5" in files
    sizes = sorted(len(MeasurementSet.load(tmp_path / f)) for f in files)
    assert sizes == [32, 64]


def _flaky_system(fail_on_call: int, how: str):
    """A 2-in/2-out device with one parameter that fails on its ``fail_on_call``-th call (NaN in one sample, or
    an exception)."""
    from pnnkit import FunctionSystem, ParamSpec, SystemSpec

    calls = {"n": 0}

    def device(x, p):
        calls["n"] += 1
        y = x * p["g"]
        if calls["n"] == fail_on_call:
            if how == "raise":
                raise TimeoutError("instrument timed out")
            y[1, 0] = float("nan")
        return y

    return FunctionSystem(device, SystemSpec("flaky", 2, 2, -1.0, 1.0, (ParamSpec("g", (1,), 0.5, 2.0),)))


def test_a_failed_measurement_is_kept_in_the_log_and_readers_skip_it(tmp_path):
    from pnnkit import DeviceError, MeasurementLog

    system = _flaky_system(2, "nan")
    log = MeasurementLog(tmp_path / "log.h5", system.spec)
    system.attach_log(log)
    g = {"g": torch.ones(1)}
    system(torch.full((4, 2), 0.5), g)
    with pytest.raises(DeviceError, match="NaN/inf for 1 of 4 samples \\(the call is kept in the attached log\\)"):
        system(torch.full((4, 2), 0.25), g)
    assert len(log) == 8 and system.queries == 8  # both calls, as measured
    m = log.to_measurements()
    assert len(m) == 7 and m.meta["skipped_nonfinite"] == 1 and torch.isfinite(m.y).all()
    log.close()


def test_twin_measurements_taken_before_a_device_failure_are_kept(tmp_path):
    from pnnkit import DeviceError
    from pnnkit.config import TwinConfig
    from pnnkit.experiments import make_twin

    cfg = TwinConfig(samples=64, inputs_per_setting=8, repeats=1)
    with pytest.raises(DeviceError, match=r"the 24 samples measured before are kept in .*partial\.h5"):
        make_twin(_flaky_system(4, "nan"), cfg, tmp_path)  # settings 1–3 measured, the 4th fails
    kept = MeasurementSet.load(tmp_path / "twin_measurements.partial.h5")
    assert len(kept) == 24 and torch.isfinite(kept.y).all()
    # the device's own exception is named (with its call) and chained; the data measured before is kept again
    with pytest.raises(DeviceError, match=r"measure\(\) failed on call 3 \(batch of 8\): TimeoutError: instrument "
                                          r"timed out \(the 16 samples measured before are kept in") as info:
        make_twin(_flaky_system(3, "raise"), cfg, tmp_path)
    assert isinstance(info.value.__cause__.__cause__, TimeoutError)
    assert len(list(tmp_path.glob("twin_measurements.partial*.h5"))) == 2


def test_measurement_sets_and_twin_fits_refuse_data_that_does_not_fit(lab4, data4):
    from pnnkit import ConfigError

    spec = lab4.spec
    n = 8
    good = dict(x=torch.zeros(n, spec.input_dim), params={k: v[:n] for k, v in data4.params.items()},
                y=torch.zeros(n, 1, spec.output_dim))
    for change, msg in [(dict(x=torch.zeros(n, spec.input_dim + 1)), rf"x must be \(N, {spec.input_dim}\)"),
                        (dict(y=torch.zeros(n, 1, 3)), rf"y must be \(N, repeats, {spec.output_dim}\)"),
                        (dict(params={}), "do not match the spec"),
                        (dict(x=torch.zeros(n + 1, spec.input_dim)), "disagree on the number of samples")]:
        with pytest.raises(DataError, match=msg):
            MeasurementSet(spec, **{**good, **change})
    bad = data4.subset(torch.arange(64))
    bad.y[3, 0, 0] = float("nan")
    with pytest.raises(DataError, match="1 measurements contain NaN or inf"):
        fit_twin(lab4.ideal_twin(), bad, epochs=1)
    with pytest.raises(ConfigError, match="too few measurements \\(2\\) to fit a twin"):
        fit_twin(lab4.ideal_twin(), data4.subset(torch.arange(2)), epochs=1)
    for kw in (dict(epochs=0), dict(weight_decay=-1.0), dict(lr=math.inf), dict(seed=-1)):
        with pytest.raises(ConfigError, match=r"^fit_twin: need epochs, batch_size, patience ≥ 1, a finite lr > 0"):
            fit_twin(lab4.ideal_twin(), data4, **kw)
    with pytest.raises(ConfigError, match=r"^fit_twin: epochs must be an integer, got 2.5$"):
        fit_twin(lab4.ideal_twin(), data4, epochs=2.5)
    for kw, msg in [(dict(seed=-1), r"seed must be in 0 … 2\*\*32 − 1, got -1"),
                    (dict(inputs_per_setting=2.5), "inputs_per_setting must be an integer, got 2.5")]:
        with pytest.raises(ConfigError, match=rf"^acquire: {msg}$"):
            acquire(lab4, 16, **kw)
    with pytest.raises(ConfigError, match=r"^acquire: system must be a PhysicalSystem .*got function$"):
        acquire(lambda x: x, 16)
    other = make_lab("oscillators", n=5)
    with pytest.raises(TwinError, match=r"twin for 'oscillators' \(in 5, out 5.*measurements of 'oscillators' \(in 4.*"
                                        r": input_dim 5 vs 4; output_dim 5 vs 4; .*\(the twin's vs the data's\)$"):
        fit_twin(other.ideal_twin(), data4, epochs=1)
    with pytest.raises(ConfigError, match="dtype must be torch.float32 or torch.float64"):
        acquire(lab4, 16, dtype=torch.long)


@pytest.mark.parametrize("bad", ["complex", "object"])
def test_a_device_returning_no_real_numbers_is_a_device_error(bad):
    import numpy as np

    from pnnkit import DeviceError, FunctionSystem, SystemSpec

    def device(x, p):
        return x.astype(complex) if bad == "complex" else np.array([["a"] * x.shape[1]] * x.shape[0], dtype=object)

    system = FunctionSystem(device, SystemSpec("d", 2, 2, -1.0, 1.0), numpy=True)
    with pytest.raises(DeviceError, match="expected real numbers"):
        system(torch.zeros(3, 2), {})
    assert (system.calls, system.queries) == (1, 3)  # the device was used, though its reading is refused


def test_saving_a_twin_twice_keeps_the_first_pair_loadable(lab4, tmp_path):
    first = MLPTwin(lab4.spec, hidden=(8,))
    first.save(tmp_path / "twin")
    second = MLPTwin(lab4.spec, hidden=(4,))
    second.save(tmp_path / "twin")
    kept = sorted(p for p in tmp_path.glob("twin.*.safetensors"))
    assert len(kept) == 1 and kept[0].with_suffix(".json").exists()
    assert DigitalTwin.load(kept[0]).config()["hidden"] == [8]
    assert DigitalTwin.load(tmp_path / "twin.safetensors").config()["hidden"] == [4]


@pytest.mark.parametrize("net_dtype, twin_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_an_mlp_twin_serves_a_network_of_another_precision(net_dtype, twin_dtype):
    """PAT's backward runs the twin at the layer's measured input: a float64 network with a float32 twin (or the
    reverse) gets the twin's VJP in its own dtype, equal to the single-precision result."""
    from helpers import tanh_system

    from pnnkit.layers import PhysicalLayer

    torch.manual_seed(0)
    system = tanh_system(4)
    twin = MLPTwin(system.spec, hidden=(8,)).to(twin_dtype)
    x = torch.rand(5, 4) - 0.5

    def grads(dtype):
        torch.manual_seed(1)
        layer = PhysicalLayer(system, twin).to(dtype)
        xi = x.to(dtype, copy=True).requires_grad_(True)
        y = layer(xi)
        assert y.dtype == dtype
        (y * torch.arange(4, dtype=dtype)).sum().backward()
        return [t.grad for t in (xi, *layer.parameters())]

    mixed, same = grads(net_dtype), grads(twin_dtype)
    assert all(g.dtype == net_dtype for g in mixed)
    for a, b in zip(mixed, same):
        torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), rtol=1e-5, atol=1e-6)
    params = {p.name: torch.zeros(p.shape, dtype=net_dtype) for p in system.spec.params}
    assert twin(x.to(net_dtype), params).dtype == net_dtype  # in silico the twin's output takes the input's dtype


# --- F5: acquisition is space-filling (Sobol), not merely uniform ---------------------------------------------
def test_acquisition_design_is_space_filling():
    from pnnkit import FunctionSystem, ParamSpec, SystemSpec, acquire

    spec = SystemSpec("id", 4, 4, -1.0, 1.0, (ParamSpec("g", (3,), 0.0, 2.0),))
    data = acquire(FunctionSystem(lambda x, p: x, spec), 8192, inputs_per_setting=32, seed=1)
    hist = torch.stack([torch.histc(data.x[:, i], 10, -1.0, 1.0) for i in range(4)])
    assert (hist - 819.2).abs().max() <= 3  # i.i.d. uniform points: ±70 (≈ 2.5 σ) is typical
    g = data.params["g"][::32]  # one row per setting: 256 settings
    ghist = torch.stack([torch.histc(g[:, i], 8, 0.0, 2.0) for i in range(3)])
    assert (ghist - 32).abs().max() <= 1


# --- F8: fit_twin restores the best validation weights and stops early ---------------------------------------
def test_fit_twin_restores_the_best_epoch_and_stops_after_patience():
    from pnnkit import DigitalTwin, FunctionSystem, SystemSpec, acquire, fit_twin

    seen = []

    class Gain(DigitalTwin):
        kind = "test-gain"

        def __init__(self, spec):
            super().__init__(spec)
            self.a = nn.Parameter(torch.tensor(0.0))

        def forward(self, x, params):
            if not self.training:  # fit_twin's validation pass after each epoch (and the final report)
                seen.append(float(self.a))
            return self.a * x

    spec = SystemSpec("gain", 2, 2, -1.0, 1.0)
    data = acquire(FunctionSystem(lambda x, p: x, spec), 512, inputs_per_setting=64, seed=0)  # truth: a = 1
    twin = Gain(spec)
    report = fit_twin(twin, data, epochs=6, lr=1.0, batch_size=512, patience=100, seed=0)
    per_epoch, final = seen[:-1], float(twin.a)
    best = min(per_epoch, key=lambda a: abs(a - 1))  # noiseless y = x: validation error ∝ (a − 1)²
    assert final == best and best != per_epoch[-1]  # restored, and the last epoch was not the best
    seen.clear()
    report = fit_twin(Gain(spec), data, epochs=50, lr=1e-12, batch_size=512, patience=3, seed=0)
    assert report.epochs == 1 + 3  # no improvement after the first epoch: stopped after `patience` more


@pytest.mark.parametrize("overlap", [False, True])
def test_a_twin_of_the_wrong_output_shape_names_its_system(overlap):
    from helpers import tanh_model, tanh_system
    from pnnkit import PhysicalLayer

    layer = PhysicalLayer(tanh_system(4), lambda x, p: tanh_model(x, p)[:, :3], overlap=overlap,
                          generator=torch.Generator().manual_seed(0))
    out = layer(torch.zeros(2, 4))
    with pytest.raises(TwinError, match=r"^tanh: the twin returned shape \(2, 3\) but the system measured \(2, 4\);"):
        out.sum().backward()
