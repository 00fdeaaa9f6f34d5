"""Bad input gets a clear one-line error naming the problem."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import tanh_model, tanh_spec
from pnnkit import (
    ConfigError,
    DataError,
    DeviceError,
    FunctionSystem,
    ParamSpec,
    PhysicalLayer,
    ShapeError,
    make_lab,
)
from pnnkit.config import load_config, validate_config
from pnnkit.tasks import data_dir, load_task

P = {"W": torch.zeros(4, 4), "b": torch.zeros(4)}


def test_wrong_shapes():
    s = FunctionSystem(tanh_model, tanh_spec(4))
    with pytest.raises(ShapeError, match=r"x must have shape \(batch, 4\), got \(2, 3\)"):
        s(torch.zeros(2, 3), P)
    with pytest.raises(ShapeError, match=r"parameter 'b' must have shape \(4,\), got \(5,\)"):
        s(torch.zeros(2, 4), {"W": torch.zeros(4, 4), "b": torch.zeros(5)})
    with pytest.raises(ShapeError, match=r"missing \['b'\]"):
        s(torch.zeros(2, 4), {"W": torch.zeros(4, 4)})
    with pytest.raises(ShapeError, match="expected input \\(batch, 4\\), got \\(4,\\)"):
        PhysicalLayer(s, tanh_model)(torch.zeros(4))


def test_system_returning_nan_or_wrong_shape():
    nan = FunctionSystem(lambda x, p: x * float("nan"), tanh_spec(4))
    with pytest.raises(DeviceError, match="returned NaN/inf for 2 of 2 samples"):
        nan(torch.zeros(2, 4), P)
    short = FunctionSystem(lambda x, p: x[:, :2], tanh_spec(4))
    with pytest.raises(DeviceError, match=r"returned shape \(2, 2\), expected \(2, 4\)"):
        short(torch.zeros(2, 4), P)
    npy = FunctionSystem(lambda x, p: x * 2, tanh_spec(4), numpy=True)  # numpy device code works too
    assert torch.equal(npy(torch.ones(2, 4), P), torch.full((2, 4), 2.0))
    with pytest.raises(DeviceError, match="not differentiable"):
        PhysicalLayer(npy, tanh_model, mode="exact")(torch.zeros(2, 4))


def test_bad_specs_and_modes():
    with pytest.raises(ConfigError, match="need finite low < high"):
        ParamSpec("w", (2,), 1.0, 0.0)
    with pytest.raises(ConfigError, match="unknown mode 'fast'"):
        PhysicalLayer(FunctionSystem(tanh_model, tanh_spec(4)), tanh_model, mode="fast")
    with pytest.raises(ConfigError, match="needs a digital twin"):
        PhysicalLayer(FunctionSystem(tanh_model, tanh_spec(4)))(torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="unknown lab 'laser'"):
        make_lab("laser")
    with pytest.raises(ConfigError, match=r"^lab 'oscillators' has no option 'nn' \(did you mean 'n'\?\); its options: .*\bunit\b"):
        make_lab("oscillators", nn=3)
    # an option that is itself a group of settings (a dataclass) names a misspelt setting the same way
    with pytest.raises(ConfigError, match=r"^lab 'circuit' option 'timing' has no option 't_segmnt' \(did you mean "
                                          r"'t_segment'\?\); its options: adc_rate, t_rise, t_segment$"):
        make_lab("circuit", timing={"t_segmnt": 5e-6})


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'training.epoch' \(did you mean 'epochs'\?\)"):
        validate_config({"training": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'twn' \(did you mean 'twin'\?\)"):
        validate_config({"twn": {}})
    with pytest.raises(ConfigError, match=r"training.lr: Input should be greater than 0"):
        validate_config({"training": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"network.layer.0: .*'dense'"):
        validate_config({"network": {"layer": [{"type": "dense"}]}})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_missing_data_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("PNNKIT_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="set PNNKIT_DATA_DIR"):
        data_dir(None, "mnist-t10k", "MNIST: yann.lecun.com")
    with pytest.raises(DataError, match="does not exist"):
        data_dir(tmp_path / "nothing", "x", "source")
    with pytest.raises(ConfigError, match="unknown task 'cifar'"):
        load_task("cifar")


def test_small_layers_and_specs_refuse_sizes_that_would_broadcast_or_vanish():
    from pnnkit import ElementwiseRescale, ParamSpec, Pool, ShapeError, Slice, SystemSpec

    with pytest.raises(ShapeError, match="rescale of width 1 got input of width 5"):
        ElementwiseRescale(1)(torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="rescale width must be an integer ≥ 1, got 0"):
        ElementwiseRescale(0)
    with pytest.raises(ConfigError, match=r"slice \[5:2\] keeps nothing"):
        Slice(5, 2)
    with pytest.raises(ShapeError, match="pool: cannot pool width 8 into 20 groups"):
        Pool(20)(torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="pool needs out ≥ 1"):
        Pool(0)
    for shape in [(-3,), (2.7,)]:
        with pytest.raises(ConfigError, match="shape must be a tuple of integers ≥ 0"):
            ParamSpec("w", shape, 0.0, 1.0)
    assert ParamSpec("w", 4, 0.0, 1.0).shape == (4,)
    with pytest.raises(ConfigError, match=r"need finite input_low < input_high, got \[-inf, inf\]"):
        SystemSpec("s", 2, 2, float("-inf"), float("inf"))
    for bad in (-1.0, float("nan"), True):  # a bool is not a scale (True would silently be 1)
        with pytest.raises(ConfigError, match="imperfection_scale must be a finite number ≥ 0"):
            make_lab("oscillators", n=4, imperfection_scale=bad)


def test_a_twin_of_the_wrong_width_in_silico_and_a_split_that_cannot_stratify():
    from pnnkit import PhysicalLayer, TwinError

    lab = make_lab("oscillators", n=4)
    layer = PhysicalLayer(lab, lambda x, p: x[:, :3], mode="in_silico")
    with pytest.raises(TwinError, match=r"the twin returned \(2, 3\), expected \(2, 4\)"):
        layer(torch.zeros(2, 4))
    for bad in (5, 5000):
        with pytest.raises(ConfigError, match="test_size must be an integer from 10 to 1787"):
            load_task("digits", test_size=bad)
    with pytest.raises(ConfigError, match="option 'test_size' must be int, got 2.5"):
        load_task("digits", test_size=2.5)


def test_logs_never_write_into_foreign_files_and_init_batches_must_be_finite(tmp_path):
    import h5py

    from pnnkit import DataError, ElementwiseRescale, MeasurementLog, ParallelPhysical, ShapeError

    spec = make_lab("oscillators", n=4).spec
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        f["data"] = [1, 2, 3]
    with pytest.raises(DataError, match="is not a pnnkit measurement log"):
        MeasurementLog(tmp_path / "mine.h5", spec)
    with h5py.File(tmp_path / "mine.h5", "r") as f:
        assert list(f) == ["data"]  # untouched
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="cannot open measurement log"):
        MeasurementLog(tmp_path / "text.h5", spec)
    r = ElementwiseRescale(3, init="data")
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ShapeError, match="contains NaN or inf"):
        r.set_from_batch(x)
    with pytest.raises(ConfigError, match="needs at least one channel"):
        ParallelPhysical([])


# --- a new user's mistakes (session 12 walkthrough) -----------------------------------------------------------


def test_integer_inputs_get_a_floating_reading_not_a_truncated_one():
    import numpy as np

    s = FunctionSystem(lambda x, p: 1.1 * np.tanh(2 * x), tanh_spec(4), numpy=True)
    y = s(torch.ones(2, 4, dtype=torch.int64), P)
    assert y.dtype == torch.float64 and torch.allclose(y, torch.full((2, 4), 1.1 * math.tanh(2.0), dtype=torch.float64))
    t = FunctionSystem(lambda x, p: x * 1.5, tanh_spec(4))  # a torch device answering in its input's integer dtype
    yt = t(torch.ones(2, 4, dtype=torch.int64), P)
    assert yt.dtype == torch.get_default_dtype() and bool((yt == 1.5).all())
    assert s(torch.ones(2, 4, dtype=torch.float32), P).dtype == torch.float32  # float input: its own precision


def test_a_system_without_a_spec_and_bad_spec_fields_are_named():
    from pnnkit import PhysicalSystem, SystemSpec

    class NoSpec(PhysicalSystem):
        def measure(self, x, params):
            return x

    with pytest.raises(ConfigError, match=r"^NoSpec has no spec: set self.spec = SystemSpec\(...\) in its __init__$"):
        NoSpec()(torch.zeros(1, 2), {})
    assert repr(NoSpec()) == "NoSpec(no spec)"
    with pytest.raises(ConfigError, match=r"^system 's': input_dim must be an integer, got 4.5$"):
        SystemSpec("s", 4.5, 4, -1.0, 1.0)
    with pytest.raises(ConfigError, match=r"^system 's': params must be a tuple of ParamSpec, got \[1\]$"):
        SystemSpec("s", 4, 4, -1.0, 1.0, params=[1])
    one = ParamSpec("w", (4,), -1.0, 1.0)
    assert SystemSpec("s", 4, 4, -1.0, 1.0, params=one).params == (one,)  # a single block is taken as one


def test_calling_a_twin_checks_shapes_against_its_spec():
    from pnnkit import MLPTwin

    twin = MLPTwin(tanh_spec(4), hidden=(4,))
    with pytest.raises(ShapeError, match=r"^twin of 'tanh': x must have shape \(batch, 4\), got \(2, 8\)$"):
        twin(torch.zeros(2, 8), P)
    with pytest.raises(ShapeError, match=r"^twin of 'tanh': parameters \['b'\] missing \(it takes \['W', 'b'\]\)$"):
        twin(torch.zeros(2, 4), {"W": torch.zeros(4, 4)})
    with pytest.raises(ShapeError, match=r"parameter 'b' must have shape \(4,\) or \(2, 4\), got \(3,\)"):
        twin(torch.zeros(2, 4), {"W": torch.zeros(4, 4), "b": torch.zeros(3)})
    per_sample = {"W": torch.zeros(2, 4, 4), "b": torch.zeros(2, 4)}
    assert twin(torch.zeros(2, 4), per_sample).shape == (2, 4) == twin(torch.zeros(2, 4), P).shape


def test_twin_and_measurement_paths_that_are_not_files_of_theirs(tmp_path):
    from pnnkit import DigitalTwin, MeasurementSet, MLPTwin, TwinError

    with pytest.raises(TwinError, match=r"is a directory; give a twin's .safetensors \(or .json\) file$"):
        DigitalTwin.load(tmp_path)
    with pytest.raises(TwinError, match=r"device.h5 is not a twin: a twin is the .safetensors \+ .json pair"):
        DigitalTwin.load(tmp_path / "device.h5")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TwinError, match=r"model.safetensors has no model.json beside it, so it is not a twin"):
        DigitalTwin.load(tmp_path / "model.safetensors")
    with pytest.raises(TwinError, match=r"is a directory"):
        MLPTwin(tanh_spec(4), hidden=(4,)).save(tmp_path)
    m = MeasurementSet(tanh_spec(4), torch.zeros(3, 4), {"W": torch.zeros(3, 4, 4), "b": torch.zeros(3, 4)},
                       torch.zeros(3, 4))
    (tmp_path / "runs").mkdir()
    with pytest.raises(DataError, match=r"runs is a directory; give a file name"):
        m.save(tmp_path / "runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "runs"]  # nothing renamed or written
    assert repr(m) == "MeasurementSet('tanh', 3 samples × 1 repeats, in=4, out=4, params=['W', 'b'])"


def test_weights_and_twins_are_written_readable_like_other_files(tmp_path):
    import os
    import stat

    from pnnkit import MLPTwin, load_weights, save_weights

    umask = os.umask(0o022)
    try:
        net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        save_weights(net, tmp_path / "w.safetensors")
        MLPTwin(tanh_spec(4), hidden=(4,)).save(tmp_path / "twin")
    finally:
        os.umask(umask)
    for name in ("w.safetensors", "twin.safetensors", "twin.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    load_weights(other, tmp_path / "w.safetensors")
    assert torch.equal(other[0].weight, net[0].weight)
    with pytest.raises(ConfigError, match=r"do not fit this network: missing 1.bias, 1.weight; unexpected 0.bias, 0.weight$"):
        load_weights(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(3, 2)), tmp_path / "w.safetensors")


def test_a_task_of_numpy_arrays_is_named_as_such():
    import numpy as np

    from pnnkit import ClassificationTask, TrainConfig, Trainer

    t = ClassificationTask("np", np.zeros((4, 4), np.float32), np.zeros(4, np.int64), torch.zeros(2, 4),
                           torch.zeros(2, dtype=torch.long), ["a", "b"])
    with pytest.raises(ConfigError, match=r"^task 'np': x_train must be a torch.Tensor, got ndarray "
                                          r"\(convert with torch.as_tensor\)$"):
        Trainer(torch.nn.Linear(4, 2), t, "pat", TrainConfig(epochs=1, progress=False))


def test_a_data_dir_that_is_no_path_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^task 'mnist': option 'data_dir' must be a directory path, got 5$"):
        load_task("mnist", data_dir=5)
    with pytest.raises(ConfigError, match=r"^data_dir must be a directory path, got \[1\]$"):
        data_dir([1], "x", "source")


def test_a_corrupt_checkpoint_and_any_named_checkpoint_pair(tmp_path):
    """A checkpoint .json that is not UTF-8 is a one-line DataError; a pair of any name (e.g.
    checkpoint_before_readout_refit) is read as a checkpoint by load_weights."""
    from pnnkit.checkpoint import is_checkpoint, load_checkpoint, load_weights, save_checkpoint, save_weights

    model = torch.nn.Linear(3, 2)
    pair = save_checkpoint({"model": model.state_dict(), "epoch": 3}, tmp_path / "checkpoint_before_readout_refit")
    weights = pair.with_suffix(".safetensors")
    assert is_checkpoint(weights) and not is_checkpoint(pair.with_suffix(".json"))
    other = torch.nn.Linear(3, 2)
    load_weights(other, weights)
    assert torch.equal(other.weight, model.weight)
    assert not is_checkpoint(save_weights(model, tmp_path / "model.safetensors"))
    pair.with_suffix(".json").write_bytes(b"\xff\xfe\x00garbage")
    for path in (pair, weights):
        with pytest.raises(DataError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"cannot read checkpoint {path}: checkpoint_before_readout_refit.json is "
                                          "not JSON text ('utf-8' codec can't decode byte 0xff")
        assert "\n" not in str(info.value)
