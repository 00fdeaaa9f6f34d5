"""MNIST handwritten digits from the original IDX files (gzip-compressed or plain).

``load_task("mnist", data_dir=None, downsample=28, crop=28, n_train=None, n_test=None, seed=0)``

* With the 60,000-image training pair (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``) next to
  the 10,000-image test pair (``t10k-…``) the standard 60k/10k split is used.
* With only the test pair (as in CI's ``$PNNKIT_DATA_DIR/mnist-t10k``) its 10,000 images are split by a seeded
  stratified split into 8,000 train / 2,000 test.
* ``crop=c`` keeps the central c×c pixels of the 28×28 image (from row and column ``(28 − c) // 2`` on); MNIST's
  digits are scaled to a 20×20 box and centred by mass, so the outer pixels are nearly always blank (on the
  8,000 training images of the default split, the central 24×24 holds 99.7 % of the ink).
* ``downsample=d`` averages pixel areas of the (cropped) image down to d×d (``adaptive_avg_pool2d``; exact block
  means when d divides the side, e.g. 28 → 14 gives 196 features, overlapping areas otherwise); d = c keeps all.
  ``n_train`` / ``n_test`` take seeded stratified subsets (the task's ``meta["split"]`` names their sizes).
* ``validation=n`` holds out a seeded stratified ``n`` of the *training* images and returns them as the task's
  evaluation set (the test images are not in the returned task): for choosing a design or hyperparameters without looking at
  the test set. ``n_train`` then subsets the remaining training images. ``validation_seed`` draws that held-out set
  with its own seed (default: ``seed``) while the train / test split stays the one ``seed`` gives: a fresh
  validation set for a new design study, the test images still untouched.

Features are pixel / 255 in [0, 1] (float32, row-major d×d), labels int64 0–9.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import SEED_LIMIT
from ..errors import ConfigError, DataError
from . import ClassificationTask, register_task, stratified_split
from . import data_dir as resolve_data_dir

SOURCE = (
    "MNIST (LeCun, Cortes & Burges) comes as four IDX files, e.g. from https://yann.lecun.com/exdb/mnist/ or "
    "its mirrors (https://ossci-datasets.s3.amazonaws.com/mnist/): put t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (and optionally the train-… pair) in the directory."
)
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
SIDE = 28


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or plain) into a uint8 array of its declared shape; malformed → :class:`DataError`.

    IDX: 2 zero bytes, a type byte (0x08 = unsigned byte; the only type MNIST uses), a byte with the number of
    dimensions, then each dimension as a big-endian uint32, then the data in row-major order.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:  # type: ignore[operator]
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic number 0x{magic:08x})")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(f"{path}: magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    size = int(np.prod(shape))
    if len(raw) - offset != size:
        raise DataError(f"{path}: header declares shape {shape} ({size} bytes) but holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem, f"{stem.replace('-idx', '.idx')}.gz", stem.replace("-idx", ".idx")):
        p = directory / name
        if p.is_file():
            return p
    return None


def _read_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    img_p, lab_p = _find(directory, f"{prefix}-images-idx3-ubyte"), _find(directory, f"{prefix}-labels-idx1-ubyte")
    if img_p is None and lab_p is None:
        return None
    if img_p is None or lab_p is None:
        have = (img_p or lab_p).name  # type: ignore[union-attr]
        missing = "labels" if lab_p is None else "images"
        raise DataError(f"{directory}: found {have} but not its {missing} file. {SOURCE}")
    images = read_idx(img_p, IMAGES_MAGIC)
    labels = read_idx(lab_p, LABELS_MAGIC)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{img_p}: images are {images.shape[1:]}, MNIST has {SIDE}×{SIDE}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_p.name} holds {images.shape[0]} images but {lab_p.name} {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lab_p}: labels must be digits 0–9, found {int(labels.max())}")
    return images, labels.astype(np.int64), [img_p.name, lab_p.name]


def _features(images: np.ndarray, downsample: int, crop: int = SIDE) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if crop != SIDE:
        o = (SIDE - crop) // 2
        x = x[:, o:o + crop, o:o + crop]
    if downsample != crop:
        x = F.adaptive_avg_pool2d(x.unsqueeze(1), downsample).squeeze(1)
    return x.reshape(x.shape[0], -1).contiguous()


def _subset(y: np.ndarray, n: int | None, seed: int, what: str) -> np.ndarray:
    """Indices of a seeded stratified subset of ``n`` samples (all when ``n`` is None or ≥ len)."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    if n < 1:
        raise ConfigError(f"mnist: {what} must be ≥ 1, got {n}")
    counts = np.bincount(y)
    if n < (counts > 0).sum():
        raise ConfigError(f"mnist: {what}={n} is smaller than the number of classes; cannot stratify")
    _, idx = stratified_split(y, n, seed)
    return idx


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    downsample: int = SIDE,
    crop: int = SIDE,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    test_size: int | None = None,
    validation: int | None = None,
    validation_seed: int | None = None,
) -> ClassificationTask:
    """MNIST as a :class:`ClassificationTask` (see the module docstring). ``test_size``: held-out images when only
    the 10k test pair is present (default 20 %: 2,000 → 8,000/2,000). ``validation``: evaluate on that many
    held-out training images instead of the test set, drawn with ``validation_seed`` (default ``seed``). ``crop``:
    side of the central square kept before downsampling (pixels of the 28×28 image)."""
    if not 1 <= int(crop) <= SIDE:
        raise ConfigError(f"mnist: crop must be in 1…{SIDE}, got {crop}")
    crop = int(crop)
    if not 1 <= int(downsample) <= crop:
        raise ConfigError(f"mnist: downsample must be in 1…{crop} (the crop's side), got {downsample}")
    downsample = int(downsample)
    directory = resolve_data_dir(data_dir, "mnist-t10k", SOURCE)
    test = _read_pair(directory, "t10k")
    train = _read_pair(directory, "train")
    if test is None and train is None:
        raise DataError(f"no MNIST IDX files in {directory}. {SOURCE}")
    if test is None:
        raise DataError(f"{directory} has the MNIST training files but not the t10k test pair. {SOURCE}")
    if train is not None:
        (xtr, ytr, ftr), (xte, yte, fte) = train, test
        split = f"standard {len(ytr)}/{len(yte)} (train files / t10k files)"
        files = ftr + fte
    else:
        images, labels, files = test
        if test_size is None:
            test_size = max(1, round(0.2 * len(labels)))
        n_cls = int((np.bincount(labels) > 0).sum())
        if not n_cls <= test_size <= len(labels) - n_cls:
            raise ConfigError(
                f"mnist: test_size must be in {n_cls}…{len(labels) - n_cls} for {len(labels)} images of {n_cls} "
                f"classes (stratified split), got {test_size}"
            )
        tr, te = stratified_split(labels, test_size, seed)
        xtr, ytr, xte, yte = images[tr], labels[tr], images[te], labels[te]
        split = f"stratified {len(tr)}/{len(te)} of the t10k set (seed {seed})"
    if validation is not None:
        n_cls = int((np.bincount(ytr) > 0).sum())
        if not n_cls <= validation <= len(ytr) - n_cls:
            raise ConfigError(
                f"mnist: validation must be in {n_cls}…{len(ytr) - n_cls} for {len(ytr)} training images, got {validation}"
            )
        vseed = seed if validation_seed is None else int(validation_seed)
        if not 0 <= vseed < SEED_LIMIT:
            raise ConfigError(f"mnist: validation_seed must be in 0 … 2**32 − 1, got {vseed}")
        tr, va = stratified_split(ytr, validation, vseed)
        xtr, ytr, xte, yte = xtr[tr], ytr[tr], xtr[va], ytr[va]
        split += f"; evaluation on {len(va)} held-out training images (validation, seed {vseed}), test set unused"
    elif validation_seed is not None:
        raise ConfigError("mnist: validation_seed needs validation (the number of held-out training images)")
    itr, ite = _subset(ytr, n_train, seed, "n_train"), _subset(yte, n_test, seed, "n_test")
    evaluated = "held-out" if validation is not None else "test"
    taken = [f"{key} = {len(i)} of the {len(y)} {what} images" for key, what, i, y in
             (("n_train", "training", itr, ytr), ("n_test", evaluated, ite, yte)) if len(i) < len(y)]
    if taken:  # the split says how many images the run used, not only where they came from
        split += f"; subsets used (seeded, stratified, seed {seed}): {', '.join(taken)}"
    xtr, ytr, xte, yte = xtr[itr], ytr[itr], xte[ite], yte[ite]
    return ClassificationTask(
        "mnist",
        _features(xtr, downsample, crop),
        torch.from_numpy(ytr.copy()),
        _features(xte, downsample, crop),
        torch.from_numpy(yte.copy()),
        [str(i) for i in range(10)],
        None,
        {"source": str(directory), "files": files, "split": split, "seed": seed, "downsample": downsample,
         "crop": crop, "image_shape": [downsample, downsample], "scaling": "pixel/255"},
    )


register_task("mnist", load_mnist)
