"""Trainer: logs, checkpoints, resume equality; results of the tiny end-to-end path."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from pnnkit import ElementwiseRescale, MeasurementLog, PhysicalLayer, make_lab
from pnnkit.errors import ConfigError
from pnnkit.tasks import load_task
from pnnkit.training import TrainConfig, Trainer


def _setup(init: str = "fixed"):
    task = load_task("digits")
    task.x_train, task.y_train = task.x_train[:256], task.y_train[:256]
    task.x_test, task.y_test = task.x_test[:64], task.y_test[:64]
    lab = make_lab("oscillators", n=8, unit=1, seed=5)  # noisy unit: resume must restore its noise state
    twin = lab.ideal_twin()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), PhysicalLayer(lab, twin, generator=g), ElementwiseRescale(8, init=init),
                          PhysicalLayer(lab, twin, generator=g), nn.Linear(8, 10))
    return task, model


@pytest.mark.parametrize("init,augment", [("fixed", None), ("data", None), ("fixed", {"shift": 1.0, "rotate": 10.0})])
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, init, augment):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.02, seed=0, monitor_physical=True, progress=False,
                      augment=augment)
    task, model = _setup(init)
    full = Trainer(model, task, "pat", cfg, tmp_path / "full")
    full.train()
    want = {k: v.clone() for k, v in model.state_dict().items()}

    task, model = _setup(init)
    first = Trainer(model, task, "pat", cfg, tmp_path / "cut")
    first.train(stop_after=2)  # "interrupted" after epoch 2; checkpoint on disk
    task, model = _setup(init)  # a fresh process would rebuild everything from the config
    resumed = Trainer(model, task, "pat", cfg, tmp_path / "cut")
    resumed.train(resume=True)
    assert resumed.epoch == 3
    got = model.state_dict()
    assert any(not torch.equal(want[k], _setup(init)[1].state_dict()[k]) for k in want)  # training moved something
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert resumed.train_queries == full.train_queries
    with open(tmp_path / "cut" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert (tmp_path / "cut" / "tb").is_dir()


def _uninterrupted_and_cut(tmp_path, cfg):
    """A PAT run trained to the end (its trainer and weights), and a fresh network's trainer for the run to cut."""
    task, model = _setup()
    full = Trainer(model, task, "pat", cfg, tmp_path / "full")
    full.train()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    task, model = _setup()
    return full, want, Trainer(model, task, "pat", cfg, tmp_path / "cut")


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _assert_resumed_as_uninterrupted(resumed, full, want, cut_dir):
    """Weights bit for bit, history and query counts as the uninterrupted run's; log.csv with every epoch once."""
    for k in want:
        assert torch.equal(resumed.model.state_dict()[k], want[k]), k
    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    assert (resumed.train_queries, resumed.eval_queries) == (full.train_queries, full.eval_queries)
    with open(cut_dir / "log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == [str(e) for e in range(1, full.epoch + 1)]


def test_a_stop_in_an_epochs_monitoring_pass_keeps_its_training(tmp_path, monkeypatch):
    import pnnkit.training as tr

    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.02, seed=0, monitor_physical=True, progress=False)
    full, want, cut = _uninterrupted_and_cut(tmp_path, cfg)
    measure = tr.accuracy

    def stopped(m, x, y, mode, *a, **k):  # Ctrl-C while epoch 2's test set is being measured
        if mode == "physical" and cut.epoch == 2:
            raise KeyboardInterrupt
        return measure(m, x, y, mode, *a, **k)

    monkeypatch.setattr(tr, "accuracy", stopped)
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    monkeypatch.setattr(tr, "accuracy", measure)
    task, model = _setup()
    resumed = Trainer(model, task, "pat", cfg, tmp_path / "cut")
    resumed.train(resume=True)
    # this process measured epoch 2's test set and epoch 3, not epoch 2's training again (2 layers per sample)
    assert model[1].system.queries == 2 * (64 + 256 + 64)
    _assert_resumed_as_uninterrupted(resumed, full, want, tmp_path / "cut")


