"""Plan amendment 5: what freezing a bottom prefix *in the middle of the run* costs, and what predicts it.

The mid-run scan (``freeze_study.py --stage midrun``) re-makes a seed's full run with the embeddings + ``k`` blocks
frozen (and the prefix cache attached) at the end of epoch :data:`~study_grid.MIDRUN_EPOCH`; up to that step it is
the full run (training with one thread is deterministic). This module turns those runs into the same tables the
static study has (pure: runs and cached files in, frames out):

* :func:`midrun_runs` — one row per mid-run run: accuracy relative to the same seed's full run, training CPU of
  the whole run relative to it (reference units), whether its dev accuracy at the freeze equals the full run's;
* :func:`midrun_table` — ``(outcomes, features)`` in :func:`study_predict.study_table`'s shapes: per (task, k) the
  measured loss and CPU saved, prefixes below the scan read from the static runs (a lower bound on their
  accuracy, marked ``source="static"``), and per (task, seed, candidate, k) the label-free measurements the
  tracker can take *at the freeze* (the full run's revert test and weight drift at epoch 1, CKA at the check
  nearest before it) as ``when="end"`` so the static fits apply unchanged;
* :func:`midrun_loto` — the leave-one-task-out of the label-free candidates on them, scored like the static ones,
  with each task's tracker cost (from its auto runs) added to the advised run's CPU.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import study_predict as sp
from study_grid import MIDRUN_EPOCH

MID_TARGET = "accuracy loss 1 - acc(prefix frozen at the end of epoch 1) / acc(full fine-tuning)"
#: the auto runs driven by a fold's mid-run fit (freeze_study.py --auto-fit midrun): their config name
MIDFIT = "midfit"
#: what the tracker can measure at a check, without labels (the static study's label-free candidates)
MID_CANDIDATES = ("size", "cka_abs", "cka_rel", "drift_rel", "revert_kl", "revert_disagree", "combo_revert_cka")
_NAME = re.compile(r"^midrun_mid(\d+)-emb\+(\d+)_lr([0-9.e+-]+)_seed(\d+)\.json$")


def midrun_runs(cache: str, budgets: dict, runs: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    """One row per cached mid-run run at its task's chosen lr and budget, against the same seed's full run."""
    rows = []
    for task, b in budgets.items():
        lr = chosen.get(task)
        full = runs[(runs.task == task) & (runs.method == "full")] if len(runs) else runs
        for path in sorted(glob.glob(os.path.join(cache, task, "midrun_*.json"))):
            m = _NAME.match(os.path.basename(path))
            if not m or int(m.group(1)) != MIDRUN_EPOCH:
                continue
            with open(path) as fh:
                r = json.load(fh)
            if lr is None or r.get("lr") != lr or r.get("budget") != asdict(replace(b, lr=lr)):
                continue
            f = full[(full.lr == lr) & (full.seed == r["seed"])]
            if not len(f):
                continue
            fr = next(f.itertuples())
            dev_f = list(getattr(fr, "dev_history", None) or [])
            dev_m = list(r.get("dev_history") or [])
            rows.append({
                "task": task, "seed": int(r["seed"]), "k": int(m.group(2)), "frozen_at_step": r.get("frozen_at_step"),
                "accuracy": float(r["accuracy"]), "full_accuracy": float(fr.accuracy),
                "rel_acc": float(r["accuracy"]) / float(fr.accuracy),
                "cpu_ratio": sp.cpu_ratio(pd.Series(r), fr, per_epoch=False),
                "epochs": float(r["epochs"]), "full_epochs": float(fr.epochs), "best_epoch": int(r["best_epoch"]),
                "same_until_freeze": bool(dev_f[:MIDRUN_EPOCH] and dev_m[:MIDRUN_EPOCH] == dev_f[:MIDRUN_EPOCH]),
                "cache_hit_share": _hit_share(r.get("cache")), "peak_rss_mb": r.get("peak_rss_mb"),
                "train_cpu_seconds": float(r["train_cpu_seconds"]),
            })
    return pd.DataFrame(rows)


def _hit_share(stats) -> float:
    if not isinstance(stats, dict):
        return math.nan
    hit, miss = stats.get("hit_rows") or 0, stats.get("miss_rows") or 0
    return hit / (hit + miss) if hit + miss else math.nan


def freeze_features(full_row: dict, read: Callable[[str], dict | None] = sp._read_json) -> dict[str, dict[int, float]]:
    """The label-free candidates' prefix features of one full run *at the freeze* (epoch ``MIDRUN_EPOCH``):
    its mid-run revert test and weight drift, and the tracker's CKA to the start at the last check before it."""
    meas = read(sp.side_file(full_row, "measures.json")) or {}
    at = [m for m in meas.get("mid_run") or [] if float(m.get("epoch", -1)) == float(MIDRUN_EPOCH)]
    if not at:
        return {}
    src = {"drift": at[0].get("drift"), "revert": at[0].get("revert")}
    entries = None
    traj = sp.side_file(full_row, "trajectory.csv")
    if os.path.exists(traj):
        tr = pd.read_csv(traj)
        before = sorted(s for s in tr.step.unique() if 0 < s <= at[0]["step"])
        if before:
            now = tr[tr.step == before[-1]]
            entries = [{"name": x.block, "cka": x.cka_to_start} for x in now.itertuples()]
    feats = sp.run_features(entries, src, None, None)
    return {c: v for c, v in feats.items() if c in MID_CANDIDATES}


