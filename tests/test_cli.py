"""CLI end to end on a tiny config: run, twin fit, train, evaluate, toy-gap, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import tiny_config
from pnnkit.cli import app, demo_config_text
from pnnkit.config import load_config, validate_config
from pnnkit.machine import NUMERICS_ENV
from pnnkit.provenance import versions

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

TINY = tiny_config(epochs=2)


def one_line_error(res, code: int = 2) -> str:
    """The error line of a refused command: it exited with ``code`` (typer.Exit/SystemExit, not an exception escaping
    the command; CliRunner keeps those in ``res.exception``, never in the output), printed exactly one line
    ``error: …`` on stderr, and nothing on stdout."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert res.stdout == "", res.stdout
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    res = runner.invoke(app, ["run", str(cfg), "--out", str(d / "out")])
    assert res.exit_code == 0, res.output
    return d, cfg, res


def test_run_writes_results_in_the_schema(tiny_run):
    d, _, res = tiny_run
    r = json.loads((d / "out" / "results.json").read_text())
    assert {"task", "system", "unit", "seed", "methods", "twin", "versions"} <= set(r)
    assert (r["task"], r["system"], r["unit"], r["seed"]) == ("digits", "oscillators", 0, 0)
    for m in ("pat", "in_silico"):
        keys = {"test_accuracy", "twin_test_accuracy", "physical_queries", "train_seconds"}
        assert keys <= set(r["methods"][m])
        assert 0 <= r["methods"][m]["test_accuracy"] <= 1
    assert r["methods"]["pat"]["twin_test_accuracy"] is None
    assert isinstance(r["methods"]["in_silico"]["twin_test_accuracy"], float)
    assert r["methods"]["in_silico"]["physical_queries"] == 0
    assert r["methods"]["pat"]["physical_queries"] == 2 * 2 * (1797 - 200)  # 2 layers × 2 epochs × samples
    assert r["twin"]["train_samples"] > 0 and r["twin"]["val_nrmse"] > 0
    assert set(r["versions"]) - {"source"} == {"pnnkit", "torch", "python"}
    assert r["versions"] == versions()  # with "source", the checkout's commit, when run from a git checkout
    assert set(r["machine"]) == {"cpu", "cpu_capability", "cores", "torch_threads", "platform", "env"}
    assert r["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert r["machine"]["env"] == {k: os.environ[k] for k in NUMERICS_ENV if k in os.environ}
    assert r["machine"]["torch_threads"] == torch.get_num_threads() and r["machine"]["cores"] >= 1
    for f in ("learning_curves.png", "confusion_pat.png", "confusion_in_silico.png", "twin.safetensors",
              "twin.json", "twin_measurements.h5", "pat/log.csv", "pat/checkpoint.json"):
        assert (d / "out" / f).exists(), f
    assert "physical test acc" in res.output


def test_train_then_evaluate_on_same_and_other_unit(tiny_run, monkeypatch):
    import pnnkit.experiments as ex

    built_units = []
    build_lab = ex.build_lab
    monkeypatch.setattr(ex, "build_lab", lambda lab_cfg: built_units.append(lab_cfg.unit) or build_lab(lab_cfg))
    d, cfg, _ = tiny_run
    twin = d / "out" / "twin.safetensors"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(d / "t"), "--method", "pat", "--twin", str(twin)])
    assert res.exit_code == 0, res.output
    weights = d / "t" / "pat" / "model.safetensors"
    result = json.loads((d / "t" / "pat" / "result.json").read_text())
    acc = result["test_accuracy"]
    assert result["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "torch" in result["versions"]
    res = runner.invoke(app, ["evaluate", str(cfg), "--weights", str(weights)])
    assert res.exit_code == 0 and "unit 0" in res.output
    assert abs(float(res.output.splitlines()[0].split(":")[-1]) - acc) < 0.05  # same unit, fresh measurement noise
    assert built_units[-1] == 0
    res = runner.invoke(app, ["evaluate", str(cfg), "--weights", str(weights), "--unit", "7"])
    assert res.exit_code == 0 and "unit 7" in res.output
    assert built_units[-1] == 7  # the weights were deployed on a lab built as unit 7


def test_twin_fit_and_show(tiny_run):
    d, cfg, _ = tiny_run
    res = runner.invoke(app, ["twin", "fit", str(cfg), "--out", str(d / "tw")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["twin", "show", str(d / "tw" / "twin.json")])
    assert res.exit_code == 0 and "oscillator_physics twin" in res.output and "val NRMSE" in res.output


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "traning": {}}))
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert "unknown key 'traning' (did you mean 'training'?)" in one_line_error(res)
    res = runner.invoke(app, ["evaluate", str(bad), "--weights", "w.safetensors"])
    assert "unknown key 'traning'" in one_line_error(res)