def test_result_reports_physical_and_twin_accuracy(tmp_path):
    from pnnkit.training import accuracy

    task, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.02, monitor_physical=False, progress=False)
    trainer = Trainer(model, task, "in_silico", cfg)
    trainer.train()
    lab = model[1].system
    noise = lab.get_state()  # the noisy lab's state before the final evaluation, to measure the same test set again
    res = trainer.result()
    assert res.physical_queries == 0 and res.eval_queries == 2 * 64  # two physical layers × 64 test samples
    assert sum(map(sum, res.confusion)) == 64
    assert res.test_accuracy == sum(res.confusion[i][i] for i in range(10)) / 64
    # the reported accuracies are the ones measured on the device / computed with the twin, recomputed independently
    assert res.twin_test_accuracy == accuracy(model, task.x_test, task.y_test, "in_silico")
    lab.set_state(noise)
    assert res.test_accuracy == accuracy(model, task.x_test, task.y_test, "physical")


def test_every_training_measurement_is_logged(tmp_path):
    from pnnkit import MeasurementLog

    task, model = _setup()
    cfg = TrainConfig(epochs=1, batch_size=64, monitor_physical=False, progress=False)
    trainer = Trainer(model, task, "pat", cfg, tmp_path)
    trainer.train()
    lab = model[1].system
    log = MeasurementLog(tmp_path / "device_log.h5", lab.spec)
    assert len(log) == trainer.train_queries == 2 * 256
    m = log.to_measurements()
    assert m.params["J"].shape == (512, 28) and m.y.shape == (512, 1, 8)
    # the logged θ of the first call is the layer-1 θ before the first optimizer step
    first = _setup()[1][1].params()["J"].detach()
    assert torch.equal(m.params["J"][0], first)
    log.close()


@pytest.mark.parametrize("mode", ["pat", "in_silico"])
def test_every_device_call_of_a_method_is_logged_including_monitoring_and_the_final_evaluation(tmp_path, mode):
    from pnnkit import MeasurementLog

    task, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=64, monitor_physical=True, monitor_every=2, progress=False)
    res = Trainer(model, task, mode, cfg, tmp_path).fit()
    assert res.eval_queries == 2 * 2 * 64  # the monitor after epoch 2 and the final evaluation, 2 layers each
    log = MeasurementLog(tmp_path / "device_log.h5", model[1].system.spec)
    assert len(log) == res.physical_queries + res.eval_queries
    # the last 128 rows are the final evaluation: the test set into layer 1 (the trained digital input layer's
    # output, within the device's input range), then into layer 2
    m = log.to_measurements()
    spec = model[1].system.spec
    with torch.no_grad():
        want = model[0](task.x_test).clamp(spec.input_low, spec.input_high)
    torch.testing.assert_close(m.x[-128:-64], want)
    log.close()


def test_data_init_measures_on_the_device_once_and_counts_the_queries():
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.02, seed=0, monitor_physical=False, progress=False,
                      init_samples=100)
    task, model = _setup("data")
    rescale = model[2]
    tr = Trainer(model, task, "pat", cfg)
    tr.train()
    # init: 100 samples through the first physical layer only (the pass stops at the rescale); then one epoch
    assert tr.train_queries == 100 + 2 * len(task.x_train)
    assert bool(rescale.initialised)
    scale = rescale.scale.detach().clone()
    again = Trainer(model, task, "pat", TrainConfig(epochs=1, batch_size=64, lr=0.0, progress=False,
                                                    monitor_physical=False, init_samples=100))
    again.train()  # a trained network is not re-initialised: only the epoch's queries, a unchanged at lr 0
    assert again.train_queries == 2 * len(task.x_train)
    assert torch.equal(rescale.scale, scale)


def test_readout_refit_changes_only_the_readout_and_reaches_its_optimum():
    from pnnkit.training import refit_readout

    task, model = _setup()
    Trainer(model, task, "pat", TrainConfig(epochs=1, batch_size=64, lr=0.02, monitor_physical=False,
                                            progress=False)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lab = model[1].system
    q0 = lab.queries
    info = refit_readout(model, task.x_train, task.y_train, "in_silico", l2=0.0)
    assert lab.queries == q0 and info["device_queries"] == 0  # in silico: features from the twin
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"4.weight", "4.bias"}  # the Linear after the last physical layer, nothing else
    assert info["parameters"] == 8 * 10 + 10
    assert info["train_loss_after"] < info["train_loss_before"]
    # at the optimum of the (convex) readout problem the gradient vanishes
    with torch.no_grad():
        from pnnkit.layers import using_mode

        with using_mode(model, "in_silico"):
            feats = model[:4](task.x_train)
    model[4].zero_grad()
    nn.functional.cross_entropy(model[4](feats), task.y_train).backward()
    grad = torch.cat([model[4].weight.grad.flatten(), model[4].bias.grad])
    assert float(grad.abs().max()) < 1e-3


