"""`apply_overrides`: dotted KEY=VALUE edits of a parsed config (the CLI's --set)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from pnnkit.config import apply_overrides, load_config
from pnnkit.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist_electronic.yaml"
BASE = {"name": "x", "training": {"epochs": 2, "lr": 0.01}, "network": {"layer": [{"type": "a", "n": 1}]}}


def test_values_are_yaml_and_paths_are_created():
    out = apply_overrides(BASE, ["training.epochs=5", "training.lr=1e-3", "methods=[in_silico]",
                                 "task.options.validation=1000", "digital_baseline=null", "name=abc",
                                 "training.augment={shift: 1, rotate: 10}", "network.layer.0.n=7",
                                 "network.layer.-1.type=b", "training.overlap=true"])
    assert out["training"] == {"epochs": 5, "lr": 0.001, "augment": {"shift": 1, "rotate": 10}, "overlap": True}
    assert out["methods"] == ["in_silico"] and out["digital_baseline"] is None and out["name"] == "abc"
    assert out["task"] == {"options": {"validation": 1000}}
    assert out["network"]["layer"] == [{"type": "b", "n": 7}]
    assert BASE["training"] == {"epochs": 2, "lr": 0.01} and BASE["network"]["layer"][0]["n"] == 1  # input kept


def test_later_overrides_win_and_a_value_may_hold_an_equals_sign():
    out = apply_overrides(BASE, ["training.epochs=3", "training.epochs=4", "name=a=b"])
    assert out["training"]["epochs"] == 4 and out["name"] == "a=b"


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30))
def test_numbers_round_trip(v):
    for text in (repr(v), f"{v:e}", f"{v:.3E}"):
        assert apply_overrides(BASE, [f"training.lr={text}"])["training"]["lr"] == float(text)


@pytest.mark.parametrize("item", ["epochs", "=3", ".a=1", "a..b=1", "a.=1"])
def test_malformed_items_name_the_form(item):
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        apply_overrides(BASE, [item])


@pytest.mark.parametrize("index", ["1", "-2", "--1", "x", "+0"])
def test_a_list_index_must_be_an_integer_in_range(index):
    with pytest.raises(ConfigError, match=f"network.layer is a list of 1, so '{re.escape(index)}' is not an index"):
        apply_overrides(BASE, [f"network.layer.{index}.n=2"])


def test_load_config_validates_after_the_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: t\ntask: {name: digits}\nlab: {name: oscillators}\n")
    assert load_config(p, ["training.epochs=7"]).training.epochs == 7
    with pytest.raises(ConfigError, match=r"with --set training\.epoch=7: unknown key 'training\.epoch' "
                                          r"\(did you mean 'epochs'\?\)"):
        load_config(p, ["training.epoch=7"])


def test_example_probe_recipe_changes_only_what_it_names():
    """docs/experiments/mnist.md's validation probes are the committed electronic config plus --set items; the
    recipe changes those entries and nothing else."""
    base = load_config(EXAMPLE).model_dump()
    probe = load_config(EXAMPLE, [
        "task.options.validation=1000", "methods=[in_silico]", "digital_baseline=null", "lab.options.workers=1",
        "training.overlap=false", "training.monitor_every=1", "task.options.n_train=3500", "training.epochs=24"])
    expected = {**base, "methods": ["in_silico"], "digital_baseline": None}
    expected["task"] = {**base["task"], "options": {**base["task"]["options"], "validation": 1000, "n_train": 3500}}
    expected["lab"] = {**base["lab"], "options": {**base["lab"]["options"], "workers": 1}}
    expected["training"] = {**base["training"], "overlap": False, "monitor_every": 1, "epochs": 24}
    assert probe.model_dump() == expected
