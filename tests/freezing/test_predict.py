"""Predicting what freezing each bottom prefix costs: features, the shipped predictors, the advice."""

from __future__ import annotations

import json
import math

import pytest

from layerprobe.errors import LayerProbeError
from layerprobe.freezing import predict as pr

CKA = [1.0, 0.999, 0.99, 0.9, 0.5]
DRIFT = [0.002, 0.01, 0.01, 0.02, 0.04]


def _entries(cka=CKA, drift=DRIFT, ci=None):
    out = [{"name": "embeddings", "kind": "embeddings", "cka": cka[0], "weight_drift": drift[0], "n_params": 1000}]
    out += [{"name": f"block.{i}", "kind": "block", "cka": c, "weight_drift": d, "n_params": 100}
            for i, (c, d) in enumerate(zip(cka[1:], drift[1:]))]
    if ci is not None:
        for e, (lo, hi) in zip(out, ci):
            e["cka_ci"] = [lo, hi]
    return out


def test_features_are_prefix_maxima_on_the_pessimistic_end():
    # block.1's lower bound 0.98 is the pessimistic end; a lower bound above the point is not used
    ci = [(1.0, 1.0), (0.9995, 0.9999), (0.98, 0.995), (0.95, 0.92), (0.45, 0.55)]
    f = pr.prefix_features(_entries(ci=ci))
    assert f["cka_abs"] == pytest.approx([0.0, 0.001, 0.02, 0.1, 0.55])
    assert f["cka_rel"] == pytest.approx([0.0, 0.001 / 0.55, 0.02 / 0.55, 0.1 / 0.55, 1.0])
    assert f["drift_rel"] == pytest.approx([0.05, 0.25, 0.25, 0.5, 1.0])
    assert "revert_kl" not in f
    rev = [{"k": k, "kl": 0.001 * k, "agreement": 1 - 0.01 * k} for k in range(5)]
    f = pr.prefix_features(_entries(), rev)
    assert f["revert_kl"] == pytest.approx([0.0, 0.001, 0.002, 0.003, 0.004])
    assert f["revert_disagree"] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    # an incomplete revert test is not used; weights-only entries give drift alone
    assert "revert_kl" not in pr.prefix_features(_entries(), rev[:3])
    weights_only = [{k: v for k, v in e.items() if k != "cka"} for e in _entries()]
    assert set(pr.prefix_features(weights_only)) == {"drift_rel"}


LINEAR = pr.Predictor("cka_rel", (0.0, 1.0), (0.0, 0.1), (-0.005, 0.01), ("rt", "bbc"))


def test_advice_is_the_largest_prefix_within_tolerance_with_every_smaller_one():
    preds, advised, used = pr.predict_prefixes(_entries(), tolerance=0.01, predictor=LINEAR)
    assert used is LINEAR
    # cka_rel per prefix 0, 0.002, 0.02, 0.2 (block.3 must train: min_train_blocks=1)
    assert [p.freeze[-1] for p in preds] == ["embeddings", "block.0", "block.1", "block.2"]
    assert [round(p.predicted_rel_acc, 6) for p in preds] == [1.0, 0.9998, 0.998, 0.98]
    assert preds[2].interval == pytest.approx([0.998 - 0.01, 0.998 + 0.005])
    assert [p.within_tolerance for p in preds] == [True, True, True, False]
    assert advised == 2
    assert pr.predict_prefixes(_entries(), tolerance=0.05, predictor=LINEAR)[1] == 3
    assert pr.predict_prefixes(_entries(), tolerance=0.0, predictor=LINEAR)[1] == 0
    # a prefix above one that fails is never advised
    bumpy = pr.Predictor("cka_rel", (0.0, 0.001, 0.01, 1.0), (0.0, 0.05, 0.0, 0.0), (0.0, 0.0), ("x",))
    assert pr.predict_prefixes(_entries(), predictor=bumpy)[1] == 0


