"""Training-batch augmentation: exact geometry, range, determinism, errors, and its use in the Trainer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pnnkit.augment import RandomAffine
from pnnkit.errors import ConfigError, ShapeError
from pnnkit.tasks import ClassificationTask, load_task
from pnnkit.training import TrainConfig, Trainer


def _img(h: int = 6, w: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h * w, generator=torch.Generator().manual_seed(seed))


def test_one_pixel_shift_moves_every_pixel_by_one_column():
    aug = RandomAffine((6, 5), shift=1.0)
    x = _img()
    theta = torch.tensor([[1.0, 0.0, 2 / 5], [0.0, 1.0, 0.0]]).expand(3, 2, 3)  # +1 pixel in x (2/W units)
    out = aug.apply(x, theta).view(3, 6, 5)
    img = x.view(3, 6, 5)
    torch.testing.assert_close(out[:, :, :-1], img[:, :, 1:], atol=1e-6, rtol=0)  # sampled one column to the right
    torch.testing.assert_close(out[:, :, -1], torch.zeros(3, 6), atol=1e-6, rtol=0)  # zero background
    down = aug.apply(x, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 2 / 6]]).expand(3, 2, 3)).view(3, 6, 5)
    torch.testing.assert_close(down[:, :-1], img[:, 1:], atol=1e-6, rtol=0)


def test_identity_matrix_and_disabled_augmentation_return_the_images():
    x = _img()
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 2, 3)
    torch.testing.assert_close(RandomAffine((6, 5)).apply(x, eye), x, atol=1e-6, rtol=0)
    assert RandomAffine((6, 5))(x, torch.Generator()) is x


@settings(max_examples=25, deadline=None)
@given(st.floats(0, 3), st.floats(0, 30), st.floats(0, 0.3), st.integers(0, 10_000))
def test_distorted_pixels_stay_in_the_original_range(shift, rotate, scale, seed):
    x = _img(seed=seed)
    out = RandomAffine((6, 5), shift, rotate, scale)(x, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= float(x.max()) + 1e-6


def test_each_sample_gets_its_own_distortion_and_a_seed_repeats_it():
    x = _img()[:1].expand(4, 30).contiguous()  # four copies of one image
    aug = RandomAffine((6, 5), shift=1.0, rotate=15.0, scale=0.1)
    a = aug(x, torch.Generator().manual_seed(3))
    assert not torch.allclose(a[0], a[1])
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))


def test_bad_settings_and_shapes_give_one_line_errors():
    with pytest.raises(ConfigError, match="scale < 1"):
        RandomAffine((6, 5), scale=1.5)
    with pytest.raises(ConfigError, match="shift ≥ 0"):
        RandomAffine((6, 5), shift=-1.0)
    with pytest.raises(ShapeError, match="6×5 = 30 features"):
        RandomAffine((6, 5), shift=1.0)(torch.zeros(2, 31), torch.Generator())


def _tiny(task):
    task.x_train, task.y_train = task.x_train[:128], task.y_train[:128]
    task.x_test, task.y_test = task.x_test[:64], task.y_test[:64]
    torch.manual_seed(0)
    return task, nn.Sequential(nn.Linear(task.n_features, 16), nn.ReLU(), nn.Linear(16, 10))


def test_trainer_distorts_training_batches_only():
    cfg = dict(epochs=2, batch_size=32, lr=0.01, progress=False, monitor_physical=False)
    task, model = _tiny(load_task("digits"))
    x_test = task.x_test.clone()
    seen: list[torch.Tensor] = []
    model[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if m.training else None)
    Trainer(model, task, "physical", TrainConfig(**cfg, augment={"shift": 1.0, "rotate": 10.0})).fit()
    first = task.x_train[torch.randperm(128, generator=torch.Generator().manual_seed(0))[:32]]  # epoch 0's batch
    assert seen[0].shape == first.shape and not torch.allclose(seen[0], first)
    assert torch.equal(task.x_test, x_test)

    seen.clear()
    task, model = _tiny(load_task("digits"))
    model[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if m.training else None)
    Trainer(model, task, "physical", TrainConfig(**cfg)).fit()
    assert torch.equal(seen[0], first)


def test_augmenting_a_task_without_images_is_a_config_error():
    d = load_task("digits")
    task, model = _tiny(ClassificationTask("features", d.x_train, d.y_train, d.x_test, d.y_test, d.classes))
    with pytest.raises(ConfigError, match="augment needs an image task"):
        Trainer(model, task, "physical", TrainConfig(epochs=1, progress=False, augment={"shift": 1.0}))
    with pytest.raises(ConfigError, match="unknown setting"):
        Trainer(model, load_task("digits"), "physical", TrainConfig(epochs=1, progress=False, augment={"shear": 1.0}))


def test_experiment_refuses_augmenting_a_non_image_task_before_using_the_lab(tmp_path, monkeypatch):
    from pnnkit import experiments
    from pnnkit.config import validate_config

    d = load_task("digits")
    monkeypatch.setattr(experiments, "load_task", lambda name, **kw: ClassificationTask(
        "features", d.x_train, d.y_train, d.x_test, d.y_test, d.classes))
    monkeypatch.setattr(experiments, "build_lab", lambda cfg: pytest.fail("the lab was built"))
    cfg = validate_config({"name": "x", "training": {"augment": {"shift": 1.0}}})
    with pytest.raises(ConfigError, match="augment needs an image task"):
        experiments.run_experiment(cfg, tmp_path)