def midrun_table(mid: pd.DataFrame, runs: pd.DataFrame, chosen: dict, static: pd.DataFrame,
                 read: Callable[[str], dict | None] = sp._read_json) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(outcomes, features)`` of the mid-run scan (see the module docstring). Only tasks with a full scan on
    at least one seed enter; a prefix below the scan takes the static outcome (``source="static"``) with its
    per-epoch saving counted only after the freeze."""
    out, feat = [], []
    if not len(mid):
        return pd.DataFrame(), pd.DataFrame()
    for task, g in mid.groupby("task"):
        scan = sorted(set(g.k))
        for k, gk in g.groupby("k"):
            rel = {int(r.seed): float(r.rel_acc) for r in gk.itertuples()}
            out.append({"task": task, "k": int(k), "n_seeds": len(gk), "acc": float(gk.accuracy.mean()),
                        "loss": 1.0 - float(gk.accuracy.mean()) / float(gk.full_accuracy.mean()),
                        "rel_acc": float(gk.accuracy.mean()) / float(gk.full_accuracy.mean()),
                        "saving": 1.0 - float(gk.cpu_ratio.mean()), "rel": rel, "source": "midrun"})
        after = max(0.0, 1.0 - MIDRUN_EPOCH / float(g.full_epochs.mean()))  # share of the run after the freeze
        st = static[static.task == task] if len(static) else static
        for r in st.itertuples():
            if int(r.k) < min(scan):
                out.append({"task": task, "k": int(r.k), "n_seeds": int(r.n_seeds), "acc": float(r.acc),
                            "loss": float(r.loss), "rel_acc": float(r.rel_acc), "saving": float(r.saving) * after,
                            "rel": r.rel, "source": "static"})
        lr = chosen.get(task)
        for fr in runs[(runs.task == task) & (runs.method == "full") & (runs.lr == lr)].to_dict("records"):
            if int(fr["seed"]) not in set(g.seed):
                continue
            for cand, xs in freeze_features(fr, read).items():
                feat += [{"task": task, "seed": int(fr["seed"]), "when": "end", "candidate": cand, "k": int(k),
                          "x": float(x)} for k, x in xs.items()]
    o, f = pd.DataFrame(out), pd.DataFrame(feat)
    if len(o):
        o = o.sort_values(["task", "k"]).reset_index(drop=True)
    return o, f


def tracker_share(runs: pd.DataFrame) -> dict[str, float]:
    """Per task, the auto runs' tracker CPU (its probe passes and revert tests) over the same seed's full run's
    training CPU, in reference units: what the same-run policy pays on top of the run it drives."""
    out: dict[str, list[float]] = {}
    if not len(runs):
        return {}
    for a in runs[runs.method == "auto"].itertuples():
        f = runs[(runs.task == a.task) & (runs.method == "full") & (runs.seed == a.seed)]
        if not len(f):
            continue
        fu = sp.step_units(next(f.itertuples()))
        ref = getattr(a, "ref_full_step_cpu", None)
        if fu is None or ref is None or not np.isfinite(ref) or ref <= 0:
            continue
        out.setdefault(a.task, []).append(float(a.tracker_cpu_seconds) / float(ref) / (fu * float(f.steps.iloc[0])))
    return {t: float(np.mean(v)) for t, v in out.items()}


def midrun_loto(outcomes: pd.DataFrame, feats: pd.DataFrame, tracker: dict[str, float]) -> dict:
    """Leave-one-task-out of :data:`MID_CANDIDATES` on the mid-run outcomes: ``pairs`` (calibration only on the
    scan's own prefixes), ``advice`` (one row per fold, candidate and seed, with ``cpu_ratio`` = 1 − saving and
    ``same_run_cpu`` = that + the task's tracker share) and ``scores`` (:func:`study_predict.score`, plus the
    mean same-run CPU over tasks). Needs three tasks."""
    tasks = sorted(set(outcomes.task) & set(feats.task)) if len(outcomes) and len(feats) else []
    if len(tasks) < 3:
        return {"tasks": tasks, "pairs": pd.DataFrame(), "advice": pd.DataFrame(), "scores": pd.DataFrame()}
    o, f, _ = sp.complete(outcomes, feats)
    pairs, adv = sp.loto(o, f, candidates=MID_CANDIDATES)
    src = {(r.task, int(r.k)): r.source for r in o.itertuples()}
    if len(pairs):
        static = pairs.apply(lambda r: src.get((r.fold, int(r.k))) == "static", axis=1)
        pairs.loc[static, "measured_loss"] = math.nan
    if len(adv):
        adv["source"] = [src.get((r.fold, int(r.advised_k)), "full" if r.advised_k < 0 else "?")
                         for r in adv.itertuples()]
        adv["cpu_ratio"] = 1.0 - adv.saving
        adv["same_run_cpu"] = adv.cpu_ratio + adv.fold.map(lambda t: tracker.get(t, math.nan))
    scores = sp.score(pairs, adv) if len(adv) else pd.DataFrame()
    if len(scores):
        per = adv[adv.when == "end"].groupby(["candidate", "fold"]).same_run_cpu.mean().groupby("candidate")
        scores["mean_same_run_cpu"] = scores.candidate.map(per.mean())
        scores["max_same_run_cpu"] = scores.candidate.map(per.max())
        scores = scores.drop(columns=[c for c in scores if c.startswith("early")])
    return {"tasks": sorted(set(o.task)), "pairs": pairs, "advice": adv, "scores": scores}


def fold_predictors(outcomes: pd.DataFrame, feats: pd.DataFrame) -> dict[str, dict]:
    """Per held-out task, the mid-run predictor file as it would ship **without** that task (every candidate of
    :data:`MID_CANDIDATES` fit on the other tasks, ranked by a leave-one-task-out among them only): what the auto
    runs driven by the mid-run fit use. Needs four tasks (the inner ranking needs three)."""
    o, f, _ = sp.complete(outcomes, feats) if len(outcomes) and len(feats) else (outcomes, feats, [])
    tasks = sorted(set(o.task) & set(f.task)) if len(o) and len(f) else []
    if len(tasks) < 4:
        return {}
    out = {}
    for held in tasks:
        oo, ff = o[o.task != held], f[f.task != held]
        out[held] = sp.export_predictor(oo, ff, sp.score(*sp.loto(oo, ff, candidates=MID_CANDIDATES)),
                                        target=MID_TARGET)
    return out


def frozen_when(run) -> str:
    """What an auto run froze and when, as a share of its steps: ``embeddings@25%, block.0@25%`` (or ``nothing``)."""
    auto = run.auto if isinstance(run.auto, dict) else {}
    total = max(1, int(run.steps))
    return ", ".join(f"{n}@{100 * st / total:.0f}%" for n, st in (auto.get("freeze_steps") or {}).items()) or "nothing"


def midfit_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The auto runs driven by a fold's mid-run fit (config :data:`MIDFIT`), against the same seed's full run:
    relative accuracy, CPU of the whole run (tracker included) and per epoch in reference units, what froze when."""
    rows = []
    if not len(runs) or "config" not in runs:
        return pd.DataFrame()
    for r in runs[(runs.method == "auto") & (runs.config.astype(str) == MIDFIT)].itertuples():
        f = runs[(runs.task == r.task) & (runs.method == "full") & (runs.seed == r.seed)]
        if not len(f):
            continue
        fr = next(f.itertuples())
        pred = ((r.auto_options if isinstance(r.auto_options, dict) else {}).get("predictor") or {})
        rows.append({"task": r.task, "seed": int(r.seed), "rel_acc": float(r.accuracy) / float(fr.accuracy),
                     "cpu_ratio": sp.cpu_ratio(r, fr, per_epoch=False), "cpu_per_epoch_ratio": sp.cpu_ratio(r, fr),
                     "frozen": frozen_when(r),
                     "driven_by": str(pred.get("name")) + ("@upper" if pred.get("decide") == "upper" else "")})
    return pd.DataFrame(rows)
