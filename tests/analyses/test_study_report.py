"""The freeze study's pure report logic on a synthetic run cache: lr choice, the rule fit on one task
only, the oracle, the regret, advice rows and advice timing."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, replace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "analyses"))

import freeze_study as fs  # noqa: E402
import study_grid as sg  # noqa: E402
import study_report as sr  # noqa: E402

CKAS = {"rt": [0.9999, 0.99, 0.93, 0.75, 0.4, 0.25, 0.15], "bbc": [0.9999, 0.92, 0.87, 0.72, 0.66, 0.65, 0.54]}
# accuracy relative to full fine-tuning per frozen k (embeddings + k blocks), per task
REL = {"rt": [1.0, 1.0, 0.995, 0.989, 0.97, 0.95, 0.86], "bbc": [1.0, 1.0, 0.999, 0.997, 0.992, 0.985, 0.92]}
CPU = [0.9, 0.75, 0.6, 0.5, 0.4, 0.3, 0.1]  # CPU time relative to full per k


def _write(cache, b, method, cfg, seed, acc, cpu, lr=1e-4, extra=None):
    row = {"task": b.task, "method": method, "config": cfg, "embeddings_frozen": cfg != "full",
           "frozen_blocks": 0 if cfg in ("full", "emb") else int(cfg.split("+")[1]), "seed": seed, "lr": lr,
           "accuracy": acc, "dev_accuracy": acc, "train_cpu_seconds": cpu, "train_seconds": 2 * cpu,
           "epochs": 3.0, "trainable_params": 10, "steps": 100, "budget": asdict(replace(b, lr=lr)), **(extra or {})}
    path = fs.run_file(str(cache), b.task, method, cfg, lr, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(row, f)
    return path


def _entries(ckas):
    names = ["embeddings"] + [f"block.{i}" for i in range(6)]
    return [{"name": n, "kind": "embeddings" if n == "embeddings" else "block", "n_params": 10,
             "weight_drift": 0.01, "cka": c, "cka_ci": [c - 0.002, min(1.0, c + 0.002)]} for n, c in zip(names, ckas)]


@pytest.fixture
def cache(tmp_path):
    for task, b in ((t, fs.BUDGETS[t]) for t in CKAS):  # the two tasks of the synthetic cache
        for seed in (0, 1, 2):
            full = _write(tmp_path, b, "full", "full", seed, 0.8, 1000.0)
            with open(full[:-5] + ".comparison.json", "w") as f:
                json.dump({"blocks": _entries(CKAS[task])}, f)
            with open(full[:-5] + ".trajectory.csv", "w") as f:
                f.write("step,block,cka_to_start,weight_drift\n")
                for step in (10, 20, 40, 60, 100):  # the profile deepens over the run, its shape holds
                    for e in _entries(CKAS[task]):
                        f.write(f"{step},{e['name']},{1 - (1 - e['cka']) * step / 100},0.01\n")
            for k in range(7):
                _write(tmp_path, b, "fixed", "emb" if k == 0 else f"emb+{k}", seed, 0.8 * REL[task][k], 1000 * CPU[k])
        _write(tmp_path, b, "full", "full", 0, 0.7, 1000.0, lr=5e-5)  # an lr that loses on dev
    return tmp_path


def test_report_fits_on_rt_only_and_scores_bbc(cache, tmp_path):
    out = tmp_path / "results"
    info = sr.build_outputs(str(cache), str(out))
    settings = json.loads((out / "settings.json").read_text())
    assert settings["tasks"]["rt"]["lr"] == 1e-4 and not settings["tasks"]["rt"]["lr_final"]  # 2e-4 not run
    rule = json.loads((out / "rule.json").read_text())
    # on rt, emb+2 is the largest prefix keeping >= 99%; thresholds in (0.748, 0.928] advise it (block.1's
    # lower bound is 0.928, block.2's 0.748); the most cautious of them on the grid is min_cka 0.9
    assert rule["fit"] and rule["thresholds"]["min_cka"] == 0.9
    assert info["rt"]["advice"] == {"0": "emb+2", "1": "emb+2", "2": "emb+2"}
    assert info["rt"]["oracle_config"] == "emb+2" and info["rt"]["regret"] == pytest.approx(0.0)
    assert info["rt"]["advice_rel_acc"] == pytest.approx(0.995)
    # bbc is only scored: the same threshold advises emb+1 there, the oracle is emb+4 (0.992)
    assert info["bbc"]["advice"]["0"] == "emb+1" and info["bbc"]["oracle_config"] == "emb+4"
    assert info["bbc"]["regret"] == pytest.approx((1 - CPU[4]) - (1 - CPU[1]))
    rows = [r for r in open(out / "summary.csv").read().splitlines()[1:]]
    advice = [r for r in rows if ",advice," in r]
    assert len(advice) == 6 and all(r.endswith(",True") or ",True," in r for r in advice)
    assert not any(",0.0001," not in r for r in rows)  # only the chosen lr's runs
    timing = (out / "advice_timing.csv").read_text()
    assert "0.2," in timing
    assert (out / "report.md").read_text().count("| rt |") >= 1


def test_oracle_and_outcome_need_the_same_seed(cache):
    runs = sr.load_runs(str(cache), fs.BUDGETS)
    runs = runs[runs.lr == 1e-4]
    o = sr.oracle(runs, "rt")
    assert o["oracle_k"] == 2 and o["by_k"][3]["rel_acc"] == pytest.approx(0.989)
    full, fixed = sr.per_seed_table(runs, "rt")
    assert sr.outcome((False, 0), 0, full, fixed) == (1.0, 0.0)
    assert sr.outcome((True, 4), 1, full, fixed) == pytest.approx((0.97, 0.6))
    assert sr.outcome((True, 4), 7, full, fixed) is None


def test_cautious_oracle_needs_the_seeds_to_vouch_for_it(cache):
    """The point oracle takes the mean over seeds; the cautious one wants mean - se >= 99%."""
    b = fs.BUDGETS["bbc"]
    # emb+4 on bbc: seeds at 1.02, 0.98, 0.98 of full -> mean 0.9933 >= 0.99, se 0.0133 -> 0.98 < 0.99
    for seed, rel in ((0, 1.02), (1, 0.98), (2, 0.98)):
        _write(cache, b, "fixed", "emb+4", seed, 0.8 * rel, 1000 * CPU[4])
    runs = sr.load_runs(str(cache), fs.BUDGETS)
    o = sr.oracle(runs[runs.lr == 1e-4], "bbc")
    assert o["by_k"][4]["rel_acc"] == pytest.approx(0.99333, abs=1e-5)
    assert o["by_k"][4]["rel_acc_se"] == pytest.approx(0.013333, abs=1e-5)
    assert o["oracle_k"] == 4
    # emb+3 keeps 0.997 on every seed (se 0): it is the largest prefix the seeds vouch for
    assert o["cautious_oracle_k"] == 3 and o["by_k"][3]["rel_acc_se"] == pytest.approx(0.0, abs=1e-12)
    assert o["cautious_oracle_saving"] == pytest.approx(1 - CPU[3])
    assert sr.mean_se([0.5])[0] == 0.5 and math.isnan(sr.mean_se([0.5])[1])
    out = cache / "results"
    info = sr.build_outputs(str(cache), str(out))
    assert info["bbc"]["cautious_oracle_config"] == "emb+3"
    assert info["bbc"]["regret_cautious"] == pytest.approx((1 - CPU[3]) - (1 - CPU[1]))
    assert "| bbc | emb: 100.0% ± 0.0 (3)" in (out / "report.md").read_text()


def test_auto_probe_size_keeps_probe_passes_under_their_share():
    """The auto run's probe costs at most AUTO_PROBE_SHARE of training compute, within [floor, cap]."""
    for n_train in (50, 200, 1433, 4000, 100_000):
        for checks in (1, 2, 4, 8):
            n = fs.auto_probe_size(128, n_train, checks)
            assert 32 <= n <= 128
            share = n * checks / (3 * n_train)
            assert share <= fs.AUTO_PROBE_SHARE + 1e-9 or n == 32
            if n < 128:  # one more text would break the budget
                assert (n + 1) * checks / (3 * n_train) > fs.AUTO_PROBE_SHARE or n == 32
    assert fs.auto_probe_size(16, 64, 1) == 16  # the cap wins over the floor (smoke sizes)


