"""CPU time of the revert test and of a tracker check, with and without the shortcut.

One command:  .venv/bin/python benchmarks/bench_revert.py  [--repeats 3] [--quick]

MiniLM-L6 (the shipped model) with a seeded 4-class head; the "tuned" model is the same model with
every weight moved by 5% of its spread (seeded; the timing does not depend on the values, the rows are
compared for exactness). One torch thread, CPU time (``time.process_time``), at the freeze study's
tracked probe shapes: Rotten Tomatoes (128 texts, max_length 64) and BBC News (32 texts, max_length 128).

1. **Revert test**: :func:`layerprobe.freezing.revert.revert_test` the long way (shortcut off) and with a
   checked :class:`~layerprobe.freezing.revert_shortcut.RevertShortcut` (served from the whole-stack pass),
   interleaved (A B A B ...), medians; the rows of both must agree.
2. **Tracker check**: a :class:`~layerprobe.tracking.tracker.Tracker` with ``revert=True``, one check after
   the weights moved (the probe pass for CKA + drift + the revert test), with the shortcut and without.

Ratios are measured in this one run (one machine, shared CPUs); they are not asserted anywhere.
Writes benchmarks/results/revert.json.
"""

from __future__ import annotations

import argparse
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


def measure(shape: dict, repeats: int) -> dict:
    import torch

    from layerprobe.demo.shipped import default_model_path, load_classifier, rotten_tomatoes_splits
    from layerprobe.freezing.revert import revert_test
    from layerprobe.freezing.revert_shortcut import RevertShortcut
    from layerprobe.model.batching import collate, pad_id
    from layerprobe.snapshot.take import tokenize_probe
    from layerprobe.tracking.tracker import Tracker

    base, tok = load_classifier(default_model_path(), 4, seed=0)
    base.eval()
    tuned = _moved(base, 0.05, seed=1)
    _, _, probe = rotten_tomatoes_splits(200, 50, shape["texts"])
    texts = probe["text"].tolist()
    examples, _ = tokenize_probe(tok, texts, shape["max_length"])
    bs = shape["batch"]
    batches = [collate(examples[i:i + bs], pad_id(tok), None) for i in range(0, len(examples), bs)]
    state = base.state_dict()
    off = RevertShortcut()
    off.turn_off("the long way")
    on = RevertShortcut()
    first, rows_on = _cpu(lambda: revert_test(tuned, state, batches, shortcut=on))  # its check runs here
    long_s, short_s = [], []
    for _ in range(repeats):
        s, rows_off = _cpu(lambda: revert_test(tuned, state, batches, shortcut=off))
        long_s.append(s)
        s, rows_on = _cpu(lambda: revert_test(tuned, state, batches, shortcut=on))
        short_s.append(s)
    worst = max(abs(a[key] - b[key]) for a, b in zip(rows_off, rows_on) for key in ("agreement", "kl", "tv"))

    checks: dict[str, list[float]] = {"long": [], "shortcut": []}
    for _ in range(repeats):
        for variant in ("long", "shortcut"):
            model = _moved(base, 0.0, seed=0)
            tr = Tracker(model, tok, texts, every_n_steps=1, max_length=shape["max_length"], batch_size=bs,
                         revert=True)
            tr.start()
            if variant == "long":
                tr._shortcut.turn_off("the long way")
            with torch.no_grad():
                for p, q in zip(model.parameters(), tuned.parameters()):
                    p.copy_(q)
            tr.on_step(1)  # the first revert test (the shortcut's check runs here)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.001)
            s, _ = _cpu(lambda: tr.on_step(2))
            checks[variant].append(s)
    n = len(tuned.base_model.encoder.layer)
    return {"shape": shape, "n_blocks": n, "first_call_with_check_s": first, "checked": on.checked, "off": on.off,
            "revert_long_s": statistics.median(long_s), "revert_shortcut_s": statistics.median(short_s),
            "revert_ratio": statistics.median(short_s) / statistics.median(long_s),
            "passes_long": n + 2, "passes_shortcut": 3 + (n - 1) / 2,
            "max_row_difference": worst,
            "check_long_s": statistics.median(checks["long"]),
            "check_shortcut_s": statistics.median(checks["shortcut"]),
            "check_ratio": statistics.median(checks["shortcut"]) / statistics.median(checks["long"]),
            "samples": {"revert_long": long_s, "revert_shortcut": short_s, **{f"check_{k}": v for k, v in checks.items()}}}


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
        print(f"{name}: revert test {r['revert_long_s']:.2f} s -> {r['revert_shortcut_s']:.2f} s "
              f"(x{r['revert_ratio']:.2f}; passes {r['passes_long']} -> {r['passes_shortcut']:.1f}); tracker check "
              f"{r['check_long_s']:.2f} s -> {r['check_shortcut_s']:.2f} s (x{r['check_ratio']:.2f}); rows agree to "
              f"{r['max_row_difference']:.1e}")
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "revert.json"), json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