def test_one_line_error_fails_on_a_crash_and_on_errors_printed_to_stdout(tmp_path, monkeypatch):
    """The helper above catches what `"Traceback" not in res.output` never could: an exception escaping the command
    (a corrupt checkpoint.json read without its UnicodeDecodeError caught, as before the fix) and an error on stdout."""
    import pnnkit.checkpoint as ck
    import pnnkit.cli as cli

    def crash(path):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    monkeypatch.setattr(ck, "load_weights", lambda model, path: crash(path))
    res = runner.invoke(app, ["evaluate", str(cfg), "--weights", str(tmp_path / "w.safetensors")])
    assert "Traceback" not in res.output and isinstance(res.exception, UnicodeDecodeError)
    with pytest.raises(AssertionError, match="UnicodeDecodeError"):
        one_line_error(res)
    monkeypatch.setattr(cli, "err_console", cli.console)  # errors printed on stdout, as before the fix
    res = runner.invoke(app, ["labs", "circuitt"])
    assert res.exit_code == 2 and "unknown lab" in res.output
    with pytest.raises(AssertionError):
        one_line_error(res)


def test_toy_gap_prints_table():
    res = runner.invoke(app, ["toy-gap"])
    assert res.exit_code == 0
    line20 = next(l for l in res.output.splitlines() if l.strip("│ ").startswith("20 "))
    assert "33.06 %" in line20 and "10.49 %" in line20


def test_demo_preset_and_every_example_config_validate():
    validate_config(yaml.safe_load(demo_config_text()), "demo")
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples, "examples/ must hold the experiment configs"
    for path in examples:
        load_config(path)


def test_set_overrides_reach_the_run_and_its_recorded_config(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "o"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--set", "training.epochs=1",
                              "--set", "methods=[in_silico]", "--set", "task.options.test_size=300"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())
    assert set(r["methods"]) == {"in_silico"}
    rec = json.loads((out / "config.json").read_text())
    assert rec["training"]["epochs"] == 1 and rec["task"]["options"]["test_size"] == 300
    assert len((out / "in_silico" / "log.csv").read_text().strip().splitlines()) == 1 + 1  # header + 1 epoch
    assert yaml.safe_load(cfg.read_text()) == TINY  # the file on disk is untouched

    # --resume continues OUT's checkpoints, so it refuses a config that differs from OUT/config.json
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--resume", "--set", "training.epochs=2",
                              "--set", "methods=[in_silico]", "--set", "task.options.test_size=300"])
    err = one_line_error(res)
    assert "cannot resume" in err and "training.epochs" in err and "test_size" not in err
    assert json.loads((out / "config.json").read_text()) == rec  # the record of the run is kept
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--resume", "--set", "training.epochs=1",
                              "--set", "methods=[in_silico]", "--set", "task.options.test_size=300"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["methods"]["in_silico"]["test_accuracy"] == \
        r["methods"]["in_silico"]["test_accuracy"]


