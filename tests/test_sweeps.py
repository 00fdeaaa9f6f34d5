"""Cross-validation and the depth and imperfection sweeps train what they say they train."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


# --- F4: cross-validation trains on its folds; the sweeps change what they sweep -----------------------------
def test_cv_and_sweeps_train_what_they_claim(monkeypatch, tmp_path):
    from pnnkit import experiments as ex
    from pnnkit.config import validate_config
    from pnnkit.tasks import load_task

    calls = []

    def fake_train(c, task, system, twin, method, *a, **k):
        calls.append(SimpleNamespace(depth=c.network.depth, seed=c.seed, method=method, task=task,
                                     scale=c.lab.imperfection_scale))
        return None, SimpleNamespace(test_accuracy=0.1 * c.network.depth + 0.01 * c.seed, twin_test_accuracy=None)

    monkeypatch.setattr(ex, "train_method", fake_train)
    built = []
    real_build = ex.build_lab
    monkeypatch.setattr(ex, "build_lab", lambda lab_cfg: built.append(lab_cfg.imperfection_scale) or real_build(lab_cfg))
    monkeypatch.setattr(ex, "make_twin", lambda system, twin_cfg, out, **k: SimpleNamespace(twin=SimpleNamespace(report=None)))
    cfg = validate_config({"name": "x", "lab": {"name": "oscillators", "options": {"n": 4}}, "methods": ["pat"],
                           "cv_folds": 3, "sweep_seeds": [0, 1]})
    task = load_task("digits", test_size=300)
    n = len(task.y_train) + len(task.y_test)

    cv = ex.cross_validate(cfg, task, None, None)
    folds = [c.task for c in calls]
    assert len(folds) == 3 and cv["folds"] == 3
    assert all(len(f.y_train) + len(f.y_test) == n for f in folds)
    assert sum(len(f.y_test) for f in folds) == n  # the test parts partition the data
    assert all(abs(len(f.y_test) - n / 3) <= 1 for f in folds)  # k-fold test parts, not the task's own split

    calls.clear()
    rows = ex.depth_sweep(cfg, task, None, None, [1, 3])
    assert [c.depth for c in calls] == [1, 1, 3, 3] and [c.seed for c in calls] == [0, 1, 0, 1]
    assert [r["layers"] for r in rows] == [1, 3] and rows[1]["pat"] == pytest.approx(0.305)

    calls.clear()
    rows = ex.imperfection_sweep(cfg, task, [0.0, 0.5], tmp_path)
    assert built == [0.0, 0.5]  # a lab built with each scale ...
    assert [c.scale for c in calls] == [0.0, 0.0, 0.5, 0.5]  # ... and every method trained on it