def test_savings_memory_and_compute():
    preds, _, _ = pr.predict_prefixes(_entries(), predictor=LINEAR)
    # 12 bytes (gradient + AdamW moments) per frozen fp32 parameter
    assert preds[0].memory_saved_mb == pytest.approx(1000 * 12 / 2 ** 20)
    assert preds[2].memory_saved_mb == pytest.approx(1200 * 12 / 2 ** 20)
    # default step cost: blocks by parameter count, the embedding lookup ~free
    assert [p.compute_saved for p in preds] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    cost = [0.05, 0.2, 0.2, 0.2, 0.2]
    preds, _, _ = pr.predict_prefixes(_entries(), predictor=LINEAR, step_cost=cost)
    assert [p.compute_saved for p in preds] == pytest.approx([0.05, 0.25, 0.45, 0.65])
    with pytest.raises(LayerProbeError, match="step_cost has 2 values for 5 entries"):
        pr.predict_prefixes(_entries(), predictor=LINEAR, step_cost=[0.1, 0.2])


@pytest.mark.parametrize("bad", [-0.01, 1.0, math.nan, "0.01", True, None])
def test_tolerance_is_checked(bad):
    with pytest.raises(LayerProbeError, match="tolerance must be a number in"):
        pr.predict_prefixes(_entries(), tolerance=bad, predictor=LINEAR)


def test_nothing_to_predict_from_advises_nothing():
    entries = [{"name": e["name"], "kind": e["kind"], "n_params": e["n_params"]} for e in _entries()]
    preds, advised, used = pr.predict_prefixes(entries)
    assert used is None and advised == -1
    assert all(math.isnan(p.predicted_rel_acc) and p.basis == "none" for p in preds)
    with pytest.raises(LayerProbeError, match="'revert_kl' predictor needs measurements"):
        pr.predict_prefixes(_entries(), predictor=pr.Predictor("revert_kl", (0.0,), (0.0,), (0.0, 0.0), ("x",)))


def test_the_shipped_ranking_picks_the_best_available(tmp_path, monkeypatch):
    path = tmp_path / "predictor.json"
    path.write_text(json.dumps({"schema": 1, "fit_on": ["a", "b", "c"], "predictors": [
        {"name": "revert_kl", "xs": [0, 1], "ys": [0, 0.2], "interval": [-0.01, 0.01], "fit_on": ["a", "b", "c"]},
        {"name": "drift_rel", "xs": [0, 1], "ys": [0, 0.1], "interval": [-0.01, 0.01], "fit_on": ["a", "b"]}]}))
    monkeypatch.setattr(pr, "PREDICTOR_FILE", str(path))
    pr._shipped.cache_clear()
    try:
        assert pr.default_predictor(pr.prefix_features(_entries())).name == "drift_rel"
        rev = [{"k": k, "kl": 0.0, "agreement": 1.0} for k in range(5)]
        p = pr.default_predictor(pr.prefix_features(_entries(), rev))
        assert p.name == "revert_kl" and p.fit_on == ("a", "b", "c")
    finally:
        pr._shipped.cache_clear()


def test_the_shipped_file_loads_and_is_monotone():
    preds, meta = pr._shipped()
    assert preds and meta["fit_on"]
    for p in preds:
        assert len(p.xs) == len(p.ys) >= 1
        assert all(b >= a for a, b in zip(p.xs, p.xs[1:])) and all(b >= a for a, b in zip(p.ys, p.ys[1:]))
        assert p.interval[0] <= 0 <= p.interval[1] or p.interval[0] <= p.interval[1]
        assert set(p.fit_on) <= set(meta["fit_on"])


def test_recommend_follows_the_prediction_when_a_tolerance_is_given(monkeypatch):
    from layerprobe.freezing.rule import Thresholds, recommend

    monkeypatch.setattr(pr, "default_predictor", lambda feats: LINEAR)
    r = recommend(_entries(), tolerance=0.01)
    assert r.freeze == ["embeddings", "block.0", "block.1"] and r.train == ["block.2", "block.3"]
    assert r.tolerance == 0.01 and r.predictor["name"] == "cka_rel" and r.predictor["fit_on"] == ["rt", "bbc"]
    assert r.reasons["block.1"].startswith("freeze: predicted 99.8% [98.8%, 100.3%] of full fine-tuning")
    assert r.reasons["block.2"].startswith("train: predicted 98.0%") and r.reasons["block.2"].endswith("< 99.0%")
    assert r.reasons["block.3"] == "train: at least 1 block(s) always train"
    assert [c["freeze"][-1] for c in r.candidates] == ["embeddings", "block.0", "block.1", "block.2"]
    assert r.candidates[1]["predicted_rel_acc"] == pytest.approx(0.9998)
    # without a tolerance the CKA rule decides (the shipped fit is preliminary) and the candidates inform
    r = recommend(_entries(), Thresholds(min_cka=0.95))
    assert r.freeze == ["embeddings", "block.0", "block.1"] and r.tolerance is None
    assert len(r.candidates) == 4 and any("preliminary" in n for n in r.notes)
    # a tolerance of 5% follows the prediction further than the rule
    assert recommend(_entries(), tolerance=0.05).freeze == ["embeddings", "block.0", "block.1", "block.2"]


