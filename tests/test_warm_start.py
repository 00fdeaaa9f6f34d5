"""Starting training from trained weights: ``training.pat_init: in_silico`` (PAT fine-tunes the twin-trained
network), ``training.pat_epochs`` and ``training.init_weights``."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pnnkit.checkpoint import save_weights
from pnnkit.cli import app
from pnnkit.config import ExperimentConfig, load_config
from pnnkit.errors import ConfigError
from pnnkit import experiments as ex
from pnnkit.experiments import build_pieces, make_twin, run_experiment, run_order, train_method
from pnnkit.layers import physical_layers

from helpers import tiny_config

runner = CliRunner()


def _theta(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for layer in physical_layers(model) for p in layer.parameters()])


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k].double(), sb[k].double(), atol=atol) for k in sa)


def _spy(monkeypatch) -> list[tuple[str, torch.nn.Module, torch.nn.Module | None]]:
    """Record (method, trained network, init_from) of every train_method call of the experiment runner."""
    calls = []
    real = ex.train_method

    def spy(cfg, task, system, twin, method, *a, **kw):
        model, res = real(cfg, task, system, twin, method, *a, **kw)
        calls.append((method, model, kw.get("init_from")))
        return model, res

    monkeypatch.setattr(ex, "train_method", spy)
    return calls


def _cfg(**training) -> ExperimentConfig:
    raw = tiny_config(epochs=2)
    raw["training"].update(training)
    return ExperimentConfig.model_validate(raw)


def test_pat_starts_from_the_in_silico_network():
    # lr so small that PAT's steps cannot move θ visibly: PAT's final θ is then the θ it started from
    cfg = _cfg(pat_init="in_silico", pat_epochs=1, lr=1e-9)
    cfg_in = _cfg(lr=0.02)  # in silico must really train, so its θ differs from the seeded initial θ
    task, system, _ = build_pieces(cfg)
    tw = make_twin(system, cfg.twin)
    initial = _theta(train_method(cfg, task, system, tw.twin, "in_silico", monitor=False)[0])  # lr 1e-9: ≈ initial
    trained, _ = train_method(cfg_in, task, system, tw.twin, "in_silico", monitor=False)
    pat, res = train_method(cfg, task, system, tw.twin, "pat", monitor=False, init_from=trained)
    assert len(res.history) == 1  # pat_epochs, not epochs
    assert (_theta(trained) - initial).abs().max() > 1e-3
    assert _same_weights(pat, trained)  # θ and the digital weights
    fresh, _ = train_method(cfg, task, system, tw.twin, "pat", monitor=False)
    assert torch.allclose(_theta(fresh), initial, atol=1e-6)


def test_pat_lr_is_pats_learning_rate_only():
    cfg = _cfg(lr=0.02, pat_lr=0.005)
    task, system, _ = build_pieces(cfg)
    tw = make_twin(system, cfg.twin)

    def trained(c: ExperimentConfig, method: str) -> torch.nn.Module:  # a fresh lab each time: the same noise draws
        return train_method(c, task, build_pieces(c)[1], tw.twin, method, monitor=False)[0]

    pat = trained(cfg, "pat")
    assert _same_weights(pat, trained(_cfg(lr=0.005), "pat"))
    assert not _same_weights(pat, trained(_cfg(lr=0.02), "pat"))
    assert _same_weights(trained(cfg, "in_silico"), trained(_cfg(lr=0.02), "in_silico"))


def test_run_trains_in_silico_first_and_records_pats_start(tmp_path, monkeypatch):
    raw = tiny_config(epochs=2)
    raw["training"].update(pat_init="in_silico", pat_epochs=1)
    raw["methods"] = ["pat", "in_silico"]
    cfg = ExperimentConfig.model_validate(raw)
    assert run_order(cfg, cfg.methods) == ["in_silico", "pat"]
    calls = _spy(monkeypatch)
    res = run_experiment(cfg, tmp_path / "out")
    assert [c[0] for c in calls] == ["in_silico", "pat"]
    assert calls[0][2] is None and calls[1][2] is calls[0][1]  # PAT got the trained in-silico network
    assert list(res["methods"]) == ["pat", "in_silico"]  # reported in the config's order
    assert res["methods"]["pat"]["init"] == "in_silico"
    assert "init" not in res["methods"]["in_silico"]
    assert res["methods"]["pat"]["epochs"] == 1 and res["methods"]["in_silico"]["epochs"] == 2
    assert len((tmp_path / "out" / "pat" / "log.csv").read_text().splitlines()) == 1 + 1  # header + 1 epoch
    assert json.loads((tmp_path / "out" / "results.json").read_text())["methods"]["pat"]["init"] == "in_silico"


def test_run_order_keeps_the_listed_order_otherwise():
    cfg = _cfg()
    assert run_order(cfg, ["pat", "exact", "in_silico"]) == ["pat", "exact", "in_silico"]
    warm = _cfg(pat_init="in_silico")
    assert run_order(warm, ["exact", "pat", "in_silico"]) == ["exact", "in_silico", "pat"]
    assert run_order(warm, ["exact"]) == ["exact"]


def test_init_weights_start_every_method_and_bad_files_are_named(tmp_path):
    cfg = _cfg(lr=0.02)
    task, system, _ = build_pieces(cfg)
    tw = make_twin(system, cfg.twin)
    trained, _ = train_method(cfg, task, system, tw.twin, "in_silico", monitor=False)
    path = save_weights(trained, tmp_path / "w.safetensors")
    warm = _cfg(lr=1e-9, init_weights=str(path))
    for method in ("pat", "in_silico"):
        model, _ = train_method(warm, task, system, tw.twin, method, monitor=False)
        assert torch.allclose(_theta(model), _theta(trained), atol=1e-6), method
    with pytest.raises(ConfigError, match="weights file not found: .*nope.safetensors"):
        train_method(_cfg(init_weights=str(tmp_path / "nope.safetensors")), task, system, tw.twin, "pat")
    other = tiny_config()
    other["network"]["stem"] = [{"type": "linear", "out": 6}, {"type": "linear", "out": 6}]
    other["training"]["init_weights"] = str(path)
    c = ExperimentConfig.model_validate(other)
    with pytest.raises(ConfigError, match=r"weights .*w\.safetensors do not fit this network"):
        train_method(c, task, system, tw.twin, "pat")


def test_pat_init_without_in_silico_is_refused_in_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    with pytest.raises(ConfigError) as e:
        load_config(path, ["training.pat_init=in_silico", "methods=[pat]"])
    assert "pat_init: in_silico" in str(e.value) and "\n" not in str(e.value)
    load_config(path, ["training.pat_init=in_silico", "methods=[in_silico]"])  # no PAT: nothing to start
    res = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "o"), "--method", "pat",
                              "--set", "training.pat_init=in_silico"])
    assert res.exit_code != 0
    assert "needs the in_silico network" in res.output and not (tmp_path / "o").exists()


def test_cross_validation_starts_each_folds_pat_from_that_folds_in_silico(tmp_path, monkeypatch):
    raw = tiny_config(epochs=1)
    raw["training"].update(pat_init="in_silico")
    raw["cv_folds"] = 2
    cfg = ExperimentConfig.model_validate(raw)
    task, system, _ = build_pieces(cfg)
    tw = make_twin(system, cfg.twin)
    calls = _spy(monkeypatch)
    ex.cross_validate(cfg, task, system, tw.twin)
    assert [c[0] for c in calls] == ["in_silico", "pat"] * 2
    for k in (0, 2):
        assert calls[k][2] is None and calls[k + 1][2] is calls[k][1]


def test_init_weights_are_checked_before_anything_is_measured(tmp_path, monkeypatch):
    cfg = _cfg(lr=0.02)
    task, system, _ = build_pieces(cfg)
    model, _ = train_method(cfg, task, system, make_twin(system, cfg.twin).twin, "in_silico", monitor=False)
    good = save_weights(model, tmp_path / "good.safetensors")
    # θ outside the lab's declared range (weights of another lab, or sigmoid logits): refused, never clamped
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k in state if ".theta." in k)
    state[key].view(-1)[0] = 1e3
    model.load_state_dict(state)
    far = save_weights(model, tmp_path / "far.safetensors")
    measured = []
    monkeypatch.setattr(ex, "make_twin", lambda *a, **kw: measured.append(1))
    with pytest.raises(ConfigError, match=rf"far\.safetensors: {key} spans .* outside .* range"):
        run_experiment(_cfg(init_weights=str(far)), tmp_path / "a")
    with pytest.raises(ConfigError, match="weights file not found"):
        run_experiment(_cfg(init_weights=str(tmp_path / "nope.safetensors")), tmp_path / "a")
    assert not measured and not (tmp_path / "a").exists()
    # a file inside OUT, whose earlier run a new run would move aside
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")
    inside = good.rename(tmp_path / "b" / "w.safetensors")
    with pytest.raises(ConfigError, match="training.init_weights .*w.safetensors lies inside"):
        run_experiment(_cfg(init_weights=str(inside)), tmp_path / "b")
    assert not measured and inside.exists() and (tmp_path / "b" / "config.json").read_text() == "{}"
    with pytest.raises(ValueError, match="init_weights cannot be used with cv_folds"):
        ExperimentConfig.model_validate({**tiny_config(), "cv_folds": 2,
                                         "training": {**tiny_config()["training"], "init_weights": str(inside)}})


def test_a_run_recorded_before_an_option_existed_can_be_resumed(tmp_path):
    cfg = _cfg()
    old = json.loads(cfg.model_dump_json())
    for key in ("pat_init", "pat_epochs", "pat_lr", "init_weights"):  # what a config.json written before them lacks
        del old["training"][key]
    (tmp_path / "config.json").write_text(json.dumps(old))
    ex._check_resumed_config(cfg, tmp_path)  # the defaults fill in: same config
    with pytest.raises(ConfigError, match=r"differs .* in training\.pat_epochs"):
        ex._check_resumed_config(_cfg(pat_epochs=1), tmp_path)
