"""CPU time of the revert test and of a tracker check, with and without the shortcut.

One command:  .venv/bin/python benchmarks/bench_revert.py  [--repeats 3] [--quick]

MiniLM-L6 (the shipped model) with a seeded 4-class head; the "tuned" model is the same model with
every weight moved by 5% of its spread (seeded; the timing does not depend on the values, the rows are
compared for exactness). One torch thread, CPU time (``time.process_time``), at the freeze study's
tracked probe shapes: Rotten Tomatoes (128 texts, max_length 64) and BBC News (32 texts, max_length 128).

Three variants (:data:`VARIANTS`): before (every prefix computed, 64 rows per pass in the probe's order), the
shortcut (prefixes served from the whole-stack pass), and the shortcut with 16 rows per pass longest first
(today's defaults), interleaved (A B C A B C ...), medians:

1. **Revert test**: :func:`layerprobe.freezing.revert.revert_test`; the rows of every variant must agree.
2. **Tracker check**: a :class:`~layerprobe.tracking.tracker.Tracker` with ``revert=True``, one check after
   the weights moved (the probe pass for CKA + drift + the revert test).

Ratios are measured in this one run (one machine, shared CPUs); they are not asserted anywhere.
Writes benchmarks/results/revert.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from layerprobe.io.outputs import atomic_write_text  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _moved(model, scale: float, seed: int):
    import copy

    import torch

    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.detach().std().clamp_min(1e-3))
    return tuned


def _cpu(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


VARIANTS = {  # name: (shortcut, rows per pass, longest first)
    "before": (False, 64, False),     # the revert test and tracker before: every prefix computed, 64 rows in order
    "shortcut": (True, 64, False),    # prefixes served from the whole-stack pass
    "shortcut+batches": (True, 16, True),  # and 16 rows per pass, longest first (today's default)
}


def measure(shape: dict, repeats: int) -> dict:
    import torch

    from layerprobe.demo.shipped import default_model_path, load_classifier, rotten_tomatoes_splits
    from layerprobe.freezing.revert import revert_test
    from layerprobe.freezing.revert_shortcut import RevertShortcut
    from layerprobe.model.batching import collate, length_batches, pad_id
    from layerprobe.snapshot.take import tokenize_probe
    from layerprobe.tracking.tracker import Tracker

    base, tok = load_classifier(default_model_path(), 4, seed=0)
    base.eval()
    tuned = _moved(base, 0.05, seed=1)
    _, _, probe = rotten_tomatoes_splits(200, 50, shape["texts"])
    texts = probe["text"].tolist()
    examples, _ = tokenize_probe(tok, texts, shape["max_length"])
    state = base.state_dict()

    def batches(rows: int, longest: bool) -> list:
        if longest:
            return length_batches(examples, rows, pad_id(tok))
        return [collate(examples[i:i + rows], pad_id(tok)) for i in range(0, len(examples), rows)]

    shortcuts = {}
    for name, (on, _, _) in VARIANTS.items():
        shortcuts[name] = RevertShortcut()
        if not on:
            shortcuts[name].turn_off("the long way")
    first: dict = {}
    for name, (_, rows, longest) in VARIANTS.items():  # the shortcut's check runs on this first call
        first[name] = revert_test(tuned, state, batches(rows, longest), shortcut=shortcuts[name])
    revert_s: dict[str, list[float]] = {k: [] for k in VARIANTS}
    rows_of: dict = {}
    for _ in range(repeats):
        for name, (_, rows, longest) in VARIANTS.items():
            b = batches(rows, longest)
            s, rows_of[name] = _cpu(functools.partial(revert_test, tuned, state, b, shortcut=shortcuts[name]))
            revert_s[name].append(s)
    worst = max(abs(a[key] - b[key]) for name in VARIANTS for a, b in zip(rows_of["before"], rows_of[name])
                for key in ("agreement", "kl", "tv"))

    import layerprobe.tracking.tracker as tracker_mod

    def in_order(examples, rows, pad, device):
        return [collate(examples[i:i + rows], pad, device) for i in range(0, len(examples), rows)]

    check_s: dict[str, list[float]] = {k: [] for k in VARIANTS}
    try:
        for _ in range(repeats):
            for name, (on, rows, longest) in VARIANTS.items():
                model = _moved(base, 0.0, seed=0)
                # the tracker before batched its probe in the texts' order
                tracker_mod.length_batches = length_batches if longest else in_order
                tr = Tracker(model, tok, texts, every_n_steps=1, max_length=shape["max_length"], batch_size=rows,
                             revert=True)
                tr.start()
                if not on:
                    tr._shortcut.turn_off("the long way")
                with torch.no_grad():
                    for p, q in zip(model.parameters(), tuned.parameters()):
                        p.copy_(q)
                tr.on_step(1)  # the first revert test (the shortcut's check runs here)
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1.001)
                s, _ = _cpu(functools.partial(tr.on_step, 2))
                check_s[name].append(s)
    finally:
        tracker_mod.length_batches = length_batches
    n = len(tuned.base_model.encoder.layer)
    med = {k: statistics.median(v) for k, v in revert_s.items()}
    cmed = {k: statistics.median(v) for k, v in check_s.items()}
    on = shortcuts["shortcut"]
    return {"shape": shape, "n_blocks": n, "variants": {k: {"shortcut": v[0], "rows": v[1], "longest_first": v[2]}
                                                        for k, v in VARIANTS.items()},
            "checked": on.checked, "off": on.off, "passes_long": n + 2, "passes_shortcut": 3 + (n - 1) / 2,
            "max_row_difference": worst,
            "revert_s": med, "revert_ratio": {k: v / med["before"] for k, v in med.items()},
            "check_s": cmed, "check_ratio": {k: v / cmed["before"] for k, v in cmed.items()},
            "samples": {"revert": revert_s, "check": check_s}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="8 texts at max_length 16, 1 repeat (seconds)")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    shapes = ({"rt": {"texts": 8, "max_length": 16, "batch": 4}} if args.quick else
              {"rt": {"texts": 128, "max_length": 64, "batch": 64}, "bbc": {"texts": 32, "max_length": 128, "batch": 64}})
    repeats = 1 if args.quick else args.repeats
    out = {"model": "MiniLM-L6 (shipped)", "threads": 1, "repeats": repeats}
    for name, shape in shapes.items():
        r = measure(shape, repeats)
        out[name] = r
        print(f"{name} ({shape['texts']} texts, max_length {shape['max_length']}; passes {r['passes_long']} -> "
              f"{r['passes_shortcut']:.1f}; rows agree to {r['max_row_difference']:.1e}):")
        for v in VARIANTS:
            print(f"  {v:17s} revert test {r['revert_s'][v]:6.2f} s (x{r['revert_ratio'][v]:.2f})   tracker check "
                  f"{r['check_s'][v]:6.2f} s (x{r['check_ratio'][v]:.2f})")
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "revert.json"), json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