def test_set_errors_are_one_line(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    for item, msg in [("training.epochs", "--set expects KEY=VALUE"),
                      ("training..epochs=3", "--set expects KEY=VALUE"),
                      ("training.traning_epochs=3", "unknown key 'training.traning_epochs'"),
                      ("training.epochs=-1", "training.epochs: Input should be greater than 0"),
                      ("name.x=1", "name is 'tiny', not a mapping or list"),
                      ("network.stem.3.out=4", "network.stem is a list of 1, so '3' is not an index"),
                      ("methods=[pat", "the value is not valid YAML")]:
        res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "o"), "--set", item])
        assert msg in one_line_error(res), (item, res.output)


def test_networks_and_studies_that_cannot_run_are_refused_before_anything_is_measured(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    for item, msg in [("network.depth=0", "the network has no physical layer (network.depth is 0;"),
                      ("network.layer=[{type: rescale}]", "the network has no physical layer (network.depth is 2;"),
                      ("cv_folds=1", "cv_folds must be 0 (off) or at least 2"),
                      ("cv_folds=5000", "cv_folds 5000 is more than the ")]:
        res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "o"), "--set", item])
        assert msg in one_line_error(res), (item, res.output)
        assert not (tmp_path / "o").exists(), item  # nothing measured, nothing written
    # a digital baseline that cannot be built (its network without the lab's 8 → 16 widening) fails before PAT
    shg = {**TINY, "lab": {"name": "shg", "options": {"n_inputs": 8, "n_params": 8, "output_dim": 16}},
           "network": {"depth": 1, "stem": [{"type": "pool", "out": 8}], "layer": [{"type": "physical"}],
                       "head": [{"type": "slice", "start": 6, "stop": 16}]},
           "digital_baseline": {"kind": "without_physical"}}
    cfg.write_text(yaml.safe_dump(shg))
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "digital_baseline 'without_physical': network block 1 (slice): [6:16] does not fit " \
        "width 8" in res.output and not (tmp_path / "o").exists(), res.output


