"""compare depth: bootstrap intervals, cross-layer maps, token-level, estimators, undefined cases,
anatomy ranks — in the library, the JSON and the CLI."""

from __future__ import annotations

import copy
import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_bert
from layerprobe.options import CKAOptions
from layerprobe import compare, take_snapshot
from layerprobe.cli import main
from layerprobe.errors import LayerProbeError
from layerprobe.metrics import (
    CKAUndefinedWarning,
    bootstrap_cka,
    cka_maps,
    cka_matrix,
    debiased_cka,
    linear_cka,
    rbf_cka,
)
from test_compare import NAMES, perturbed


@pytest.fixture(scope="module")
def snaps(tokenizer, texts):
    base, tuned = tiny_bert(0), perturbed([2, 3])
    return (take_snapshot(base, tokenizer, texts, progress=False),
            take_snapshot(tuned, tokenizer, texts, progress=False))


@pytest.fixture(scope="module")
def token_snaps(tokenizer, texts):
    base, tuned = tiny_bert(0), perturbed([3])
    kw = dict(pooling="tokens", max_tokens=5, progress=False)
    return take_snapshot(base, tokenizer, texts, **kw), take_snapshot(tuned, tokenizer, texts, **kw)


def with_rep(snap, name, value):
    s = copy.copy(snap)
    s.representations = dict(snap.representations)
    r = s.representations[name].clone()
    r[:] = value
    s.representations[name] = r
    return s


# ---------------------------------------------------------------- bootstrap intervals


def test_ci_per_entry_deterministic_and_in_frame(snaps):
    a, b = snaps
    c1 = compare(a, b, cka_options=CKAOptions(ci=True, n_boot=300, seed=3))
    c2 = compare(a, b, cka_options=CKAOptions(ci=True, n_boot=300, seed=3))
    assert c1.to_json() == c2.to_json()  # seeded
    for e in c1.blocks:
        lo, hi = e["cka_ci"]
        assert 0.0 <= lo <= hi <= 1.0
        assert lo - 1e-9 <= e["cka"] <= hi + 1e-9 or hi - lo < 1e-6
        assert (lo, hi) == pytest.approx(bootstrap_cka(a.representations[e["name"]], b.representations[e["name"]],
                                                       n_boot=300, seed=3), abs=0)
    df = c1.to_frame()
    assert {"cka_low", "cka_high"} <= set(df.columns) and df["cka_low"].notna().all()
    d = json.loads(c1.to_json())
    assert d["meta"]["ci"]["n_boot"] == 300 and d["meta"]["ci"]["level"] == 0.95
    assert all(len(e["cka_ci"]) == 2 for e in d["blocks"])
    c3 = compare(a, b, cka_options=CKAOptions(ci=True, n_boot=300, seed=4))
    # another seed: the same interval up to resampling noise (where the jackknife floor is wider than
    # the recentred bootstrap, as here, it does not move at all)
    for e3, e1 in zip(c3.blocks, c1.blocks):
        assert e3["cka_ci"] == pytest.approx(e1["cka_ci"], abs=0.02)


def test_ci_defaults_on_for_small_probes_and_can_be_turned_off(snaps):
    a, b = snaps
    assert all("cka_ci" in e for e in compare(a, b, cka_options=CKAOptions(n_boot=50)).blocks)
    off = compare(a, b, cka_options=CKAOptions(ci=False))
    assert all("cka_ci" not in e for e in off.blocks) and off.meta["ci"] is None
    assert "cka_ci" not in compare(a, b, cka_options=CKAOptions(estimator="debiased")).blocks[0]  # auto: linear only


def test_ci_reason_uses_lower_bound(snaps):
    a, b = snaps
    c = compare(a, b, cka_options=CKAOptions(ci=True, n_boot=200))
    frozen = c.recommendation.freeze
    assert frozen, "the untouched bottom entries should qualify"
    why = c.recommendation.reasons[frozen[0]]
    e = next(x for x in c.blocks if x["name"] == frozen[0])
    assert why == (f"freeze: CKA {e['cka']:.4f} [{e['cka_ci'][0]:.4f}, {e['cka_ci'][1]:.4f}]: "
                   f"lower bound {e['cka_ci'][0]:.4f} >= 0.99")  # the default min_cka


