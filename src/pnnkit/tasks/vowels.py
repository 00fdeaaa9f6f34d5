"""Hillenbrand et al. (1995) vowels: formant features of American English vowels (the paper's SHG-PNN task).

Default subset (Wright et al., Nature 2022): 7 vowels (ae ah aw uw er iy ih) spoken by the women, 12 features
(F1, F2, F3 at steady state and at 20 %, 50 %, 80 % of the vowel), tokens with any unmeasurable (zero) formant
dropped, classes balanced to 37 tokens by a seeded choice (259 tokens), a seeded stratified 210 / 49 split.
Features are min–max scaled with the training split; the raw features (train then test, same order) are kept in
``meta["raw_features"]`` so :meth:`ClassificationTask.cv_folds` rescales every fold with its own statistics.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from . import ClassificationTask, data_dir, minmax_scale, register_task, stratified_split

SOURCE = (
    "The vowel data come from Hillenbrand, Getty, Clark & Wheeler, J. Acoust. Soc. Am. 97, 3099 (1995) "
    "(vowdata.dat, distributed freely by J. Hillenbrand); README.md, section 'Data sets', says where to get it."
)
ALL_VOWELS = ("ae", "ah", "aw", "eh", "ei", "er", "ih", "iy", "oa", "oo", "uh", "uw")
PAPER_VOWELS = ("ae", "ah", "aw", "uw", "er", "iy", "ih")
TALKERS = {"women": "w", "men": "m", "boys": "b", "girls": "g"}
# vowdata.dat columns after the filename: duration, f0, F1-F4 at steady state, F1-F3 at 20 %, 50 %, 80 %
COLUMNS = ("duration", "f0", "F1_ss", "F2_ss", "F3_ss", "F4_ss",
           "F1_20", "F2_20", "F3_20", "F1_50", "F2_50", "F3_50", "F1_80", "F2_80", "F3_80")
FEATURES = ("F1_ss", "F2_ss", "F3_ss", "F1_20", "F2_20", "F3_20", "F1_50", "F2_50", "F3_50",
            "F1_80", "F2_80", "F3_80")
_NAME = re.compile(r"^([mwbg])(\d\d)([a-z]{2})$")


def read_vowdata(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Parse ``vowdata.dat``: token names and a (tokens, 15) integer array of the columns in :data:`COLUMNS`.

    The free-text header ends at the first data line; every non-blank line after it must be a token name followed
    by 15 non-negative integers, else :class:`DataError` (with the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"vowel data file {path} not found. {SOURCE}")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}. {SOURCE}") from e
    names: list[str] = []
    rows: list[list[int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if not names and not _NAME.match(parts[0]):
            continue  # header
        if not _NAME.match(parts[0]) or len(parts) != 1 + len(COLUMNS) or not all(p.isdigit() for p in parts[1:]):
            raise DataError(
                f"{path}, line {lineno}: malformed record {line.strip()[:60]!r} (expected a token name such as "
                f"'w01ae' and {len(COLUMNS)} non-negative integers). {SOURCE}"
            )
        if _NAME.match(parts[0]).group(3) not in ALL_VOWELS:  # type: ignore[union-attr]
            raise DataError(f"{path}, line {lineno}: unknown vowel code in {parts[0]!r}. {SOURCE}")
        names.append(parts[0])
        rows.append([int(p) for p in parts[1:]])
    if not names:
        raise DataError(f"{path} contains no vowel records. {SOURCE}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate token names. {SOURCE}")
    return names, np.asarray(rows, dtype=np.int64)


def load_vowels(
    data_dir: str | Path | None = None,
    talkers: str | list[str] | tuple[str, ...] = "women",
    vowels: str | list[str] | tuple[str, ...] = PAPER_VOWELS,
    balance: bool = True,
    test_size: int = 49,
    seed: int = 0,
) -> ClassificationTask:
    """Load the Hillenbrand vowel task.

    Args:
        data_dir: directory holding ``vowdata.dat`` (default ``$PNNKIT_DATA_DIR/hillenbrand1995``).
        talkers: ``"women"`` (default, the paper), ``"men"``, ``"boys"``, ``"girls"``, ``"adults"``, ``"children"``,
            ``"all"``, or a list of these groups.
        vowels: list of vowel codes (default the paper's 7, in the order ae ah aw uw er iy ih) or ``"all"`` (12).
        balance: subsample every class to the size of the smallest one (seeded), as the paper does.
        test_size: number of test tokens in the stratified split (49 for the paper's 210 / 49).
        seed: seed of the balancing choice and of the split.
    """
    for option, value in (("talkers", talkers), ("vowels", vowels)):
        if not (isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"task 'vowels': {option} must be a name or a list of names, got {value!r}")
    d = _resolve_dir(data_dir)
    names, table = read_vowdata(d / "vowdata.dat")
    groups = _talker_groups(talkers)
    vowel_list = list(ALL_VOWELS) if vowels == "all" else [vowels] if isinstance(vowels, str) else list(vowels)
    bad = [v for v in vowel_list if v not in ALL_VOWELS]
    if bad or not vowel_list or len(set(vowel_list)) != len(vowel_list):
        raise ConfigError(f"vowels must be distinct codes from {list(ALL_VOWELS)} or 'all'; got {vowels!r}")
    cols = [COLUMNS.index(f) for f in FEATURES]
    feats, labels, kept = [], [], []
    for name, row in zip(names, table):
        m = _NAME.match(name)
        assert m is not None
        if m.group(1) not in groups or m.group(3) not in vowel_list:
            continue
        f = row[cols]
        if (f == 0).any():
            continue
        feats.append(f)
        labels.append(vowel_list.index(m.group(3)))
        kept.append(name)
    if not feats:
        raise DataError(f"no vowel tokens left for talkers={talkers!r}, vowels={vowel_list} in {d}. {SOURCE}")
    x = np.asarray(feats, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    tokens = np.asarray(kept)
    counts = np.bincount(y, minlength=len(vowel_list))
    if (counts == 0).any():
        missing = [vowel_list[i] for i in np.flatnonzero(counts == 0)]
        raise DataError(f"no usable tokens of vowel(s) {missing} for talkers={talkers!r} in {d}. {SOURCE}")
    rng = np.random.default_rng(seed)
    if balance:
        n_per = int(counts.min())
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n_per, replace=False)
                                       for c in range(len(vowel_list))]))
        x, y, tokens = x[keep], y[keep], tokens[keep]
    tr, te = stratified_split(y, test_size, seed)  # refuses a test_size that leaves a class out of either part
    xtr, xte = minmax_scale(x[tr], x[te])
    raw = np.concatenate([x[tr], x[te]]).astype(np.float32)
    meta = {
        "source": "Hillenbrand et al. 1995, vowdata.dat",
        "data_dir": str(d),
        "talkers": talkers if isinstance(talkers, str) else list(talkers),
        "balance": balance,
        "seed": seed,
        "class_counts": np.bincount(y, minlength=len(vowel_list)).tolist(),
        "raw_features": raw,
        "tokens_train": tokens[tr].tolist(),
        "tokens_test": tokens[te].tolist(),
    }
    return ClassificationTask(
        "vowels", torch.as_tensor(xtr), torch.as_tensor(y[tr]), torch.as_tensor(xte), torch.as_tensor(y[te]),
        vowel_list, list(FEATURES), meta,
    )


def _resolve_dir(explicit: str | Path | None) -> Path:
    return data_dir(explicit, "hillenbrand1995", SOURCE)


def _talker_groups(talkers: str | list[str] | tuple[str, ...]) -> set[str]:
    alias = {"all": ["women", "men", "boys", "girls"], "adults": ["women", "men"], "children": ["boys", "girls"]}
    items = [talkers] if isinstance(talkers, str) else list(talkers)
    out: set[str] = set()
    for t in items:
        for g in alias.get(t, [t]):
            if g not in TALKERS:
                raise ConfigError(
                    f"unknown talker group {t!r}; choose from {sorted(TALKERS) + sorted(alias)}"
                )
            out.add(TALKERS[g])
    if not out:
        raise ConfigError("talkers must name at least one group")
    return out


register_task("vowels", load_vowels)