def test_readout_refit_in_pat_measures_the_training_set_once_and_logs_it(tmp_path):
    from pnnkit import MeasurementLog

    task, model = _setup()
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.02, monitor_physical=False, progress=False, refit_readout=True,
                      refit_l2=0.0)
    tr = Trainer(model, task, "pat", cfg, tmp_path)
    res = tr.fit()
    # one epoch through two physical layers, then the refit's one pass over the training set through both
    assert res.physical_queries == 2 * 256 + 2 * 256
    assert res.readout_refit is not None and res.readout_refit["device_queries"] == 2 * 256
    assert res.summary()["readout_refit"]["train_loss_after"] <= res.readout_refit["train_loss_before"]
    log = MeasurementLog(tmp_path / "device_log.h5", model[1].system.spec)
    # nothing measured is lost: the refit's measurements included, then the final evaluation's
    assert len(log) == res.physical_queries + res.eval_queries and res.eval_queries == 2 * 64
    log.close()
    # the network before the refit is kept: same body (θ, stem), the readout the refit replaced
    from pnnkit.checkpoint import load_checkpoint
    from pnnkit.training import split_readout

    before = load_checkpoint(tmp_path / "checkpoint_before_readout_refit")["model"]
    after = load_checkpoint(tmp_path / "checkpoint")["model"]
    n_body = len(split_readout(model)[0])
    body_keys = [k for k in before if int(k.split(".")[0]) < n_body]
    assert before.keys() == after.keys() and body_keys
    assert all(torch.equal(before[k], after[k]) for k in body_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in body_keys)
    # a resumed, finished run does not refit twice
    again = Trainer(model, task, "pat", cfg, tmp_path)
    again.train(resume=True)
    assert again.readout_refit == tr.readout_refit and again.train_queries == tr.train_queries


def test_readout_refit_at_start_is_the_optimum_for_the_initial_network():
    import copy

    from pnnkit.training import refit_readout

    task, model = _setup()
    ref = copy.deepcopy(model)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-12, monitor_physical=False, progress=False, refit_readout_start=True,
                      refit_l2=0.0)
    res = Trainer(model, task, "in_silico", cfg).fit()
    # the same fit on the untrained network (in silico: deterministic twin features); a 1e-12 lr then barely moves it
    info = refit_readout(ref, task.x_train, task.y_train, "in_silico", l2=0.0)
    assert res.readout_refit_start is not None and res.readout_refit is None
    assert res.readout_refit_start["train_loss_after"] == pytest.approx(info["train_loss_after"], rel=1e-5)
    assert torch.allclose(model[4].weight, ref[4].weight, atol=1e-5)
    assert torch.equal(model[0].weight, ref[0].weight)  # only the readout was fitted
    assert "readout_refit_start" in res.summary() and "readout_refit" not in res.summary()


def test_readout_refit_at_start_in_pat_is_measured_logged_and_not_repeated_on_resume(tmp_path):
    from pnnkit import MeasurementLog

    task, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.02, monitor_physical=False, progress=False,
                      refit_readout_start=True, refit_l2=0.0)
    tr = Trainer(model, task, "pat", cfg, tmp_path)
    tr.train(stop_after=1)  # interrupted after epoch 1
    assert tr.readout_refit_start is not None and tr.readout_refit_start["device_queries"] == 2 * 256
    assert tr.train_queries == 2 * 256 + 2 * 256  # the start refit's pass, then one epoch, through both layers
    again = Trainer(model, task, "pat", cfg, tmp_path)
    again.train(resume=True)  # epoch 2 only: the readout is not refitted again
    assert again.readout_refit_start == tr.readout_refit_start
    assert again.train_queries == 2 * 256 * 3
    log = MeasurementLog(tmp_path / "device_log.h5", model[1].system.spec)
    assert len(log) == again.train_queries  # nothing measured is lost, the start refit's measurements included
    log.close()


