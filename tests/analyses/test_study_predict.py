"""The six-task study's predictor fit: isotonic regression against scipy, features from measurements, and
leave-one-task-out on synthetic tasks where the truth is known."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import isotonic_regression

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "analyses"))

import study_predict as sp  # noqa: E402

NAMES = ["embeddings"] + [f"block.{i}" for i in range(6)]


@pytest.mark.parametrize("seed", range(5))
def test_isotonic_fit_matches_scipy_on_distinct_x(seed):
    rng = np.random.default_rng(seed)
    x = rng.permutation(40).astype(float)
    y = 0.1 * x + rng.normal(size=40)
    w = rng.uniform(0.5, 3, size=40)
    xs, ys = sp.isotonic_fit(x, y, w)
    order = np.argsort(x)
    ref = isotonic_regression(y[order], weights=w[order]).x
    np.testing.assert_allclose(ys, ref, rtol=0, atol=1e-12)
    assert np.all(np.diff(ys) >= -1e-15)


def test_isotonic_fit_pools_ties_and_drops_non_finite():
    xs, ys = sp.isotonic_fit([1, 1, 2, math.nan, 3], [0.0, 2.0, 0.5, 9.0, 3.0], [1, 1, 2, 1, 1])
    assert xs.tolist() == [1.0, 2.0, 3.0]
    assert ys.tolist() == pytest.approx([0.75, 0.75, 3.0])  # (1 + 1 at x=1 pooled with 0.5 weight 2) / 4
    with pytest.raises(ValueError, match="no finite points"):
        sp.isotonic_fit([math.nan], [1.0])


def _measures(kl: list[float], drift: list[float], agreement: list[float] | None = None) -> dict:
    agreement = agreement or [1.0 - v for v in kl]
    revert = [{"k": k, "kl": kl[k], "agreement": agreement[k], "tv": 0.0, "dev_accuracy": 0.9 - kl[k],
               "dev_accuracy_tuned": 0.9} for k in sp.KS]
    grad = {"names": NAMES, "param_norm": [10.0] * 7,
            "windows": [{"step": s, "steps_in_window": 10, "l1": [float(s + i) for i in range(7)],
                         "l2": [1.0 + i for i in range(7)]} for s in (10, 20, 30, 40)]}
    return {"names": NAMES, "drift": dict(zip(NAMES, drift)), "revert": revert, "grad_norms": grad,
            "mid_run": [{"step": 10, "epoch": 0.5, "drift": dict(zip(NAMES, drift)), "revert": revert[:]}]}


def test_run_features_read_each_measurement_as_the_plan_defines():
    cmp = [{"name": n, "cka": c, "cka_ci": [c - 0.01, c + 0.005]} for n, c in
           zip(NAMES, [1.0, 0.99, 0.95, 0.9, 0.8, 0.7, 0.5])]
    meas = _measures(kl=[0.0, 0.001, 0.002, 0.01, 0.05, 0.2, 0.5], drift=[0.01, 0.02, 0.03, 0.02, 0.04, 0.05, 0.1])
    lin = {"accuracy": dict(zip(NAMES, [0.5, 0.6, 0.7, 0.8, 0.8, 0.75, 0.7]))}
    f = sp.run_features(cmp, meas, lin, steps=100)
    assert f["size"][3] == 3.0
    # cka_abs: the prefix's largest 1 - lower bound; emb+2 covers embeddings, block.0, block.1 (0.95 - 0.01)
    assert f["cka_abs"][2] == pytest.approx(1 - 0.94)
    # cka_rel: relative to the top block's 1 - (0.5 - 0.01)
    assert f["cka_rel"][2] == pytest.approx(0.06 / 0.51)
    assert f["drift_rel"][1] == pytest.approx(0.02 / 0.1)
    assert f["drift_rel"][3] == pytest.approx(0.03 / 0.1)  # the prefix max, not the last entry
    assert f["revert_kl"][4] == 0.05
    assert f["revert_dev"][4] == pytest.approx(0.05 / 0.9)
    # linprobe_gap reads the output at the top of the prefix: k=0 the embeddings, k=3 block.2
    assert f["linprobe_gap"][0] == pytest.approx(1 - 0.5 / 0.8)
    assert f["linprobe_gap"][3] == pytest.approx(1 - 0.8 / 0.8)
    # grad_rel: l2 summed over windows up to 20 steps (20% of 100), / param norm, relative to the top block
    assert f["grad_rel"][2] == pytest.approx((2 * 3.0 / 10) / (2 * 7.0 / 10))
    early = sp.run_features([{"name": n, "cka": 0.9} for n in NAMES], meas, lin, steps=100, early=True)
    assert "revert_dev" not in early and "linprobe_gap" not in early  # labelled: end of run only
    assert early["revert_kl"] == f["revert_kl"]


def _synthetic(tasks: dict[str, list[float]], noise: float = 0.0):
    """Outcomes and features where loss = kl exactly (a perfect label-free predictor) and size is blind."""
    outcomes, feats = [], []
    rng = np.random.default_rng(0)
    for task, kl in tasks.items():
        for k in sp.KS:
            outcomes.append({"task": task, "k": k, "n_seeds": 2, "loss": kl[k], "rel_acc": 1 - kl[k],
                             "saving": 0.1 * (k + 1), "rel": {}})
            for seed in (0, 1):
                for cand, x in (("revert_kl", kl[k] + noise * rng.normal()), ("size", float(k))):
                    for when in ("end", "early"):
                        feats.append({"task": task, "seed": seed, "when": when, "candidate": cand, "k": k, "x": x})
    return pd.DataFrame(outcomes), pd.DataFrame(feats)


TASKS = {  # the loss of freezing k, per task: some tolerate a deep prefix, some almost none
    "a": [0.0, 0.0, 0.002, 0.004, 0.02, 0.05, 0.2],
    "b": [0.0, 0.003, 0.03, 0.06, 0.1, 0.15, 0.3],
    "c": [0.0, 0.0, 0.0, 0.001, 0.003, 0.006, 0.08],
    "d": [0.001, 0.02, 0.04, 0.08, 0.1, 0.2, 0.4],
}


def test_loto_with_a_perfect_feature_advises_the_oracle_on_every_held_out_task():
    outcomes, feats = _synthetic(TASKS)
    pairs, adv = sp.loto(outcomes, feats, candidates=["revert_kl", "size"])
    kl = adv[(adv.candidate == "revert_kl") & (adv.when == "end")]
    assert (kl.advised_k == kl.oracle_k).all()
    assert set(zip(kl.fold, kl.advised_k)) == {("a", 3), ("b", 1), ("c", 5), ("d", 0)}
    assert (kl.regret.abs() < 1e-12).all()
    # the task-blind baseline picks one k from the other tasks and must miss somewhere
    size = adv[(adv.candidate == "size") & (adv.when == "end")]
    assert (size.advised_k != size.oracle_k).any()
    s = sp.score(pairs, adv).set_index("candidate")
    assert s.loc["revert_kl", "tasks_ge_985"] == 4 and s.loc["revert_kl", "mean_regret"] == pytest.approx(0.0)
    assert s.loc["revert_kl", "early_agreement"] == 1.0
    assert s.index[0] == "revert_kl"  # ranked first
    # ... also before a decision that keeps more accuracy than the target asks by freezing less: above 98.5%
    # the worst task is no tie-break, the regret decides
    assert s.loc["size@upper", "tasks_ge_985"] == 4 and s.loc["size@upper", "mean_regret"] > 0.1
    assert s.loc["size@upper", "min_rel_acc"] > s.loc["revert_kl", "min_rel_acc"]
    # predictions are monotone in x and every pair of the held-out task is listed
    p = pairs[(pairs.candidate == "revert_kl") & (pairs.fold == "a")].sort_values("x")
    assert len(p) == 7 and np.all(np.diff(p.predicted_loss) >= 0)


def test_loto_never_fits_on_the_held_out_task():
    outcomes, feats = _synthetic(TASKS)
    # poison task "d"'s outcomes: a fit that saw them would change the prediction for "d"
    poisoned = outcomes.copy()
    poisoned.loc[poisoned.task == "d", "loss"] = 0.0
    a, _ = sp.loto(outcomes, feats, candidates=["revert_kl"])
    b, _ = sp.loto(poisoned, feats, candidates=["revert_kl"])
    pa = a[a.fold == "d"].predicted_loss.to_numpy()
    pb = b[b.fold == "d"].predicted_loss.to_numpy()
    np.testing.assert_array_equal(pa, pb)


def test_advise_and_oracle_need_every_smaller_prefix():
    assert sp.advise({0: 0.0, 1: 0.02, 2: 0.0}) == 0
    assert sp.advise({0: 0.011}) == -1
    o = pd.DataFrame({"k": [0, 1, 2], "loss": [0.0, 0.009, 0.01]})
    assert sp.oracle_k(o) == 2


def test_fold_predictors_never_see_the_held_out_task():
    """The predictor each held-out task's auto runs use is fit and ranked on the other tasks only:
    poisoning the held-out task's outcomes changes nothing in its file (and does change the others')."""
    outcomes, feats = _synthetic(TASKS)
    poisoned = outcomes.copy()
    poisoned.loc[poisoned.task == "d", "loss"] = 0.0
    a, b = sp.fold_predictors(outcomes, feats), sp.fold_predictors(poisoned, feats)
    assert sorted(a) == ["a", "b", "c", "d"]
    assert a["d"] == b["d"] and a["d"]["fit_on"] == ["a", "b", "c"]
    assert a["a"] != b["a"]
    assert a["d"]["validated"] and a["d"]["predictors"][0]["name"] == "revert_kl"
    assert sp.fold_predictors(outcomes[outcomes.task != "d"], feats[feats.task != "d"]) == {}
    # a task not in the leave-one-task-out yet ("e": its scan unfinished) gets the fit on all four, none of it
    # its own; a task already in keeps its fold
    c = sp.fold_predictors(outcomes, feats, also=["e", "d"])
    assert sorted(c) == ["a", "b", "c", "d", "e"] and c["d"] == a["d"]
    assert c["e"]["fit_on"] == ["a", "b", "c", "d"] and c["e"]["validated"]


def test_saving_reads_cpu_in_each_runs_own_reference_units():
    """Each fixed run against the full run of its seed: in reference units when both have one (a run under
    twice the load saves what its units say), else raw CPU per epoch (one session's runs)."""
    full = pd.DataFrame([{"seed": 0, "train_cpu_seconds": 100.0, "epochs": 3.0, "steps": 300, "ref_full_step_cpu": 0.5},
                         {"seed": 1, "train_cpu_seconds": 90.0, "epochs": 3.0, "steps": 300, "ref_full_step_cpu": None}])
    fixed = pd.DataFrame([{"seed": 0, "train_cpu_seconds": 120.0, "epochs": 3.0, "steps": 300, "ref_full_step_cpu": 1.0},
                          {"seed": 1, "train_cpu_seconds": 60.0, "epochs": 4.0, "steps": 400, "ref_full_step_cpu": 0.7},
                          {"seed": 2, "train_cpu_seconds": 1.0, "epochs": 1.0, "steps": 1, "ref_full_step_cpu": 1.0}])
    f0, f1 = list(full.itertuples())
    x0, x1, _ = list(fixed.itertuples())
    assert sp.step_units(f0) == pytest.approx(100 / 300 / 0.5) and sp.step_units(f1) is None
    assert sp.cpu_ratio(x0, f0) == pytest.approx((120 / 300 / 1.0) / (100 / 300 / 0.5))  # 0.6 per epoch
    assert sp.cpu_ratio(x0, f0, per_epoch=False) == pytest.approx(0.6)
    assert sp.cpu_ratio(x1, f1) == pytest.approx((60 / 4) / (90 / 3))  # raw: seed 1's full has no reference
    assert sp.cpu_ratio(x1, f1, per_epoch=False) == pytest.approx(60 / 90)
    # seed 2 has no full run: left out
    assert sp._saving(fixed, full) == pytest.approx(((1 - 0.6) + (1 - 0.5)) / 2)


def test_the_prediction_decides_by_default_only_after_all_planned_tasks():
    """Four tasks where revert_kl is perfect: validated leave-one-task-out, ranked first, but the library's
    default decision stays with the CKA rule until all six planned tasks are in."""
    outcomes, feats = _synthetic(TASKS)
    pairs, adv = sp.loto(outcomes, feats, candidates=["revert_kl", "size"])
    out = sp.export_predictor(outcomes, feats, sp.score(pairs, adv))
    assert out["validated"] and out["predictors"][0]["name"] == "revert_kl" and out["default_rule"] == "cka"
    six = dict(TASKS, e=TASKS["a"], f=TASKS["c"])
    outcomes, feats = _synthetic(six)
    pairs, adv = sp.loto(outcomes, feats, candidates=["revert_kl", "size"])
    scores = sp.score(pairs, adv)
    assert sp.export_predictor(outcomes, feats, scores)["default_rule"] == "predictor"
    # ... and only if it also beats today's default on the same tasks: a rule that always freezes the
    # embeddings alone is safe here but regrets more; one that always hits the oracle cannot be beaten
    oracle = {t: sp.oracle_k(outcomes[outcomes.task == t]) for t in six}
    timid = sp.advice_summary(pd.DataFrame([r for t in six for r in sp.advice_rows(outcomes, t, {0: 0}, "rule")]))
    ideal = sp.advice_summary(pd.DataFrame([r for t in six for r in sp.advice_rows(outcomes, t, {0: oracle[t]}, "r")]))
    assert timid["tasks_ge_985"] == 6 and timid["mean_regret"] > 0.1 and ideal["mean_regret"] == pytest.approx(0.0)
    out = sp.export_predictor(outcomes, feats, scores, timid)
    assert out["default_rule"] == "predictor" and out["cka_rule_on_these_tasks"] == timid
    assert sp.export_predictor(outcomes, feats, scores, ideal)["default_rule"] == "cka"
    # amendment 4: a lower mean regret by less than the paired gain's standard error is no win
    assert sp.export_predictor(outcomes, feats, scores, {**timid, "regret_gain_mean": 0.01,
                                                         "regret_gain_se": 0.03})["default_rule"] == "cka"
    assert sp.export_predictor(outcomes, feats, scores, {**timid, "regret_gain_mean": 0.2,
                                                         "regret_gain_se": 0.03})["default_rule"] == "predictor"


def test_the_upper_decision_is_scored_beside_the_point_one():
    """Amendment 2: each candidate's advice also on its interval's pessimistic end (prediction + the fit's 90th
    residual percentile): never a larger prefix than the point decision, scored and ranked like any candidate."""
    outcomes, feats = _synthetic(TASKS, noise=0.01)
    pairs, adv = sp.loto(outcomes, feats, candidates=["revert_kl"])
    assert set(adv.candidate) == {"revert_kl", "revert_kl@upper"} and set(pairs.candidate) == {"revert_kl"}
    both = adv.pivot_table(index=["fold", "seed", "when"], columns="candidate", values="advised_k")
    assert (both["revert_kl@upper"] <= both["revert_kl"]).all() and (both["revert_kl@upper"] < both["revert_kl"]).any()
    s = sp.score(pairs, adv).set_index("candidate")
    assert s.loc["revert_kl@upper", "label_free"] and s.loc["revert_kl@upper", "tasks"] == 4
    # the same prediction, so the same calibration
    assert s.loc["revert_kl@upper", "calibration_within_1pt"] == s.loc["revert_kl", "calibration_within_1pt"]
    assert sp.base_of("revert_kl@upper") == "revert_kl"
    # shipped with its decision: one fit per measurement, two entries
    exp = sp.export_predictor(outcomes, feats, s.reset_index())
    kl = [p for p in exp["predictors"] if p["name"] == "revert_kl"]
    assert sorted(p["decide"] for p in kl) == ["point", "upper"] and kl[0]["xs"] == kl[1]["xs"]


def test_in_sample_fits_on_the_held_task_too_and_bounds_the_held_out_score():
    """in_sample=True sees the scored task (poisoning it moves its prediction), leave-one-task-out does not;
    a blind feature (size) fit in-sample can still not advise every task its oracle."""
    outcomes, feats = _synthetic(TASKS, noise=0.002)
    poisoned = outcomes.copy()
    poisoned.loc[poisoned.task == "d", "loss"] = 0.0
    a, _ = sp.loto(outcomes, feats, candidates=["revert_kl"], in_sample=True)
    b, _ = sp.loto(poisoned, feats, candidates=["revert_kl"], in_sample=True)
    assert not np.array_equal(a[a.fold == "d"].predicted_loss.to_numpy(), b[b.fold == "d"].predicted_loss.to_numpy())
    _, adv_in = sp.loto(outcomes, feats, candidates=["size"], in_sample=True)
    end = adv_in[(adv_in.candidate == "size") & (adv_in.when == "end")]
    assert (end.advised_k != end.oracle_k).any()  # one k for all tasks: some task misses its oracle
    # fit on the tasks it is scored on, the perfect feature is perfect, and no worse than held out
    s_in = sp.score(*sp.loto(outcomes, feats, candidates=["revert_kl"], in_sample=True)).set_index("candidate")
    s_out = sp.score(*sp.loto(outcomes, feats, candidates=["revert_kl"])).set_index("candidate")
    assert s_in.loc["revert_kl", "max_regret"] == pytest.approx(0.0, abs=1e-12)
    assert s_in.loc["revert_kl", "max_regret"] <= s_out.loc["revert_kl", "max_regret"] + 1e-12


def test_noise_ceiling_is_the_normal_mass_within_the_tolerance():
    # task a: three seeds, per-seed sd exactly 2 points (deviations -2, 0, +2): se = 2/sqrt(3) points
    rel = {0: 0.98, 1: 1.0, 2: 1.02}
    o = pd.DataFrame({"task": ["a", "a", "b", "a"], "k": [0, 1, 0, 6], "n_seeds": [3, 3, 1, 3],
                      "loss": [0.0, 0.01, 0.0, 0.3], "rel": [rel, rel, {0: 0.99}, {0: 0.5, 1: 0.9, 2: 0.7}]})
    r = sp.noise_ceiling(o)
    assert r["pairs"] == 3  # the k=6 pair lost 30%: outside the calibration set, and outside the pooled sd
    assert r["sd"] == {"a": pytest.approx(0.02), "b": None}
    p_a = math.erf(0.01 / (0.02 / math.sqrt(3) * math.sqrt(2)))
    p_b = math.erf(0.01 / (0.02 * math.sqrt(2)))  # b borrows the pooled sd with its one seed
    assert r["ceiling"] == pytest.approx((2 * p_a + p_b) / 3)
    assert 0.61 < p_a < 0.62 and 0.38 < p_b < 0.39
    # no spread at all: a perfect predictor always lands within the tolerance
    flat = pd.DataFrame({"task": ["a"], "k": [0], "n_seeds": [2], "loss": [0.0], "rel": [{0: 1.0, 1: 1.0}]})
    assert sp.noise_ceiling(flat)["ceiling"] == 1.0
    assert sp.noise_ceiling(o[o.loss > 0.05])["pairs"] == 0


def test_early_advice_that_differs_is_counted_by_its_side():
    """At 20% of the run the measurement reads larger (a prefix looks costlier): the early advice freezes less,
    counted as shallower, never deeper; identical measurements agree."""
    outcomes, feats = _synthetic(TASKS)
    s = sp.score(*sp.loto(outcomes, feats, candidates=["revert_kl"])).set_index("candidate")
    assert s.loc["revert_kl", "early_agreement"] == 1.0
    assert s.loc["revert_kl", "early_shallower"] == 0 == s.loc["revert_kl", "early_deeper"]
    early = feats.when == "early"
    feats.loc[early, "x"] = feats.loc[early, "x"] * 3 + 0.004
    s = sp.score(*sp.loto(outcomes, feats, candidates=["revert_kl"])).set_index("candidate")
    assert s.loc["revert_kl", "early_agreement"] < 1.0
    assert s.loc["revert_kl", "early_shallower"] > 0 and s.loc["revert_kl", "early_deeper"] == 0
    assert s.loc["revert_kl", "early_shallower"] == round((1 - s.loc["revert_kl", "early_agreement"]) *
                                                          s.loc["revert_kl", "early_n"])