def test_ci_only_for_linear(snaps):
    with pytest.raises(LayerProbeError, match="linear"):
        compare(*snaps, cka_options=CKAOptions(estimator="rbf", ci=True))


# ---------------------------------------------------------------- cross-layer maps


def test_cross_layer_maps_match_independent_computation(snaps):
    a, b = snaps
    c = compare(a, b, cka_options=CKAOptions(cross_layer=True, ci=False))
    x = c.to_dict()["cross_layer"]
    assert x["names"] == NAMES and x["estimator"] == "linear"
    xa = [a.representations[n] for n in NAMES]
    xb = [b.representations[n] for n in NAMES]
    np.testing.assert_allclose(x["base_vs_tuned"], cka_matrix(xa, xb), atol=1e-12)
    np.testing.assert_allclose(x["base"], cka_matrix(xa), atol=1e-12)
    np.testing.assert_allclose(x["tuned"], cka_matrix(xb), atol=1e-12)
    np.testing.assert_allclose(np.diag(x["base_vs_tuned"]), [e["cka"] for e in c.blocks], atol=1e-12)
    np.testing.assert_allclose(np.diag(x["base"]), 1.0)
    m = np.array(x["tuned"])
    np.testing.assert_allclose(m, m.T)
    # pairwise against linear_cka, and base != tuned where blocks were perturbed
    assert x["base_vs_tuned"][1][3] == pytest.approx(linear_cka(xa[1], xb[3]), abs=1e-12)
    assert not np.allclose(x["base"], x["tuned"])
    assert "cross_layer" in json.loads(c.to_json())
    assert "cross_layer" not in compare(a, b, cka_options=CKAOptions(ci=False)).to_dict()


def test_cka_maps_equals_three_cka_matrix_calls():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((40, 7)) for _ in range(3)]
    ys = [np.tanh(x @ rng.standard_normal((7, 5))) for x in xs]
    m = cka_maps(xs, ys)
    np.testing.assert_allclose(m["xy"], cka_matrix(xs, ys), atol=1e-13)
    np.testing.assert_allclose(m["xx"], cka_matrix(xs), atol=1e-13)
    np.testing.assert_allclose(m["yy"], cka_matrix(ys), atol=1e-13)
    big = [rng.standard_normal((12, 30)) for _ in range(2)]  # Gram branch (n <= width)
    np.testing.assert_allclose(cka_maps(big, big)["xy"], cka_matrix(big, big), atol=1e-13)


def test_cross_layer_without_representations_is_a_note(bert):
    c = compare(bert, bert, cka_options=CKAOptions(cross_layer=True))
    assert c.cross_layer is None and any("cross-layer" in n for n in c.recommendation.notes)


# ---------------------------------------------------------------- token level


def test_token_level_ci_resamples_examples_and_cross_layer_works(token_snaps):
    a, b = token_snaps
    assert a.token_examples is not None and a.representations["block.0"].shape[0] > len(set(a.token_examples.tolist()))
    c = compare(a, b, cka_options=CKAOptions(ci=True, n_boot=200, cross_layer=True))
    assert c.meta["pooling"] == "tokens" and "token" in c.meta["ci"]["resample_unit"]
    e = c.blocks[-1]
    ra, rb = a.representations[e["name"]], b.representations[e["name"]]
    grouped = bootstrap_cka(ra, rb, n_boot=200, groups=a.token_examples.numpy())
    assert tuple(e["cka_ci"]) == pytest.approx(grouped, abs=0)
    rows = bootstrap_cka(ra, rb, n_boot=200)
    assert tuple(e["cka_ci"]) != pytest.approx(rows, abs=1e-12)  # example-level, not row-level
    assert (grouped[1] - grouped[0]) >= 0.0
    assert c.to_dict()["cross_layer"]["names"] == NAMES
    assert e["cka"] == pytest.approx(linear_cka(ra, rb), abs=1e-12)


# ---------------------------------------------------------------- estimators