def test_readout_refit_every_epoch_fits_the_epochs_measured_features_without_extra_queries(tmp_path, monkeypatch):
    from pnnkit import MeasurementLog
    from pnnkit import training

    seen = []
    real_fit = training.fit_readout
    monkeypatch.setattr(training, "fit_readout", lambda r, f, y, *a: seen.append((f, y, a)) or real_fit(r, f, y, *a))
    task, model = _setup()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.02, monitor_physical=False, progress=False, refit_readout_every=1,
                      refit_l2=0.0, refit_every_max_iter=50)
    res = Trainer(model, task, "pat", cfg, tmp_path).fit()
    assert res.physical_queries == 3 * 2 * 256  # three epochs through both layers, nothing more
    assert [r["epoch"] for r in res.readout_refits_epoch] == [1, 2, 3]
    assert all(r["train_loss_after"] <= r["train_loss_before"] for r in res.readout_refits_epoch)
    assert res.summary()["readout_refits_epoch"] == res.readout_refits_epoch
    # what the first refit fitted: the second physical layer's *measured* outputs of epoch 1, in batch order
    log = MeasurementLog(tmp_path / "device_log.h5", model[1].system.spec)
    y_log = log.to_measurements().y.reshape(3 * 2 * 256 + 2 * 64, -1)  # one row per sample: training, then test
    log.close()
    measured = torch.cat([y_log[i + 64 : i + 128] for i in range(0, 2 * 256, 128)])  # layer 1, layer 2, per batch
    feats, labels, (l2, max_iter) = seen[0]
    assert (l2, max_iter) == (0.0, 50)
    assert torch.allclose(feats, measured.to(feats.dtype), atol=1e-6)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + 0))
    assert torch.equal(labels, task.y_train[order])
    # with the end refit on, the last epoch is left to its measured pass; every 2nd epoch: epoch 2 only
    task, model = _setup()
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.02, monitor_physical=False, progress=False, refit_readout_every=2,
                      refit_readout=True, refit_l2=0.0)
    res = Trainer(model, task, "pat", cfg).fit()
    assert [r["epoch"] for r in res.readout_refits_epoch] == [2] and res.readout_refit is not None
    assert res.physical_queries == 4 * 2 * 256 + 2 * 256  # four epochs, then the end refit's pass


def test_readout_refit_every_epoch_in_silico_fits_the_twins_features(monkeypatch):
    import copy

    from pnnkit import training
    from pnnkit.layers import using_mode

    seen = []
    real_fit = training.fit_readout
    monkeypatch.setattr(training, "fit_readout", lambda r, f, y, *a: seen.append((f, y)) or real_fit(r, f, y, *a))
    task, model = _setup()
    ref = copy.deepcopy(model)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-12, monitor_physical=False, progress=False, refit_readout_every=1,
                      refit_l2=0.0)
    res = Trainer(model, task, "in_silico", cfg).fit()
    # θ barely moves at a 1e-12 lr: epoch 1's recorded features are the untrained network's twin features
    order = torch.randperm(256, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + 0))
    with torch.no_grad(), using_mode(ref, "in_silico"):
        want = ref[:4](task.x_train[order])
    assert len(seen) == 2 and torch.allclose(seen[0][0], want, atol=1e-5)  # after epochs 1 and 2
    assert res.readout_refits_epoch[0]["train_loss_after"] < res.readout_refits_epoch[0]["train_loss_before"]
    with pytest.raises(ConfigError, match="refit_readout_every must be ≥ 0"):
        Trainer(model, task, "pat", TrainConfig(refit_readout_every=-1))
    with pytest.raises(ConfigError, match="refit_every_max_iter must be ≥ 1"):
        Trainer(model, task, "pat", TrainConfig(refit_every_max_iter=0))


def test_resume_with_epoch_refits_matches_uninterrupted_run(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.02, monitor_physical=False, progress=False, refit_readout_every=1,
                      refit_every_max_iter=20, readout_lr=0.0, refit_l2=0.0)
    full, want, cut = _uninterrupted_and_cut(tmp_path, cfg)
    cut.train(stop_after=2)
    task, model = _setup()
    resumed = Trainer(model, task, "pat", cfg, tmp_path / "cut")
    resumed.train(resume=True)
    _assert_resumed_as_uninterrupted(resumed, full, want, tmp_path / "cut")
    assert _without_seconds(resumed.readout_refits_epoch) == _without_seconds(full.readout_refits_epoch)
    assert [r["epoch"] for r in resumed.readout_refits_epoch] == [1, 2, 3]


