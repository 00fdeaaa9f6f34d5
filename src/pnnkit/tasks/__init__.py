"""Classification tasks (data sets) with fixed, seeded splits.

``load_task(name, **options)`` returns a :class:`ClassificationTask`. Loaders of files take a directory
(``data_dir`` option, else the ``PNNKIT_DATA_DIR`` environment variable) and raise :class:`DataError` naming
where the data comes from when it is missing.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import SEED_LIMIT
from ..errors import ConfigError, DataError
from ..options import check_options, option_names, refuse_unknown


@dataclass
class ClassificationTask:
    """Features ``x`` (float, scaled to about [0, 1] with train-set statistics) and integer labels ``y``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str]
    feature_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def cv_folds(self, k: int = 5, seed: int = 0) -> Iterator["ClassificationTask"]:
        """Stratified ``k``-fold splits of train ∪ test (each fold rescaled with its own train statistics)."""
        from sklearn.model_selection import StratifiedKFold

        x = torch.cat([self.x_train, self.x_test]).numpy()
        y = torch.cat([self.y_train, self.y_test]).numpy()
        raw = self.meta.get("raw_features")
        if raw is not None:
            x = raw
        for i, (tr, te) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y)):
            xtr, xte = minmax_scale(x[tr], x[te])
            yield ClassificationTask(
                f"{self.name}-fold{i}", torch.as_tensor(xtr), torch.as_tensor(y[tr]), torch.as_tensor(xte),
                torch.as_tensor(y[te]), self.classes, self.feature_names, {**self.meta, "fold": i, "raw_features": None},
            )


def minmax_scale(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scale columns to [0, 1] with the train set's min and max (others use the same affine map)."""
    lo, hi = train.min(0), train.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return tuple(((a - lo) / span).astype(np.float32) for a in (train, *others))


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a seeded stratified split with ``n_test`` test samples."""
    from sklearn.model_selection import train_test_split

    n_classes = len(np.unique(y))
    if not (isinstance(n_test, (int, np.integer)) and n_classes <= n_test <= len(y) - n_classes):
        raise ConfigError(f"test_size must be an integer from {n_classes} to {len(y) - n_classes} (every one of the "
                          f"{n_classes} classes in both parts of a stratified split of {len(y)}), got {n_test!r}")
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(te)


def data_dir(explicit: str | Path | None, sub: str, source: str) -> Path:
    """Resolve ``explicit`` or ``$PNNKIT_DATA_DIR/sub``; raise :class:`DataError` naming ``source`` if absent."""
    if explicit is not None:
        if not isinstance(explicit, (str, os.PathLike)):
            raise ConfigError(f"data_dir must be a directory path, got {explicit!r}")
        base = Path(explicit)
    elif os.environ.get("PNNKIT_DATA_DIR"):
        base = Path(os.environ["PNNKIT_DATA_DIR"]) / sub
    else:
        raise DataError(f"no data directory: pass data_dir or set PNNKIT_DATA_DIR (expects {sub}/ inside). {source}")
    if not base.is_dir():
        what = "is a file, not a directory" if base.exists() else "does not exist"
        raise DataError(f"data directory {base} {what}. {source}")
    return base


def _digits(test_size: int = 360, seed: int = 0) -> ClassificationTask:
    """scikit-learn's 8×8 handwritten digits (1,797 images, ships with scikit-learn)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    tr, te = stratified_split(y, test_size, seed)
    xtr, xte = x[tr] / 16.0, x[te] / 16.0
    return ClassificationTask(
        "digits", torch.as_tensor(xtr), torch.as_tensor(y[tr]), torch.as_tensor(xte), torch.as_tensor(y[te]),
        [str(i) for i in range(10)], None, {"source": "sklearn.datasets.load_digits", "seed": seed,
                                           "image_shape": [8, 8], "scaling": "pixel/16"},
    )


_TASKS: dict[str, Callable[..., ClassificationTask]] = {"digits": _digits}
# Task modules imported on first use.
_TASK_MODULES: dict[str, str] = {"vowels": "pnnkit.tasks.vowels", "mnist": "pnnkit.tasks.mnist"}


def register_task(name: str, loader: Callable[..., ClassificationTask]) -> None:
    _TASKS[name] = loader


def task_names() -> list[str]:
    return sorted(set(_TASKS) | set(_TASK_MODULES))


def load_task(name: str, **options: Any) -> ClassificationTask:
    if isinstance(name, str) and name not in _TASKS and name in _TASK_MODULES:
        importlib.import_module(_TASK_MODULES[name])
    if not isinstance(name, str) or name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(task_names())}")
    refuse_unknown(f"task {name!r}", options, option_names(_TASKS[name]))
    options = check_options(f"task {name!r}", _TASKS[name], options)
    seed = options.get("seed", 0)
    if isinstance(seed, int) and not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"task {name!r}: option 'seed' must be in 0 … 2**32 − 1, got {seed}")
    folder = options.get("data_dir")
    if folder is not None and not isinstance(folder, (str, os.PathLike)):  # its annotation is not checked as plain
        raise ConfigError(f"task {name!r}: option 'data_dir' must be a directory path, got {folder!r}")
    try:
        return _TASKS[name](**options)
    except TypeError as e:
        raise ConfigError(f"task {name!r}: {e}") from e