def test_a_given_predictor_decides_and_is_checked():
    """recommend(predictor=...) uses the given fit (e.g. one fit without the task, for leave-one-task-out)
    even without a tolerance (the shipped default 1%), and says it is not the shipped validated one."""
    from layerprobe.freezing.rule import recommend

    strict = pr.Predictor.from_dict({"name": "cka_rel", "xs": [0.0, 0.001], "ys": [0.0, 0.5],
                                     "interval": [0.0, 0.0], "fit_on": ["x"]})
    loose = pr.Predictor.from_dict({"name": "cka_rel", "xs": [0.0, 1.0], "ys": [0.0, 0.0],
                                    "interval": [0.0, 0.0], "fit_on": ["y"]})
    assert recommend(_entries(), predictor=strict).freeze == ["embeddings"]  # cka_rel 0 at k=0 only
    r = recommend(_entries(), predictor=loose)
    assert r.freeze == ["embeddings", "block.0", "block.1", "block.2"] and r.tolerance == 0.01
    assert r.predictor == {"name": "cka_rel", "fit_on": ["y"], "validated": False, "label_free": True,
                           "decide": "point"}
    for bad in ({"name": "a", "xs": [1, 0], "ys": [0, 1], "interval": [0, 0]},
                {"name": "a", "xs": [0, 1], "ys": [1, 0], "interval": [0, 0]},
                {"name": "a", "xs": [0, 1], "ys": [0, 1], "interval": [0.1, 0]},
                {"name": "a", "xs": [0, float("nan")], "ys": [0, 1], "interval": [0, 0]},
                {"name": "a", "xs": [0], "interval": [0, 0]}, "nonsense"):
        with pytest.raises(LayerProbeError, match="predictor"):
            pr.Predictor.from_dict(bad)  # type: ignore[arg-type]
    with pytest.raises(LayerProbeError, match="lacks"):
        recommend(_entries(), predictor=pr.Predictor("revert_kl", (0.0,), (0.0,), (0.0, 0.0), ()))


def test_an_upper_predictor_holds_the_interval_lower_end_to_the_tolerance():
    """decide="upper": the advice stops where predicted loss + the interval's upper residual passes the
    tolerance (LINEAR's +0.01), the point prediction and its interval are shown unchanged."""
    from layerprobe.freezing.rule import recommend
    from layerprobe.results.render import candidates_text

    upper = pr.Predictor.from_dict({"name": "cka_rel", "xs": [0.0, 1.0], "ys": [0.0, 0.1],
                                    "interval": [-0.005, 0.01], "fit_on": ["rt", "bbc"], "decide": "upper"})
    assert upper.decision_loss(0.2) == pytest.approx(0.03) and upper.label == "cka_rel, upper end"
    # per prefix the loss is 0, 0.0002, 0.002, 0.02 (+0.01 held to the tolerance)
    point_preds, point_k, _ = pr.predict_prefixes(_entries(), tolerance=0.02, predictor=LINEAR)
    preds, k, used = pr.predict_prefixes(_entries(), tolerance=0.02, predictor=upper)
    assert (point_k, k, used) == (3, 2, upper)
    assert [p.within_tolerance for p in preds] == [True, True, True, False]
    assert [(p.predicted_rel_acc, p.interval) for p in preds] == [(p.predicted_rel_acc, p.interval)
                                                                   for p in point_preds]
    assert pr.predict_prefixes(_entries(), tolerance=0.01, predictor=upper)[1] == 0  # 0 + 0.01 <= 0.01
    assert pr.predict_prefixes(_entries(), tolerance=0.005, predictor=upper)[1] == -1
    r = recommend(_entries(), tolerance=0.02, predictor=upper)
    assert r.freeze == ["embeddings", "block.0", "block.1"] and r.predictor["decide"] == "upper"
    assert r.reasons["block.1"] == ("freeze: predicted 99.8% [98.8%, 100.3%] of full fine-tuning with the prefix up "
                                    "to here frozen (cka_rel), its interval's lower end >= 98.0%")
    assert r.reasons["block.2"].startswith("train: predicted 98.0% [97.0%, 98.5%]")
    assert r.reasons["block.2"].endswith("its interval's lower end < 98.0%")
    assert "the advice holds the interval's lower end to the tolerance" in candidates_text(r)[0]
    assert "lower end" not in candidates_text(recommend(_entries(), tolerance=0.02, predictor=LINEAR))[0]