def test_a_stop_in_an_epochs_readout_refit_keeps_its_training(tmp_path, monkeypatch):
    """Ctrl-C in the refit after epoch 2 (``refit_readout_every``): the resumed run refits from the features that
    epoch measured, kept in the checkpoint, and does not train epoch 2 again."""
    import pnnkit.training as tr
    from pnnkit.checkpoint import load_checkpoint

    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.02, monitor_physical=False, progress=False, refit_readout_every=1,
                      refit_every_max_iter=20, readout_lr=0.0, refit_l2=0.0)
    full, want, cut = _uninterrupted_and_cut(tmp_path, cfg)
    fit = tr.fit_readout

    def stopped(readout, feats, labels, *a):  # Ctrl-C part-way through the refit after epoch 2
        if cut.epoch == 1:
            fit(readout, feats, labels, 0.0, 3)  # the readout in memory has moved: the checkpoint must not have
            raise KeyboardInterrupt
        return fit(readout, feats, labels, *a)

    monkeypatch.setattr(tr, "fit_readout", stopped)
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    monkeypatch.setattr(tr, "fit_readout", fit)
    pending = load_checkpoint(cut.checkpoint_path)["pending_refit"]
    assert pending["features"].shape == (256, 8) and torch.equal(pending["labels"].sort().values,
                                                                 cut.task.y_train.sort().values)
    task, model = _setup()
    resumed = Trainer(model, task, "pat", cfg, tmp_path / "cut")
    resumed.train(resume=True)
    assert model[1].system.queries == 2 * 256  # epoch 3 only (2 layers per sample): epoch 2 was not trained again
    _assert_resumed_as_uninterrupted(resumed, full, want, tmp_path / "cut")
    assert _without_seconds(resumed.readout_refits_epoch) == _without_seconds(full.readout_refits_epoch)
    assert load_checkpoint(resumed.checkpoint_path)["pending_refit"] is None  # the features leave with the refit


def test_readout_lr_zero_leaves_the_readout_to_the_refits():
    task, model = _setup()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.02, readout_lr=0.0, monitor_physical=False, progress=False)
    Trainer(model, task, "pat", cfg).fit()
    after = model.state_dict()
    assert torch.equal(after["4.weight"], start["4.weight"]) and torch.equal(after["4.bias"], start["4.bias"])
    assert not torch.equal(after["0.weight"], start["0.weight"])  # the rest trained
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert "4.weight" not in changed and changed


def test_monitor_every_measures_the_test_set_every_kth_and_the_last_epoch():
    task, model = _setup()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.02, monitor_every=2, progress=False)
    tr = Trainer(model, task, "pat", cfg)
    res = tr.fit()
    assert ["test_accuracy_physical" in row for row in res.history] == [False, True, True]
    assert res.eval_queries == 2 * 64 * 3  # epochs 2 and 3, then the final evaluation, through both layers
    with pytest.raises(ConfigError, match="monitor_every must be ≥ 1"):
        Trainer(model, task, "pat", TrainConfig(monitor_every=0))


def test_readout_refit_names_what_it_cannot_do():
    from pnnkit.training import refit_readout

    task, model = _setup()
    x, y = task.x_train[:8], task.y_train[:8]
    with pytest.raises(ConfigError, match="nn.Sequential"):
        refit_readout(nn.ModuleList(list(model)), x, y, "in_silico")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no trainable digital parameters after the last physical layer"):
        refit_readout(model[:4], x, y, "in_silico")


def test_a_checkpoint_holding_theta_outside_the_range_or_nan_is_refused_on_resume(tmp_path):
    from pnnkit.checkpoint import load_checkpoint, save_checkpoint

    task, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=64, monitor_physical=False, progress=False)
    Trainer(model, task, "pat", cfg, tmp_path).train(stop_after=1)
    st = load_checkpoint(tmp_path / "checkpoint")
    for value, msg in [(3.0, r"1.theta.J spans \[.*, 3\], outside oscillators's range \[-0.5, 0.5\]"),
                       (math.nan, r"hold NaN or inf in 1.theta.J")]:
        bad = {**st, "model": {**st["model"], "1.theta.J": torch.full_like(st["model"]["1.theta.J"], value)}}
        save_checkpoint(bad, tmp_path / "checkpoint")
        fresh = _setup()[1]
        with pytest.raises(ConfigError, match=rf"^weights .*checkpoint.safetensors(:)? {msg}"):
            Trainer(fresh, task, "pat", cfg, tmp_path).train(resume=True)
        assert fresh[1].system.queries == 0  # refused before any device call


