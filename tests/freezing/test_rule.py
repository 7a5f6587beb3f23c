"""The freeze rule: a bottom prefix, reasons per entry, thresholds, savings."""

from __future__ import annotations

import pytest

from layerprobe.freezing.rule import Thresholds, recommend


def entries(ckas, drifts=None, n=(100, 10, 10, 10, 10), cis=None):
    names = ["embeddings"] + [f"block.{i}" for i in range(len(ckas) - 1)]
    out = []
    for i, (name, c) in enumerate(zip(names, ckas)):
        e = dict(name=name, kind="embeddings" if i == 0 else "block", n_params=n[i],
                 weight_drift=(drifts[i] if drifts else 0.01), cka=c)
        if cis:
            e["cka_ci"] = cis[i]
        out.append(e)
    return out


def test_prefix_stops_at_first_changed_block():
    # block.2 qualifies again, but sits above block.1 which must train: not frozen
    r = recommend(entries([0.999, 0.97, 0.60, 0.99, 0.4]), Thresholds(min_cka=0.95))
    assert r.freeze == ["embeddings", "block.0"]
    assert r.train == ["block.1", "block.2", "block.3"]
    assert r.reasons["block.0"].startswith("freeze: CKA 0.970")
    assert r.reasons["block.1"].startswith("train: CKA 0.600")
    assert r.reasons["block.2"] == "train: above a block that must train"
    assert r.frozen_param_fraction == pytest.approx(110 / 140)
    assert r.est_compute_saving == pytest.approx(10 / 40)  # block.0 of 4 equal blocks, as the candidates say
    assert r.basis == "cka"


def test_threshold_moves_the_cut():
    e = entries([0.999, 0.97, 0.93, 0.5, 0.4])
    assert recommend(e, Thresholds(min_cka=0.9)).freeze == ["embeddings", "block.0", "block.1"]
    assert recommend(e, Thresholds(min_cka=0.9999)).freeze == []


def test_top_block_always_trains():
    r = recommend(entries([1.0, 1.0, 1.0, 1.0, 1.0]))
    assert r.train == ["block.3"]
    assert "keeping at least 1 block(s) trainable" in r.reasons["block.3"]
    r2 = recommend(entries([1.0, 1.0, 1.0, 1.0, 1.0]), Thresholds(min_train_blocks=2))
    assert r2.train == ["block.2", "block.3"]


def test_interval_lower_bound_is_used():
    cis = [[0.998, 1.0], [0.94, 0.99], [0.5, 0.7], [0.3, 0.5], [0.2, 0.3]]
    e = entries([0.999, 0.97, 0.6, 0.4, 0.3], cis=cis)
    t = Thresholds(min_cka=0.95)
    assert recommend(e, t).freeze == ["embeddings"]
    assert "[0.9400, 0.9900]" in recommend(e, t).reasons["block.0"]
    assert recommend(e, Thresholds(min_cka=0.95, use_interval=False)).freeze == ["embeddings", "block.0"]


def test_drift_guard_and_drift_only():
    e = entries([0.999, 0.99, 0.6, 0.4, 0.3], drifts=[0.001, 0.05, 0.1, 0.1, 0.1])
    assert recommend(e, Thresholds(max_drift=0.01)).freeze == ["embeddings"]
    for x in e:
        x["cka"] = None
    r = recommend(e)
    assert r.freeze == [] and r.basis == "none" and "no freeze advice" in r.notes[0]
    r = recommend(e, Thresholds(max_drift=0.06))
    assert r.basis == "drift" and r.freeze == ["embeddings", "block.0"]


def test_undefined_cka_never_freezes():
    r = recommend(entries([float("nan"), 0.99, 0.99, 0.99, 0.99]))
    assert r.freeze == [] and "undefined" in r.reasons["embeddings"]


def test_other_params_count_in_the_fraction():
    r = recommend(entries([0.999, 0.3, 0.3, 0.3, 0.3]), other_params=60)
    assert r.frozen_param_fraction == pytest.approx(100 / 200)


def _profile(ckas, ci=None):
    names = ["embeddings"] + [f"block.{i}" for i in range(len(ckas) - 1)]
    return [dict(name=n, kind="embeddings" if n == "embeddings" else "block", n_params=10, weight_drift=0.01,
                 cka=c, **({"cka_ci": ci[i]} if ci else {})) for i, (n, c) in enumerate(zip(names, ckas))]