def test_demo_takes_set_and_names_a_bad_key(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--set", "training.epoch=1"])
    assert "demo with --set training.epoch=1: unknown key 'training.epoch' (did you mean 'epochs'?)" in \
        one_line_error(res)
    assert not (tmp_path / "d").exists()  # nothing ran


def test_train_resume_keeps_the_fitted_twin_and_refuses_a_changed_config(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "o"
    base = ["train", str(cfg), "--out", str(out), "--method", "pat", "--set", "training.epochs=1"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "pat" / "config.json").read_text())
    assert rec["training"]["epochs"] == 1
    twin_bytes = (out / "twin.safetensors").read_bytes()
    first = json.loads((out / "pat" / "result.json").read_text())

    # a different config is refused before anything is measured; the record stays
    res = runner.invoke(app, [*base, "--resume", "--set", "training.lr=0.05"])
    err = one_line_error(res)
    assert "cannot resume" in err and "training.lr" in err
    assert json.loads((out / "pat" / "config.json").read_text()) == rec

    # the same config resumes on the twin fitted in OUT: no new twin measurements, the same twin file
    from pnnkit import MeasurementLog
    from pnnkit.labs import make_lab

    spec = make_lab("oscillators", n=6, steps=10).spec

    def logged() -> int:
        log = MeasurementLog(out / "pat" / "device_log.h5", spec)
        try:
            return len(log)
        finally:
            log.close()

    rows = logged()
    res = runner.invoke(app, [*base, "--resume"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("twin_measurements*")) == ["twin_measurements.h5"]
    assert (out / "twin.safetensors").read_bytes() == twin_bytes
    again = json.loads((out / "pat" / "result.json").read_text())
    assert again["physical_queries"] == first["physical_queries"]  # finished run: nothing trained twice
    # nor evaluated twice: the result comes back from the checkpoint, with no new measurement
    assert logged() == rows and all(again[k] == first[k] for k in ("test_accuracy", "eval_queries", "epochs"))


def test_resuming_a_run_stopped_after_its_twin_measurements_fits_them_instead_of_measuring_again(tmp_path,
                                                                                                   monkeypatch):
    import pnnkit.experiments as ex

    cfg = validate_config({**TINY, "methods": ["in_silico"], "training": {**TINY["training"], "epochs": 1}}, "t")
    fit = ex.fit_twin

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "fit_twin", stopped)  # Ctrl-C as the twin's fit begins
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(cfg, tmp_path / "o")
    assert (tmp_path / "o" / "twin_measurements.h5").exists() and not (tmp_path / "o" / "twin.json").exists()
    monkeypatch.setattr(ex, "fit_twin", fit)
    acquire = ex.acquire

    def measured_again(*a, **k):
        raise AssertionError("the twin's design was measured again")

    monkeypatch.setattr(ex, "acquire", measured_again)
    resumed = ex.run_experiment(cfg, tmp_path / "o", resume=True)
    monkeypatch.setattr(ex, "acquire", acquire)
    fresh = ex.run_experiment(cfg, tmp_path / "f")
    same = ("train_samples", "val_nrmse", "measurement_queries")
    assert [resumed["twin"][k] for k in same] == [fresh["twin"][k] for k in same]
    # and the lab continues from its state after those measurements, as in the uninterrupted run
    assert resumed["methods"]["in_silico"]["test_accuracy"] == fresh["methods"]["in_silico"]["test_accuracy"]
    assert resumed["twin"]["measurement_queries"] > 0
    assert sorted(p.name for p in (tmp_path / "o").glob("twin_measurements*")) == ["twin_measurements.h5"]
    # a file of another design, or of another lab, is not taken for this one's
    saved, lab = tmp_path / "o" / "twin_measurements.h5", ex.build_lab(cfg.lab)
    assert ex._measured_before(saved, lab, cfg.twin) is not None
    for change in ({"seed": 1}, {"samples": 512}, {"repeats": 3}, {"design": "lhs"}):
        assert ex._measured_before(saved, lab, cfg.twin.model_copy(update=change)) is None, change
    other = ex.build_lab(cfg.lab.model_copy(update={"options": {"n": 5, "steps": 10}}))
    assert ex._measured_before(saved, other, cfg.twin) is None


def test_a_run_stopped_after_its_twin_resumes_to_the_uninterrupted_runs_numbers(tmp_path, monkeypatch):
    import pnnkit.experiments as ex

    cfg = validate_config({**TINY, "training": {**TINY["training"], "epochs": 1}}, "t")  # pat, then in_silico
    full = ex.run_experiment(cfg, tmp_path / "a")
    train = ex.train_method

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "train_method", stopped)  # Ctrl-C once the twin is fitted, before any method
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(cfg, tmp_path / "b")
    monkeypatch.setattr(ex, "train_method", train)
    resumed = ex.run_experiment(cfg, tmp_path / "b", resume=True)
    for m in ("pat", "in_silico"):
        assert resumed["methods"][m]["test_accuracy"] == full["methods"][m]["test_accuracy"], m
        assert resumed["methods"][m]["confusion"] == full["methods"][m]["confusion"], m
    # the twin's record is the interrupted run's original measurements and fit, not "nothing measured or fitted"
    b = json.loads((tmp_path / "b" / "twin.json").read_text())["report"]["seconds"]
    same = ("train_samples", "val_nrmse", "measurement_queries")
    assert [resumed["twin"][k] for k in same] == [full["twin"][k] for k in same] and full["twin"]["measurement_queries"]
    assert resumed["twin"]["fit_seconds"] == b > 0 and resumed["twin"]["measurement_seconds"] > 0


