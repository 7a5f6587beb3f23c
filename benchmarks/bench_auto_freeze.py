"""Same-run auto freeze inside a normal ``transformers.Trainer`` run vs full fine-tuning.

One command:  .venv/bin/python benchmarks/bench_auto_freeze.py  [--train 1000] [--epochs 3] [--quick]

Two Trainer runs on the same data, seed and budget (MiniLM-L6, Rotten Tomatoes, one torch thread):
  * ``full``: ``Trainer.train()`` with no callback;
  * ``auto``: the same script plus ``LayerProbeCallback(tokenizer=tok, probe_texts=probe,
    auto_freeze=True)`` — nothing else changes. The callback tracks every block, freezes the advised
    bottom prefix once it has settled, and serves the frozen prefix from the prefix cache in later
    epochs.
Reports test accuracy, training CPU time (``time.process_time`` around ``train()``, so the auto run
pays for its tracking and cache fill) and wall time, their ratio (measured in this one run), and what
froze when. Writes benchmarks/results/auto_freeze.json, auto_freeze_log.csv and
auto_freeze_trajectory.csv (drawn by figures/fig_trajectory.py). The freeze study
(analyses/freeze_study.py) measures the same policy at real budgets with three seeds per task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from layerprobe.io.outputs import atomic_write_text  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _run(name: str, train, test, probe, args, auto: bool, out_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from layerprobe import LayerProbeCallback
    from layerprobe.demo.shipped import default_model_path, load_classifier
    from layerprobe.demo.train import evaluate

    model, tok = load_classifier(default_model_path(), 2, seed=args.seed)
    enc = tok(train["text"].tolist(), truncation=True, max_length=args.max_length)
    ds = Dataset.from_dict({**enc, "labels": train["label"].tolist()})
    targs = TrainingArguments(output_dir=out_dir, num_train_epochs=args.epochs, per_device_train_batch_size=32,
                              learning_rate=args.lr, warmup_steps=0.1, weight_decay=0.01, report_to=[],
                              use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
                              seed=args.seed, dataloader_num_workers=0)
    callbacks = [LayerProbeCallback(tokenizer=tok, probe_texts=probe["text"].tolist(), auto_freeze=True,
                                    max_length=args.max_length)] if auto else []
    trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                      callbacks=callbacks)
    cpu0, t0 = time.process_time(), time.perf_counter()
    trainer.train()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    acc = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), args.max_length)
    row = {"run": name, "accuracy": acc, "train_cpu_seconds": cpu, "train_seconds": wall,
           "steps": int(trainer.state.global_step), "torch_threads": torch.get_num_threads()}
    if auto:
        pol = callbacks[0].policy
        row["auto"] = pol.summary()
        row["tracker_seconds"] = callbacks[0].tracker.seconds_total
        row["probe_plan"] = callbacks[0].probe_plan
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--probe", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke); results not written")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.train, args.test, args.probe, args.epochs = 96, 32, 16, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from layerprobe.demo.shipped import load_rotten_tomatoes, sample, split

    torch.set_num_threads(1)
    df = load_rotten_tomatoes()
    rest, test = split(df, args.test, seed=0)
    rest, probe = split(rest, args.probe, seed=1)
    train = sample(rest, args.train, seed=2, stratify=True)
    tmp = tempfile.mkdtemp(prefix="bench_auto_freeze_")
    try:
        full = _run("full", train, test, probe, args, False, os.path.join(tmp, "full"))
        auto = _run("auto", train, test, probe, args, True, os.path.join(tmp, "auto"))
        res = {"settings": vars(args), "full": full, "auto": auto,
               "cpu_ratio": auto["train_cpu_seconds"] / full["train_cpu_seconds"],
               "wall_ratio": auto["train_seconds"] / full["train_seconds"],
               "relative_accuracy": auto["accuracy"] / full["accuracy"]}
        print(json.dumps({k: res[k] for k in ("cpu_ratio", "wall_ratio", "relative_accuracy")}, indent=1))
        print(f"full: acc {full['accuracy']:.4f} cpu {full['train_cpu_seconds']:.0f}s; auto: acc "
              f"{auto['accuracy']:.4f} cpu {auto['train_cpu_seconds']:.0f}s, froze {auto['auto']['freeze_steps']} "
              f"of {auto['steps']} steps; cache {auto['auto']['cache']}")
        if not args.quick:
            os.makedirs(args.out, exist_ok=True)
            atomic_write_text(os.path.join(args.out, "auto_freeze.json"), json.dumps(res, indent=1) + "\n")
            for src, dst in (("layerprobe_freeze_log.csv", "auto_freeze_log.csv"),
                             ("layerprobe_trajectory.csv", "auto_freeze_trajectory.csv")):
                shutil.copyfile(os.path.join(tmp, "auto", src), os.path.join(args.out, dst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