def test_auto_variants_are_listed_apart_from_the_targets(cache):
    """An exploratory auto run (``--auto-variant``) is scored against the same seed's full run and listed
    in its own section; the study's own auto target ignores it."""
    b = fs.BUDGETS["rt"]
    for seed, (acc, cpu, epochs) in enumerate([(0.792, 600.0, 3.0), (0.8, 700.0, 4.0)]):
        row = {"task": "rt", "method": "auto", "config": "rule-x", "embeddings_frozen": False, "frozen_blocks": 0,
               "seed": seed, "lr": 1e-4, "accuracy": acc, "dev_accuracy": acc, "train_cpu_seconds": cpu,
               "train_seconds": cpu, "epochs": epochs, "trainable_params": 10, "steps": 100,
               "budget": asdict(replace(b, lr=1e-4)), "auto_options": {"thresholds": {"min_cka": 0.5}},
               "auto": {"freeze_steps": {"embeddings": 25, "block.0": 50}, "frozen": ["embeddings", "block.0"]}}
        path = fs.run_file(str(cache), "rt", "auto", "rule-x", 1e-4, seed)
        with open(path, "w") as fh:
            json.dump(row, fh)
    info = sr.build_outputs(str(cache), str(cache / "results"))
    (v,) = info["_auto_variants"]
    assert (v["task"], v["variant"], v["n"], v["thresholds"]) == ("rt", "rule-x", 2, {"min_cka": 0.5})
    assert v["rel_acc"] == pytest.approx((0.99 + 1.0) / 2) and v["cpu_ratio"] == pytest.approx(0.65)
    assert v["cpu_per_epoch_ratio"] == pytest.approx((0.6 + 0.7 * 3 / 4) / 2)
    assert v["frozen"].startswith("s0: embeddings@25%, block.0@50%")
    assert info["rt"]["auto_n_seeds"] == 0  # not the study's auto method
    report = (cache / "results" / "report.md").read_text()
    assert "## Exploratory: the auto run with other rules" in report and "| rt | rule-x | min_cka=0.5 | 2 |" in report