def test_out_never_loses_an_earlier_run_and_bad_outs_are_refused(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "o"
    quick = ["--set", "training.epochs=1", "--set", "methods=[in_silico]"]
    # a network that does not fit the lab fails before anything is measured or written
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), *quick, "--set", "network.stem.0.out=5"])
    assert res.exit_code == 2 and "incoming width 5 ≠ system input_dim 6" in res.output
    assert not out.exists()
    assert runner.invoke(app, ["run", str(cfg), "--out", str(out), *quick]).exit_code == 0
    first = (out / "results.json").read_text()
    # a fresh run into the same OUT keeps the earlier one under OUT.<time>, whole
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), *quick, "--set", "seed=1"])
    assert res.exit_code == 0, res.output
    kept = [p for p in tmp_path.glob("o.*") if p.is_dir()]
    assert len(kept) == 1 and (kept[0] / "results.json").read_text() == first
    assert f"kept as {kept[0]}" in res.output
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    # refused with one line each: a file, a path under a file, a non-empty directory that is no run, and resuming
    # a directory that holds no run
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    for args, msg in [(["--out", str(cfg)], "is a file, not a directory"),
                      (["--out", str(cfg / "x")], "is a file, not a directory"),
                      (["--out", str(junk)], "is not empty and holds no earlier pnnkit run"),
                      (["--out", str(tmp_path / "none"), "--resume"], "nothing to resume in")]:
        res = runner.invoke(app, ["run", str(cfg), *args, *quick])
        assert msg in one_line_error(res), (args, res.output)
    assert (junk / "notes.txt").read_text() == "mine" and not (tmp_path / "none").exists()


def test_error_text_is_printed_verbatim_not_as_markup(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "o"), "--set", "methods=[/foo]"])
    assert "methods=[/foo]" in one_line_error(res)


def test_evaluate_takes_a_runs_weights_keeps_its_measurements_and_names_bad_weights(tiny_run, tmp_path):
    from pnnkit import MeasurementLog
    from pnnkit.labs import make_lab

    d, cfg, _ = tiny_run
    r = json.loads((d / "out" / "results.json").read_text())
    for weights in (d / "out" / "pat" / "model.safetensors", d / "out" / "pat" / "checkpoint.safetensors"):
        res = runner.invoke(app, ["evaluate", str(cfg), "--weights", str(weights), "--log", str(tmp_path / "ev")])
        assert res.exit_code == 0, res.output
        assert abs(float(res.output.splitlines()[0].split(":")[-1]) - r["methods"]["pat"]["test_accuracy"]) < 0.05
    # every measurement is kept: the 200 test samples through both physical layers, per evaluation
    logs = sorted((tmp_path / "ev").glob("evaluate_unit0*.h5"))
    assert len(logs) == 2  # the second evaluation kept the first's log under another name
    lg = MeasurementLog(logs[0], make_lab("oscillators", n=6, steps=10).spec)
    assert len(lg) == 2 * 200
    lg.close()
    # bad weights: one line each, naming the problem
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes((d / "out" / "pat" / "model.safetensors").read_bytes()[:100])
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "network": {**TINY["network"], "stem": [{"type": "linear", "out": 6},
                                                                                     {"type": "rescale"}]}}))
    weights = str(d / "out" / "pat" / "model.safetensors")
    lone = tmp_path / "lone" / "checkpoint.safetensors"  # a checkpoint copied without its checkpoint.json
    lone.parent.mkdir()
    lone.write_bytes((d / "out" / "pat" / "checkpoint.safetensors").read_bytes())
    for args, msg in [([str(cfg), "--weights", str(trunc)], "cannot read weights"),
                      ([str(cfg), "--weights", str(lone)], "(checkpoint.safetensors of a trainer checkpoint is read "
                                                            "with its checkpoint.json, which is not beside it)"),
                      ([str(cfg), "--weights", str(tmp_path)], "is a directory"),
                      ([str(cfg), "--weights", str(tmp_path / "nope.safetensors")], "weights file not found"),
                      ([str(other), "--weights", weights], "do not fit this network: missing 1.bias, 1.scale")]:
        res = runner.invoke(app, ["evaluate", *args, "--log", str(tmp_path / "bad")])
        assert msg in one_line_error(res), (args, res.output)


