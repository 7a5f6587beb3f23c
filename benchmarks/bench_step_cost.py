"""Predicted vs measured saving per frozen prefix, and hit/miss rows of the prefix cache.

One command:  .venv/bin/python benchmarks/bench_step_cost.py  [--train 128] [--quick]

MiniLM-L6 (the shipped model), Rotten Tomatoes, one torch thread, CPU time (``time.process_time``):

1. **Calibration**: :func:`layerprobe.freezing.step_cost.calibrate_prefix_savings` on one training
   batch (32 texts, max_length 64: the freeze study's RT shape) predicts, per prefix, the saving of a
   served step and of a filling step; the old parameter-count estimate is printed beside it.
2. **Measured**: a plain shuffled loop (batch 32, AdamW) over ``--train`` examples for 2 epochs per
   prefix, the prefix frozen and served by a PrefixCache: epoch 1 fills, epoch 2 is served. The saving
   of each epoch against the same loop with nothing frozen.
3. **Study**: the freeze study's measured CPU per epoch (analyses/cache/{rt,bbc}/fixed_*.json, lr 5e-05)
   against the calibration's per-epoch prediction for the runs' mean number of epochs (BBC calibrated
   at its shape, 16 x 128).
4. **Rows**: a shuffled 3-epoch loop that freezes the embeddings + 1 block at 15% of epoch 1 (as the
   auto freeze did on a user's task), with serving in part off (the old behaviour) and on: batches and
   rows served vs computed.

Ratios are measured in this one run (one machine, shared CPUs): they are not asserted anywhere.
Writes benchmarks/results/step_cost.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from layerprobe.io.outputs import atomic_write_text  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
ROOT = os.path.join(os.path.dirname(__file__), "..")


def _batches(tok, texts, labels, order, bs, max_length):
    import torch

    for i in range(0, len(order), bs):
        idx = order[i: i + bs]
        enc = tok([texts[j] for j in idx], truncation=True, max_length=max_length, padding=True,
                  return_tensors="pt")
        yield {**enc, "labels": torch.tensor([labels[j] for j in idx])}


def _loop(model0, blocks, k_emb, k, tok, texts, labels, epochs, bs, max_length, seed=0, partial=True,
          freeze_at=None, timed=True):
    """Train a copy; returns CPU seconds per epoch and the cache's stats."""
    import copy

    import torch

    from layerprobe.freezing.apply import bottom_prefix, freeze
    from layerprobe.freezing.prefix_cache import PrefixCache

    m = copy.deepcopy(model0).train()
    cache = None

    def do_freeze():
        nonlocal cache
        freeze(m, bottom_prefix(blocks, k), blocks)
        if k >= 1:
            cache = PrefixCache(m, k, blocks=blocks, partial=partial, store_in_eval=False)

    if k_emb and freeze_at is None:
        do_freeze()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=5e-5)
    g = torch.Generator().manual_seed(seed)
    per_epoch, step = [], 0
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=g).tolist()
        t0 = time.process_time()
        for batch in _batches(tok, texts, labels, order, bs, max_length):
            if freeze_at is not None and step == freeze_at:
                do_freeze()
                opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=5e-5)
            if timed:
                loss = m(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    m(**batch)
            step += 1
        per_epoch.append(time.process_time() - t0)
    stats = cache.stats() if cache is not None else None
    if cache is not None:
        cache.detach()
    return per_epoch, stats


def _study(task):
    rows: dict[str, list[tuple[float, float]]] = {}
    for f in sorted(glob.glob(os.path.join(ROOT, "analyses", "cache", task, "*_lr5e-05_seed*.json"))):
        if f.endswith(".comparison.json"):
            continue
        d = json.load(open(f))
        if d.get("method") in ("fixed", "full"):
            rows.setdefault(d["config"], []).append((d["train_cpu_seconds"] / d["epochs"], d["epochs"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=128)
    ap.add_argument("--rows-train", type=int, default=640)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    import torch

    from layerprobe.demo.corpora import load_bbc_news, load_rotten_tomatoes, sample
    from layerprobe.demo.shipped import default_model_path, load_classifier
    from layerprobe.freezing.step_cost import calibrate_prefix_savings
    from layerprobe.model.blocks import find_blocks

    torch.set_num_threads(1)
    model, tok = load_classifier(default_model_path(), 2, seed=0)
    blocks = find_blocks(model)
    nb = len(blocks.blocks)
    rt = sample(load_rotten_tomatoes(), max(a.train, a.rows_train), seed=0)
    texts, labels = rt["text"].tolist(), [int(x) for x in rt["label"]]
    out: dict = {"model": "MiniLM-L6 (shipped)", "threads": 1}

    # 1. calibration at the RT shape
    first = next(_batches(tok, texts, labels, list(range(32)), 32, 64))
    cal = calibrate_prefix_savings(model, first, blocks=blocks, steps=2 if a.quick else 3)
    bbc = sample(load_bbc_news(), 16, seed=0)
    bbc_batch = next(_batches(tok, bbc["text"].tolist(), [0] * 16, list(range(16)), 16, 128))
    cal_bbc = calibrate_prefix_savings(model, bbc_batch, blocks=blocks, steps=2 if a.quick else 3)
    names = ["embeddings"] + [b.name for b in blocks.blocks]
    label = {n: ("emb" if n == "embeddings" else f"emb+{int(n.split('.')[1]) + 1}") for n in names}
    block_params = [sum(p.numel() for n_, p in model.named_parameters()
                        if blocks.entry_of(n_) is not None and blocks.entry_of(n_).name == b.name) for b in blocks.blocks]
    old = {n: (2 / 3) * sum(block_params[:i]) / sum(block_params) for i, n in enumerate(names)}
    out["calibration_rt"] = cal.to_dict()
    out["calibration_bbc"] = cal_bbc.to_dict()

    # 2. measured: plain loop per prefix, epoch 1 fills, epoch 2 served
    n = a.train if not a.quick else 64
    full, _ = _loop(model, blocks, False, 0, tok, texts[:n], labels[:n], 2, 32, 64)
    measured = {}
    for i, name in enumerate(names):
        if a.quick and i not in (0, 1, nb):
            continue
        ep, _ = _loop(model, blocks, True, i, tok, texts[:n], labels[:n], 2, 32, 64)
        measured[name] = {"fill_epoch": 1 - ep[0] / full[0], "served_epoch": 1 - ep[1] / full[1]}
    out["loop"] = {"examples": n, "full_cpu_per_epoch": full, "saving": measured}

    # 3. the freeze study
    study = {}
    for task, c in (("rt", cal), ("bbc", cal_bbc)):
        rows = _study(task)
        if "full" not in rows:
            continue
        full_epoch = statistics.mean(x for x, _ in rows["full"])
        for name in names:
            got = rows.get(label[name])
            if not got:
                continue
            e = statistics.mean(x for _, x in got)
            study[f"{task}:{label[name]}"] = {
                "measured": 1 - statistics.mean(x for x, _ in got) / full_epoch, "epochs": e,
                "predicted": c.epoch_saving(name, e), "old_estimate": old[name]}
    out["study"] = study

    # 4. rows: freeze emb+1 at 15% of epoch 1, 3 shuffled epochs, serving in part off / on
    m_rows = a.rows_train if not a.quick else 160
    steps_per_epoch = -(-m_rows // 32)
    rows_out = {}
    for partial in (False, True):
        _, s = _loop(model, blocks, True, 1, tok, texts[:m_rows], labels[:m_rows], 3, 32, 64, partial=partial,
                     freeze_at=max(1, round(0.15 * steps_per_epoch)), timed=False)
        rows_out["partial" if partial else "whole_batches_only"] = s
    out["rows"] = {"examples": m_rows, "epochs": 3, "freeze_at_step": max(1, round(0.15 * steps_per_epoch)),
                   **rows_out}

    os.makedirs(RESULTS, exist_ok=True)
    atomic_write_text(os.path.join(RESULTS, "step_cost.json"), json.dumps(out, indent=1, default=str))
    print(f"{'prefix':8} {'old est':>8} {'pred step':>9} {'pred fill':>9} {'loop fill':>9} {'loop served':>11}")
    for name in names:
        mm = measured.get(name, {})
        print(f"{label[name]:8} {old[name]:8.0%} {cal.saving(name):9.0%} {cal.fill_saving(name):9.0%} "
              f"{mm.get('fill_epoch', float('nan')):9.0%} {mm.get('served_epoch', float('nan')):11.0%}")
    print("study (CPU per epoch saved vs full; predicted for the runs' mean epochs):")
    for key, v in study.items():
        print(f"  {key:10} measured {v['measured']:5.0%}  predicted {v['predicted']:5.0%}  old {v['old_estimate']:5.0%}"
              f"  ({v['epochs']:.1f} epochs)")
    for kind, s in rows_out.items():
        print(f"rows {kind}: hit/partial/miss batches {s['hit_batches']}/{s['partial_batches']}/{s['miss_batches']}, "
              f"rows served {s['hit_rows']} computed {s['miss_rows']}, examples {s['examples']}")


if __name__ == "__main__":
    main()