def test_relative_rule_scales_with_the_top_blocks_change():
    from layerprobe.freezing.rule import Thresholds, recommend, top_change

    short = _profile([0.9999, 0.995, 0.97, 0.84, 0.49, 0.29, 0.20])  # top change 0.80
    assert top_change(short) == pytest.approx(0.80)
    t = Thresholds(min_cka=None, max_relative_change=0.05, use_interval=False)  # change <= 0.04
    assert recommend(short, t).freeze == ["embeddings", "block.0", "block.1"]
    # a longer run moves every block twice as far: the absolute rule freezes less, the relative one the same
    longer = _profile([1 - 2 * (1 - c) for c in [0.9999, 0.995, 0.97, 0.84, 0.49, 0.29, 0.20]][:6] + [-0.6])
    assert recommend(longer, t).freeze == ["embeddings", "block.0", "block.1"]
    assert recommend(longer, Thresholds(min_cka=0.95, use_interval=False)).freeze == ["embeddings", "block.0"]
    r = recommend(short, t)
    assert "0.05 x top block's change 0.8000" in r.reasons["block.1"]
    assert r.reasons["block.2"].startswith("train:")


def test_relative_rule_uses_the_interval_and_combines_with_min_cka():
    from layerprobe.freezing.rule import Thresholds, recommend

    e = _profile([0.999, 0.98, 0.5], ci=[[0.998, 1.0], [0.95, 0.99], [0.4, 0.6]])  # top change 0.5
    t = Thresholds(min_cka=None, max_relative_change=0.06)  # change <= 0.03
    assert recommend(e, t).freeze == ["embeddings"]  # block.0: 1 - 0.95 = 0.05 > 0.03 at the lower bound
    assert recommend(e, Thresholds(min_cka=None, max_relative_change=0.06, use_interval=False)).freeze == \
        ["embeddings", "block.0"]
    assert recommend(e, Thresholds(min_cka=0.999, max_relative_change=1.0, use_interval=False)).freeze == \
        ["embeddings"]


@pytest.mark.parametrize("kw", [dict(min_cka=1.5), dict(max_relative_change=-0.1), dict(min_cka=float("nan")),
                                dict(max_drift=-1.0), dict(min_train_blocks=-2)])
def test_thresholds_refuse_nonsense(kw):
    from layerprobe.errors import LayerProbeError
    from layerprobe.freezing.rule import Thresholds

    with pytest.raises(LayerProbeError):
        Thresholds(**kw)


def test_default_rule_is_the_study_fit():
    """The default min_cka is 0.99 on the interval's lower end (the freeze study's RT fit, docs/freeze_study.md)."""
    assert Thresholds() == Thresholds(min_cka=0.99, use_interval=True, min_train_blocks=1)
    e = entries([0.9995, 0.995, 0.985, 0.6, 0.4], cis=[[0.999, 1.0], [0.992, 0.997], [0.98, 0.99], [0.5, 0.7],
                                                       [0.3, 0.5]])
    assert recommend(e).freeze == ["embeddings", "block.0"]  # block.1: lower bound 0.98 < 0.99


def test_reason_prints_the_digits_that_decide():
    """Issue 19 item 10: a bound of 0.98991 was printed "0.990 < 0.99"."""
    e = entries([0.991, 0.5, 0.4, 0.3, 0.2], cis=[[0.98991, 0.993]] + [[0.4, 0.6]] * 4)
    reason = recommend(e, Thresholds(min_cka=0.99)).reasons["embeddings"]
    assert "CKA 0.9910 [0.9899, 0.9930]: lower bound 0.9899 < 0.99" in reason
    e = entries([0.989996, 0.5, 0.4, 0.3, 0.2])
    reason = recommend(e, Thresholds(min_cka=0.99, use_interval=False)).reasons["embeddings"]
    assert "CKA 0.9900 (0.989996) < 0.99" in reason


