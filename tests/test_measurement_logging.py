"""Nothing measured is lost: every device call of a run lands in a log, whole, even when it fails or is interrupted."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import tanh_model, tanh_spec
from pnnkit import DeviceError, FunctionSystem, MeasurementLog, ParamSpec, SystemSpec
from pnnkit.config import validate_config
from pnnkit.experiments import make_twin, run_experiment
from pnnkit.system import PhysicalSystem


def _params(spec, batch=None, value=0.1):
    return {p.name: torch.full(p.shape if batch is None else (batch, *p.shape), value) for p in spec.params}


def _logged_system(tmp_path, fn=tanh_model, **kw):
    system = FunctionSystem(fn, tanh_spec(), **kw)
    log = MeasurementLog(tmp_path / "log.h5", system.spec)
    system.attach_log(log)
    return system, log


def test_a_call_cut_in_half_is_removed_when_the_log_is_reopened(tmp_path):
    system, log = _logged_system(tmp_path)
    for k in range(3):
        system(torch.full((4, 4), 0.1 * k), _params(system.spec, value=0.1 * k))
    # a process killed inside append(): θ, x and y of a fourth call written, its 'call' rows not
    log._append(log._params["W"], np.zeros((1, 4, 4), np.float32))
    log._append(log._params["b"], np.zeros((1, 4), np.float32))
    log._append(log._x, np.zeros((4, 4), np.float32))
    log._y.resize(16, axis=0)
    log.close()
    log = MeasurementLog(tmp_path / "log.h5", system.spec)
    assert {k: d.shape[0] for k, d in (("x", log._x), ("y", log._y), ("call", log._call))} == {
        "x": 12, "y": 12, "call": 12}
    assert log._params["W"].shape[0] == 3 == log._params["b"].shape[0]
    system.attach_log(log)
    x = torch.full((4, 4), 0.5)
    y = system(x, _params(system.spec, value=0.5))
    m = log.to_measurements()  # the next call lines up with its own θ again
    assert len(m) == 16 and torch.equal(m.y[-4:, 0], y.float())
    assert torch.equal(m.params["b"][-1], torch.full((4,), 0.5))


def test_a_call_tail_left_unfilled_is_removed_when_the_log_is_reopened(tmp_path):
    system, log = _logged_system(tmp_path)
    for k in range(3):
        system(torch.full((4, 4), 0.1), _params(system.spec))
    log._call.resize(16, axis=0)  # killed between the resize of 'call' and its write: zeros after call 2
    log.close()
    log = MeasurementLog(tmp_path / "log.h5", system.spec)
    assert log._call.shape[0] == 12 and list(log._call[-4:]) == [2] * 4


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test: a process started in the background by a non-interactive shell
    (as CI may do) inherits SIGINT ignored, and Python then leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_a_reading_is_logged_waits_until_the_call_is_written(tmp_path, monkeypatch, python_ctrl_c):
    system, log = _logged_system(tmp_path)
    append = MeasurementLog._append
    seen = []

    def interrupted(d, v):  # Ctrl-C arrives between two of the call's writes
        if d.name == "/x" and not seen:
            seen.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        append(d, v)

    monkeypatch.setattr(MeasurementLog, "_append", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        system(torch.full((4, 4), 0.1), _params(system.spec))
    assert seen and log._x.shape[0] == log._y.shape[0] == log._call.shape[0] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_just_after_the_reading_returns_still_logs_the_call(tmp_path, monkeypatch, python_ctrl_c):
    returned = []

    def device(x, p):
        returned.append(True)
        return tanh_model(x, p)

    system, log = _logged_system(tmp_path, fn=device)
    no_grad = torch.no_grad

    class CtrlCOnExit(no_grad):  # Ctrl-C arrives as the reading's `with torch.no_grad()` block is left
        def __exit__(self, *exc):
            out = super().__exit__(*exc)
            if returned and len(returned) == 1:
                returned.append(True)
                os.kill(os.getpid(), signal.SIGINT)
            return out

    monkeypatch.setattr(torch, "no_grad", CtrlCOnExit)
    with pytest.raises(KeyboardInterrupt):
        system(torch.full((4, 4), 0.1), _params(system.spec))
    assert len(returned) == 2 and len(log) == 4 and system.calls == 1
    assert torch.equal(log.to_measurements().y[:, 0], tanh_model(torch.full((4, 4), 0.1), _params(system.spec)))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_a_measurement_stops_it_at_once(tmp_path, python_ctrl_c):
    reached = []

    def device(x, p):
        os.kill(os.getpid(), signal.SIGINT)
        reached.append(True)  # not reached: the interrupt is raised inside the device call
        return tanh_model(x, p)

    system, log = _logged_system(tmp_path, fn=device)
    with pytest.raises(KeyboardInterrupt):
        system(torch.full((4, 4), 0.1), _params(system.spec))
    assert not reached and len(log) == 0 and (system.calls, system.queries) == (1, 4)  # it reached the device
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_readings_finer_than_float32_are_logged_exactly(tmp_path):
    fine = np.full((3, 4), 0.1, dtype=np.float64)  # 0.1 is not a float32 value
    readings = iter([np.full((3, 4), 0.5), fine])  # the first call's values are float32 values
    system, log = _logged_system(tmp_path, fn=lambda x, p: next(readings), numpy=True)
    system(torch.zeros(3, 4), _params(system.spec))
    assert log._y.dtype == np.float32  # nothing finer yet: the log stays compact
    y = system(torch.zeros(3, 4), _params(system.spec))
    assert y.dtype == torch.float32  # the network gets its own precision; the log keeps the measured one
    log.close()
    with h5py.File(tmp_path / "log.h5", "r") as f:
        assert f["y"].dtype == np.float64 and f["x"].dtype == np.float32
        assert np.array_equal(f["y"][:3], np.full((3, 4), 0.5)) and np.array_equal(f["y"][3:], fine)
        assert ".f8" not in "".join(f.keys())


def test_integer_adc_codes_are_logged_exactly(tmp_path):
    codes = np.full((2, 4), 2**24 + 1, dtype=np.int64)  # float32 would round it to 2**24
    system, log = _logged_system(tmp_path, fn=lambda x, p: codes, numpy=True)
    system(torch.zeros(2, 4), _params(system.spec))
    assert np.array_equal(log._y[...], codes.astype(np.float64))


@pytest.mark.parametrize("name", ["y", "params/W"])
@pytest.mark.parametrize("killed_after", ["part_of_the_copy", "the_delete"])
def test_a_widening_cut_short_leaves_one_whole_version(tmp_path, killed_after, name):
    system, log = _logged_system(tmp_path)
    y = system(torch.full((4, 4), 0.1), _params(system.spec, value=0.3))
    f = log._f  # what _widen does, up to the point where the process is killed
    old = f[name][...]
    if killed_after == "part_of_the_copy":  # an unfinished float64 copy beside the intact original
        f.create_dataset(name + ".f8", data=old[:0].astype(np.float64), maxshape=(None, *old.shape[1:]))
    else:  # a whole copy, the original already deleted
        f.create_dataset(name + ".f8", data=old.astype(np.float64), maxshape=(None, *old.shape[1:]))
        del f[name]
    log.close()
    log = MeasurementLog(tmp_path / "log.h5", system.spec)
    names = []
    log._f.visit(names.append)
    assert not any(n.endswith(".f8") for n in names) and len(log) == 4
    m = log.to_measurements()
    assert torch.equal(m.y[:, 0].float(), y) and torch.equal(m.params["W"][0].float(), torch.full((4, 4), 0.3))


def test_float64_inputs_and_parameters_are_logged_exactly_and_read_back_in_one_dtype(tmp_path):
    system, log = _logged_system(tmp_path)
    x = torch.full((2, 4), 0.1, dtype=torch.float64)
    params = {k: v.double() + 1e-9 for k, v in _params(system.spec).items()}
    y = system(x, params)
    assert y.dtype == torch.float64
    names = []
    log._f.visit(names.append)
    assert not any(n.endswith(".f8") for n in names)
    m = log.to_measurements()
    assert {m.x.dtype, m.y.dtype, *(v.dtype for v in m.params.values())} == {torch.float64}
    assert torch.equal(m.x, x) and torch.equal(m.params["W"][0], params["W"]) and torch.equal(m.y[:, 0], y)


def test_a_bfloat16_reading_is_logged(tmp_path):
    system, log = _logged_system(tmp_path, fn=lambda x, p: tanh_model(x, p).to(torch.bfloat16))
    y = system(torch.full((2, 4), 0.1), _params(system.spec))
    assert y.dtype == torch.float32 and len(log) == 2 and torch.equal(log.to_measurements().y[:, 0], y)


def test_a_reading_beyond_the_networks_precision_is_refused_and_logged_as_measured(tmp_path):
    system, log = _logged_system(tmp_path, fn=lambda x, p: np.full((2, 4), 1e39), numpy=True)
    with pytest.raises(DeviceError, match=r"values beyond torch.float32's range for 2 of 2 samples \(the call is kept"):
        system(torch.zeros(2, 4), _params(system.spec))
    assert np.array_equal(log._y[...], np.full((2, 4), 1e39))


def test_ctrl_c_during_a_measurement_reaches_the_handler_that_was_in_place(tmp_path):
    handled = []

    def device(x, p):
        os.kill(os.getpid(), signal.SIGINT)
        handled.append("device continues") if handled else handled.append("not yet handled")
        return tanh_model(x, p)

    system, log = _logged_system(tmp_path, fn=device)
    def mine(signum, frame):
        handled.append("handled")

    previous = signal.signal(signal.SIGINT, mine)
    try:
        system(torch.full((2, 4), 0.1), _params(system.spec))
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
    assert handled == ["handled", "device continues"] and len(log) == 2  # passed on at once, not held


def test_a_shared_block_in_a_per_sample_call_is_logged_once_per_sample(tmp_path):
    spec = SystemSpec("mixed", 2, 2, -1.0, 1.0, (ParamSpec("gain", (), 0.0, 2.0), ParamSpec("offset", (2,), -1.0, 1.0)))
    system = FunctionSystem(lambda x, p: x * p["gain"].reshape(-1, 1) + p["offset"], spec, batched_params=True)
    log = MeasurementLog(tmp_path / "log.h5", spec)
    system.attach_log(log)
    y1 = system(torch.full((3, 2), 0.5), {"gain": torch.tensor(1.5), "offset": torch.full((3, 2), 0.1)})
    y2 = system(torch.full((2, 2), 0.5), {"gain": torch.tensor([1.0, 2.0]), "offset": torch.zeros(2)})
    m = log.to_measurements()
    assert len(m) == 5 and m.params["gain"].tolist() == [1.5, 1.5, 1.5, 1.0, 2.0]
    assert torch.allclose(m.y[:, 0], torch.cat([y1, y2]).float())  # y: (samples, repeats, outputs)


def test_a_refused_reading_is_kept_in_the_log(tmp_path):
    system, log = _logged_system(tmp_path, fn=lambda x, p: np.ones((x.shape[0] + 1, 4)), numpy=True)
    with pytest.raises(DeviceError, match=r"shape \(3, 4\), expected \(2, 4\).*kept in .*log.h5 under /refused/0"):
        system(torch.zeros(2, 4), _params(system.spec))
    with h5py.File(tmp_path / "log.h5", "r") as f:
        g = f["refused/0"]
        assert g["reading"].shape == (3, 4) and g["x"].shape == (2, 4) and "shape" in g.attrs["why"]
        assert g["params/W"].shape == (4, 4)
    assert len(log) == 0  # the refused reading is not mixed into the measurements


def test_what_a_failing_device_measured_before_the_failure_is_logged(tmp_path):
    def half(x, p):
        e = TimeoutError("instrument stopped answering")
        e.partial_reading = np.where(np.arange(x.shape[0])[:, None] < 2, 0.5, np.nan) * np.ones((1, 4))
        raise e

    system, log = _logged_system(tmp_path, fn=half, numpy=True)
    with pytest.raises(DeviceError, match="stopped answering.*the 2 samples measured before the failure are kept"):
        system(torch.zeros(5, 4), _params(system.spec))
    assert len(log) == 5 and len(log.to_measurements()) == 2


def test_twin_measurements_are_logged_call_by_call_as_they_are_taken(tmp_path):
    from pnnkit.config import TwinConfig

    calls = []

    def flaky(x, p):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the laser tripped")
        return tanh_model(x, p)

    system = FunctionSystem(flaky, tanh_spec())
    cfg = TwinConfig(kind="mlp", samples=64, inputs_per_setting=16, repeats=2)
    with pytest.raises(DeviceError, match="laser tripped"):
        make_twin(system, cfg, tmp_path)
    log = MeasurementLog(tmp_path / "device_log.h5", system.spec)
    assert len(log) == 3 * 16  # the three calls before the failure, the second repeat of setting 2 included
    assert getattr(system, "_log", None) is None  # detached again


def _count_measured_samples(monkeypatch) -> dict[str, int]:
    counted = {"samples": 0}
    call = PhysicalSystem.__call__

    def counting(self, x, params, *, grad=False):
        y = call(self, x, params, grad=grad)
        counted["samples"] += x.shape[0]
        return y

    monkeypatch.setattr(PhysicalSystem, "__call__", counting)
    return counted


def _logged_rows(out: Path) -> int:
    rows = 0
    for f in out.rglob("*.h5"):
        with h5py.File(f, "r") as h:
            if str(h.attrs.get("format", "")).endswith("+log"):
                rows += h["x"].shape[0]
    return rows


def _tiny_sweeps(**training):
    return validate_config({
        "name": "tiny", "seed": 0, "task": {"name": "digits"},
        "lab": {"name": "oscillators", "unit": 0, "options": {"n": 64, "steps": 4}},
        "twin": {"kind": "physics", "samples": 128, "inputs_per_setting": 64, "repeats": 1,
                 "fit": {"epochs": 1, "lr": 0.02, "batch_size": 128, "patience": 1}},
        "network": {"depth": 1, "stem": [{"type": "rescale", "scale": 2.0, "bias": -1.0}],
                    "layer": [{"type": "physical"}, {"type": "rescale"}],
                    "head": [{"type": "slice", "stop": 10}, {"type": "rescale", "scale": 3.0}]},
        "training": {"epochs": 1, "batch_size": 512, "lr": 0.01, "monitor_physical": False, **training},
        "methods": ["pat"], "depth_sweep": [2], "imperfection_sweep": [0.5], "cv_folds": 2,
    }, "tiny")


def test_every_sample_measured_by_a_run_with_sweeps_is_in_a_device_log(tmp_path, monkeypatch):
    counted = _count_measured_samples(monkeypatch)
    run_experiment(_tiny_sweeps(), tmp_path)
    assert counted["samples"] > 5000
    assert _logged_rows(tmp_path) == counted["samples"]
    for d in ("cv/fold0/pat", "cv/fold1/pat", "depth_sweep/depth2/pat", "imperfection_sweep/scale0.5/pat"):
        assert (tmp_path / d / "device_log.h5").is_file(), d
    assert (tmp_path / "imperfection_sweep/scale0.5/twin_measurements.h5").is_file()


def test_record_measurements_false_keeps_the_methods_calls_out_of_every_log(tmp_path):
    run_experiment(_tiny_sweeps(record_measurements=False), tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert not list(tmp_path.rglob("pat/device_log*.h5"))
    with h5py.File(tmp_path / "device_log.h5", "r") as f:  # the twin's measurements only
        assert f["x"].shape[0] == r["twin"]["measurement_queries"] == 128


def test_a_second_call_cut_in_half_after_call_0_is_not_filed_under_call_0(tmp_path):
    system, log = _logged_system(tmp_path)
    system(torch.full((4, 4), 0.1), _params(system.spec))
    log._append(log._params["W"], np.zeros((1, 4, 4), np.float32))  # call 1: θ, x, y written, 'call' resized only
    log._append(log._params["b"], np.zeros((1, 4), np.float32))
    log._append(log._x, np.zeros((4, 4), np.float32))
    log._append(log._y, np.zeros((4, 4), np.float32))
    log._call.resize(8, axis=0)
    log.close()
    log = MeasurementLog(tmp_path / "log.h5", system.spec)
    assert len(log) == 4 and log._params["W"].shape[0] == 1


def test_a_run_into_a_folder_holding_another_systems_log_keeps_it_and_starts_a_new_one(tmp_path):
    from pnnkit.config import TwinConfig

    other = FunctionSystem(tanh_model, tanh_spec(3, name="other"))
    MeasurementLog(tmp_path / "device_log.h5", other.spec).close()
    system = FunctionSystem(tanh_model, tanh_spec())
    make_twin(system, TwinConfig(kind="mlp", samples=32, inputs_per_setting=16, repeats=1, fit={"epochs": 1}),
              tmp_path)
    assert len(MeasurementLog(tmp_path / "device_log.h5", system.spec)) == 32
    kept = [p for p in tmp_path.glob("device_log*.h5") if p.name != "device_log.h5"]
    assert len(kept) == 1 and len(MeasurementLog(kept[0], other.spec)) == 0


def test_a_log_that_fails_to_open_gives_every_system_its_previous_log_back(tmp_path, monkeypatch):
    from torch import nn

    import pnnkit.measurements as pm
    from pnnkit import PhysicalLayer
    from pnnkit.training import attach_device_logs

    a, b = FunctionSystem(tanh_model, tanh_spec()), FunctionSystem(tanh_model, tanh_spec(name="b"))
    outer = MeasurementLog(tmp_path / "outer.h5", a.spec)
    a.attach_log(outer)
    model = nn.Sequential(PhysicalLayer(a, tanh_model), PhysicalLayer(b, tanh_model))
    (tmp_path / "d").mkdir()

    class Full(pm.MeasurementLog):  # b's log cannot be created (a damaged one would be kept aside and begun anew)
        def __init__(self, path, spec):
            if path.name == "device_log_1.h5":
                raise OSError(f"no space left on device: {path}")
            super().__init__(path, spec)

    monkeypatch.setattr(pm, "MeasurementLog", Full)
    with pytest.raises(OSError, match="device_log_1.h5"):
        attach_device_logs(model, tmp_path / "d", fresh=False)
    monkeypatch.undo()
    assert a._log is outer and getattr(b, "_log", None) is None
    a(torch.zeros(2, 4), _params(a.spec))
    assert len(outer) == 2


def test_a_malformed_partial_reading_does_not_hide_the_devices_error(tmp_path):
    def ragged(x, p):
        e = TimeoutError("instrument stopped answering")
        e.partial_reading = [[1.0], [2.0, 3.0]]
        raise e

    system, log = _logged_system(tmp_path, fn=ragged, numpy=True)
    with pytest.raises(DeviceError, match="stopped answering.*partial reading could not be logged"):
        system(torch.zeros(2, 4), _params(system.spec))


def test_a_parameter_dict_module_reaches_the_device_as_a_copy(tmp_path):
    from torch import nn

    def writes_into_its_input(x, p):
        y = np.tanh(x)
        x[:] = 0.0
        p["W"][:] = 0.0
        return y

    system = FunctionSystem(writes_into_its_input, tanh_spec(), numpy=True)
    x = torch.full((2, 4), 0.5)
    params = nn.ParameterDict({k: nn.Parameter(v) for k, v in _params(system.spec).items()})
    system(x, params)
    assert torch.equal(x, torch.full((2, 4), 0.5)) and bool((params["W"] == 0.1).all())


def test_a_partial_reading_of_the_wrong_shape_is_kept_and_a_multiline_driver_error_stays_one_line(tmp_path):
    from pnnkit import DeviceError, FunctionSystem, MeasurementLog, SystemSpec

    def device(x, p):
        e = TimeoutError("VI_ERROR_TMO\nInstrument status: 0x42\n\nLast command: MEAS:VOLT?")
        e.partial_reading = np.ones((2, 3))  # only the rows it measured, not (4, 3) with NaN rows
        raise e

    system = FunctionSystem(device, SystemSpec("v", 3, 3, -1.0, 1.0), numpy=True)
    log = MeasurementLog(tmp_path / "l.h5", system.spec)
    system.attach_log(log)
    with pytest.raises(DeviceError) as info:
        system(torch.zeros(4, 3), {})
    msg = str(info.value)
    assert "\n" not in msg and "TimeoutError: VI_ERROR_TMO / Instrument status: 0x42 / Last command: MEAS:VOLT?" in msg
    assert "partial_reading of shape (2, 3), expected (4, 3)" in msg and "under /refused/0)" in msg
    assert len(log) == 0 and log._f["refused/0/reading"].shape == (2, 3)
    log.close()


@pytest.mark.parametrize("how", ["closed", "disk full"])
def test_a_reading_that_cannot_be_logged_is_a_one_line_device_error_that_carries_it(tmp_path, how):
    system, log = _logged_system(tmp_path)
    if how == "closed":
        log.close()  # closed, still attached
    else:
        def full(*a, **k):
            raise OSError("[Errno 28] No space left on device\nwhile writing dataset 'y'")
        log.append = full
    x, params = torch.full((2, 4), 0.3), _params(system.spec)
    with pytest.raises(DeviceError) as info:
        system(x, params)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("tanh: the reading of call 1 (batch of 2) could not be logged to ")
    assert str(tmp_path / "log.h5") in msg and ".partial_reading" in msg
    if how == "disk full":
        assert "OSError: [Errno 28] No space left on device / while writing dataset 'y'" in msg
    assert isinstance(info.value.__cause__, Exception) and system.queries == 2
    assert np.array_equal(info.value.partial_reading, tanh_model(x, params).numpy())
    if how != "closed":
        log.close()