def test_a_validated_predictor_states_its_held_out_record(monkeypatch):
    from layerprobe.freezing.rule import recommend

    rec = {"name": "cka_rel", "xs": [0.0, 1.0], "ys": [0.0, 0.1], "interval": [-0.005, 0.01], "fit_on": ["a", "b", "c"],
           "loto": {"tasks": 3, "tasks_ge_985": 2}}
    p = pr.Predictor.from_dict(rec)
    assert p.validated and not pr.Predictor.from_dict({**rec, "loto": {"tasks": 2}}).validated
    monkeypatch.setattr(pr, "default_predictor", lambda feats: p)
    monkeypatch.setattr(pr, "shipped_meta", lambda: {"validated": True, "default_rule": "cka", "tolerance_default": 0.01})
    r = recommend(_entries())
    assert r.predictor["validated"] is True and r.tolerance is None
    assert any("on 2 of 3 tasks" in n and "CKA rule decided" in n for n in r.notes)


# -- adversarial review: malformed predictor files ----------------------------------------------------------

GOOD = {"name": "cka_rel", "xs": [0, 1], "ys": [0, 0.1], "interval": [-0.01, 0.01], "fit_on": ["a"]}


@pytest.mark.parametrize("change, message", [
    ({"xs": [], "ys": []}, "needs as many xs as ys, at least one"),
    ({"xs": "01", "ys": "01"}, "xs must be a list of numbers, got str"),  # before: read as [0.0, 1.0]
    ({"xs": [0, 10 ** 400]}, r"xs\[1\] is not a finite number"),  # before: OverflowError traceback
    ({"xs": [0, True]}, r"xs\[1\] must be a number, got True"),
    ({"ys": [0, None]}, r"ys\[1\] must be a number, got None"),
    ({"xs": list(range(10_001)), "ys": [0.0] * 10_001}, "xs has 10,001 values, more than the 10,000 accepted"),
    ({"interval": [0.0]}, r"interval must be \[lo, hi\]"),
    ({"interval": [0, 1, 2]}, "interval has 3 values, more than the 2 accepted"),
    ({"name": 5}, "name must be a non-empty string, got 5"),
    ({"name": ""}, "name must be a non-empty string"),
    ({"fit_on": "rt"}, "fit_on must be a list of task names"),  # before: ('r', 't')
    ({"label_free": "false"}, "label_free must be true or false, got 'false'"),  # before: bool('false') = True
    ({"loto": {"tasks": "3"}}, "loto.tasks must be a count of tasks, got '3'"),  # before: read as 3 by validated
    ({"loto": {"tasks": 1e400}}, "loto.tasks must be a count of tasks"),  # before: OverflowError in validated
    ({"decide": "lower"}, "decide must be 'point' or 'upper', got 'lower'"),
    ({"decide": None}, "decide must be 'point' or 'upper', got None"),
    # review-b: before, xs [-1e308, 1e308] interpolated as flat (every prefix 100%) and ys [0, 1e308] gave -inf
    ({"xs": [-1e308, 1e308]}, r"'cka_rel': xs\[0\] is beyond ±1e\+300$"),
    ({"ys": [0, 1e308]}, r"'cka_rel': ys\[1\] is beyond ±1e\+300$"),
    ({"interval": [-1e301, 0]}, r"'cka_rel': interval\[0\] is beyond ±1e\+300$"),
    # before: 'upper' with a negative upper end advised more than the point prediction
    ({"decide": "upper", "interval": [-0.05, -0.02]},
     r"'cka_rel': decide 'upper' needs an interval whose upper end is >= 0, got \[-0.05, -0.02\]$"),
])
def test_malformed_predictors_are_one_line_naming_the_source(change, message):
    with pytest.raises(LayerProbeError, match=message) as exc:
        pr.Predictor.from_dict({**GOOD, **change}, "my_predictor.json")
    assert str(exc.value).startswith("my_predictor.json: not a freeze predictor") and "\n" not in str(exc.value)


