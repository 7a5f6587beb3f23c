"""Frozen-prefix feature cache vs plain freezing, on the real MiniLM-L6 and Rotten Tomatoes.

One command:  .venv/bin/python benchmarks/bench_feature_cache.py  [--train 256] [--epochs 2] [--k 2]

For each k (embeddings + the bottom k blocks frozen), interleaved per repeat:
  * ``freeze``: ``freeze(model, bottom_prefix(blocks, k))`` then ``fine_tune`` — the frozen prefix
    still runs forward every step (in train mode: its dropout is active);
  * ``cache``:  ``build_cache`` once (eval mode, float32) then ``train_on_cache`` on the rest.
Same seed, data, batch order, optimizer and schedule. Reports seconds per epoch (cache: the
one-time build counted separately and in the total), test accuracy of both, cache memory
(float32 and what float16 would take) and its safetensors size on disk.
Writes benchmarks/results/feature_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from layerprobe._atomic import atomic_write_text  # noqa: E402
from layerprobe.blocks import find_blocks  # noqa: E402
from layerprobe.demo import DemoConfig, default_model_path, load_classifier, split_rotten_tomatoes  # noqa: E402
from layerprobe.feature_cache import build_cache, train_on_cache  # noqa: E402
from layerprobe.freeze import bottom_prefix, freeze  # noqa: E402
from layerprobe.train import TrainConfig, evaluate, fine_tune  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--k", type=int, nargs="+", default=[2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.test, args.epochs, args.k, args.repeats = 64, 32, 1.0, [2], 1
    train, test, _ = split_rotten_tomatoes(DemoConfig(train_size=args.train, test_size=args.test, probe_size=64))
    texts, labels = train["text"].tolist(), train["label"].tolist()
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=32, max_length=64, seed=0)
    runs = []
    for r in range(args.repeats):
        for k in args.k:
            for variant in ("freeze", "cache"):
                model, tok = load_classifier(default_model_path(), 2, seed=0)
                load0 = os.getloadavg()[0]
                row = {"repeat": r, "k": k, "variant": variant, "load_before": load0}
                if variant == "freeze":
                    freeze(model, bottom_prefix(find_blocks(model), k))
                    stats = fine_tune(model, tok, texts, labels, cfg, progress=False)
                    row.update(build_seconds=0.0)
                else:
                    cache = build_cache(model, tok, texts, k, max_length=64, progress=False)
                    stats = train_on_cache(model, cache, labels, cfg, progress=False)
                    with tempfile.TemporaryDirectory() as d:
                        p = cache.save(os.path.join(d, "cache.safetensors"))
                        disk = os.path.getsize(p)
                    row.update(build_seconds=cache.build_seconds, cache_mb_float32=cache.nbytes / 2**20,
                               cache_mb_float16=(cache.hidden.numel() * 2 + cache.offsets.numel() * 8) / 2**20,
                               cache_disk_mb=disk / 2**20, cached_tokens=int(cache.hidden.shape[0]))
                t = time.perf_counter()
                acc = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), 64)
                row.update(train_seconds=stats["seconds"], seconds_per_epoch=stats["seconds"] / args.epochs,
                           total_seconds=stats["seconds"] + row["build_seconds"], steps=stats["steps"],
                           trainable_params=stats["trainable_params"], peak_rss_mb=stats["peak_rss_mb"],
                           accuracy=acc, eval_seconds=time.perf_counter() - t, load_after=os.getloadavg()[0])
                runs.append(row)
                print(json.dumps(row), flush=True)
    summary = {"train_examples": args.train, "test_examples": args.test, "epochs": args.epochs,
               "batch_size": 32, "max_length": 64, "lr": args.lr, "repeats": args.repeats, "per_k": {}, "runs": runs}
    for k in args.k:
        med = {v: {key: statistics.median(x[key] for x in runs if x["k"] == k and x["variant"] == v)
                   for key in ("seconds_per_epoch", "total_seconds", "accuracy", "build_seconds")}
               for v in ("freeze", "cache")}
        c = [x for x in runs if x["k"] == k and x["variant"] == "cache"][0]
        summary["per_k"][str(k)] = {
            **{f"{v}_{key}": val for v, d in med.items() for key, val in d.items()},
            "speedup_per_epoch": med["freeze"]["seconds_per_epoch"] / med["cache"]["seconds_per_epoch"],
            "speedup_total_incl_build": med["freeze"]["total_seconds"] / med["cache"]["total_seconds"],
            "cache_mb_float32": c["cache_mb_float32"], "cache_mb_float16": c["cache_mb_float16"],
            "cache_disk_mb": c["cache_disk_mb"], "cached_tokens": c["cached_tokens"],
        }
    print(json.dumps(summary["per_k"], indent=1))
    if not args.smoke:
        atomic_write_text(os.path.join(RESULTS, "feature_cache.json"), json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