def test_lora_against_the_advice_reads_each_seed_against_its_own_full_run():
    import pandas as pd

    rows = []
    for seed in (0, 1):
        rows += [{"task": "a", "method": "full", "config": "full", "seed": seed, "accuracy": 0.9, "epochs": 3.0,
                  "train_cpu_seconds": 100.0 * (1 + seed), "peak_rss_mb": 1000.0},
                 {"task": "a", "method": "advice", "config": "emb+2", "seed": seed, "accuracy": 0.9, "epochs": 3.0,
                  "train_cpu_seconds": 60.0 * (1 + seed), "peak_rss_mb": 900.0},
                 {"task": "a", "method": "lora", "config": "lora", "seed": seed, "accuracy": 0.88, "epochs": 3.0,
                  "train_cpu_seconds": 80.0 * (1 + seed), "peak_rss_mb": 800.0},
                 {"task": "b", "method": "full", "config": "full", "seed": seed, "accuracy": 0.8, "epochs": 3.0,
                  "train_cpu_seconds": 100.0, "peak_rss_mb": None},
                 {"task": "b", "method": "advice", "config": "full", "seed": seed, "accuracy": 0.8, "epochs": 3.0,
                  "train_cpu_seconds": 100.0, "peak_rss_mb": None},
                 {"task": "b", "method": "lora", "config": "lora", "seed": seed, "accuracy": 0.81, "epochs": 3.0,
                  "train_cpu_seconds": 70.0, "peak_rss_mb": None}]
    out = {r["task"]: r for r in sr.lora_vs_advice(pd.DataFrame(rows))}
    a, b = out["a"], out["b"]
    assert a["advice_cpu"] == pytest.approx(0.6) and a["lora_cpu"] == pytest.approx(0.8)
    assert a["lora_rel_acc"] == pytest.approx(0.88 / 0.9) and a["verdict"].startswith("the advice: faster")
    assert a["lora_plus_freeze_cpu_est"] == pytest.approx(0.8 * 0.6)  # the prefix saved 40% per epoch
    assert (a["full_peak_mb"], a["advice_peak_mb"], a["lora_peak_mb"]) == (1000.0, 900.0, 800.0)
    assert b["verdict"] == "LoRA: faster at equal or better accuracy" and b["lora_plus_freeze_cpu_est"] == \
        pytest.approx(0.7) and b["lora_peak_mb"] is None
    assert sr.lora_vs_advice(pd.DataFrame([r for r in rows if r["method"] != "lora"])) == []


