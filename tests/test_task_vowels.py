"""Hillenbrand (1995) vowel task loader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from pnnkit.errors import ConfigError, DataError
from pnnkit.tasks import load_task
from pnnkit.tasks.vowels import FEATURES, PAPER_VOWELS, read_vowdata

DATA = Path(os.environ.get("PNNKIT_DATA_DIR", SHARED_DATA))
HAVE_DATA = (DATA / "hillenbrand1995" / "vowdata.dat").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"Hillenbrand data not present under {DATA}/hillenbrand1995")

HEADER = "(c) 1995 James Hillenbrand\n\nFilenames:\ncol1: filename\n\n  1    2   3    4\n"
GOOD = "w01ae 300 220  800 2000 2900 4000  800 2000 2900  810 1990 2900  820 1980 2910\n"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNNKIT_DATA_DIR", str(DATA))


@needs_data
def test_paper_subset(env: None) -> None:
    t = load_task("vowels")
    assert t.classes == list(PAPER_VOWELS)
    assert t.feature_names == list(FEATURES)
    assert t.x_train.shape == (210, 12) and t.x_test.shape == (49, 12)
    assert t.meta["class_counts"] == [37] * 7
    assert np.bincount(t.y_test.numpy()).tolist() == [7] * 7
    assert float(t.x_train.min()) == 0.0 and float(t.x_train.max()) == 1.0
    # every token is a woman's, no zero formant in the raw features
    assert all(tok.startswith("w") for tok in t.meta["tokens_train"] + t.meta["tokens_test"])
    raw = t.meta["raw_features"]
    assert raw.shape == (259, 12) and (raw > 0).all()
    # raw features are train then test, and scaling them with the train rows reproduces x
    lo, hi = raw[:210].min(0), raw[:210].max(0)
    np.testing.assert_allclose((raw[210:] - lo) / (hi - lo), t.x_test.numpy(), rtol=1e-5, atol=1e-6)
    # formant order is sane: F1 < F2 < F3 at steady state
    assert (raw[:, 0] < raw[:, 1]).all() and (raw[:, 1] < raw[:, 2]).all()


@needs_data
def test_known_token_values(env: None) -> None:
    names, table = read_vowdata(DATA / "hillenbrand1995" / "vowdata.dat")
    assert len(names) == 1668 and table.shape == (1668, 15)
    row = table[names.index("m01ae")]  # first record of the file
    assert row[:5].tolist() == [323, 174, 663, 2012, 2659]


@needs_data
def test_seeded_and_deterministic(env: None) -> None:
    a, b, c = load_task("vowels", seed=0), load_task("vowels", seed=0), load_task("vowels", seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.meta["tokens_test"] != c.meta["tokens_test"]


@needs_data
def test_cv_folds_stratified(env: None) -> None:
    t = load_task("vowels")
    folds = list(t.cv_folds(5))
    assert len(folds) == 5
    assert sum(len(f.y_test) for f in folds) == 259
    for f in folds:
        counts = np.bincount(f.y_test.numpy(), minlength=7)
        assert counts.min() >= 7 and counts.max() <= 8
        assert float(f.x_train.min()) == 0.0 and float(f.x_train.max()) == 1.0


@needs_data
def test_options(env: None) -> None:
    men = load_task("vowels", talkers="men")
    assert all(tok.startswith("m") for tok in men.meta["tokens_train"])
    full = load_task("vowels", talkers="all", vowels="all", balance=False)
    assert full.n_classes == 12
    n = len(full.y_train) + len(full.y_test)
    assert 1400 < n < 1668  # tokens with a zero formant dropped
    unbalanced = load_task("vowels", balance=False)
    assert len(unbalanced.y_train) + len(unbalanced.y_test) > 259
    with pytest.raises(ConfigError):
        load_task("vowels", vowels=["ae", "xx"])
    with pytest.raises(ConfigError):
        load_task("vowels", talkers="robots")
    # a test split too small to hold every class is refused by the rule the split itself needs (7 vowels)
    with pytest.raises(ConfigError, match="^test_size must be an integer from 7 to 252 \\(every one of the 7 classes"):
        load_task("vowels", test_size=3)


def test_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PNNKIT_DATA_DIR", raising=False)
    # each case says what is wrong, and every message names where the data come from
    with pytest.raises(DataError, match=r"^no data directory: pass data_dir or set PNNKIT_DATA_DIR.*Hillenbrand"):
        load_task("vowels")
    with pytest.raises(DataError, match=r"^data directory .*nowhere does not exist.*Hillenbrand"):
        load_task("vowels", data_dir=tmp_path / "nowhere")
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match=r"^data directory .*afile is a file, not a directory.*section 'Data sets'"):
        load_task("vowels", data_dir=tmp_path / "afile")
    with pytest.raises(DataError, match=r"^vowel data file .*vowdata\.dat not found.*Hillenbrand"):
        load_task("vowels", data_dir=tmp_path)  # directory exists, file missing


@pytest.mark.parametrize(
    "bad",
    [
        "w01ah 300 220  800 2000 2900 4000  800 2000 2900  810 1990 2900  820 1980\n",  # a column short
        "w01ah 300 220  800 2000 2900 4000  800 2OOO 2900  810 1990 2900  820 1980 2910\n",  # letter O
        "w01ah 300 220  800 2000 2900 4000  800 -200 2900  810 1990 2900  820 1980 2910\n",  # negative
        "garbage in the middle\n",
    ],
)
def test_malformed_file(tmp_path: Path, bad: str) -> None:
    (tmp_path / "vowdata.dat").write_text(HEADER + GOOD + bad + GOOD.replace("w01ae", "w02ae"))
    with pytest.raises(DataError, match=r"line 8: malformed.*Hillenbrand"):
        load_task("vowels", data_dir=tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "vowdata.dat").write_text(HEADER)
    with pytest.raises(DataError, match="no vowel records"):
        load_task("vowels", data_dir=tmp_path)


def test_synthetic_file_parses(tmp_path: Path) -> None:
    rows = []
    for i, v in enumerate(PAPER_VOWELS):
        for t in range(1, 6):
            f1 = 300 + 60 * i + t
            rows.append(f"w{t:02d}{v} 250 200 {f1} {f1 + 1000} {f1 + 2000} 0 {f1} {f1 + 1000} {f1 + 2000} "
                        f"{f1} {f1 + 1000} {f1 + 2000} {f1} {f1 + 1000} {f1 + 2000}\r\n")
    (tmp_path / "vowdata.dat").write_text(HEADER + "".join(rows))
    t = load_task("vowels", data_dir=tmp_path, test_size=7)  # F4 = 0 is not a feature: nothing dropped
    assert len(t.y_train) + len(t.y_test) == 35