def test_at_the_knot_bound_a_predictor_loads():
    n = pr.MAX_KNOTS
    p = pr.Predictor.from_dict({**GOOD, "xs": list(range(n)), "ys": [0.0] * (n - 1) + [0.5]})
    assert p.loss(n) == 0.5 and p.loss(-1) == 0.0


def test_a_nan_feature_predicts_nothing_instead_of_the_worst_knot():
    """Before: loss(NaN) fell through to ys[-1]."""
    p = pr.Predictor.from_dict(GOOD)
    assert math.isnan(p.loss(math.nan))


@pytest.mark.parametrize("bad, message", [
    ("cka_rel", "must be a layerprobe Predictor"),
    (3, "must be a layerprobe Predictor"),
    ({"name": "linprobe_gap", "xs": [0], "ys": [0], "interval": [0, 0]}, "does not take; expected one of cka_rel"),
])
def test_recommend_refuses_a_predictor_it_cannot_use(bad, message):
    from layerprobe.freezing.rule import recommend

    with pytest.raises(LayerProbeError, match=message):  # before: AttributeError 'str' object has no 'name'
        recommend(_entries(), predictor=bad)


def test_a_predictor_as_its_json_dict_is_read():
    from layerprobe.freezing.rule import recommend

    assert recommend(_entries(), predictor=GOOD).predictor["name"] == "cka_rel"


def test_a_broken_shipped_file_is_one_line(tmp_path, monkeypatch):
    for text in ('{"predictors": 5}', "[]", '{"predictors": [{"name": "cka_rel"}]}'):
        (tmp_path / "p.json").write_text(text)
        monkeypatch.setattr(pr, "PREDICTOR_FILE", str(tmp_path / "p.json"))
        pr._shipped.cache_clear()
        try:
            with pytest.raises(LayerProbeError, match="p.json: "):
                pr.shipped_meta()
        finally:
            pr._shipped.cache_clear()


@pytest.mark.parametrize("built, message", [
    # before: advised as 'point' while recommendation.predictor said decide 'lower' (outside the schema's enum)
    (pr.Predictor("cka_rel", (0.0, 1.0), (0.0, 0.1), (0.0, 0.5), ("a",), decide="lower"),
     "predictor: not a freeze predictor: 'cka_rel': decide must be 'point' or 'upper', got 'lower'"),
    (pr.Predictor("cka_rel", (), (), (0.0, 0.0), ("a",)),  # before: IndexError from inside loss()
     "predictor: not a freeze predictor: 'cka_rel': needs as many xs as ys, at least one (got 0 and 0)"),
    (pr.Predictor("cka_rel", (0.0, 1.0), (0.0, 0.1), (math.nan, math.nan), ("a",)),  # before: a NaN interval shown
     "predictor: not a freeze predictor: 'cka_rel': interval[0] is not a finite number"),
    (pr.Predictor("cka_rel", (0.0, 1.0), (0.0, 0.1), (-0.05, -0.01), ("a",), decide="upper"),
     "predictor: not a freeze predictor: 'cka_rel': decide 'upper' needs an interval whose upper end is >= 0, "
     "got [-0.05, -0.01]"),
])
def test_a_predictor_built_directly_gets_the_same_checks(built, message):
    from layerprobe.freezing.policy import AutoFreezePolicy
    from layerprobe.freezing.rule import recommend

    for call in (lambda: recommend(_entries(), tolerance=0.02, predictor=built),
                 lambda: pr.predict_prefixes(_entries(), predictor=built)):
        with pytest.raises(LayerProbeError) as exc:
            call()
        assert str(exc.value) == message
    with pytest.raises(LayerProbeError) as exc:
        AutoFreezePolicy(predictor=built)
    assert str(exc.value) == message.replace("predictor:", "AutoFreezePolicy: predictor:", 1)


