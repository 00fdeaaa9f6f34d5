"""The issue-4 MNIST example configs: each quick variant runs end to end (tiny overrides) and writes results.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pnnkit.config import load_config, validate_config
from pnnkit.experiments import run_experiment

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DATA = Path(__import__("os").environ.get("PNNKIT_DATA_DIR", ROOT.parent / "shared" / "data"))

needs_mnist = pytest.mark.skipif(
    not (DATA / "mnist-t10k" / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST t10k files not in {DATA}/mnist-t10k (set PNNKIT_DATA_DIR)",
)
NAMES = ["mnist_mechanical", "mnist_electronic", "mnist_hybrid_shg"]


@pytest.mark.parametrize("name", NAMES)
def test_full_and_quick_configs_validate_and_match(name):
    full, quick = load_config(EXAMPLES / f"{name}.yaml"), load_config(EXAMPLES / f"{name}_quick.yaml")
    # the quick variant is the same experiment, smaller: same lab design, network and methods
    assert quick.lab == full.lab and quick.network == full.network and quick.methods == full.methods
    assert quick.training.augment == full.training.augment
    assert quick.training.refit_readout == full.training.refit_readout
    assert quick.training.refit_readout_start == full.training.refit_readout_start
    assert quick.training.refit_readout_every == full.training.refit_readout_every
    assert quick.training.readout_lr == full.training.readout_lr
    assert quick.training.pat_init == full.training.pat_init
    assert quick.training.refit_every_max_iter == full.training.refit_every_max_iter
    assert full.methods == ["pat", "in_silico"]
    assert full.digital_baseline is not None and full.digital_baseline.kind == "without_physical"
    assert full.lab.imperfection_scale == 1.0 and full.lab.unit == 0  # default unit, default imperfections
    assert "n_train" not in full.task.options and "n_test" not in full.task.options  # the 8,000 / 2,000 split


@pytest.mark.parametrize("name", ["mnist_mechanical", "mnist_electronic"])
def test_time_domain_readout_sees_the_whole_drive(name):
    """Plate and circuit are causal: a class read from one window of the record only sees the pixels played before
    that window. The class scores must instead pool the whole record of the last layer *interleaved* (class c gets
    bins c, c+10, …), after an elementwise rescale (one readout weight per bin): every class then has bins from
    early in the record and bins after the last pixel (the plate's ring-down, the circuit's last segments)."""
    cfg = load_config(EXAMPLES / f"{name}.yaml")
    head = cfg.network.head
    kinds = [b.type for b in head]
    assert kinds == ["rescale", "pool", "rescale"], kinds
    assert head[1].order == "interleaved" and head[1].out == 10
    opts = cfg.lab.options
    n_bins = opts["output_dim"]
    assert n_bins >= 4 * 10  # ≥ 4 bins per class
    if name == "mnist_mechanical":  # window = data (n_inputs) + ring-down tail (64 DAC samples by default)
        data_end_bin = n_bins * opts["n_inputs"] / (opts["n_inputs"] + opts.get("n_tail", 64))
        assert n_bins - data_end_bin >= 10  # every class has at least one ring-down bin
    # data-dependent init of the rescales that follow the physical layers (rescale blocks' init: data)
    assert all(b.init == "data" for b in cfg.network.layer if b.type == "rescale")


def _n_device_uses(cfg) -> int:
    """Device calls per sample: physical blocks count once, parallel blocks once per channel."""
    blocks = cfg.network.blocks()
    return sum(1 if b.type == "physical" else b.channels for b in blocks if b.type in ("physical", "parallel"))


def _tiny(name: str) -> dict:
    d = yaml.safe_load((EXAMPLES / f"{name}_quick.yaml").read_text())
    d["task"]["options"].update(n_train=100, n_test=50, data_dir=str(DATA / "mnist-t10k"))
    d["twin"].update(samples=64, inputs_per_setting=32)
    d["twin"]["fit"].update(epochs=1)
    d["training"].update(epochs=1, batch_size=128, monitor_physical=False, record_measurements=False)
    if d["training"].get("pat_epochs"):
        d["training"]["pat_epochs"] = 1
    return d


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_quick_variant_runs_end_to_end(name, tmp_path):
    if name == "mnist_electronic" and shutil.which("ngspice") is None:
        pytest.skip("ngspice not installed (scripts/install-system-deps.sh)")
    cfg = validate_config(_tiny(name), name)
    res = run_experiment(cfg, tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["task"] == "mnist" and r["unit"] == 0
    # a simulated reality names its simulator's version (the circuit lab: ngspice), the others none
    assert r["versions"].get("simulator", "").startswith("ngspice-") == (name == "mnist_electronic")
    n_layers = _n_device_uses(cfg)
    assert n_layers >= 2
    for m in ("pat", "in_silico"):
        assert 0.0 <= r["methods"][m]["test_accuracy"] <= 1.0
        assert r["methods"][m]["eval_queries"] == n_layers * 50
    # training queries: every training sample once per device use, plus (networks with init: data rescales after
    # the last device use) the data init: all 100 training samples (init_samples ≥ 100) through every device use,
    # plus one more pass of the training set through every device use for each readout refit (before the first
    # epoch: refit_readout_start; after the last: refit_readout); refits after epochs (refit_readout_every) reuse the
    # epoch's measurements and cost nothing. PAT started from the in-silico network (pat_init) has no data init:
    # its rescales come initialised.
    data_init = (any(getattr(b, "init", "fixed") == "data" for b in cfg.network.layer)
                 and cfg.training.pat_init == "fresh")
    refits = [k for k, on in (("readout_refit_start", cfg.training.refit_readout_start),
                              ("readout_refit", cfg.training.refit_readout)) if on]
    passes = 1 + int(data_init) + len(refits)
    assert r["methods"]["pat"]["physical_queries"] == n_layers * 100 * passes
    for key in refits:
        assert r["methods"]["pat"][key]["device_queries"] == n_layers * 100
        assert r["methods"]["in_silico"][key]["device_queries"] == 0
        assert key in r["digital_baseline"]
    k = cfg.training.refit_readout_every
    if k:  # one refit on the epoch's own features after the (single) epoch, unless the end refit takes it
        want = [] if cfg.training.refit_readout or 1 % k else [1]
        for m in ("pat", "in_silico"):
            assert [e["epoch"] for e in r["methods"][m].get("readout_refits_epoch", [])] == want
    assert r["methods"]["in_silico"]["physical_queries"] == 0
    assert isinstance(r["methods"]["in_silico"]["twin_test_accuracy"], float)
    assert r["twin"]["val_nrmse"] > 0 and r["twin"]["measurement_queries"] > 0
    b = r["digital_baseline"]
    assert b["kind"] == "without_physical" and 0.0 <= b["test_accuracy"] <= 1.0
    assert r["experiment"]["n_train"] == 100 and r["experiment"]["n_test"] == 50
    assert r["experiment"]["split"].startswith("stratified 8000/2000") and "validation" not in r["experiment"]["split"]
    for f in ("learning_curves.png", "confusion_pat.png", "confusion_in_silico.png"):
        assert (tmp_path / f).exists(), f
    assert res["methods"].keys() == r["methods"].keys()
    # the run directory rebuilds: its in-silico checkpoint on its saved twin gives the twin accuracy it reported
    from pnnkit.checkpoint import load_checkpoint
    from pnnkit.experiments import rebuild_run
    from pnnkit.training import accuracy

    cfg2, task2, _, model = rebuild_run(tmp_path)
    assert cfg2 == cfg and len(task2.x_train) == 100 and len(task2.x_test) == 50
    model.load_state_dict(load_checkpoint(tmp_path / "in_silico" / "checkpoint.safetensors")["model"])
    acc = accuracy(model, task2.x_test, task2.y_test, "in_silico")
    assert acc == pytest.approx(r["methods"]["in_silico"]["twin_test_accuracy"], abs=1e-6)
