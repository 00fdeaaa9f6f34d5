"""Bad configs get one-line ConfigErrors that name the problem (audit findings on `pnnkit.config`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from pnnkit.config import SEED_LIMIT, apply_overrides, load_config, parse_yaml, validate_config
from pnnkit.errors import ConfigError

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def _error(fn, *args) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# 1. directories and binary files


def test_a_directory_is_named_as_such(tmp_path):
    assert _error(load_config, tmp_path) == f"{tmp_path} is a directory, not a YAML config"


def test_a_non_utf8_file_is_not_a_text_yaml_file(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"\xff\xfe\x00\x01binary")
    assert _error(load_config, p).startswith(f"{p} is not a text YAML file (not UTF-8")


def test_a_safetensors_file_is_not_a_text_yaml_file(tmp_path):
    torch = pytest.importorskip("torch")
    save_file = pytest.importorskip("safetensors.torch").save_file
    p = tmp_path / "twin.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    assert _error(load_config, p).startswith(f"{p} is not a text YAML file")


# 2. syntax errors keep their location


def test_a_syntax_error_names_line_and_column(tmp_path):
    p = _write(tmp_path, "bad.yaml", "name: a\ntraining:\n  epochs: 3\n   lr: 1\n")
    assert _error(load_config, p) == f"{p}: not valid YAML at line 4, column 6: mapping values are not allowed here"
    p = _write(tmp_path, "bad2.yaml", "name: a\nmethods: [pat\n")
    assert re.fullmatch(rf"{re.escape(str(p))}: not valid YAML at line 3, column 1: .+", _error(load_config, p))


def test_a_bad_set_value_names_its_column():
    assert _error(apply_overrides, {}, ["methods=[pat"]).startswith(
        "--set 'methods=[pat': the value is not valid YAML at line 1, column 5: ")


# 3. duplicate keys


def test_a_duplicate_top_level_key_is_rejected(tmp_path):
    p = _write(tmp_path, "dup.yaml", "name: a\ntraining: {epochs: 3}\nseed: 1\ntraining:\n  lr: 1\n")
    assert _error(load_config, p) == (f"{p}: not valid YAML at line 4, column 1: duplicate key 'training' "
                                      "(first at line 2)")


def test_a_duplicate_nested_key_is_rejected():
    assert _error(parse_yaml, "lab:\n  name: x\n  options: {n: 4, n: 5}\n", "c.yaml") == (
        "c.yaml: not valid YAML at line 3, column 19: duplicate key 'n' (first at line 3)")
    assert "duplicate key 'x'" in _error(apply_overrides, {}, ["task.options={x: 1, x: 2}"])


def test_equal_keys_in_different_mappings_and_merge_keys_are_fine():
    assert parse_yaml("a: [{x: 1}, {x: 2}]\nb: {x: 3}\n") == {"a": [{"x": 1}, {"x": 2}], "b": {"x": 3}}
    assert parse_yaml("base: &b {epochs: 3, lr: 1}\ntraining:\n  <<: *b\n  epochs: 4\n")["training"] == {
        "epochs": 4, "lr": 1}


def test_parse_yaml_is_safe():
    assert "not valid YAML" in _error(parse_yaml, "!!python/object/apply:os.system [echo hi]\n")


# 4. methods


@pytest.mark.parametrize("methods, match", [
    ([], "methods: List should have at least 1 item"),
    (["pat", "pat"], "methods: each entry may be listed once; listed more than once: 'pat'"),
    (["in_silico", "pat", "in_silico"], "listed more than once: 'in_silico'"),
])
def test_methods_must_be_a_nonempty_set(methods, match):
    assert match in _error(validate_config, {"methods": methods})


@pytest.mark.parametrize("key, value, match", [
    ("depth_sweep", [1, 2, 1], "depth_sweep: each entry may be listed once; listed more than once: 1"),
    ("sweep_seeds", [3, 3], "sweep_seeds: each entry may be listed once; listed more than once: 3"),
    ("imperfection_sweep", [0.5, 1.0, 0.5], "imperfection_sweep: each entry may be listed once; listed more than once: 0.5"),
    ("depth_sweep", [0], "depth_sweep.0: Input should be greater than or equal to 1"),
    ("imperfection_sweep", [-1.0], "imperfection_sweep.0: Input should be greater than or equal to 0"),
])
def test_sweeps_are_sets_of_valid_points(key, value, match):
    assert match in _error(validate_config, {key: value})


def test_set_cannot_index_a_list_the_config_does_not_spell_out():
    msg = _error(apply_overrides, {"network": {"depth": 1}}, ["network.layer.0.channels=4"])
    assert msg == ("--set 'network.layer.0.channels=4': network.layer is not in the config, so '0' indexes nothing; "
                   "set the whole list instead (--set 'network.layer=[...]')")
    assert apply_overrides({}, ["network.layer=[{type: physical}]"]) == {"network": {"layer": [{"type": "physical"}]}}


# 5. hidden widths


@pytest.mark.parametrize("section", ["twin", "digital_baseline"])
@pytest.mark.parametrize("hidden", [[0], [-5], [64, 0]])
def test_hidden_widths_are_positive(section, hidden):
    msg = _error(validate_config, {section: {"hidden": hidden}})
    assert re.search(rf"{section}\.hidden\.\d: Input should be greater than or equal to 1", msg)


# 6. seeds and units


SEED_KEYS = ["seed", "lab.seed", "lab.unit", "twin.seed", "sweep_seeds.0"]


@pytest.mark.parametrize("key", SEED_KEYS)
@pytest.mark.parametrize("value", [-1, SEED_LIMIT, 99999999999999999999])
def test_seeds_and_units_are_bounded(key, value):
    data = {"sweep_seeds": [0]}
    msg = _error(validate_config, data, "c", [f"{key}={value}"])
    bound = "greater than or equal to 0" if value < 0 else f"less than {SEED_LIMIT}"
    assert msg == f"c with --set {key}={value}: {key}: Input should be {bound}"


def test_the_largest_seeds_are_accepted():
    top = SEED_LIMIT - 1
    cfg = validate_config({"sweep_seeds": [top]}, "c", [f"{k}={top}" for k in SEED_KEYS])
    assert (cfg.seed, cfg.lab.seed, cfg.lab.unit, cfg.twin.seed, cfg.sweep_seeds) == (top, top, top, top, [top])
    # that labs and the trainer can use them: test_the_largest_units_and_seeds_build_every_lab_and_train


# 7. inputs_per_setting vs samples


def test_inputs_per_setting_cannot_exceed_samples():
    msg = _error(validate_config, {"twin": {"samples": 128, "inputs_per_setting": 100000}})
    assert msg.startswith("config: twin: inputs_per_setting (100000) is larger than samples (128): samples is the "
                          "total number of measurements and inputs_per_setting how many of them share one setting")
    assert validate_config({"twin": {"samples": 128, "inputs_per_setting": 128}}).twin.inputs_per_setting == 128
    # a saved twin is loaded instead of measured: the sizes are unused
    assert validate_config({"twin": {"samples": 128, "inputs_per_setting": 100000, "path": "t.safetensors"}})


# 8. val_fraction


@pytest.mark.parametrize("fraction, match", [
    (0.99, "twin.fit.val_fraction: Input should be less than or equal to 0.5"),
    (0.51, "twin.fit.val_fraction: Input should be less than or equal to 0.5"),
    (0, "twin.fit.val_fraction: Input should be greater than 0"),
])
def test_val_fraction_is_bounded(fraction, match):
    assert match in _error(validate_config, {"twin": {"fit": {"val_fraction": fraction}}})


def test_val_fraction_leaves_a_training_split():
    assert validate_config({"twin": {"fit": {"val_fraction": 0.5}}}).twin.fit.val_fraction == 0.5
    msg = _error(validate_config, {"twin": {"samples": 2, "inputs_per_setting": 1}})
    assert msg == ("config: twin: samples (2) with fit.val_fraction 0.15 leaves 1 measurement(s) to fit on after the "
                   "1 held out; need at least 2")
    assert validate_config({"twin": {"samples": 4, "inputs_per_setting": 2, "fit": {"val_fraction": 0.5}}})


# 9. union entries are reported by the user's path


LAYER = {"network": {"layer": [{"type": "physical"}, {"type": "rescale"}]}}


def test_an_unknown_key_in_a_block_is_named_by_its_path():
    assert _error(validate_config, LAYER, "c", ["network.layer.0.foo=1"]) == (
        "c with --set network.layer.0.foo=1: unknown key 'network.layer.0.foo'")
    assert _error(validate_config, LAYER, "c", ["network.layer.1.scal=2"]).endswith(
        "unknown key 'network.layer.1.scal' (did you mean 'scale'?)")
    assert _error(validate_config, {"network": {"stem": [{"type": "parallel", "channels": 2, "batchd": True}]}}) == (
        "config: unknown key 'network.stem.0.batchd' (did you mean 'batched'?)")


def test_an_invalid_value_in_a_block_is_named_by_its_path():
    assert _error(validate_config, LAYER, "c", ["network.layer.0.input_constraint=x"]).endswith(
        ": network.layer.0.input_constraint: Input should be 'clamp' or 'sigmoid'")
    assert "network.layer.0: Input tag 'dense'" in _error(validate_config, LAYER, "c", ["network.layer.0.type=dense"])


def test_did_you_mean_also_inside_optional_sections():
    """``training.augment`` and ``digital_baseline`` are ``X | None``: their keys are suggested too."""
    assert _error(validate_config, {"training": {"augment": {"shif": 1}}}) == (
        "config: unknown key 'training.augment.shif' (did you mean 'shift'?)")
    assert _error(validate_config, {"digital_baseline": {"hiden": [3]}}) == (
        "config: unknown key 'digital_baseline.hiden' (did you mean 'hidden'?)")
    assert _error(validate_config, {"lab": {"options": {"n": 4}, "optins": 1}}) == (
        "config: unknown key 'lab.optins' (did you mean 'options'?)")


# every committed config still validates (and has no duplicate keys)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    load_config(path)


def test_the_demo_preset_validates():
    from pnnkit.cli import demo_config_text

    validate_config(parse_yaml(demo_config_text(), "demo"), "demo")


# --- F9: the largest accepted seeds and units really build every lab and train (not a hand-copied formula) ----
def test_the_largest_units_and_seeds_build_every_lab_and_train():
    from pnnkit import ClassificationTask, ElementwiseRescale, make_lab
    from pnnkit.config import SEED_LIMIT
    from pnnkit.training import TrainConfig, Trainer

    top = SEED_LIMIT - 1
    x = torch.rand(3, 2, dtype=torch.float64) - 0.5
    lab = make_lab("oscillators", n=2, unit=top, seed=top, dtype=torch.float64)
    assert lab(x, {"J": torch.zeros(1, dtype=torch.float64), "e": torch.zeros(2, dtype=torch.float64)}).shape == (3, 2)
    make_lab("shg", unit=top, seed=top)
    make_lab("plate", n_modes=4, n_inputs=8, n_params=2, output_dim=2, n_tail=4, unit=top, seed=top)
    make_lab("circuit", backend="ode", n_inputs=2, n_params=2, output_dim=2, unit=top, seed=top)
    g = torch.Generator().manual_seed(0)
    task = ClassificationTask("t", torch.rand(8, 4, generator=g), torch.arange(8) % 2, torch.rand(4, 4, generator=g),
                              torch.arange(4) % 2, ["a", "b"])
    model = nn.Sequential(ElementwiseRescale(4, init="data"), nn.Linear(4, 2))
    Trainer(model, task, "physical", TrainConfig(epochs=1, batch_size=4, seed=top, progress=False,
                                                   monitor_physical=False)).fit()
    assert bool(model[0].initialised)  # the data init ran and fit() finished with the largest seed


# --- session 23 audit: settings that used to pass or crash later ----------------------------------------------
def test_lab_fields_given_as_lab_options_and_booleans_for_numbers_are_refused():
    base = {"lab": {"name": "oscillators"}}
    assert _error(validate_config, {"lab": {"name": "oscillators", "options": {"unit": 3}}}, "c") == (
        "c: lab.options: unit is set as lab.unit, not as lab.options.unit")
    msg = _error(validate_config, {**base, "training": {"epochs": True}}, "c")
    assert msg == "c: training: epochs must be a number, got the boolean true", msg
    msg = _error(validate_config, {"network": {"depth": False}}, "c")
    assert msg == "c: network: depth must be a number, got the boolean false", msg
    assert validate_config({**base, "training": {"overlap": True}}, "c").training.overlap is True  # a real bool


def test_a_block_without_its_type_key_is_named_with_the_misspelt_key():
    msg = _error(validate_config, {"network": {"layer": [{"tipe": "physical"}]}})
    assert msg.startswith("config: network.layer.0: the entry has no 'type' key (one of physical, ")
    assert msg.endswith("; unknown key 'tipe' (did you mean 'type'?)") and "discriminator" not in msg
    assert _error(validate_config, {"network": {"stem": [{}]}}).startswith(
        "config: network.stem.0: the entry has no 'type' key (one of ")


def test_command_line_options_are_named_as_given():
    """`evaluate --unit -1` is reported as --unit, not as the --set item it becomes."""
    assert _error(validate_config, {}, "c", [], [("--unit -1", "lab.unit=-1")]) == (
        "c with --unit -1: lab.unit: Input should be greater than or equal to 0")
    assert _error(validate_config, {}, "c", ["seed=1"], [("--unit -1", "lab.unit=-1")]).startswith(
        "c with --set seed=1 and --unit -1: lab.unit:")