def test_evaluate_takes_any_checkpoint_pair_and_names_a_corrupt_one(tiny_run, tmp_path):
    """A checkpoint is any X.safetensors with its X.json (the documented
    checkpoint_before_readout_refit.safetensors/.json too); a .json that is not UTF-8 is one line, not a crash."""
    from pnnkit.checkpoint import is_checkpoint

    d, cfg, _ = tiny_run
    src = d / "out" / "pat" / "checkpoint"
    pre = tmp_path / "pre" / "checkpoint_before_readout_refit"
    pre.parent.mkdir()
    for ext in (".safetensors", ".json"):
        pre.with_suffix(ext).write_bytes(src.with_suffix(ext).read_bytes())
    weights = pre.with_suffix(".safetensors")
    assert is_checkpoint(weights) and not is_checkpoint(d / "out" / "pat" / "model.safetensors")
    res = runner.invoke(app, ["evaluate", str(cfg), "--weights", str(weights), "--log", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    r = json.loads((d / "out" / "results.json").read_text())
    assert abs(float(res.stdout.splitlines()[0].split(":")[-1]) - r["methods"]["pat"]["test_accuracy"]) < 0.05
    pre.with_suffix(".json").write_bytes(b"\xff\xfe\x00garbage")  # the audit's corrupt checkpoint.json
    for w in (weights, tmp_path / "c" / "checkpoint.safetensors"):
        w.parent.mkdir(exist_ok=True)
        if not w.exists():
            w.write_bytes(src.with_suffix(".safetensors").read_bytes())
            w.with_suffix(".json").write_bytes(b"\xff\xfe\x00garbage")
        res = runner.invoke(app, ["evaluate", str(cfg), "--weights", str(w), "--log", str(tmp_path / "ev")])
        assert (f"cannot read checkpoint {w}: {w.stem}.json is not JSON text ('utf-8' codec can't decode byte 0xff"
                in one_line_error(res)), res.output


def test_resume_names_a_corrupt_config_json_in_one_line(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_bytes(b"\xff\xfe\x00")
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--resume"])
    assert f"cannot resume: {out / 'config.json'} is unreadable ('utf-8' codec" in one_line_error(res)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # refused before anything was measured


def test_twin_commands_name_their_input_problems(tiny_run, tmp_path):
    import subprocess
    import sys

    d, cfg, _ = tiny_run
    twin = d / "out" / "twin.safetensors"
    # a physics twin loads in a fresh interpreter, before its lab module was ever imported
    code = f"from pnnkit.twins import DigitalTwin; print(DigitalTwin.load({str(twin)!r}).kind)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "oscillator_physics"
    lone = tmp_path / "lone.json"
    lone.write_bytes((d / "out" / "twin.json").read_bytes())
    for path, msg in [(d / "out", "is a directory; give its twin.safetensors"),
                      (d / "out" / "twin_measurements.h5", "is not a twin file"),
                      (tmp_path / "nope.json", f"twin file not found: {tmp_path / 'nope.json'}"),  # named as given
                      (lone, "lone.json has no lone.safetensors beside it; a twin is a .safetensors + .json pair")]:
        res = runner.invoke(app, ["twin", "show", str(path)])
        assert msg in one_line_error(res), res.output
    res = runner.invoke(app, ["twin", "fit", str(cfg), "--out", str(tmp_path / "tf"), "--set", f"twin.path={twin}"])
    assert res.exit_code == 2 and "twin.path is set" in res.output and not (tmp_path / "tf").exists()


def test_train_into_a_runs_method_directory_keeps_the_runs_results(tiny_run, tmp_path):
    import shutil

    d, cfg, _ = tiny_run
    run = tmp_path / "r"
    shutil.copytree(d / "out", run)
    before = (run / "in_silico" / "log.csv").read_text()
    res = runner.invoke(app, ["train", str(cfg), "--out", str(run), "--method", "in_silico",
                              "--twin", str(run / "twin.safetensors"), "--set", "training.epochs=1"])
    assert res.exit_code == 0, res.output
    kept = [p for p in run.glob("in_silico.*") if p.is_dir()]
    assert len(kept) == 1 and (kept[0] / "log.csv").read_text() == before
    assert len((run / "in_silico" / "log.csv").read_text().strip().splitlines()) == 2  # the new run: 1 epoch


def test_the_entry_point_reports_running_out_of_memory_in_one_line(monkeypatch, capsys):
    import pnnkit.cli as cli

    def oom() -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 3200000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(cli, "app", oom)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: out of memory (one allocation of 2.98e+03 GiB); use smaller sizes "
                                       "(batch, samples, channels, depth)\n")

    def bare() -> None:
        raise MemoryError

    monkeypatch.setattr(cli, "app", bare)
    with pytest.raises(SystemExit):
        cli.main()
    assert capsys.readouterr().err.startswith("error: out of memory; use smaller sizes")

    def other() -> None:
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(cli, "app", other)
    with pytest.raises(RuntimeError, match="a bug, not memory"):  # anything else keeps its traceback
        cli.main()


def test_evaluate_unit_and_train_twin_are_checked_before_anything_is_written(tiny_run, tmp_path):
    from pnnkit.config import SEED_LIMIT
    from pnnkit.errors import ConfigError
    from pnnkit.experiments import rebuild_run

    d, cfg, _ = tiny_run
    weights = d / "out" / "pat" / "model.safetensors"
    for unit, bound in (("-1", "greater than or equal to 0"), (str(10**23), f"less than {SEED_LIMIT}")):
        res = runner.invoke(app, ["evaluate", str(cfg), "--weights", str(weights), "--unit", unit,
                                  "--log", str(tmp_path / "ev")])
        err = one_line_error(res)
        assert f"with --unit {unit}: lab.unit: Input should be {bound}" in err and "--set" not in err, err
    assert not (tmp_path / "ev").exists()
    res = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "t"), "--twin", str(tmp_path / "nope.safetensors")])
    assert res.exit_code == 2 and "twin file missing" in res.output and not (tmp_path / "t").exists(), res.output
    res = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "t"), "--method", "in_silico",
                              "--twin", str(d / "out" / "twin.safetensors"), "--set", "training.epochs=1"])
    assert res.exit_code == 0, res.output
    with pytest.raises(ConfigError, match=r"holds no config.json of a pnnkit run; `pnnkit train` keeps its config "
                                          r"in DIR/<method>: try .*t/in_silico$"):
        rebuild_run(tmp_path / "t")
    assert rebuild_run(tmp_path / "t" / "in_silico")[0].training.epochs == 1