def test_a_damaged_method_log_is_kept_aside_and_resume_goes_on(tmp_path, capsys):
    task, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=64, monitor_physical=False, progress=False)
    Trainer(model, task, "pat", cfg, tmp_path).train(stop_after=1)
    log = tmp_path / "device_log.h5"
    log.write_bytes(log.read_bytes()[:3000])  # truncated (a full disk, a bad copy)
    Trainer(_setup()[1], task, "pat", cfg, tmp_path).fit(resume=True)
    kept = [p.name for p in tmp_path.glob("device_log.*.h5")]
    assert len(kept) == 1 and f"it is kept as {tmp_path / kept[0]} and a new log begins" in capsys.readouterr().err
    resumed = MeasurementLog(log, model[1].system.spec)
    assert len(resumed) > 0  # the resumed epoch's calls, in the new log
    resumed.close()


def test_resuming_a_checkpoint_of_another_network_is_a_one_line_error(tmp_path):
    task, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=64, monitor_physical=False, progress=False)
    Trainer(model, task, "pat", cfg, tmp_path).train(stop_after=1)
    lab = model[1].system
    other = nn.Sequential(nn.Linear(64, 8), PhysicalLayer(lab, lab.ideal_twin()), nn.Linear(8, 10))
    with pytest.raises(ConfigError, match=r"does not fit this network \(Missing key\(s\).*start a new run$"):
        Trainer(other, task, "pat", cfg, tmp_path).train(resume=True)


def test_settings_and_tasks_that_mean_nothing_are_refused_before_any_measurement(tmp_path):
    task, model = _setup()
    lab = model[1].system
    q0 = lab.queries
    for kw, msg in [(dict(batch_size=0), "batch_size must be ≥ 1, got 0"), (dict(epochs=0), "epochs must be ≥ 1"),
                    (dict(lr=-0.5), r"lr must be ≥ 0 \(0 freezes the network\), got -0.5"), (dict(physical_lr=-1.0), "physical_lr must be ≥ 0"),
                    (dict(epochs=2.5), r"^training: option 'epochs' must be int, got 2.5$"),
                    (dict(epochs=True), r"^training: option 'epochs' must be int, got True$"),
                    (dict(lr=math.inf), r"^training: option 'lr' must be a finite number, got inf$"),
                    (dict(weight_decay=-1.0), r"^weight_decay must be ≥ 0, got -1.0$"),
                    (dict(seed=-1), r"^training: option 'seed' must be in 0 … 2\*\*32 − 1, got -1$")]:
        with pytest.raises(ConfigError, match=msg):
            Trainer(model, task, "pat", TrainConfig(progress=False, **kw))
    with pytest.raises(ConfigError, match="'physical' trains only networks without physical layers"):
        Trainer(model, task, "physical", TrainConfig(progress=False))
    bad = load_task("digits")
    bad.y_test = bad.y_test.clone()
    bad.y_test[0] = 10
    with pytest.raises(ConfigError, match=r"test labels must lie in 0 … 9 \(10 classes\), got 0 … 10"):
        Trainer(model, bad, "pat", TrainConfig(progress=False))
    bad = load_task("digits")
    bad.y_train = bad.y_train.float()
    with pytest.raises(ConfigError, match="train labels must be integers"):
        Trainer(model, bad, "pat", TrainConfig(progress=False))
    bad = load_task("digits")
    bad.x_train, bad.y_train = bad.x_train[:0], bad.y_train[:0]
    with pytest.raises(ConfigError, match="the train set is empty"):
        Trainer(model, bad, "pat", TrainConfig(progress=False))
    assert lab.queries == q0
    assert Trainer(model, task, "pat", TrainConfig(epochs="3", progress=False)).cfg.epochs == 3  # converted, as YAML's
    afile = tmp_path / "m3.py"
    afile.write_text("")
    with pytest.raises(ConfigError, match=r"^out_dir .*m3.py is a file, not a directory for the run's logs"):
        Trainer(model, task, "pat", TrainConfig(progress=False), afile)