@pytest.fixture
def shipped_with_prediction_default(tmp_path, monkeypatch):
    """A shipped file whose default rule is the prediction, led by a revert predictor, with a CKA fallback."""
    path = tmp_path / "predictor.json"
    loto = {"tasks": 6, "tasks_ge_985": 6, "min_rel_acc": 0.987, "mean_rel_acc": 1.0}
    path.write_text(json.dumps({"schema": 1, "fit_on": list("abcdef"), "validated": True, "tolerance_default": 0.01,
                                "default_rule": "predictor", "predictors": [
        {"name": "revert_disagree", "decide": "upper", "xs": [0.0, 0.05, 1.0], "ys": [0.0, 0.005, 0.5],
         "interval": [-0.01, 0.004], "fit_on": list("abcdef"), "loto": loto},
        {"name": "cka_rel", "xs": [0.0, 1.0], "ys": [0.0, 0.1], "interval": [-0.005, 0.01], "fit_on": list("abcdef"),
         "loto": {**loto, "tasks_ge_985": 5}}]}))
    monkeypatch.setattr(pr, "PREDICTOR_FILE", str(path))
    pr._shipped.cache_clear()
    yield
    pr._shipped.cache_clear()


@pytest.mark.shipped_default(None)
def test_the_default_prediction_decides_only_with_its_own_measurement(shipped_with_prediction_default):
    """default_rule "predictor": without a tolerance the lead predictor decides where its measurement is (here
    the revert test); a fallback read where it is missing (CKA) informs but the CKA rule decides, and says why."""
    from layerprobe.freezing.rule import Thresholds, recommend

    # disagreement 0, 2%, 4%, 30% per prefix: decision loss (upper end, +0.4%) 0.4%, 0.6%, 0.8%, 15.4% -> emb+2
    rev = [{"k": k, "kl": 0.0, "agreement": 1 - a} for k, a in enumerate([0.0, 0.02, 0.04, 0.3, 0.6])]
    r = recommend(_entries(), revert=rev)
    assert r.freeze == ["embeddings", "block.0", "block.1"] and r.tolerance == 0.01
    assert r.predictor["name"] == "revert_disagree" and r.predictor["decide"] == "upper" and r.predictor["validated"]
    assert r.reasons["block.2"].startswith("train: predicted") and "lower end" in r.reasons["block.2"]
    assert pr.decides_by_default(pr.shipped_lead()) and pr.shipped_lead().name == "revert_disagree"
    # no revert test: the CKA fallback predicts, the rule decides (min_cka 0.95: embeddings, block.0, block.1)
    r = recommend(_entries(), Thresholds(min_cka=0.95))
    assert r.freeze == ["embeddings", "block.0", "block.1"] and r.tolerance is None
    assert r.predictor["name"] == "cka_rel" and len(r.candidates) == 4
    assert any("needs the revert test" in n and "the CKA rule decided" in n for n in r.notes)
    assert not pr.decides_by_default(pr.default_predictor(pr.prefix_features(_entries())))
    # ... and a tolerance follows the fallback's prediction (cka_rel 0.2 at emb+3: 98% < 99%)
    assert recommend(_entries(), tolerance=0.01).freeze == ["embeddings", "block.0", "block.1"]
    assert recommend(_entries(), Thresholds(min_cka=0.95), tolerance=0.05).freeze[-1] == "block.2"


def test_the_tests_pin_the_cka_rule_by_default():
    """conftest pins default_rule to "cka" for every test not marked otherwise: a refit flipping the shipped
    file moves no test that is not about the flip."""
    assert pr.shipped_meta()["default_rule"] == "cka"


@pytest.mark.shipped_default("predictor")
def test_a_marked_test_sees_the_prediction_as_the_default():
    assert pr.shipped_meta()["default_rule"] == "predictor"
    assert pr.decides_by_default(pr.shipped_lead())
