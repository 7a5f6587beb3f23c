"""Auto runs re-made with today's tracker: what the cheaper probe passes save in the same run.

The study's auto runs ran with the tracker of their day. Re-making one (one command per run, from the
repo root, one torch thread; the original's task, seed, lr and fold predictor, read from its ``auto_options``):

    .venv/bin/python analyses/study_tracker_rerun.py --make TASK SEED     # into analyses/cache_rerun/
    .venv/bin/python analyses/study_tracker_rerun.py                      # the table: results/tracker_rerun.csv

A re-made run trains the same model on the same data order with the same policy; only the tracker's probe passes
differ (the revert test served from the whole-stack pass, 16 rows per pass longest first: ``docs/benchmarks.md``),
which changes the probe statistics by float rounding only — so the policy should freeze the same prefixes at the
same steps, and the table says whether it did. CPU is read against the same seed's full run in reference units
(``study_predict.cpu_ratio``), as in the study's report.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from study_predict import cpu_ratio  # noqa: E402

CACHE = os.path.join(HERE, "cache")
RERUN = os.path.join(HERE, "cache_rerun")
RESULTS = os.path.join(HERE, "results")


def _read(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _frozen(run: dict) -> str:
    auto = run.get("auto") or {}
    steps = auto.get("freeze_steps") or {}
    frozen = auto.get("frozen") or []
    return " ".join(f"{e}@{steps.get(e)}" for e in frozen) or "nothing"


def pair_table(cache: str = CACHE, rerun: str = RERUN) -> pd.DataFrame:
    """One row per re-made auto run beside its original: accuracy, what froze when, tracker and training CPU,
    and the run's CPU over the same seed's full run (whole run, reference units)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(rerun, "*", "cache", "*", "auto_full_*.json"))):
        new = _read(path)
        task, name = new["task"], os.path.basename(path)
        old_path = os.path.join(cache, task, name)
        full_path = os.path.join(cache, task, name.replace("auto_full_", "full_full_"))
        if not (os.path.exists(old_path) and os.path.exists(full_path)):
            continue
        old, full = _read(old_path), _read(full_path)
        as_row = lambda r: pd.Series(r)  # noqa: E731 - cpu_ratio reads attributes
        rows.append({
            "task": task, "seed": int(new["seed"]), "lr": new["lr"],
            "accuracy_before": old["accuracy"], "accuracy_after": new["accuracy"],
            "frozen_before": _frozen(old), "frozen_after": _frozen(new),
            "same_decisions": _frozen(old) == _frozen(new) and old["steps"] == new["steps"],
            "tracker_cpu_before": old["tracker_cpu_seconds"], "tracker_cpu_after": new["tracker_cpu_seconds"],
            "tracker_ratio": new["tracker_cpu_seconds"] / old["tracker_cpu_seconds"],
            "train_cpu_before": old["train_cpu_seconds"], "train_cpu_after": new["train_cpu_seconds"],
            "cpu_vs_full_before": cpu_ratio(as_row(old), as_row(full), per_epoch=False),
            "cpu_vs_full_after": cpu_ratio(as_row(new), as_row(full), per_epoch=False),
            "tracker_share_before": old["tracker_cpu_seconds"] / old["train_cpu_seconds"],
            "tracker_share_after": new["tracker_cpu_seconds"] / new["train_cpu_seconds"],
        })
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """The table as Markdown, for the study's page."""
    lines = ["| task | seed | acc before → after | froze the same | tracker CPU before → after | CPU / full before → after |",
             "|---|---:|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.task} | {r.seed} | {r.accuracy_before:.4f} → {r.accuracy_after:.4f} | "
                     f"{'yes' if r.same_decisions else f'no ({r.frozen_before} → {r.frozen_after})'} | "
                     f"{r.tracker_cpu_before:.0f} s → {r.tracker_cpu_after:.0f} s (×{r.tracker_ratio:.2f}) | "
                     f"{r.cpu_vs_full_before:.2f} → {r.cpu_vs_full_after:.2f} |")
    return "\n".join(lines) + "\n"


def make(task: str, seed: int, cache: str = CACHE, rerun: str = RERUN) -> int:
    """Re-make one cached auto run with today's library: its own cache (the task's full runs, for the lr and
    the reference) and a results folder whose fold predictor is the one the original ran with."""
    (orig,) = glob.glob(os.path.join(cache, task, f"auto_full_*_seed{seed}.json"))
    opts = _read(orig)["auto_options"]
    if "predictor" not in opts:
        raise SystemExit(f"{orig}: not driven by a fold predictor; nothing to re-make")
    root = os.path.join(rerun, f"{task}_s{seed}")
    os.makedirs(os.path.join(root, "cache", task), exist_ok=True)
    os.makedirs(os.path.join(root, "out", "loto_predictors"), exist_ok=True)
    for f in glob.glob(os.path.join(cache, task, "full_full_*.json")):  # the runs (lr, CPU reference), not their
        if not f.endswith((".comparison.json", ".measures.json")):     # comparisons: copies kept out of git
            shutil.copy(f, os.path.join(root, "cache", task))
    with open(os.path.join(root, "out", "loto_predictors", f"{task}.json"), "w") as fh:
        json.dump({"validated": True, "tolerance_default": opts["tolerance"], "predictors": [opts["predictor"]]}, fh)
    return subprocess.call([sys.executable, os.path.join(HERE, "freeze_study.py"), "--no-progress", "--no-report",
                            "--tasks", task, "--stage", "auto", "--seeds", str(seed),
                            "--cache", os.path.join(root, "cache"), "--out", os.path.join(root, "out")])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make", nargs=2, metavar=("TASK", "SEED"), help="re-make this cached auto run")
    ap.add_argument("--cache", default=CACHE)
    ap.add_argument("--rerun", default=RERUN)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    if a.make:
        return make(a.make[0], int(a.make[1]), a.cache, a.rerun)
    df = pair_table(a.cache, a.rerun)
    if df.empty:
        print(f"no re-made auto run under {a.rerun}")
        return 0
    os.makedirs(a.out, exist_ok=True)
    df.to_csv(os.path.join(a.out, "tracker_rerun.csv"), index=False, float_format="%.6g")
    print(markdown(df), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
