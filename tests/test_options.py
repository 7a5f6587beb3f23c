"""options: defaults in one place, validation on construction, the old keywords still work."""

from __future__ import annotations

import pytest

from conftest import tiny_bert
from layerprobe import CKAOptions, ProbeOptions, compare, take_snapshot
from layerprobe.errors import LayerProbeError


def test_defaults_and_validation():
    assert ProbeOptions().settle() == ProbeOptions("mean", 128, None, 32)
    assert ProbeOptions(max_length=64).settle({"pooling": "first", "max_length": 64}).pooling == "first"
    with pytest.raises(LayerProbeError, match="unknown pooling 'avg'"):
        ProbeOptions(pooling="avg")
    with pytest.raises(LayerProbeError, match="batch_size must be a positive integer, got 0"):
        ProbeOptions(batch_size=0)
    with pytest.raises(LayerProbeError, match="unknown estimator 'cosine'"):
        CKAOptions(estimator="cosine")
    with pytest.raises(LayerProbeError, match="0 < ci_level < 1"):
        CKAOptions(ci_level=1.5)
    with pytest.raises(Exception):  # frozen
        CKAOptions().seed = 3  # type: ignore[misc]


def test_compare_takes_the_option_objects_only(bert, tokenizer, texts):
    """The older spelling (the options' fields as keywords of compare) is gone (issue 18): one way to say it."""
    other = tiny_bert(1)
    kw = dict(probe_options=ProbeOptions(pooling="tokens", max_tokens=4, max_length=16),
              cka_options=CKAOptions(n_boot=50, seed=3, ci=True))
    old = compare(bert, other, texts, tokenizer, **kw)
    new = compare(bert, other, texts, tokenizer, **kw)
    assert old.to_json() == new.to_json()
    assert old.meta["pooling"] == "tokens" and old.meta["ci"]["n_boot"] == 50 and old.meta["ci"]["seed"] == 3
    for name, value in (("seed", 4), ("max_length", 16), ("pooling", "mean"), ("ci", False)):
        with pytest.raises(TypeError, match=name):
            compare(bert, other, texts, tokenizer, **{name: value})


def test_pooling_given_against_a_snapshot_is_refused_not_replaced(bert, tokenizer, texts):
    snap = take_snapshot(bert, tokenizer, texts, pooling="mean")
    # not set: follows the snapshot, as before
    c = compare(snap, tiny_bert(1), texts, tokenizer)
    assert c.meta["pooling"] == "mean"
    # set and contradicting side A's snapshot: an error before any model runs (was silently replaced)
    with pytest.raises(LayerProbeError, match="pooling='first' was asked for but snapshot A was taken with "
                                              "pooling='mean'"):
        compare(snap, tiny_bert(1), texts, tokenizer, probe_options=ProbeOptions(pooling="first"))


def test_n_boot_is_bounded_at_and_over():
    """was: --n-boot 1000000 accepted (minutes of resampling)."""
    from layerprobe.options import MAX_N_BOOT

    assert CKAOptions(n_boot=MAX_N_BOOT).n_boot == MAX_N_BOOT == 10_000
    for bad in (MAX_N_BOOT + 1, 1_000_000, 0, 2.5, True):
        with pytest.raises(LayerProbeError, match=r"n_boot must be an integer in \[1, 10,000\]"):
            CKAOptions(n_boot=bad)


def test_cli_n_boot_bound(capsys):
    from layerprobe.cli import main

    assert main(["compare", "a.pt", "b.pt", "--n-boot", "10001"]) == 2  # refused before the inputs are read
    err = capsys.readouterr().err
    assert "--n-boot must be in [0, 10,000], got 10001" in err and len(err.splitlines()) == 1