def test_auto_options_use_the_fold_predictor_once_validated(tmp_path):
    """The auto runs on a task use the predictor fit without it (loto_predictors/<task>.json) once it is
    validated, at the study's tolerance; before that (or for another task) the calibrated rule."""
    out = tmp_path / "results"
    (out / "loto_predictors").mkdir(parents=True)
    (out / "rule.json").write_text(json.dumps({"fit": True, "thresholds": {"min_cka": 0.99}, "auto": {"settle": 0.5}}))
    pred = {"name": "revert_kl", "xs": [0.0, 1.0], "ys": [0.0, 0.1], "interval": [-0.01, 0.01], "fit_on": ["a", "b", "c"]}
    fold = {"validated": True, "tolerance_default": 0.01, "predictors": [pred]}
    (out / "loto_predictors" / "trec.json").write_text(json.dumps(fold))
    assert sg.auto_options(str(out), "trec") == {"tolerance": 0.01, "predictor": pred}
    assert sg.auto_options(str(out), "sms") == {"thresholds": {"min_cka": 0.99}, "settle": 0.5}
    (out / "loto_predictors" / "trec.json").write_text(json.dumps({**fold, "validated": False}))
    assert sg.auto_options(str(out), "trec") == {"thresholds": {"min_cka": 0.99}, "settle": 0.5}


def test_a_held_out_auto_run_stands_when_the_folds_are_refit():
    """A cached auto run driven by a predictor fit without its task stays valid when a later task refits the
    folds, whichever candidate and decision now lead the fold; a run whose predictor saw its task, or a
    rule-driven one when a predictor now drives, does not."""
    pred = {"name": "revert_kl", "xs": [0.0, 1.0], "ys": [0.0, 0.1], "interval": [-0.01, 0.01], "fit_on": ["a", "b"]}
    then = {"tolerance": 0.01, "predictor": pred}
    now = {"tolerance": 0.01, "predictor": {**pred, "ys": [0.0, 0.2], "fit_on": ["a", "b", "d"]}}
    assert sg.auto_kind(then, "c") == sg.auto_kind(now, "c") == ("loto",)
    assert sg.auto_kind(then, "a") == ("leaked",)
    # the fold's lead flipping to the interval's upper end (as tasks land) leaves the run standing
    upper = {"tolerance": 0.01, "predictor": {**pred, "name": "revert_disagree", "decide": "upper"}}
    assert sg.auto_kind(upper, "c") == sg.auto_kind(then, "c")
    rule = {"thresholds": {"min_cka": 0.99}, "settle": 0.5}
    assert sg.auto_kind(rule, "c") != sg.auto_kind(now, "c")
    assert sg.auto_kind(rule, "c") == sg.auto_kind({"settle": 0.5, "thresholds": {"min_cka": 0.99}}, "c")
    assert sg.auto_kind(rule, "c") != sg.auto_kind({**rule, "thresholds": {"min_cka": 0.98}}, "c")


def test_reach_lines_state_the_in_sample_bound_and_the_noise_ceiling():
    row = {"candidate": "revert_dev", "label_free": False, "min_rel_acc": 0.987, "max_regret": 0.181,
           "mean_regret": 0.067, "calibration_within_1pt": 0.733}
    free = {**row, "candidate": "revert_disagree", "label_free": True, "max_regret": 0.416}
    text = "\n".join(sr._reach_lines({"n": 24, "n_both": 0, "best": row, "best_free": free, "ship": free,
                                      "calib_max": 0.733,
                                      "ceiling": {"ceiling": 0.813, "pairs": 30, "sd": {"bbc": 0.0139, "sms": None}}}))
    assert "0 of 24 candidate decisions" in text
    assert "**revert_dev** (worst task 98.7%, regret max 18.1% / mean 6.7%, calibration 73%)" in text
    assert "label-free: **revert_disagree**" in text and "regret max 41.6%" in text
    assert "on 81% of the 30 pairs" in text and "bbc 1.4 points" in text and "sms" not in text
    assert sr._reach_lines({}) == []


