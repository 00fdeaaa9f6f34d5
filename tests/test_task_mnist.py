"""MNIST IDX loader: the shared 10k test set and tiny synthetic IDX files (gzip / plain, 60k-style, corrupt)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from pnnkit.errors import ConfigError, DataError
from pnnkit.tasks import load_task, stratified_split
from pnnkit.tasks.mnist import read_idx

SHARED = Path(os.environ.get("PNNKIT_DATA_DIR", SHARED_DATA))
needs_mnist = pytest.mark.skipif(
    not (SHARED / "mnist-t10k" / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST t10k files not in {SHARED}/mnist-t10k (set PNNKIT_DATA_DIR)",
)


def write_idx(path: Path, arr: np.ndarray, *, magic: int | None = None, compress: bool = True) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    magic = magic if magic is not None else (0x0800 | arr.ndim)
    raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels  # lets a test trace each image back to its label
    return images, labels


def make_dir(root: Path, *, n_test: int = 60, n_train: int | None = None, compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    xi, yi = synthetic(n_test, 0)
    write_idx(root / "t10k-images-idx3-ubyte", xi, compress=compress)
    write_idx(root / "t10k-labels-idx1-ubyte", yi, compress=compress)
    if n_train:
        xt, yt = synthetic(n_train, 1)
        write_idx(root / "train-images-idx3-ubyte", xt, compress=compress)
        write_idx(root / "train-labels-idx1-ubyte", yt, compress=compress)
    return root


# --- the real 10k test set -------------------------------------------------------------------------------
@needs_mnist
def test_shared_t10k_split_8000_2000(monkeypatch) -> None:
    monkeypatch.setenv("PNNKIT_DATA_DIR", str(SHARED))
    t = load_task("mnist")
    assert t.x_train.shape == (8000, 784) and t.x_test.shape == (2000, 784)
    assert t.x_train.dtype == torch.float32 and t.y_train.dtype == torch.int64
    assert float(t.x_train.min()) == 0.0 and float(t.x_train.max()) == 1.0
    assert t.n_classes == 10
    # stratified: each class's share of the test set matches its share of all 10k within one image
    counts_all = torch.bincount(torch.cat([t.y_train, t.y_test]), minlength=10).double()
    counts_te = torch.bincount(t.y_test, minlength=10).double()
    assert counts_all.sum() == 10000
    assert (counts_te - counts_all * 0.2).abs().max() <= 1.0
    again = load_task("mnist")
    assert torch.equal(again.y_test, t.y_test) and torch.equal(again.x_test, t.x_test)
    other = load_task("mnist", seed=1)
    assert not torch.equal(other.y_test, t.y_test)


@needs_mnist
def test_shared_downsample_and_subsets(monkeypatch) -> None:
    monkeypatch.setenv("PNNKIT_DATA_DIR", str(SHARED))
    full = load_task("mnist", n_train=300, n_test=100)
    small = load_task("mnist", downsample=14, n_train=300, n_test=100)
    assert full.x_train.shape == (300, 784) and small.x_train.shape == (300, 196) and small.x_test.shape == (100, 196)
    assert torch.equal(full.y_train, small.y_train)
    # 2×2 area averaging: each 14×14 pixel is the mean of its block, so image means are preserved
    blocks = full.x_train.reshape(300, 14, 2, 14, 2).mean((2, 4)).reshape(300, 196)
    assert torch.allclose(small.x_train, blocks, atol=1e-6)
    assert torch.bincount(small.y_train, minlength=10).min() >= 25  # stratified: ≈ 30 per class


@needs_mnist
def test_validation_holds_out_training_images_and_never_loads_the_test_split(monkeypatch) -> None:
    monkeypatch.setenv("PNNKIT_DATA_DIR", str(SHARED))
    t = load_task("mnist")
    v = load_task("mnist", validation=1000)
    assert v.x_train.shape == (7000, 784) and v.x_test.shape == (1000, 784)
    rows = lambda x: {tuple(r) for r in (x * 255).round().to(torch.int64).tolist()}  # noqa: E731
    train_rows, test_rows = rows(t.x_train), rows(t.x_test)
    # every validation and remaining training image comes from the 8,000 training images, none from the test split
    assert rows(v.x_test) <= train_rows and rows(v.x_train) <= train_rows
    assert not rows(v.x_test) & test_rows and not rows(v.x_test) & rows(v.x_train)
    assert torch.bincount(v.y_test, minlength=10).min() >= 85  # stratified: ≈ 100 per class
    assert "validation" in v.meta["split"]
    with pytest.raises(ConfigError, match="validation must be in"):
        load_task("mnist", validation=5)
    # another validation seed: other held-out images, from the same 8,000 training images (the test split unchanged)
    w = load_task("mnist", validation=1000, validation_seed=1)
    assert w.x_train.shape == (7000, 784) and rows(w.x_test) <= train_rows and not rows(w.x_test) & test_rows
    assert len(rows(w.x_test) & rows(v.x_test)) < 300  # ≈ 1,000 · 1,000/8,000 = 125 shared by chance
    assert "validation, seed 1" in w.meta["split"] and "t10k set (seed 0)" in w.meta["split"]
    assert torch.equal(load_task("mnist", validation=1000, validation_seed=0).x_test, v.x_test)  # default: seed
    with pytest.raises(ConfigError, match="validation_seed needs validation"):
        load_task("mnist", validation_seed=1)
    with pytest.raises(ConfigError, match="validation_seed must be in"):
        load_task("mnist", validation=1000, validation_seed=-1)


# --- synthetic IDX files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_synthetic_t10k_only(tmp_path, compress) -> None:
    d = make_dir(tmp_path / "m", n_test=50, compress=compress)
    t = load_task("mnist", data_dir=d, test_size=10)
    assert t.x_train.shape == (40, 784) and t.x_test.shape == (10, 784)
    assert torch.bincount(t.y_test, minlength=10).tolist() == [1] * 10
    # features are pixel/255 and stay with their labels
    assert torch.allclose(t.x_train[:, 0] * 255, t.y_train.float(), atol=1e-4)
    assert "stratified 40/10" in t.meta["split"]


def test_synthetic_60k_style_train_pair_uses_standard_split(tmp_path) -> None:
    d = make_dir(tmp_path / "m", n_test=20, n_train=60)
    t = load_task("mnist", data_dir=d)
    assert t.x_train.shape == (60, 784) and t.x_test.shape == (20, 784)
    xi, yi = synthetic(60, 1)
    assert torch.equal(t.y_train, torch.as_tensor(yi, dtype=torch.int64))
    assert torch.allclose(t.x_train, torch.as_tensor(xi.reshape(60, -1) / 255.0, dtype=torch.float32))
    assert t.meta["split"].startswith("standard 60/20")
    sub = load_task("mnist", data_dir=d, n_train=30, n_test=10, downsample=7)
    assert sub.x_train.shape == (30, 49) and sub.x_test.shape == (10, 49)
    assert torch.bincount(sub.y_train, minlength=10).tolist() == [3] * 10


def test_crop_keeps_the_central_square_before_downsampling(tmp_path) -> None:
    d = make_dir(tmp_path / "m", n_test=20, n_train=60)
    xi, _ = synthetic(60, 1)
    full = load_task("mnist", data_dir=d)
    assert full.meta["crop"] == 28
    same = load_task("mnist", data_dir=d, crop=28)
    assert torch.equal(same.x_train, full.x_train)
    c = load_task("mnist", data_dir=d, crop=24, downsample=24)  # no downsampling: exactly pixels 2…25
    assert c.x_train.shape == (60, 576) and c.meta["crop"] == 24 and c.meta["image_shape"] == [24, 24]
    want = torch.as_tensor(xi[:, 2:26, 2:26].reshape(60, -1) / 255.0, dtype=torch.float32)
    assert torch.allclose(c.x_train, want)
    c12 = load_task("mnist", data_dir=d, crop=24, downsample=12)  # 2 × 2 block means of the crop
    blocks = xi[:, 2:26, 2:26].reshape(60, 12, 2, 12, 2).mean((2, 4)) / 255.0
    assert torch.allclose(c12.x_train, torch.as_tensor(blocks.reshape(60, -1), dtype=torch.float32), atol=1e-6)
    odd = load_task("mnist", data_dir=d, crop=23, downsample=23)  # odd margin: the far side loses the extra row/column
    assert torch.allclose(odd.x_train, torch.as_tensor(xi[:, 2:25, 2:25].reshape(60, -1) / 255.0, dtype=torch.float32))
    with pytest.raises(ConfigError, match="crop must be in 1…28"):
        load_task("mnist", data_dir=d, crop=29)
    with pytest.raises(ConfigError, match=r"downsample must be in 1…20 \(the crop's side\), got 24"):
        load_task("mnist", data_dir=d, crop=20, downsample=24)


def test_corrupted_magic_number(tmp_path) -> None:
    d = make_dir(tmp_path / "m")
    xi, _ = synthetic(60, 0)
    write_idx(d / "t10k-images-idx3-ubyte", xi, magic=0x00000903)
    with pytest.raises(DataError, match="magic"):
        load_task("mnist", data_dir=d)
    write_idx(d / "t10k-images-idx3-ubyte", xi)
    _, yi = synthetic(60, 0)
    write_idx(d / "t10k-labels-idx1-ubyte", yi.reshape(60, 1, 1))  # a valid IDX file, but 3-D: not a label file
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        load_task("mnist", data_dir=d)
    write_idx(d / "t10k-labels-idx1-ubyte", yi, magic=0x00000C01)  # int32 type code
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        load_task("mnist", data_dir=d)


def test_malformed_files(tmp_path) -> None:
    p = tmp_path / "x-idx1-ubyte"
    write_idx(p, np.arange(10), compress=False)
    assert read_idx(p, 0x801).tolist() == list(range(10))
    p.write_bytes(p.read_bytes()[:-3])  # truncated
    with pytest.raises(DataError, match="holds 7 bytes"):
        read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(p)
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")
    d = make_dir(tmp_path / "m", n_test=20)
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(19) % 10)  # count mismatch
    with pytest.raises(DataError, match="20 images but"):
        load_task("mnist", data_dir=d)
    write_idx(d / "t10k-labels-idx1-ubyte", np.full(20, 12))
    with pytest.raises(DataError, match="0–9"):
        load_task("mnist", data_dir=d)


def test_missing_files_name_the_source(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^no MNIST IDX files in .*empty.*t10k-images-idx3-ubyte\.gz"):
        load_task("mnist", data_dir=empty)
    with pytest.raises(DataError, match="does not exist"):
        load_task("mnist", data_dir=tmp_path / "nowhere")
    monkeypatch.delenv("PNNKIT_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="PNNKIT_DATA_DIR"):
        load_task("mnist")
    d = make_dir(tmp_path / "m")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="found t10k-images-idx3-ubyte.gz but not its labels file"):
        load_task("mnist", data_dir=d)


def test_bad_options(tmp_path) -> None:
    d = make_dir(tmp_path / "m")
    with pytest.raises(ConfigError):
        load_task("mnist", data_dir=d, downsample=0)
    with pytest.raises(ConfigError):
        load_task("mnist", data_dir=d, n_train=3)  # fewer than the 10 classes
    with pytest.raises(ConfigError):
        load_task("mnist", data_dir=d, test_size=5)
    with pytest.raises(ConfigError):
        load_task("mnist", data_dir=d, bogus=1)


def test_the_split_names_the_subsets_taken(tmp_path) -> None:
    """meta["split"] (results.json's experiment.split) says how many images n_train / n_test kept."""
    d = make_dir(tmp_path / "m", n_test=100)
    full = load_task("mnist", data_dir=d, test_size=20)
    assert full.meta["split"] == "stratified 80/20 of the t10k set (seed 0)"
    sub = load_task("mnist", data_dir=d, test_size=20, n_train=30, n_test=10)
    assert sub.meta["split"] == ("stratified 80/20 of the t10k set (seed 0); subsets used (seeded, stratified, "
                                 "seed 0): n_train = 30 of the 80 training images, n_test = 10 of the 20 test images")
    assert load_task("mnist", data_dir=d, test_size=20, n_test=50).meta["split"] == full.meta["split"]  # all kept
    val = load_task("mnist", data_dir=d, test_size=20, validation=20, n_test=10)
    assert val.meta["split"].endswith("n_test = 10 of the 20 held-out images") and val.x_test.shape[0] == 10
    # the images chosen are the ones the subsets always took: a seeded stratified draw from the full split
    _, idx = stratified_split(full.y_train.numpy(), 30, 0)
    assert torch.equal(sub.x_train, full.x_train[torch.as_tensor(idx)])