def test_features_of_another_dtype_are_refused_and_narrow_integer_labels_train_like_int64():
    task, model = _setup()
    lab = model[1].system
    q0 = lab.queries
    bad = load_task("digits")
    bad.x_train = bad.x_train.double()  # torch.as_tensor of a numpy float array gives this
    with pytest.raises(ConfigError, match=r"^task 'digits': x_train is torch.float64 but the network's parameters are "
                                          r"torch.float32 \(convert with x.float\(\)\)$"):
        Trainer(model, bad, "pat", TrainConfig(progress=False))
    assert lab.queries == q0
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.02, seed=0, progress=False)
    results = []
    for dtype in (torch.int64, torch.int32, torch.uint8):  # uint8: what MNIST's IDX files hold
        task, model = _setup()
        task.y_train, task.y_test = task.y_train.to(dtype), task.y_test.to(dtype)
        trainer = Trainer(model, task, "pat", cfg)
        assert trainer.task.y_train.dtype == torch.int64 and task.y_train.dtype == dtype  # the caller's task untouched
        r = trainer.fit()
        results.append((r.test_accuracy, r.confusion))
    assert results[1] == results[0] and results[2] == results[0]
    assert sum(map(sum, results[0][1])) == 64


def test_physical_lr_zero_freezes_theta_while_the_rest_trains():
    task, model = _setup()
    theta0 = {k: v.detach().clone() for k, v in model[1].theta.items()}
    w0 = model[0].weight.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.02, physical_lr=0.0, monitor_physical=False, progress=False)
    Trainer(model, task, "pat", cfg).train()
    assert all(torch.equal(v, theta0[k]) for k, v in model[1].theta.items())
    assert not torch.equal(model[0].weight, w0)


# --- F3: the confusion matrix is oriented (rows = true class) and agrees with the accuracy ----------------------
def test_confusion_matrix_rows_are_true_classes_and_its_trace_is_the_accuracy():
    from pnnkit import ElementwiseRescale, PhysicalLayer, make_lab
    from pnnkit.tasks import load_task
    from pnnkit.training import TrainConfig, Trainer, confusion_matrix

    pred, true = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 2, 2])
    assert confusion_matrix(pred, true, 3) == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    task = load_task("digits")
    task.x_train, task.y_train = task.x_train[:256], task.y_train[:256]
    task.x_test, task.y_test = task.x_test[:64], task.y_test[:64]
    lab = make_lab("oscillators", n=8, unit=1, seed=5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), PhysicalLayer(lab, lab.ideal_twin()), ElementwiseRescale(8), nn.Linear(8, 10))
    res = Trainer(model, task, "in_silico", TrainConfig(epochs=2, batch_size=64, lr=0.02, monitor_physical=False,
                                                        progress=False)).fit()
    cm = torch.tensor(res.confusion)
    assert cm.sum(1).tolist() == torch.bincount(task.y_test, minlength=10).tolist()  # row i: samples of class i
    assert float(cm.trace()) / 64 == pytest.approx(res.test_accuracy)
    assert res.test_accuracy < 1.0  # a matrix counting every prediction as correct would not fit


def test_divergence_names_the_epoch_as_log_csv_counts_it(tmp_path):
    from pnnkit.errors import DivergenceError

    task, model = _setup()
    with torch.no_grad():
        model[4].weight.fill_(math.inf)  # logits ±inf/NaN on the first step of the first epoch
    cfg = TrainConfig(epochs=1, batch_size=64, monitor_physical=False, progress=False)
    with pytest.raises(DivergenceError, match=r"^loss became nan at epoch 1 \(counted as in log.csv, from 1\); "):
        Trainer(model, task, "in_silico", cfg).train()


def test_a_device_failure_while_predicting_or_refitting_leaves_the_model_in_its_training_mode():
    from pnnkit import DeviceError, FunctionSystem, SystemSpec
    from pnnkit.training import predict, refit_readout

    def broken(x, p):
        raise TimeoutError("instrument stopped answering")

    system = FunctionSystem(broken, SystemSpec("dead", 2, 2, -1.0, 1.0))
    model = nn.Sequential(PhysicalLayer(system, lambda x, p: x), nn.Linear(2, 2))
    model.train()
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(DeviceError, match="stopped answering"):
        predict(model, x, "physical")
    assert model.training and model[1].training
    with pytest.raises(DeviceError, match="stopped answering"):
        refit_readout(model, x, y, "physical")
    assert model.training and model[1].training