# --- F7: `pnnkit labs`, `demo --show-config`, `demo --epochs` ------------------------------------------------
def test_labs_and_demo_options(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import pnnkit.experiments as ex
    from pnnkit.cli import app, demo_config_text
    from pnnkit.errors import PnnkitError
    from pnnkit.labs import lab_names

    runner = CliRunner()
    res = runner.invoke(app, ["labs"])
    assert res.exit_code == 0 and res.output.split() == lab_names()
    assert {"oscillators", "shg", "plate", "circuit"} <= set(lab_names())
    res = runner.invoke(app, ["demo", "--show-config"])
    assert res.exit_code == 0 and res.output.strip() == demo_config_text().strip()
    seen = {}

    def fake_run(cfg, out, **kw):
        seen["cfg"], seen["out"] = cfg, out
        raise PnnkitError("stopped by the test")

    monkeypatch.setattr(ex, "run_experiment", fake_run)
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--epochs", "1", "--set", "twin.samples=128"])
    assert res.exit_code == 2 and "stopped by the test" in res.output
    assert seen["cfg"].training.epochs == 1 and seen["cfg"].twin.samples == 128 and seen["out"] == tmp_path / "d"
    assert seen["cfg"].lab.options["n"] == 64 and seen["cfg"].methods == ["pat", "in_silico"]  # the rest: the preset


def test_twin_fit_holds_the_configs_fixed_parameters_and_refuses_a_misspelt_one_before_measuring(tmp_path):
    from safetensors.torch import load_file

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    fixed = ["--set", "twin.fit.fixed=[log_alpha, log_input_gain]"]
    res = runner.invoke(app, ["twin", "fit", str(cfg), "--out", str(tmp_path / "tw"), *fixed])
    assert res.exit_code == 0, res.output
    w = load_file(str(tmp_path / "tw" / "twin.safetensors"))
    assert float(w["log_alpha"]) == 0.0 and float(w["log_input_gain"]) == 0.0  # held at the design
    assert float(w["log_coupling_gain"]) != 0.0 and float(w["log_output_gain"]) != 0.0  # fitted
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "o"), "--set", "twin.fit.fixed=[log_alfa]"])
    assert ("twin.fit.fixed: the physics twin of oscillators has no parameter log_alfa; its parameters: log_alpha, "
            "log_coupling_gain, log_input_gain, log_output_gain") in one_line_error(res)
    assert not (tmp_path / "o").exists()  # refused before anything was measured or written
    res = runner.invoke(app, ["twin", "fit", str(cfg), "--out", str(tmp_path / "t2"), "--set", "twin.fit.fixed=[x]"])
    assert res.exit_code == 2 and "has no parameter x" in res.output and not (tmp_path / "t2").exists()


