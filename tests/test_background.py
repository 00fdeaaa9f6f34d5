"""pnnkit.background (a function in a spawned process) and the digital baseline trained there, beside the methods."""

from __future__ import annotations

import json
import os
import time

import pytest

from helpers import tiny_config
from pnnkit.background import BackgroundJob
from pnnkit.config import validate_config
from pnnkit.errors import ConfigError, PnnkitError
from pnnkit.experiments import baseline_in_background, run_experiment


# module-level, so that the spawned child can import them by name
def _add(a, b):
    return {"sum": a + b, "pid": os.getpid()}


def _fail(msg):
    raise ConfigError(msg)


def _die(code):
    os._exit(code)


def _sleep(seconds):
    time.sleep(seconds)
    return "slept"


def test_result_comes_from_another_process():
    job = BackgroundJob(_add, 2, 3)
    r = job.result()
    assert r["sum"] == 5 and r["pid"] != os.getpid()
    with pytest.raises(PnnkitError, match="already taken"):
        job.result()


def test_child_error_is_raised_here_with_its_type():
    job = BackgroundJob(_fail, "digital_baseline: width 0")
    with pytest.raises(ConfigError, match="width 0"):
        job.result()


def test_child_dying_without_an_answer_is_a_clear_error():
    job = BackgroundJob(_die, 3, name="probe")
    with pytest.raises(PnnkitError, match=r"probe: the background process ended without a result \(exit code 3\)"):
        job.result()


def test_cancel_stops_a_running_child():
    job = BackgroundJob(_sleep, 60)
    t0 = time.perf_counter()
    job.cancel()
    assert not job.running() and time.perf_counter() - t0 < 30
    job.cancel()  # twice is harmless


def _baseline_config(background: bool) -> dict:
    data = tiny_config(epochs=1)
    data["digital_baseline"] = {"kind": "mlp", "hidden": [8], "epochs": 2, "background": background}
    data["training"].update(refit_readout=True)
    data["methods"] = ["in_silico"]
    return data


def test_background_baseline_gives_the_foreground_result(tmp_path):
    res = {}
    for bg in (False, True):
        cfg = validate_config(_baseline_config(bg), f"background={bg}")
        assert baseline_in_background(cfg.digital_baseline) is bg
        run_experiment(cfg, tmp_path / str(bg))
        res[bg] = json.loads((tmp_path / str(bg) / "results.json").read_text())
    fg, bg = (dict(res[k]["digital_baseline"]) for k in (False, True))
    for d in (fg, bg):  # the clocks differ, nothing else may
        assert d.pop("train_seconds") > 0 and d["readout_refit"].pop("seconds") > 0
    assert bg == fg  # accuracy, parameters and the refit's losses to the last bit
    # the method is untouched by where the baseline trains
    ms = [dict(res[k]["methods"]["in_silico"]) for k in (False, True)]
    for m in ms:
        m.pop("train_seconds"), m["readout_refit"].pop("seconds")
    assert ms[0] == ms[1]


def test_a_failed_run_stops_its_background_baseline(tmp_path, monkeypatch):
    import pnnkit.experiments as ex

    jobs = []

    class Recorded(BackgroundJob):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            jobs.append(self)

    def broken(*a, **k):
        raise RuntimeError("the lab caught fire")

    monkeypatch.setattr(ex, "BackgroundJob", Recorded)
    monkeypatch.setattr(ex, "train_method", broken)
    cfg = validate_config(_baseline_config(True), "failing run")
    with pytest.raises(RuntimeError, match="caught fire"):
        run_experiment(cfg, tmp_path)
    assert len(jobs) == 1 and not jobs[0].running()


def test_background_default_follows_the_cpus(monkeypatch):
    cfg = validate_config(_baseline_config(True), "x")
    b = cfg.digital_baseline.model_copy(update={"background": None})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert baseline_in_background(b) is False
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert baseline_in_background(b) is True
