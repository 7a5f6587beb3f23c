"""Plan amendment 5's mid-run scan: reading the runs against their full run, the features at the freeze, the
outcome table with static rows below the scan, and the leave-one-task-out on synthetic tasks whose truth is known."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "analyses"))

import study_grid as sg  # noqa: E402
import study_midrun as sm  # noqa: E402
import study_predict as sp  # noqa: E402

NAMES = ["embeddings"] + [f"block.{i}" for i in range(6)]
LR = 1e-4
TASKS = ["a", "b", "c", "d"]
#: per task, the revert disagreement at the freeze per k: the mid-run loss is SLOPE x it (a known monotone truth)
SLOPE = 0.19
DISAGREE = {"a": [0.0, 0.01, 0.02, 0.03, 0.04, 0.06, 0.10], "b": [0.0, 0.0, 0.01, 0.02, 0.03, 0.04, 0.05],
            "c": [0.0, 0.02, 0.04, 0.05, 0.07, 0.10, 0.20], "d": [0.0, 0.01, 0.01, 0.02, 0.05, 0.08, 0.15]}
CPU = {3: 0.7, 4: 0.6, 5: 0.5, 6: 0.4}  # whole-run CPU relative to full per scanned k


def _budget(task):
    return replace(sg.BUDGETS["rt"], task=task)


def _write(cache, task, name, row):
    path = os.path.join(cache, task, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(row, fh)
    return path


def _cache(tmp_path, tasks=TASKS, seeds=(0,)):
    """Full runs (with measures and a trajectory) and mid-run runs for ``tasks``; returns (cache, runs, budgets)."""
    cache = str(tmp_path)
    full_rows = []
    budgets = {t: _budget(t) for t in tasks}
    for t in tasks:
        b = asdict(replace(budgets[t], lr=LR))
        for seed in seeds:
            full = {"task": t, "method": "full", "config": "full", "seed": seed, "lr": LR, "accuracy": 0.9,
                    "dev_history": [0.8, 0.85, 0.86], "epochs": 4.0, "steps": 400, "train_cpu_seconds": 400.0,
                    "ref_full_step_cpu": 1.0, "budget": b}
            path = _write(cache, t, f"full_full_lr{LR:g}_seed{seed}.json", full)
            full_rows.append({**full, "_path": path})
            revert = [{"k": k, "kl": DISAGREE[t][k] / 2, "agreement": 1 - DISAGREE[t][k], "tv": 0.0} for k in range(7)]
            early = [{"k": k, "kl": 0.0, "agreement": 1.0, "tv": 0.0} for k in range(7)]  # epoch 0.5: nothing moved
            drift = dict(zip(NAMES, [0.01 * (i + 1) for i in range(7)]))
            _write(cache, t, f"full_full_lr{LR:g}_seed{seed}.measures.json",
                   {"mid_run": [{"step": 50, "epoch": 0.5, "drift": drift, "revert": early},
                                {"step": 100, "epoch": 1.0, "drift": drift, "revert": revert}]})
            traj = pd.DataFrame([{"step": s, "block": n, "cka_to_start": 1 - 0.01 * i * s / 100}
                                 for s in (0, 90, 110) for i, n in enumerate(NAMES)])
            traj.to_csv(os.path.join(cache, t, f"full_full_lr{LR:g}_seed{seed}.trajectory.csv"), index=False)
            for k in (6, 4, 5, 3):
                rel = 1 - SLOPE * DISAGREE[t][k]
                _write(cache, t, f"midrun_mid1-emb+{k}_lr{LR:g}_seed{seed}.json",
                       {"task": t, "seed": seed, "lr": LR, "accuracy": 0.9 * rel, "best_epoch": 3,
                        "dev_history": [0.8, 0.84, 0.85], "epochs": 4.0, "steps": 400, "frozen_at_step": 100,
                        "train_cpu_seconds": 400.0 * CPU[k] * 2.0, "ref_full_step_cpu": 2.0,  # a slower session
                        "cache": {"hit_rows": 300, "miss_rows": 100}, "budget": b})
    return cache, pd.DataFrame(full_rows), budgets


def _static(tasks=TASKS):
    """Static outcomes (frozen from step 0) for k = 0..6: worse than mid-run, saving more per epoch."""
    return pd.DataFrame([{"task": t, "k": k, "n_seeds": 1, "acc": 0.9, "loss": 0.004 * k, "rel_acc": 1 - 0.004 * k,
                          "saving": 0.1 * k, "rel": {0: 1 - 0.004 * k}} for t in tasks for k in range(7)])


def test_midrun_runs_read_each_run_against_the_same_seeds_full_run_in_reference_units(tmp_path):
    cache, runs, budgets = _cache(tmp_path, ["a"], seeds=(0, 1))
    # runs that do not belong: another lr, another freeze epoch, another budget, a seed without a full run
    _write(cache, "a", "midrun_mid1-emb+6_lr0.001_seed0.json", {"lr": 1e-3})
    _write(cache, "a", "midrun_mid2-emb+6_lr0.0001_seed0.json", {"lr": LR})
    _write(cache, "a", "midrun_mid1-emb+6_lr0.0001_seed5.json", {"lr": LR, "seed": 5, "budget": {}})
    mid = sm.midrun_runs(cache, budgets, runs, {"a": LR})
    assert len(mid) == 8 and set(mid.seed) == {0, 1} and sorted(set(mid.k)) == [3, 4, 5, 6]
    r6 = mid[(mid.k == 6) & (mid.seed == 0)].iloc[0]
    assert r6.rel_acc == pytest.approx(1 - SLOPE * 0.10)
    assert r6.cpu_ratio == pytest.approx(0.4)  # 320 s at a 2 s reference step against 400 s at 1 s: 0.4 of full
    assert r6.cache_hit_share == pytest.approx(0.75)
    assert r6.same_until_freeze  # 0.80 after epoch 1 in both
    assert sm.midrun_runs(cache, budgets, runs, {"a": 1e-3}).empty  # no full run at that lr


def test_same_until_freeze_compares_the_dev_accuracy_at_the_freeze(tmp_path):
    cache, runs, budgets = _cache(tmp_path, ["a"])
    mid = sm.midrun_runs(cache, budgets, runs, {"a": LR})
    assert mid.same_until_freeze.all()  # dev after epoch 1: 0.8 in the full run and in every mid-run run
    path = os.path.join(cache, "a", f"midrun_mid1-emb+4_lr{LR:g}_seed0.json")
    with open(path) as fh:
        row = json.load(fh)
    row["dev_history"] = [0.79, 0.84]
    _write(cache, "a", os.path.basename(path), row)
    mid = sm.midrun_runs(cache, budgets, runs, {"a": LR}).set_index("k")
    assert not mid.same_until_freeze[4] and mid.same_until_freeze[6]


def test_freeze_features_are_the_measurements_at_epoch_1_and_the_last_check_before_it(tmp_path):
    cache, runs, _ = _cache(tmp_path, ["c"])
    f = sm.freeze_features(runs.iloc[0].to_dict())
    assert set(f) <= set(sm.MID_CANDIDATES) and {"revert_disagree", "revert_kl", "drift_rel", "cka_abs"} <= set(f)
    assert [f["revert_disagree"][k] for k in range(7)] == pytest.approx(DISAGREE["c"])  # epoch 1.0, not 0.5
    # CKA at step 90 (the check before the freeze at 100): 1 - 0.009 i; prefix k reads the largest over its entries
    assert f["cka_abs"][3] == pytest.approx(0.009 * 3)
    assert f["drift_rel"][6] == pytest.approx(1.0)
    missing = runs.iloc[0].to_dict() | {"_path": os.path.join(cache, "c", "nothing.json")}
    assert sm.freeze_features(missing) == {}


def test_midrun_table_fills_prefixes_below_the_scan_from_the_static_runs(tmp_path):
    cache, runs, budgets = _cache(tmp_path, ["a", "b"])
    mid = sm.midrun_runs(cache, budgets, runs, {"a": LR, "b": LR})
    o, f = sm.midrun_table(mid, runs, {"a": LR, "b": LR}, _static(["a", "b"]))
    a = o[o.task == "a"].set_index("k")
    assert list(a.index) == list(range(7))
    assert (a.source[[0, 1, 2]] == "static").all() and (a.source[[3, 4, 5, 6]] == "midrun").all()
    assert a.loss[5] == pytest.approx(SLOPE * DISAGREE["a"][5]) and a.saving[5] == pytest.approx(0.5)
    # static k=2: 0.2 per epoch saved, counted on the 3 of 4 epochs after the freeze
    assert a.saving[2] == pytest.approx(0.2 * 0.75) and a.loss[2] == pytest.approx(0.008)
    assert set(f.when) == {"end"} and set(f.task) == {"a", "b"}
    assert sm.midrun_table(mid.iloc[:0], runs, {}, _static())[0].empty


def test_midrun_loto_recovers_a_known_monotone_truth(tmp_path):
    cache, runs, budgets = _cache(tmp_path)
    chosen = {t: LR for t in TASKS}
    mid = sm.midrun_runs(cache, budgets, runs, chosen)
    o, f = sm.midrun_table(mid, runs, chosen, _static())
    res = sm.midrun_loto(o, f, {t: 0.05 for t in TASKS})
    assert res["tasks"] == TASKS
    sc = res["scores"].set_index("candidate")
    # revert_disagree at the freeze is the truth (loss = SLOPE x): every held-out task advised within the tolerance
    rd = sc.loc["revert_disagree"]
    assert rd.tasks == 4 and rd.tasks_ge_985 == 4 and rd.min_rel_acc >= 0.99
    adv = res["advice"]
    a = adv[(adv.candidate == "revert_disagree") & (adv.when == "end")].set_index("fold")
    # the oracle per task: loss <= 1% (disagreement <= 0.0526) on every prefix up to k
    oracle = {"a": 4, "b": 6, "c": 3, "d": 4}
    assert a.oracle_k.to_dict() == oracle
    assert a.advised_k.to_dict() == oracle and (a.regret == 0).all() and (a.source == "midrun").all()
    up = adv[(adv.candidate == "revert_disagree@upper") & (adv.when == "end")].set_index("fold")
    assert up.advised_k["c"] == 2 and up.source["c"] == "static"  # the interval's margin steps below the scan
    assert up.same_run_cpu["c"] == pytest.approx(1 - 0.2 * 0.75 + 0.05)
    np.testing.assert_allclose(a.same_run_cpu, a.cpu_ratio + 0.05)
    assert rd.mean_same_run_cpu == pytest.approx(float(a.same_run_cpu.mean()))
    # calibration is read only on the scan's own prefixes (the static rows below it are not mid-run outcomes)
    p = res["pairs"]
    assert p[(p.candidate == "revert_disagree") & (p.k < 3)].measured_loss.isna().all()
    assert p[(p.candidate == "revert_disagree") & (p.k >= 3)].measured_loss.notna().all()
    assert not any(c.startswith("early") for c in res["scores"])


def test_midrun_loto_waits_for_three_tasks(tmp_path):
    cache, runs, budgets = _cache(tmp_path, ["a", "b"])
    chosen = {"a": LR, "b": LR}
    o, f = sm.midrun_table(sm.midrun_runs(cache, budgets, runs, chosen), runs, chosen, _static(["a", "b"]))
    res = sm.midrun_loto(o, f, {})
    assert res["scores"].empty and res["tasks"] == ["a", "b"]


def test_tracker_share_in_reference_units():
    runs = pd.DataFrame([
        {"task": "a", "method": "full", "seed": 0, "steps": 100, "train_cpu_seconds": 100.0, "ref_full_step_cpu": 1.0},
        {"task": "a", "method": "auto", "seed": 0, "steps": 100, "train_cpu_seconds": 80.0, "ref_full_step_cpu": 2.0,
         "tracker_cpu_seconds": 20.0},
        {"task": "b", "method": "auto", "seed": 0, "steps": 100, "train_cpu_seconds": 80.0, "ref_full_step_cpu": 2.0,
         "tracker_cpu_seconds": 20.0},  # no full run: not read
    ])
    assert sm.tracker_share(runs) == {"a": pytest.approx(0.1)}  # 20 s at 2 s/unit = 10 units of a 100-unit run
    assert sm.tracker_share(pd.DataFrame()) == {}
    assert math.isnan(sm._hit_share(None))
    assert sp.KS == tuple(range(7))


def test_fold_predictors_leave_each_task_out_of_its_mid_run_fit(tmp_path):
    cache, runs, budgets = _cache(tmp_path)
    chosen = {t: LR for t in TASKS}
    o, f = sm.midrun_table(sm.midrun_runs(cache, budgets, runs, chosen), runs, chosen, _static())
    folds = sm.fold_predictors(o, f)
    assert sorted(folds) == TASKS
    for held, fit in folds.items():
        assert fit["target"] == sm.MID_TARGET and fit["fit_on"] == [t for t in TASKS if t != held]
        assert all(p["fit_on"] == fit["fit_on"] for p in fit["predictors"])
        assert {p["name"] for p in fit["predictors"]} <= set(sm.MID_CANDIDATES)
        assert fit["predictors"][0]["loto"]["tasks"] == 3  # ranked by a leave-one-task-out among the other three
    assert sm.fold_predictors(o[o.task.isin(TASKS[:3])], f) == {}  # three tasks: no inner ranking


def test_midfit_runs_read_the_auto_runs_driven_by_the_mid_run_fit():
    full = {"task": "a", "method": "full", "config": "full", "seed": 0, "accuracy": 0.8, "steps": 400, "epochs": 4.0,
            "train_cpu_seconds": 400.0, "ref_full_step_cpu": 1.0}
    auto = {**full, "method": "auto", "config": sm.MIDFIT, "accuracy": 0.79, "train_cpu_seconds": 500.0,
            "ref_full_step_cpu": 2.0, "auto": {"freeze_steps": {"embeddings": 100, "block.3": 100}},
            "auto_options": {"predictor": {"name": "revert_kl", "decide": "upper"}}}
    plan = {**auto, "config": "full"}  # the plan's auto run: not this table's
    got = sm.midfit_runs(pd.DataFrame([full, auto, plan]))
    assert len(got) == 1
    r = got.iloc[0]
    assert r.rel_acc == pytest.approx(0.79 / 0.8) and r.cpu_ratio == pytest.approx(0.625)
    assert r.frozen == "embeddings@25%, block.3@25%" and r.driven_by == "revert_kl@upper"
    assert sm.midfit_runs(pd.DataFrame()).empty