def test_a_re_made_full_run_lends_its_cpu_units_and_leaves_the_runs():
    """--stage ref: the re-made full run (config 'ref') is no run of its own in the results; the full run of
    the same task, lr and seed without a reference step reads in its units, so an auto run of a later session
    compares in reference units (not raw seconds across sessions)."""
    import pandas as pd
    import study_predict as sp

    nan = math.nan
    runs = pd.DataFrame([
        # the old full run: 1,000 CPU s over 500 steps in a slow session, no reference step
        {"task": "rt", "method": "full", "config": "full", "lr": 5e-5, "seed": 0, "accuracy": 0.81, "steps": 500,
         "epochs": 4.0, "train_cpu_seconds": 1000.0, "ref_full_step_cpu": nan},
        {"task": "rt", "method": "full", "config": "full", "lr": 5e-5, "seed": 1, "accuracy": 0.80, "steps": 500,
         "epochs": 4.0, "train_cpu_seconds": 990.0, "ref_full_step_cpu": nan},
        # re-made in a fast session: 1.2 reference steps per step
        {"task": "rt", "method": "full", "config": "ref", "lr": 5e-5, "seed": 0, "accuracy": 0.81, "steps": 500,
         "epochs": 4.0, "train_cpu_seconds": 600.0, "ref_full_step_cpu": 1.0},
        # an auto run of that fast session: 0.6 reference steps per step, 400 steps
        {"task": "rt", "method": "auto", "config": "full", "lr": 5e-5, "seed": 0, "accuracy": 0.80, "steps": 400,
         "epochs": 3.2, "train_cpu_seconds": 240.0, "ref_full_step_cpu": 1.0},
    ])
    left, lent = sr.lend_units(runs)
    assert len(left) == 3 and not (left.config == "ref").any()
    assert lent == {"rt": [{"seed": 0, "accuracy": 0.81, "ref_accuracy": 0.81, "steps": 500, "ref_steps": 500,
                            "units": pytest.approx(1.2)}]}
    full0, full1, auto = (left.iloc[i] for i in range(3))
    assert sp.step_units(full0) == pytest.approx(1.2) and sp.step_units(full1) is None  # seed 1 has no re-made run
    # per epoch: 0.6 / 1.2 of a full step; over the run, times 400 / 500 steps (raw seconds would say 0.24)
    assert sp.cpu_ratio(auto, full0) == pytest.approx(0.5)
    assert sp.cpu_ratio(auto, full0, per_epoch=False) == pytest.approx(0.4)
    assert sr.lend_units(runs[runs.config != "ref"])[1] == {}


def test_baseline_lines_compare_the_cka_rule_and_say_which_default_ships():
    base = {"tasks": 6, "tasks_ge_985": 6, "min_rel_acc": 0.992, "mean_rel_acc": 0.999, "max_regret": 0.69,
            "mean_regret": 0.43}
    text = "\n".join(sr._baseline_lines(base, "cka", {"mean_regret": 0.5}))
    assert "6/6 >= 98.5%, worst 99.2%" in text and "mean 43.0% (the prediction: mean 50.0%)" in text
    assert "the CKA rule stays the default" in text and "paired by task" not in text
    paired = "\n".join(sr._baseline_lines({**base, "regret_gain_mean": 0.011, "regret_gain_se": 0.031}, "cka",
                                          {"mean_regret": 0.45}))
    assert "its gain over the rule, paired by task, 1.1 ± 3.1 points" in paired
    assert "makes the prediction the default rule" in "\n".join(sr._baseline_lines(base, "predictor", {"mean_regret": 0.3}))
    assert sr._baseline_lines(None, "cka", {}) == []


def test_a_run_claimed_by_a_live_lane_is_skipped_and_a_dead_lanes_claim_is_taken_over(tmp_path):
    import os
    import subprocess

    path = str(tmp_path / "rt" / "fixed_emb_lr5e-05_seed0.json")
    with fs.claimed(path) as mine:
        assert mine and open(path + ".lock").read() == str(os.getpid())
        with fs.claimed(path) as other:  # a second claim while this live process holds it
            assert not other
    assert not os.path.exists(path + ".lock")  # released when the run is done
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(path + ".lock", "w") as fh:  # left by a lane that died
        fh.write(str(dead.pid))
    with fs.claimed(path) as mine:
        assert mine and open(path + ".lock").read() == str(os.getpid())
    assert not os.path.exists(path + ".lock")
