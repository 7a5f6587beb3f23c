"""Full fine-tuning vs static freeze advice vs the online FreezePolicy (small version).

One command:  .venv/bin/python benchmarks/bench_online_freeze.py  [--train 384] [--every 2]

Three runs on the same data, seed and budget (MiniLM-L6, Rotten Tomatoes, 1 epoch):
  * ``full``: everything trains;
  * ``static``: embeddings + bottom ``--static-k`` blocks frozen from the start (the advice that
    ``compare`` gave for this model in the demo: entries with CKA ≥ 0.95);
  * ``online``: a Tracker every ``--every`` steps with ``FreezePolicy(threshold, patience)``.
Reports test accuracy, training seconds (incl. tracking for ``online``) and what the policy froze
when. The freeze study proper lives in analyses/freeze_study.py (another engineer's); this is a
small, separate comparison. The policy threshold is per check interval, so it scales with
``--every``: the default 2e-3 is meant for checks every 50 steps; with checks every 2 steps this
run uses ~2e-3 × 2/50 ≈ 1e-4. Writes benchmarks/results/online_freeze.json,
online_freeze_log.csv and online_freeze_trajectory.csv (drawn by figures/fig_trajectory.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from layerprobe._atomic import atomic_write_text  # noqa: E402
from layerprobe.blocks import find_blocks  # noqa: E402
from layerprobe.demo import DemoConfig, default_model_path, load_classifier, split_rotten_tomatoes  # noqa: E402
from layerprobe.freeze import bottom_prefix, freeze  # noqa: E402
from layerprobe.track import FreezePolicy, Tracker  # noqa: E402
from layerprobe.train import TrainConfig, evaluate, fine_tune  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=384)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=1e-4)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--static-k", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.test, args.every = 96, 32, 1
    train, test, probe = split_rotten_tomatoes(DemoConfig(train_size=args.train, test_size=args.test, probe_size=64))
    texts, labels = train["text"].tolist(), train["label"].tolist()
    cfg = TrainConfig(epochs=1.0, lr=args.lr, batch_size=32, max_length=64, seed=0)
    runs, log = [], None
    for variant in ("full", "static", "online"):
        model, tok = load_classifier(default_model_path(), 2, seed=0)
        row = {"variant": variant, "load_before": os.getloadavg()[0]}
        hooks, tracker, policy = [], None, None
        t0 = time.perf_counter()
        if variant == "static":
            row["frozen"] = bottom_prefix(find_blocks(model), args.static_k)
            freeze(model, row["frozen"])
        if variant == "online":
            policy = FreezePolicy(threshold=args.threshold, patience=args.patience)
            tracker = Tracker(model, tok, probe["text"].tolist(), every_n_steps=args.every, freeze_policy=policy)
            tracker.start()
            hooks = [tracker.on_step]
        stats = fine_tune(model, tok, texts, labels, cfg, on_step=hooks, progress=False)
        row.update(seconds=time.perf_counter() - t0,
                   steps=stats["steps"], trainable_params_end=stats["trainable_params"],
                   accuracy=evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), 64),
                   load_after=os.getloadavg()[0])
        if policy is not None:
            row["frozen"] = list(policy.frozen)
            row["freeze_steps"] = {r["block"]: r["step"] for r in policy.log if r["action"] == "freeze"}
            row["track_seconds"] = tracker.seconds_total
            log = policy.log_frame()
            if not args.smoke:
                tracker.write_csv(os.path.join(RESULTS, "online_freeze_trajectory.csv"))
        runs.append(row)
        print(json.dumps(row), flush=True)
    summary = {"train_examples": args.train, "test_examples": args.test, "epochs": 1.0, "lr": args.lr, "batch_size": 32,
               "every_n_steps": args.every, "threshold": args.threshold, "patience": args.patience,
               "static_k": args.static_k, "runs": runs}
    if not args.smoke:
        atomic_write_text(os.path.join(RESULTS, "online_freeze.json"), json.dumps(summary, indent=1) + "\n")
        if log is not None:
            atomic_write_text(os.path.join(RESULTS, "online_freeze_log.csv"),
                              log.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