@pytest.mark.parametrize("name,fn", [("debiased", debiased_cka), ("rbf", rbf_cka), ("linear", linear_cka)])
def test_estimators(snaps, name, fn):
    a, b = snaps
    c = compare(a, b, cka_options=CKAOptions(estimator=name, ci=False))
    assert c.meta["estimator"] == name == json.loads(c.to_json())["meta"]["estimator"]
    for e in c.blocks:
        assert e["cka"] == pytest.approx(fn(a.representations[e["name"]], b.representations[e["name"]]), abs=1e-12)
    if name != "linear":
        assert any("calibrated for linear" in n for n in c.recommendation.notes)


def test_unknown_estimator(snaps):
    with pytest.raises(LayerProbeError, match="unknown estimator"):
        compare(*snaps, cka_options=CKAOptions(estimator="cosine"))


# ---------------------------------------------------------------- undefined cases


@pytest.mark.parametrize("value,what", [(1.5, "constant (zero-variance)"), (float("nan"), "NaN/Inf")])
def test_undefined_entry_is_nan_with_warning_never_a_number(snaps, value, what):
    a, b = snaps
    bad = with_rep(b, "block.1", value)
    with pytest.warns(CKAUndefinedWarning, match=r"block\.1") as rec:
        c = compare(a, bad, cka_options=CKAOptions(n_boot=50, cross_layer=True))
    assert any(what in str(w.message) for w in rec)
    e = c.blocks[2]
    assert e["name"] == "block.1" and math.isnan(e["cka"]) and what in e["cka_undefined"]
    d = json.loads(c.to_json())
    assert d["blocks"][2]["cka"] is None and d["blocks"][2]["cka_ci"] == [None, None]
    assert d["cross_layer"]["base_vs_tuned"][2][2] is None
    assert "CKA undefined" in c.recommendation.reasons["block.1"]
    assert "block.1" not in c.recommendation.freeze
    assert c.blocks[1]["cka"] == pytest.approx(1.0, abs=1e-9)  # the others are still measured
    with pytest.raises(LayerProbeError, match=r"block\.1 of B: CKA is undefined"):
        compare(a, bad, on_undefined="raise")