@pytest.mark.parametrize("name", ["circuit", "oscillators", "plate", "shg"])
def test_labs_name_prints_the_options_make_lab_accepts_with_their_defaults(name):
    """`pnnkit labs NAME`: every option listed is one make_lab takes (and every one it takes is listed), the
    defaults shown are the constructor's, and the doc page named exists."""
    import inspect

    from pnnkit.labs import _OPTIONS_OF, lab_description
    from pnnkit.options import option_names

    res = runner.invoke(app, ["labs", name])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(f"{name}: ") and len(lines[0]) > len(name) + 10
    doc = lines[1].rsplit(" ", 1)[1]
    assert doc == f"docs/labs/{name}.md" and (Path(__file__).parents[1] / doc).is_file()
    assert lines[2] == ("lab keys (lab.unit, lab.seed, lab.imperfection_scale in a config, make_lab keyword "
                        "arguments) = default:")
    assert [ln.split(" = ")[0].strip() for ln in lines[3:6]] == ["unit", "seed", "imperfection_scale"]
    assert lines[6].startswith("options (lab.options in a config")
    listed = {ln.split(" = ")[0].strip() for ln in lines[3:] if ln.startswith("  ") and not ln.startswith("    ")}
    assert not {"unit", "seed", "imperfection_scale"} & {ln.split(" = ")[0].strip() for ln in lines[7:]}
    _, options = lab_description(name)
    target = _OPTIONS_OF[name]
    assert listed == {o[0] for o in options} == option_names(target) | {"imperfections", "imperfection_scale"}
    sig = inspect.signature(target).parameters
    for opt, default, _ in options:
        if opt in sig and isinstance(sig[opt].default, int) and not isinstance(sig[opt].default, bool):
            assert default == str(sig[opt].default), opt


def test_labs_name_shows_the_circuit_nodes_default_and_the_dataclass_fields():
    res = runner.invoke(app, ["labs", "circuit"])
    assert "  output_node = 'collector'" in res.output
    assert "fields (None: these defaults): vcc=5, r1=150000, rb=470000" in res.output
    assert "resistor_tolerance=0.01" in res.output and "  imperfection_scale = 1" in res.output


def test_labs_with_an_unknown_name_is_one_line_and_exit_2():
    res = runner.invoke(app, ["labs", "circuitt"])
    assert one_line_error(res) == "error: unknown lab 'circuitt'; available: circuit, oscillators, plate, shg"