def test_every_reason_compares_numbers_that_differ_visibly():
    """Issue 19 item 10, for every criterion: the numbers printed on each side of a comparison say the
    same as the numbers compared (drift 0.01000002 read "0.0100 > 0.01"; a relative change of 0.02000001
    read "0.0200 > 0.1 x top block's change 0.2000")."""
    import re

    e = entries([0.999, 0.97, 0.6, 0.4, 0.3], drifts=[0.01000002, 0.0099999, 2e-5, 0.5, 0.5])
    r = recommend(e, Thresholds(min_cka=None, max_drift=0.01, use_interval=False))
    assert "drift 0.01000002 > 0.01" in r.reasons["embeddings"]
    e = entries([0.999, 0.97, 0.6, 0.4, 0.3], drifts=[0.0099999, 0.01000002, 0.5, 0.5, 0.5])
    r = recommend(e, Thresholds(min_cka=None, max_drift=0.01, use_interval=False))
    assert "drift 0.0099999 <= 0.01" in r.reasons["embeddings"]
    r = recommend(entries([0.9999, 0.97999999, 0.7, 0.6, 0.8]),
                  Thresholds(min_cka=None, max_relative_change=0.05, use_interval=False))  # top change 0.4
    assert "change 0.02000001 > 0.05 x top block's change 0.40000000 = 0.02000000" in r.reasons["block.0"]
    for reason in r.reasons.values():  # whatever is printed reads on the side it is on
        for a, op, b in re.findall(r"change ([\d.]+) (<=|>) .*? = ([\d.]+)", reason):
            assert (float(a) <= float(b)) == (op == "<=") and a != b
    e = entries([0.5, 0.4, 0.3, 0.2, 0.1], drifts=[None, 0.1, 0.1, 0.1, 0.1])
    assert "drift undefined" in recommend(e, Thresholds(min_cka=None, max_drift=0.5)).reasons["embeddings"]


@pytest.mark.shipped_default(None)
def test_without_cka_the_note_names_the_rule_that_decided(monkeypatch):
    """Once the prediction is the default rule and its measurement (the revert test) is missing, a weights-only
    comparison is not decided by "the CKA rule": the drift rule (max_drift) decides, or, without it, nothing is
    advised; the note says which."""
    from layerprobe.freezing import predict as pr

    loto = {"tasks": 5, "tasks_ge_985": 5}
    lead = pr.Predictor("revert_disagree", (0.0, 1.0), (0.0, 0.5), (-0.01, 0.004), ("a",), decide="upper", loto=loto)
    fallback = pr.Predictor("drift_rel", (0.0, 1.0), (0.0, 0.1), (-0.01, 0.01), ("a",), loto={**loto, "tasks_ge_985": 4})
    meta = {"default_rule": "predictor", "tolerance_default": 0.01, "validated": True, "fit_on": ["a"]}
    monkeypatch.setattr(pr, "_shipped", lambda: ((lead, fallback), meta))
    monkeypatch.setattr(pr, "shipped_meta", lambda: dict(meta))
    e = entries([0.999, 0.99, 0.6, 0.4, 0.3], drifts=[0.001, 0.05, 0.1, 0.1, 0.1])
    for x in e:
        x["cka"] = None
    r = recommend(e, Thresholds(max_drift=0.06))
    assert r.basis == "drift" and r.freeze == ["embeddings", "block.0"] and r.tolerance is None
    note = next(n for n in r.notes if n.startswith("predicted accuracies from drift_rel"))
    assert "missing here, so the drift rule (max_drift 0.06) decided;" in note and "CKA rule" not in note
    r = recommend(e)
    assert r.basis == "none" and r.freeze == [] and r.tolerance is None
    note = next(n for n in r.notes if n.startswith("predicted accuracies from drift_rel"))
    assert "missing here, so nothing is advised (no CKA, no max_drift);" in note and "CKA rule" not in note
    r = recommend(entries([0.999, 0.99, 0.6, 0.4, 0.3]))  # with CKA: the CKA rule decided, as before
    assert any("missing here, so the CKA rule decided;" in n for n in r.notes)


def test_revert_rows_missing_a_prefix_are_said_to_be_unread():
    """Rows that do not cover every bottom prefix feed no prediction: the note says so (before: "no revert
    predictor is shipped", untrue with a revert predictor shipped first)."""
    from layerprobe.freezing.predict import shipped_lead

    entries = [{"name": "embeddings", "kind": "embeddings", "cka": 1.0, "weight_drift": 0.002, "n_params": 1000}] + [
        {"name": f"block.{i}", "kind": "block", "cka": c, "weight_drift": 0.01, "n_params": 100}
        for i, c in enumerate([0.999, 0.99, 0.9, 0.5])]
    partial = [{"k": k, "kl": 0.0, "agreement": 1.0} for k in range(2)]  # prefixes 0-1 of 0-4
    r = recommend(entries, revert=partial)
    assert r.predictor["name"] != "revert_disagree" or shipped_lead() is None
    notes = [n for n in r.notes if "revert test's rows" in n]
    assert len(notes) == 1 and "do not cover every bottom prefix, so no prediction reads them" in notes[0]
    assert "is shipped" not in notes[0]