def test_cli_undefined_is_one_line_exit_2(snaps, tmp_path, capsys):
    a, b = snaps
    a.save(tmp_path / "A.pt")
    with_rep(b, "block.3", 0.0).save(tmp_path / "B.pt")
    rc = main(["compare", str(tmp_path / "A.pt"), str(tmp_path / "B.pt"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "constant (zero-variance) representation in block.3 of" in err and "B.pt" in err
    assert "CKA is undefined" in err


# ---------------------------------------------------------------- anatomy


def test_groups_carry_ranks_and_rank_param(snaps, tmp_path, capsys):
    a, b = snaps
    c = compare(a, b, cka_options=CKAOptions(ci=False))
    g = c.blocks[-1]["groups"]["attn.q"]
    assert g["rank90"] >= 1 and g["stable_rank"] >= 1.0 and g["rank_param"].endswith("query.weight")
    from layerprobe.results.render import render

    g["weight_drift"] = 10.0  # make it the most-moved group: the table shows it with its rank
    assert f"attn.q (rank90 {g['rank90']})" in render(c, "table")
    a.save(tmp_path / "A.pt")
    b.save(tmp_path / "B.pt")
    out = tmp_path / "out"
    rc = main(["compare", str(tmp_path / "A.pt"), str(tmp_path / "B.pt"), "--quiet", "--cross-layer",
               "--out", str(out), "--n-boot", "100"])
    text = capsys.readouterr().out
    assert rc == 0 and "most-moved group" in text and "lower bound" in text
    with open(out / "groups.csv") as f:
        header = next(csv.reader(f))
    assert {"stable_rank", "rank90", "rank_param"} <= set(header)
    with open(out / "cross_layer.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(NAMES) ** 2 and rows[0]["map"] == "base_vs_tuned"
    assert (out / "cross_layer.png").stat().st_size > 1000
    d = json.loads((out / "comparison.json").read_text())
    assert d["cross_layer"]["names"] == NAMES and all(len(e["cka_ci"]) == 2 for e in d["blocks"])
    assert d["meta"]["estimator"] == "linear"
    # the JSON contract of issue 2 is intact
    assert {"index", "name", "kind", "cka", "weight_drift", "n_params"} <= set(d["blocks"][0])
    assert {"freeze", "train", "frozen_param_fraction", "reasons", "thresholds"} <= set(d["recommendation"])


def test_cli_flags_no_ci_and_estimator(snaps, tmp_path, capsys):
    a, b = snaps
    a.save(tmp_path / "A.pt")
    b.save(tmp_path / "B.pt")
    rc = main(["compare", str(tmp_path / "A.pt"), str(tmp_path / "B.pt"), "--quiet", "--no-ci",
               "--estimator", "debiased", "--format", "json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["meta"]["estimator"] == "debiased" and "cka_ci" not in d["blocks"][0]
    rc = main(["compare", str(tmp_path / "A.pt"), str(tmp_path / "B.pt"), "--quiet", "--ci",
               "--estimator", "rbf"])
    assert rc == 2 and "linear" in capsys.readouterr().err


def test_plot_cross_layer_from_dict_only(tmp_path):
    from layerprobe.results.plots import plot_cross_layer

    d = {"cross_layer": {"names": ["e", "b0"], "base_vs_tuned": [[1.0, 0.5], [0.4, None]],
                         "base": [[1.0, 0.3], [0.3, 1.0]], "tuned": [[1.0, 0.2], [0.2, 1.0]]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CKAUndefinedWarning)
        fig = plot_cross_layer(d, tmp_path / "x.png")
    assert len(fig.axes) >= 3 and (tmp_path / "x.png").stat().st_size > 0


def test_linear_cka_never_modifies_its_input():
    import torch

    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((30, 4)) + 5.0
    t64 = torch.from_numpy(x64.copy())
    t32 = t64.float()
    before = [x64.copy(), t64.clone(), t32.clone()]
    linear_cka(x64, t64)
    linear_cka(t32, t64)
    cka_matrix([x64, t32, t64])
    for a, b in zip([x64, t64, t32], before):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_estimator_nan_is_named_never_silent(snaps):
    a, b = snaps
    # rows duplicated so that more than half the pairwise distances are 0: rbf bandwidth undefined (five
    # distinct rows are left, enough for CKA to be defined at all)
    a2, b2 = copy.copy(a), copy.copy(b)
    a2.representations = {k: v.clone() for k, v in a.representations.items()}
    b2.representations = {k: v.clone() for k, v in b.representations.items()}
    for s in (a2, b2):
        r = s.representations["block.2"]
        r[1:-4] = r[0]
    with pytest.warns(CKAUndefinedWarning, match=r"rbf CKA of block\.2 is undefined"):
        c = compare(a2, b2, cka_options=CKAOptions(estimator="rbf"))
    assert math.isnan(c.blocks[3]["cka"]) and "block.2" in c.blocks[3]["cka_undefined"]
    with pytest.raises(LayerProbeError, match=r"block\.2"):
        compare(a2, b2, cka_options=CKAOptions(estimator="rbf"), on_undefined="raise")


def test_cli_token_level_ci_and_cross_layer(token_snaps, tmp_path, capsys):
    a, b = token_snaps
    a.save(tmp_path / "A.pt")
    b.save(tmp_path / "B.pt")
    rc = main(["compare", str(tmp_path / "A.pt"), str(tmp_path / "B.pt"), "--quiet", "--cross-layer",
               "--n-boot", "100", "--format", "json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["meta"]["pooling"] == "tokens"
    assert "token" in d["meta"]["ci"]["resample_unit"] and all(len(e["cka_ci"]) == 2 for e in d["blocks"])
    assert d["cross_layer"]["names"] == NAMES and len(d["cross_layer"]["base"]) == len(NAMES)


def test_constant_up_to_rounding_is_caught_by_the_one_check(snaps):
    """A representation constant up to float64 rounding gets the same message as an exact constant."""
    a, b = snaps
    bad = with_rep(b, "block.2", 1e3)
    rep = bad.representations["block.2"]
    bad.representations["block.2"] = rep + 1e-12 * torch.rand(rep.shape, dtype=rep.dtype,
                                                              generator=torch.Generator().manual_seed(0))
    assert not bool((bad.representations["block.2"] - bad.representations["block.2"][:1]).abs().amax() == 0)
    with pytest.raises(LayerProbeError, match=r"constant \(zero-variance\) representation in block\.2 of B"):
        compare(a, bad, on_undefined="raise")
