"""The main job on the embedded default: the shipped MiniLM-L6 fine-tuned on Rotten Tomatoes.

snapshot (base) -> full fine-tuning (short run) -> snapshot (tuned) -> compare -> advice,
writing ``base.pt``, ``tuned.pt``, ``comparison.json``, ``comparison.csv``, ``groups.csv``,
``blocks.png`` and ``run.json`` (settings, accuracy before/after, timings) to the output folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# the shipped model and data live in shipped.py; re-exported here for older callers
from layerprobe.demo.shipped import default_model_path, load_classifier, rotten_tomatoes_splits
from layerprobe.errors import LayerProbeError
from layerprobe.io.outputs import atomic_output_dir, atomic_write_text, check_output_names, ensure_writable_dir
from layerprobe.options import TRAINING_MAX_LENGTH

__all__ = ["DemoConfig", "run_demo", "split_rotten_tomatoes"]


@dataclass(frozen=True)
class DemoConfig:
    train_size: int = 4000
    test_size: int = 1000
    probe_size: int = 512
    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = TRAINING_MAX_LENGTH
    seed: int = 0


def split_rotten_tomatoes(cfg: DemoConfig) -> tuple[Any, Any, Any]:
    """Disjoint, stratified train / test / probe sets of Rotten Tomatoes snippets, sized by ``cfg``."""
    return rotten_tomatoes_splits(cfg.train_size, cfg.test_size, cfg.probe_size, seed=cfg.seed)


#: the files the demo writes
DEMO_FILES = ("base.pt", "tuned.pt", "comparison.json", "comparison.csv", "groups.csv", "blocks.png", "run.json")


def run_demo(out_dir: str, cfg: DemoConfig = DemoConfig(), progress: bool = True,
             log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the whole path once and write every result into ``out_dir``.

    The files are built in a temporary sibling folder and appear together at the end: an
    interrupted or failed run leaves ``out_dir`` as it was (no lone ``base.pt``).
    """
    from layerprobe.metrics.distinct import MIN_DISTINCT_ROWS

    for name, low in (("train_size", 1), ("test_size", 1), ("probe_size", MIN_DISTINCT_ROWS)):  # before the work
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            why = f" (CKA needs at least {low} distinct probe examples)" if name == "probe_size" else ""
            raise LayerProbeError(f"{name} must be an integer >= {low}{why}, got {v!r}")
    ensure_writable_dir(out_dir)
    check_output_names(out_dir, DEMO_FILES)  # a folder named like a result: refused before minutes of work
    with atomic_output_dir(out_dir, DEMO_FILES) as tmp:
        run = _run_demo(tmp, cfg, progress, log)
    log(f"wrote base.pt, tuned.pt, comparison.json, comparison.csv, groups.csv, blocks.png, run.json to {out_dir} "
        f"({run['wall_seconds']:.0f}s)")
    return run


def _run_demo(out_dir: str, cfg: DemoConfig, progress: bool, log: Callable[[str], Any]) -> dict[str, Any]:
    from layerprobe.comparison.compare import compare
    from layerprobe.demo.train import TrainConfig, evaluate, fine_tune
    from layerprobe.options import CSV_OPTIONS, ProbeOptions
    from layerprobe.results.plots import plot_blocks
    from layerprobe.results.render import render, to_csv
    from layerprobe.results.schema import SCHEMA_VERSION
    from layerprobe.snapshot.take import take_snapshot

    t0 = time.perf_counter()
    train, test, probe = split_rotten_tomatoes(cfg)
    model, tok = load_classifier(default_model_path(), 2, cfg.seed)
    probe_texts = probe["text"].tolist()
    log(f"data: {len(train)} train / {len(test)} test / {len(probe)} probe Rotten Tomatoes snippets")
    acc0 = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), cfg.max_length, progress=progress)
    base = take_snapshot(model, tok, probe_texts, max_length=cfg.max_length, progress=progress)
    base.save(os.path.join(out_dir, "base.pt"))
    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed)
    stats = fine_tune(model, tok, train["text"].tolist(), train["label"].tolist(), tc, progress=progress)
    acc1 = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), cfg.max_length, progress=progress)
    log(f"fine-tuned {stats['steps']} steps in {stats['seconds']:.0f}s: test accuracy {acc0:.3f} -> {acc1:.3f}")
    tuned = take_snapshot(model, tok, probe_texts, max_length=cfg.max_length, progress=progress)
    tuned.save(os.path.join(out_dir, "tuned.pt"))
    # the tuned side as the model itself (its snapshot is tuned.pt): the revert test can run on it, the input the
    # shipped prediction reads (the tuned model with each bottom prefix put back to the base weights); the saving
    # of each prefix is measured on it at the training batch's shape (calibrate), not estimated
    result = compare(base, model, probe_texts, tok, calibrate=True,
                     probe_options=ProbeOptions(max_length=cfg.max_length, batch_size=cfg.batch_size))
    log("")
    log(render(result, "table"))
    atomic_write_text(os.path.join(out_dir, "comparison.json"), result.to_json())
    atomic_write_text(os.path.join(out_dir, "comparison.csv"), to_csv(result))
    atomic_write_text(os.path.join(out_dir, "groups.csv"),
                      result.groups_frame().to_csv(**CSV_OPTIONS))
    plot_blocks(result.to_dict(), os.path.join(out_dir, "blocks.png"),
                title=f"MiniLM-L6 fine-tuned on Rotten Tomatoes (accuracy {acc0:.2f} → {acc1:.2f})")
    run = {
        "schema_version": SCHEMA_VERSION,
        "config": cfg.__dict__,
        "accuracy_before": acc0,
        "accuracy_after": acc1,
        "train": stats,
        "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write_text(os.path.join(out_dir, "run.json"), json.dumps(run, indent=2) + "\n")
    return run
