"""Bad input gets a clear one-line error naming the problem (what the earlier error tests did not cover)."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import pnnkit as pk
from helpers import tanh_spec, tiny_config
from pnnkit.cli import app
from pnnkit.config import validate_config

runner = CliRunner()

TINY = tiny_config(epochs=1)


def _one_line_error(res, *needles: str) -> None:
    """Exit status 2, no traceback, and every needle in the (single) error line."""
    assert res.exit_code == 2, (res.exit_code, res.exception, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)  # not a crash
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1, res.output
    for n in needles:
        assert n in err[0], res.output


@pytest.fixture
def tiny_cfg(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    return cfg


def _untrained_weights(tmp_path):
    """A model.safetensors of TINY's network (untrained: enough for evaluate's argument checks)."""
    from pnnkit.experiments import build_lab
    from pnnkit.networks import build_network

    cfg = validate_config(TINY)
    net = build_network(cfg.network, 64, 10, build_lab(cfg.lab), None)
    return pk.save_weights(net, tmp_path / "w" / "model.safetensors")


# --- 1. output locations that cannot be written --------------------------------------------------------------


def test_output_paths_that_cannot_be_written_are_one_line_errors(tiny_cfg, tmp_path, monkeypatch):
    import pnnkit.experiments as ex

    def no_device(*a, **k):
        raise AssertionError("measured before the output path was checked")

    monkeypatch.setattr(ex, "acquire", no_device)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _one_line_error(runner.invoke(app, ["twin", "fit", str(tiny_cfg), "--out", str(afile)]),
                    "is a file, not a directory")
    weights = _untrained_weights(tmp_path)
    _one_line_error(runner.invoke(app, ["evaluate", str(tiny_cfg), "--weights", str(weights), "--log", str(afile)]),
                    "is a file, not a directory")
    assert afile.read_text() == "mine"
    if sys.platform.startswith("linux"):  # /proc takes no new directories, whoever runs the test (root included)
        for cmd in (["run", str(tiny_cfg)], ["twin", "fit", str(tiny_cfg)], ["train", str(tiny_cfg)]):
            _one_line_error(runner.invoke(app, [*cmd, "--out", "/proc/pnnkit-no-such-dir/out"]), "cannot write")


def test_an_unwritable_output_directory_is_refused_before_anything_is_measured(tiny_cfg, tmp_path, monkeypatch):
    import pnnkit.experiments as ex

    monkeypatch.setattr(ex, "acquire", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    root = not hasattr(os, "geteuid") or os.geteuid() == 0
    if root and not sys.platform.startswith("linux"):
        pytest.skip("root writes into read-only folders, and there is no /proc to try instead")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # root writes into a read-only folder; /proc takes no new files or directories from anyone
    target = Path("/proc/pnnkit-no-such-dir") if root else ro
    try:
        _one_line_error(runner.invoke(app, ["twin", "fit", str(tiny_cfg), "--out", str(target)]), "cannot write")
        _one_line_error(runner.invoke(app, ["run", str(tiny_cfg), "--out", str(target / "x")]), "cannot write")
    finally:
        ro.chmod(0o755)


# --- 2. a diverging training --------------------------------------------------------------------------------


def test_a_diverging_training_is_a_one_line_error(tiny_cfg, tmp_path):
    res = runner.invoke(app, ["run", str(tiny_cfg), "--out", str(tmp_path / "o"), "--set", "training.lr=1e20",
                              "--set", "training.batch_size=32", "--set", "methods=[exact]"])
    _one_line_error(res, "loss became nan", "lower the lr")
    assert issubclass(pk.DivergenceError, pk.PnnkitError) and issubclass(pk.DivergenceError, FloatingPointError)


# --- 3. a corrupt gzip IDX file ----------------------------------------------------------------------------


def test_a_corrupt_gzip_idx_file_is_a_data_error(tmp_path):
    from pnnkit.tasks.mnist import read_idx

    raw = (0x803).to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in (2, 28, 28)) + bytes(2 * 28 * 28)
    gz = bytearray(gzip.compress(raw, mtime=0))
    gz[10] ^= 0xFF  # the first deflate block header: zlib.error, which is no OSError
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(gz))
    with pytest.raises(pk.DataError, match=r"^cannot read IDX file .*t10k-images-idx3-ubyte.gz: .*while decompressing data"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


# --- 4. a task whose tensors cannot be a classification -------------------------------------------------------


def test_task_tensors_are_checked_before_training():
    x, y = torch.rand(20, 4), torch.arange(20) % 2
    model = torch.nn.Linear(4, 2)

    def trainer(**parts):
        t = dict(x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
        t.update(parts)
        task = pk.ClassificationTask("t", t["x_train"], t["y_train"], t["x_test"], t["y_test"], ["a", "b"])
        return pk.Trainer(model, task, "physical", pk.TrainConfig(epochs=1, progress=False))

    nan = x.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(pk.ConfigError, match=r"^task 't': x_train contains NaN or inf \(1 of 20 samples\)$"):
        trainer(x_train=nan)
    with pytest.raises(pk.ConfigError, match=r"^task 't': y_train must be 1-D class indices, got shape \(20, 2\) "
                                             r"\(one-hot labels\? use y.argmax\(1\)\)$"):
        trainer(y_train=torch.nn.functional.one_hot(y, 2))
    with pytest.raises(pk.ConfigError, match=r"^task 't': x_test has 3 features but x_train 4$"):
        trainer(x_test=x[:6, :3])
    with pytest.raises(pk.ConfigError, match=r"^task 't': x_train must be 2-D \(samples, features\), got shape \(20,\)$"):
        trainer(x_train=x[:, 0])


# --- 5. bench --out onto a file that is not a benchmark result ----------------------------------------------


def test_bench_out_never_overwrites_a_file_that_is_not_a_bench_result(tiny_cfg, tmp_path, monkeypatch):
    from pnnkit.bench import latency
    from pnnkit.bench.common import goal, machine_info, result

    def fake_run(**kw):
        return result("latency", machine_info(1), [{"a": 1.5}], [goal("g", 1.0, 2.0, "<=")])

    monkeypatch.setattr(latency, "run", fake_run)
    wide = CliRunner(env={"COLUMNS": "1000"})
    before = tiny_cfg.read_text()
    res = wide.invoke(app, ["bench", "latency", "--quick", "--out", str(tiny_cfg)])
    assert res.exit_code == 2 and "is not a pnnkit bench result; it is never overwritten" in res.output, res.output
    assert tiny_cfg.read_text() == before
    out = tmp_path / "r.json"  # an earlier result of pnnkit bench is replaced, as before
    assert wide.invoke(app, ["bench", "latency", "--quick", "--out", str(out)]).exit_code == 0
    assert wide.invoke(app, ["bench", "latency", "--quick", "--out", str(out)]).exit_code == 0


# --- 6. MeasurementSet.load of a directory or a damaged header ----------------------------------------------


def test_measurement_set_load_names_a_directory_and_a_damaged_header(tmp_path):
    import h5py

    with pytest.raises(pk.DataError) as info:
        pk.MeasurementSet.load(tmp_path)
    assert "\n" not in str(info.value) and "is a directory; give its .h5 file" in str(info.value)
    m = pk.MeasurementSet(tanh_spec(4), torch.zeros(3, 4), {"W": torch.zeros(3, 4, 4), "b": torch.zeros(3, 4)},
                          torch.zeros(3, 4))
    path = m.save(tmp_path / "m.h5")
    with h5py.File(path, "a") as f:
        f.attrs["spec"] = "{not json"
    with pytest.raises(pk.DataError, match=r"^cannot read measurement file .*m.h5: "):
        pk.MeasurementSet.load(path)


# --- 7. MLPTwin hidden widths -------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [64, (-3,), (0,), (2.5,), ("64",)])
def test_mlp_twin_hidden_widths_are_checked(hidden):
    with pytest.raises(pk.ConfigError, match=r"^MLPTwin: hidden must be a sequence of integer widths ≥ 1"):
        pk.MLPTwin(tanh_spec(4), hidden=hidden)


# --- 8. the oscillator lab's integration settings -----------------------------------------------------------


@pytest.mark.parametrize("option, value, msg", [("unit", -1, "unit must be an integer in [0, 2**32), got -1"),
                                                ("seed", 2**70, f"seed must be an integer in [0, 2**32), got {2**70}"),
                                                ("unit", 1.5, "unit must be an integer in [0, 2**32), got 1.5"),
                                                ("dtype", "float16", "dtype must be float32 or float64, got 'float16'")])
def test_oscillator_lab_refuses_units_seeds_and_dtypes_it_cannot_use(option, value, msg):
    from pnnkit.labs.oscillators import CoupledOscillatorLab

    with pytest.raises(pk.ConfigError, match=rf"^oscillator lab: {re.escape(msg)}$"):
        CoupledOscillatorLab(4, **{option: value})


def test_a_physical_layer_refuses_complex_input():
    lab = pk.make_lab("oscillators", n=4)
    with pytest.raises(pk.ShapeError, match=r"^oscillators layer: input is torch.complex64; a physical layer takes "
                                            r"real values$"):
        pk.PhysicalLayer(lab, lab.ideal_twin())(torch.zeros(2, 4, dtype=torch.complex64))
    assert lab.queries == 0


@pytest.mark.parametrize("option, value", [("steps", 0), ("steps", -3), ("duration", 0.0), ("duration", -1.0),
                                           ("duration", math.nan)])
def test_oscillator_lab_refuses_settings_it_cannot_integrate(option, value):
    with pytest.raises(pk.ConfigError, match=rf"^oscillator lab: {option} must be"):
        pk.make_lab("oscillators", n=4, **{option: value})


# --- 9. conflicting CLI options -----------------------------------------------------------------------------


def test_conflicting_options_are_refused(tiny_cfg, tmp_path, monkeypatch):
    import pnnkit.experiments as ex

    def ran(*a, **k):
        raise AssertionError("ran despite conflicting options")

    for name in ("run_experiment", "build_lab", "train_method"):
        monkeypatch.setattr(ex, name, ran)
    _one_line_error(runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--epochs", "1",
                                        "--set", "training.epochs=5"]), "--epochs", "training.epochs")
    weights = tmp_path / "none.safetensors"
    _one_line_error(runner.invoke(app, ["evaluate", str(tiny_cfg), "--weights", str(weights), "--unit", "3",
                                        "--set", "lab.unit=5"]), "--unit", "lab.unit")
    _one_line_error(runner.invoke(app, ["train", str(tiny_cfg), "--out", str(tmp_path / "t"), "--method", "exact",
                                        "--twin", str(tmp_path / "twin.safetensors")]), "--twin", "exact")
    assert not (tmp_path / "d").exists() and not (tmp_path / "t").exists()


# --- 10. weights holding NaN / inf ---------------------------------------------------------------------------


def test_load_weights_refuses_non_finite_values(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].bias[1] = float("nan")
    pk.save_weights(net, tmp_path / "w.safetensors")
    with pytest.raises(pk.ConfigError, match=r"^weights .*w.safetensors hold NaN or inf in 0.bias$"):
        pk.load_weights(torch.nn.Sequential(torch.nn.Linear(3, 2)), tmp_path / "w.safetensors")


# --- 11. a damaged twin description ------------------------------------------------------------------------


def test_a_damaged_twin_description_is_a_twin_error(tmp_path):
    path = pk.MLPTwin(tanh_spec(4), hidden=(4,)).save(tmp_path / "t.safetensors")
    good = json.loads(path.with_suffix(".json").read_text())
    for change, msg in [({"config": {**good["config"], "width": 3}}, "invalid config for a mlp twin"),
                        ({"report": {"val_nrmse": 0.1}}, "invalid fit report"),
                        ({"kind": ["mlp"]}, "twin kind must be a name")]:
        path.with_suffix(".json").write_text(json.dumps({**good, **change}))
        with pytest.raises(pk.TwinError, match=msg):
            pk.DigitalTwin.load(path)
    path.with_suffix(".json").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(pk.TwinError, match=r"is not a text JSON file"):
        pk.DigitalTwin.load(path)


# --- 12. a layer given something that is not a system / a twin ------------------------------------------------


def test_physical_layer_names_a_system_or_twin_of_the_wrong_kind(tmp_path):
    lab = pk.make_lab("oscillators", n=4)
    with pytest.raises(pk.ConfigError, match=r"^PhysicalLayer: system must be a PhysicalSystem .*got function$"):
        pk.PhysicalLayer(lambda x, p: x)
    with pytest.raises(pk.ConfigError, match=r"^PhysicalLayer: twin must be .*got str \(a path\? load the twin "
                                             r"with DigitalTwin.load\)$"):
        pk.PhysicalLayer(lab, str(tmp_path / "twin.safetensors"))
    with pytest.raises(pk.ConfigError, match=r"^parallel layer: channels must be PhysicalLayers, got Linear$"):
        pk.ParallelPhysical([torch.nn.Linear(4, 4)])


# --- 13/14. config values: the offending value, and finiteness -----------------------------------------------


def test_an_integer_written_with_an_exponent_names_the_value():
    with pytest.raises(pk.ConfigError, match=r"twin.samples: Input should be a valid integer.*got '2e4' \(YAML reads "
                                             r"2e4 as text: write 20000\)"):
        validate_config({"twin": {"samples": "2e4"}})
    # an integer key given a fraction gets no spelling to copy (pydantic parses '5e-2' for a float key itself)
    with pytest.raises(pk.ConfigError, match=r"twin.samples: Input should be a valid integer.*got '2.5e-1'$"):
        validate_config({"twin": {"samples": "2.5e-1"}})


@pytest.mark.parametrize("section, value", [({"training": {"lr": math.inf}}, "training.lr"),
                                            ({"lab": {"imperfection_scale": math.inf}}, "lab.imperfection_scale"),
                                            ({"network": {"stem": [{"type": "rescale", "scale": math.nan}]}},
                                             "network.stem.0.scale")])
def test_config_numbers_must_be_finite(section, value):
    with pytest.raises(pk.ConfigError, match=rf"{value}: Input should be a finite number"):
        validate_config(section)


# --- 15. task options ---------------------------------------------------------------------------------------


def test_task_options_are_named_like_lab_options():
    from pnnkit.tasks import load_task

    with pytest.raises(pk.ConfigError, match=r"^task 'digits' has no option 'n_train'; its options: seed, test_size$"):
        load_task("digits", n_train=100)
    with pytest.raises(pk.ConfigError, match=r"^task 'digits' has no option 'test_siz' \(did you mean 'test_size'\?\)"):
        load_task("digits", test_siz=100)


def test_vowel_options_of_the_wrong_type_are_named(shared_data):
    from pnnkit.tasks import load_task

    for option in ("vowels", "talkers"):
        with pytest.raises(pk.ConfigError, match=rf"^task 'vowels': {option} must be .*got 7$"):
            load_task("vowels", **{option: 7})


@pytest.mark.parametrize("make, msg", [
    (lambda: pk.ParamSpec("w", (2,), "0", "1"), "parameter 'w': low must be a number, got '0'"),
    (lambda: pk.SystemSpec("s", 2, 2, "-1", "1"), "system 's': input_low must be a number, got '-1'"),
    (lambda: pk.ParamSpec(3, (2,), 0, 1), "parameter name 3 must be a Python identifier"),
    (lambda: pk.ParamSpec("w", (2,), 0, 1, init_scale=5), "parameter 'w': init_scale must lie in [0, 1]"),
    (lambda: pk.ParamSpec("w", (2,), 0, 1, init_scale=math.nan), "parameter 'w': init_scale must lie in [0, 1]"),
    (lambda: pk.SystemSpec("s", 2, 2, -1, 1, noise_std=-1), "system 's': noise_std must be a finite number ≥ 0"),
    (lambda: pk.SystemSpec(None, 2, 2, -1, 1), "system name must be a non-empty string, got None"),
    (lambda: pk.SystemSpec("s", True, 2, -1, 1), "system 's': input_dim must be an integer, got True"),
])
def test_spec_fields_of_the_wrong_kind_are_named(make, msg):
    with pytest.raises(pk.ConfigError) as e:
        make()
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_a_network_whose_output_does_not_match_the_classes_is_named_before_a_step():
    task = pk.ClassificationTask("t", torch.rand(8, 4), torch.arange(8) % 3, torch.rand(4, 4), torch.arange(4) % 3,
                                 ["a", "b", "c"])
    model = torch.nn.Linear(4, 5)
    before = model.weight.detach().clone()
    with pytest.raises(pk.ConfigError, match=r"output has shape \(4, 5\), but task 't' has 3 classes"):
        pk.Trainer(model, task, "physical", pk.TrainConfig(epochs=1, batch_size=4, progress=False,
                                                           monitor_physical=False)).fit()
    assert torch.equal(model.weight, before)


def test_a_checkpoint_json_from_another_save_is_named(tmp_path):
    from pnnkit.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint({"model": {"w": torch.zeros(2)}}, tmp_path / "checkpoint.safetensors")
    save_checkpoint({"model": {"v": torch.zeros(2), "u": torch.ones(1)}}, tmp_path / "other.safetensors")
    (tmp_path / "checkpoint.json").write_text((tmp_path / "other.json").read_text())  # the .json of another save
    with pytest.raises(pk.DataError) as e:
        load_checkpoint(tmp_path / "checkpoint.safetensors")
    msg = str(e.value)
    assert "checkpoint.json and checkpoint.safetensors come from different saves (a save cut short)" in msg
    assert "\n" not in msg
    # two saves of the same layout (epoch 1's .json beside epoch 2's .safetensors): recognised by their save ids
    save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "checkpoint.safetensors")
    old = (tmp_path / "checkpoint.json").read_text()
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 2}, tmp_path / "checkpoint.safetensors")
    (tmp_path / "checkpoint.json").write_text(old)
    with pytest.raises(pk.DataError, match="come from different saves"):
        load_checkpoint(tmp_path / "checkpoint.safetensors")
    # a checkpoint written before save ids (its .json is the bare state) still loads
    import json

    save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "new.safetensors")
    (tmp_path / "new.json").write_text(json.dumps(json.loads((tmp_path / "new.json").read_text())["state"]))
    assert load_checkpoint(tmp_path / "new.safetensors")["epoch"] == 1
