"""The freeze study's grid, shared by ``freeze_study.py`` (runs) and ``study_report.py`` (results): the tasks'
budgets, the lr grid, LoRA's settings, config and run-file names, and the JSON cleaner.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace

N_BLOCKS = 6  # MiniLM-L6
LR_GRID = (5e-5, 1e-4, 2e-4)


@dataclass(frozen=True)
class TaskBudget:
    """The fixed budget of one task: data sizes, stopping rule, optimiser (same for every config)."""

    task: str
    corpus: str
    num_labels: int
    train_size: int | None  # None: every row not held out (the whole training split)
    dev_size: int
    test_size: int
    probe_size: int
    track_probe_size: int
    batch_size: int
    max_length: int
    min_epochs: int = 3
    max_epochs: int = 5
    patience: int = 1
    lr: float | None = None  # chosen on dev from LR_GRID (full fine-tuning, seed 0)
    warmup: float = 0.1
    weight_decay: float = 0.01
    checks_per_epoch: int = 8
    split_seed: int = 0


BUDGETS = {
    # 4,000 test snippets: a paired accuracy difference between two models then has a standard error of
    # about 0.5 points (1,000 gave about 1 point, too coarse for a 99% criterion); BBC's 400 articles at
    # ~98% accuracy give about 0.7 points
    "rt": TaskBudget("rt", "rotten_tomatoes", 2, train_size=4000, dev_size=500, test_size=4000, probe_size=512,
                     track_probe_size=128, batch_size=32, max_length=64),
    "bbc": TaskBudget("bbc", "bbc_news", 5, train_size=None, dev_size=200, test_size=400, probe_size=192,
                      track_probe_size=128, batch_size=16, max_length=128),
    # the four tasks added for leave-one-task-out (analyses/study_tasks.py): >= 3,000 training examples each;
    # max_length covers the texts (TREC ~10 words, SMS ~16, tweets ~15, newsgroups ~270: truncated at 128)
    "trec": TaskBudget("trec", "trec", 6, train_size=4000, dev_size=500, test_size=1000, probe_size=256,
                       track_probe_size=128, batch_size=32, max_length=32),
    "newsgroups": TaskBudget("newsgroups", "newsgroups", 20, train_size=3000, dev_size=500, test_size=2000,
                             probe_size=256, track_probe_size=128, batch_size=16, max_length=128),
    "sms": TaskBudget("sms", "sms", 2, train_size=3000, dev_size=500, test_size=1400, probe_size=256,
                      track_probe_size=128, batch_size=32, max_length=64),
    "disaster": TaskBudget("disaster", "disaster", 2, train_size=4000, dev_size=500, test_size=2000, probe_size=256,
                           track_probe_size=128, batch_size=32, max_length=64),
}
#: LoRA as users run it (Hu et al. 2021; peft): rank 8, alpha 16 on the attention projections (query, key,
#: value, attention output), head trained in full, its usual lr (higher than full fine-tuning's)
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "lr": 5e-4,
        "target_modules": r".*\.attention\.(self\.(query|key|value)|output\.dense)$"}
#: when the full run's mid-run measurements (revert test, drift) are taken, in epochs
MEASURE_EPOCHS = (0.5, 1.0, 2.0)
#: the mid-run scan (docs/freeze_study_plan.md, amendment 5): the embeddings + k blocks frozen at the end of this
#: epoch of a run otherwise identical to the same seed's full run; the prefixes, in the order they are run
MIDRUN_EPOCH = 1
MIDRUN_KS = (6, 4, 5, 3)
SMOKE_BUDGETS = {
    k: replace(b, train_size=64, dev_size=24, test_size=32, probe_size=24, track_probe_size=16, batch_size=16,
               max_length=32, min_epochs=1, max_epochs=2, checks_per_epoch=2)
    for k, b in BUDGETS.items()
}
SMOKE_LR_GRID = (1e-4,)


def midrun_config(frozen_blocks: int) -> str:
    """The config name of a mid-run scan run: ``mid1-emb+4`` freezes the embeddings + 4 blocks after epoch 1."""
    return f"mid{MIDRUN_EPOCH}-{config_name(True, frozen_blocks)}"


def config_name(embeddings_frozen: bool, frozen_blocks: int) -> str:
    if not embeddings_frozen and frozen_blocks == 0:
        return "full"
    if embeddings_frozen and frozen_blocks == 0:
        return "emb"
    return f"emb+{frozen_blocks}" if embeddings_frozen else f"blocks{frozen_blocks}"


def run_file(cache: str, task: str, method: str, config: str, lr: float, seed: int, ext: str = "json") -> str:
    return os.path.join(cache, task, f"{method}_{config}_lr{lr:g}_seed{seed}.{ext}")



def clean(x):
    """``x`` with numpy scalars as Python numbers and non-finite floats as None (JSON-safe)."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def auto_options(out: str, task: str | None = None, folds: str = "loto_predictors") -> dict:
    """The auto policy's knobs for ``task``. Once the prediction is validated leave-one-task-out (>= 3 tasks), the
    predictor fit **without** ``task`` (``<out>/<folds>/<task>.json``, its own inner ranking) at the study's
    tolerance; before that the static rule as calibrated on Rotten Tomatoes (``rule.json``), if any. ``folds``:
    ``loto_predictors`` (fit on prefixes frozen from step 0) or ``loto_predictors_midrun`` (plan amendment 5: fit
    on prefixes frozen after epoch 1)."""
    fold = os.path.join(out, folds, f"{task}.json") if task else ""
    if fold and os.path.exists(fold):
        with open(fold) as fh:
            fit = json.load(fh)
        if fit.get("validated") and fit.get("predictors"):
            return {"tolerance": fit["tolerance_default"], "predictor": fit["predictors"][0]}
    path = os.path.join(out, "rule.json")
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        rule = json.load(fh)
    if not rule.get("fit"):  # no rule fit yet: the policy's own default (the relative rule)
        return dict(rule.get("auto", {}))
    return {"thresholds": rule["thresholds"], **rule.get("auto", {})}


def auto_kind(options: dict | None, task: str) -> tuple:
    """What an auto run's options make it, for deciding whether a cached run still stands.

    A run driven by a predictor fit without its own task (``("loto",)``) stays a valid held-out run when later
    tasks refit the folds — whichever predictor and decision (point or the interval's upper end) led the fold's
    inner ranking when it ran: the procedure is "the fold's best at the time", and the fold's lead flips between
    decisions as tasks land (rerunning every auto run then would cost hours and test nothing new); each run
    keeps its options, so the report can say which one drove it. A run whose predictor saw its task is
    ``("leaked",)``. Rule-driven runs are their thresholds.

    >>> auto_kind({"tolerance": 0.01, "predictor": {"name": "cka_rel", "fit_on": ["a", "b"]}}, "c")
    ('loto',)
    >>> auto_kind({"predictor": {"name": "cka_rel", "fit_on": ["a", "c"]}}, "c")
    ('leaked',)
    >>> auto_kind({"thresholds": {"min_cka": 0.99}, "settle": 0.5}, "c")
    ('rule', '{"min_cka": 0.99}', '{"settle": 0.5}')
    """
    opts = clean(dict(options or {}))
    pred = opts.get("predictor")
    if isinstance(pred, dict):
        if task in (pred.get("fit_on") or []):
            return ("leaked",)
        return ("loto",)
    rest = {k: v for k, v in opts.items() if k != "thresholds"}
    return ("rule", json.dumps(opts.get("thresholds"), sort_keys=True), json.dumps(rest, sort_keys=True))

