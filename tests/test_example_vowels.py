"""The issue-3 experiment config (examples/vowels_shg.yaml) runs end to end when shrunk to a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pnnkit.config import load_config, validate_config
from pnnkit.experiments import run_experiment

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("vowels_shg.yaml", "vowels_shg_depth.yaml", "vowels_shg_unit7.yaml")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_configs_validate(name):
    cfg = load_config(ROOT / "examples" / name)
    assert cfg.task.name == "vowels" and cfg.lab.name == "shg"
    assert cfg.lab.imperfection_scale == 1.0  # the lab's defects are never tuned
    assert not any(b.type == "linear" for b in cfg.network.blocks())  # no digital dense layers in the PNN


def test_vowels_shg_tiny_run(tmp_path, shared_data):
    data = yaml.safe_load((ROOT / "examples" / "vowels_shg.yaml").read_text())
    data["twin"].update(samples=128, repeats=1)
    data["twin"]["fit"].update(epochs=2)
    data["training"].update(epochs=1, batch_size=105)
    data["cv_folds"] = 2
    data["digital_baseline"].update(epochs=2)
    data["imperfection_sweep"] = [0, 1]
    data["sweep_seeds"] = [0, 1]
    cfg = validate_config(data, "vowels_shg (tiny)")
    run_experiment(cfg, tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert {"task", "system", "unit", "methods", "twin", "cv", "digital_baseline", "imperfection_sweep"} <= set(r)
    assert (r["task"], r["system"], r["unit"]) == ("vowels", "shg", 0)
    assert r["experiment"]["n_train"] == 210 and r["experiment"]["n_test"] == 49
    for m in ("pat", "in_silico"):
        assert 0 <= r["methods"][m]["test_accuracy"] <= 1
        assert {"mean", "std"} <= set(r["cv"][m])
    assert isinstance(r["methods"]["in_silico"]["twin_test_accuracy"], float)
    assert r["twin"]["kind"] == "shg_physics" and len(r["twin"]["val_nrmse_per_output"]) == 12
    assert [row["scale"] for row in r["imperfection_sweep"]] == [0, 1]
    for row in r["imperfection_sweep"]:  # mean over the network seeds, with its spread and the per-seed values
        assert row["seeds"] == [0, 1] and len(row["pat_per_seed"]) == 2
        assert row["pat"] == pytest.approx(sum(row["pat_per_seed"]) / 2)
        # each seed trains its own network (different initial weights and batches): here they end apart
        assert row["pat_per_seed"][0] != row["pat_per_seed"][1] and row["pat_std"] > 0
    assert 0 <= r["digital_baseline"]["test_accuracy"] <= 1
    for f in ("confusion_pat.png", "confusion_in_silico.png", "imperfection_sweep.png", "twin_error_per_bin.png",
              "shg_spectra_pat.png", "shg_spectra_in_silico.png"):
        assert (tmp_path / f).exists(), f
