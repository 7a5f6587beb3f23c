# %% [markdown]
# # Does the freeze advice pay? A freeze study at real fine-tuning budgets
#
# MiniLM-L6 (the shipped all-MiniLM-L6-v2) on Rotten Tomatoes (binary) and BBC News (5 classes),
# trained the way people fine-tune: until held-out **dev** accuracy stops improving (at least
# ``min_epochs`` epochs, at most ``max_epochs``, patience ``patience`` epochs; the weights of the
# best dev epoch are kept), with one learning rate chosen once per task for full fine-tuning on the
# dev split (``LR_GRID``, seed 0) and then held fixed for every config and seed.
#
# Methods (column ``method`` of ``summary.csv``):
#
# * ``full``  — full fine-tuning; a tracker records every block's CKA to the start during the run
#   (its CPU time is measured and *not* counted as training time), and base/tuned snapshots give the
#   comparison the static advice is computed from;
# * ``fixed`` — a fixed bottom prefix frozen from step 0 (embeddings + k blocks, k = 0..6), with the
#   frozen-prefix feature cache (``layerprobe.prefix_cache``); these give the *oracle*;
# * ``advice`` — the static advice (the rule applied to the same seed's full-run comparison)
#   followed from step 0: the ``fixed`` run of the advised prefix, same seed (identical procedure);
# * ``auto`` — one run that starts as full fine-tuning and freezes the bottom prefix progressively
#   in the same run (``AutoFreeze`` policy + feature cache), tracker cost counted.
# * ``midrun`` (plan amendment 5; not in ``summary.csv``, whose methods are a contract) — the same seed's full
#   run with the embeddings + k blocks frozen (and the feature cache attached) at the end of epoch
#   ``MIDRUN_EPOCH``: what freezing in the same run costs, the target of a mid-run predictor.
#
# Every run is cached as a small JSON in ``<cache>/<task>/`` (a rerun resumes; runs are skipped when
# their cached budget matches); everything under ``analyses/results`` is rebuilt from the cache by
# ``analyses/study_report.py`` (pure: files in, files out).
#
# Run: ``python analyses/freeze_study.py [--smoke] [--tasks rt,bbc] [--seeds 0,1,2] [--stage full,fixed,auto]``.

# %%
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from study_grid import (  # noqa: E402  (the grid both study scripts share)
    BUDGETS,
    LORA,
    LR_GRID,
    MEASURE_EPOCHS,
    MIDRUN_EPOCH,
    MIDRUN_KS,
    N_BLOCKS,
    SMOKE_BUDGETS,
    SMOKE_LR_GRID,
    TaskBudget,
    auto_kind,
    auto_options,
    clean,
    config_name,
    midrun_config,
    run_file,
)
from study_midrun import MIDFIT  # noqa: E402

from layerprobe.io.outputs import atomic_write_text  # noqa: E402


# %% data
def task_splits(b: TaskBudget):
    """Disjoint stratified test / dev / probe / train sets (fixed per task, independent of the run seed)."""
    from study_tasks import load_task_corpus

    from layerprobe.demo.shipped import sample, split

    df = load_task_corpus(b.corpus)
    rest, test = split(df, b.test_size, seed=b.split_seed)
    rest, dev = split(rest, b.dev_size, seed=b.split_seed + 1)
    rest, probe = split(rest, b.probe_size, seed=b.split_seed + 2)
    train = rest if b.train_size is None else sample(rest, b.train_size, seed=b.split_seed + 3, stratify=True)
    return {"train": train, "dev": dev, "test": test, "probe": probe}


# %% one run
from layerprobe.tracking.budget import DEFAULT_PROBE_SHARE as AUTO_PROBE_SHARE  # noqa: E402  (5% of training compute)


def auto_probe_size(cap: int, n_train: int, checks_per_epoch: int, floor: int = 32) -> int:
    """Probe texts for the auto run's tracker: the most (up to ``cap``) whose forward passes, at
    ``checks_per_epoch``, cost at most :data:`AUTO_PROBE_SHARE` of an epoch's training compute
    (a training step on an example ~ 3 forward passes; the probe has the training max_length), and
    never fewer than ``floor``. Rotten Tomatoes (4,000 examples, 4 checks) keeps 128; BBC News
    (1,433) gets 53: at 128 its probe passes cost ~11% of training, more than freezing saves early.

    >>> auto_probe_size(128, 4000, 4), auto_probe_size(128, 1433, 4), auto_probe_size(128, 100, 4)
    (128, 53, 32)
    """
    from layerprobe.tracking.budget import probe_texts_within

    return probe_texts_within(AUTO_PROBE_SHARE * 3 * n_train, checks_per_epoch, cap, floor)


def run_one(b: TaskBudget, method: str, emb: bool, k: int, seed: int, data: dict, cache: str,
            progress: bool, auto_opts: dict | None = None, config: str | None = None) -> dict:
    """Train one config with early stopping on dev; returns the run's row (and writes side files).
    ``config`` names an auto-rule variant's runs (default: the config's name)."""
    import torch

    from layerprobe.demo.shipped import default_model_path, load_classifier
    from layerprobe.demo.train import TrainConfig, evaluate, fine_tune, schedule_steps
    from layerprobe.freezing.apply import bottom_prefix, freeze, trainable_parameters
    from layerprobe.model.blocks import find_blocks

    assert b.lr is not None
    train, dev, test, probe = data["train"], data["dev"], data["test"], data["probe"]
    name = config or config_name(emb, k)
    model, tok = load_classifier(default_model_path(), b.num_labels, seed)
    blocks = find_blocks(model)
    from study_measure import reference_step_cpu

    # the unit of this run's CPU time: a full step on its own first batch, timed now in this process
    ref_step = reference_step_cpu(model, tok, train["text"].tolist(), train["label"].tolist(), b.max_length,
                                  b.batch_size, b.lr)
    tc = TrainConfig(epochs=b.max_epochs, lr=b.lr, batch_size=b.batch_size, max_length=b.max_length,
                     warmup=b.warmup, weight_decay=b.weight_decay, seed=seed)
    total_steps, warm_steps = schedule_steps(len(train), tc)
    per_epoch = (len(train) + b.batch_size - 1) // b.batch_size
    # the auto policy checks half as often as the full run's tracker (fewer probe passes: it pays for them)
    checks = b.checks_per_epoch if method == "full" else max(1, b.checks_per_epoch // 2)
    check_every = max(1, per_epoch // checks)
    # the auto run's probe is sized as LayerProbeCallback sizes it: with a revert_* predictor every check also runs
    # the revert test (n_blocks + 2 more probe passes), so the same share of training buys fewer texts
    pred = (auto_opts or {}).get("predictor") if method == "auto" else None
    passes = N_BLOCKS + 3 if isinstance(pred, dict) and str(pred.get("name", "")).startswith("revert") else 1
    n_track = b.track_probe_size if method == "full" else \
        auto_probe_size(b.track_probe_size, len(train) // passes, checks)
    probe_texts = probe["text"].tolist()
    side: dict = {}
    on_step = []
    tracker = None
    pcache = None
    track_cpu = [0.0]

    measures: dict = {}
    base_state = None
    grads = None
    if method == "full":  # candidate predictors of the cost of freezing (study_measure.py)
        from study_measure import GradNormRecorder

        base_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        grads = GradNormRecorder(model, blocks)
        measures = {"names": list(blocks.names), "mid_run": []}
    if method == "lora":
        model = _lora_model(model, b.num_labels)
    if method == "midrun":  # the full run until the end of epoch MIDRUN_EPOCH, then the prefix frozen + cached
        freeze_step = MIDRUN_EPOCH * per_epoch

        def midrun_step(step: int, m) -> None:
            nonlocal pcache
            if step == freeze_step:  # counted as training: freezing and the cache are the method
                from layerprobe.freezing.prefix_cache import PrefixCache

                freeze(m, bottom_prefix(blocks, k, embeddings=True), blocks)
                pcache = PrefixCache(m, k, blocks=blocks, store_in_eval=False)
                side["frozen_at_step"] = step

        on_step.append(midrun_step)
    if method == "fixed" and (emb or k):
        from layerprobe.freezing.prefix_cache import PrefixCache

        freeze(model, bottom_prefix(blocks, k, embeddings=emb), blocks)
        if emb and k >= 1:  # the cache stands in for the embeddings and blocks 0..k-1
            pcache = PrefixCache(model, k, blocks=blocks)
    if method in ("full", "auto"):
        from layerprobe.snapshot.take import take_snapshot
        from layerprobe.tracking.tracker import Tracker

        base = take_snapshot(model, tok, probe_texts, max_length=b.max_length, progress=progress) \
            if method == "full" else None
        policy = None
        if method == "auto":
            from layerprobe.freezing.policy import DEFAULT_AUTO_RULE, AutoFreezePolicy
            from layerprobe.freezing.rule import Thresholds

            opts = dict(auto_opts or {})
            revert = False
            if opts.get("predictor") is not None:  # the fit without this task (leave-one-task-out)
                from layerprobe.freezing.predict import Predictor

                opts["predictor"] = Predictor.from_dict(opts["predictor"], f"{b.task} auto options")
                revert = opts["predictor"].name.startswith("revert")
            policy = AutoFreezePolicy(thresholds=Thresholds(**opts.pop("thresholds", DEFAULT_AUTO_RULE)), **opts)
        else:
            revert = False
        tracker = Tracker(model, tok, probe_texts[:n_track], every_n_steps=check_every, revert=revert,
                          max_length=b.max_length, blocks=blocks, freeze_policy=policy,
                          lr_schedule=lambda s: b.lr * _lr_factor(s, total_steps, warm_steps))
        c0 = time.process_time()
        tracker.start()
        track_cpu[0] += time.process_time() - c0

        def track_step(step: int, m) -> None:
            c = time.process_time()
            tracker.on_step(step, m)
            track_cpu[0] += time.process_time() - c

        on_step.append(track_step)
    if grads is not None:
        from study_measure import relative_drift, revert_test

        measure_steps = {max(1, int(round(e * per_epoch))): e for e in MEASURE_EPOCHS}
        track_texts = probe_texts[:n_track]

        def measure_step(step: int, m) -> None:
            c = time.process_time()
            if step % check_every == 0:
                grads.check(step)
            if step in measure_steps:
                measures["mid_run"].append({
                    "step": step, "epoch": measure_steps[step], "drift": relative_drift(m, base_state, blocks),
                    "revert": revert_test(m, base_state, blocks, tok, track_texts, b.max_length,
                                          range(N_BLOCKS + 1))})
            track_cpu[0] += time.process_time() - c

        on_step.append(measure_step)

    dev_texts, dev_labels = dev["text"].tolist(), dev["label"].tolist()
    hist: list[float] = []
    best = {"acc": -1.0, "epoch": 0, "state": None, "step": 0}
    dev_cpu = [0.0]
    step_now = [0]

    def count_step(step: int, m) -> None:
        step_now[0] = step

    on_step.insert(0, count_step)

    def on_epoch(epoch: int, m) -> bool:
        c0 = time.process_time()
        acc = evaluate(m, tok, dev_texts, dev_labels, b.max_length)
        hist.append(acc)
        if acc > best["acc"]:
            best.update(acc=acc, epoch=epoch, step=step_now[0],
                        state={n: t.detach().clone() for n, t in m.state_dict().items()})
        dev_cpu[0] += time.process_time() - c0
        return epoch >= b.min_epochs and epoch - best["epoch"] >= b.patience

    stats = fine_tune(model, tok, train["text"].tolist(), train["label"].tolist(), tc, on_step=on_step,
                      progress=progress, desc=f"{b.task} {method} {name} s{seed}", on_epoch=on_epoch)
    if tracker is not None:
        c0 = time.process_time()
        tracker.finish(stats["steps"])
        track_cpu[0] += time.process_time() - c0
    final_trainable = trainable_parameters(model)
    if pcache is not None:
        side["cache"] = pcache.stats()
        pcache.detach()
    if tracker is not None and tracker.policy is not None:
        side["auto"] = tracker.policy.summary()
    if grads is not None:
        grads.close()
        track_cpu[0] += grads.cpu_seconds  # measurement inside backward, not training
    model.load_state_dict(best["state"])  # a LoRA run keeps its adapter (peft's forward applies it)
    if grads is not None:
        from study_measure import relative_drift, revert_test

        c = time.process_time()
        measures["grad_norms"] = grads.to_dict()
        measures["best_step"] = best["step"]
        measures["drift"] = relative_drift(model, base_state, blocks)
        measures["revert"] = revert_test(model, base_state, blocks, tok, probe_texts, b.max_length,
                                         range(N_BLOCKS + 1), dev_texts, dev_labels)
        measures["cpu_seconds"] = time.process_time() - c
        os.makedirs(os.path.join(cache, b.task), exist_ok=True)
        atomic_write_text(run_file(cache, b.task, method, name, b.lr, seed, "measures.json"),
                          json.dumps(clean(measures)) + "\n")
    t0 = time.perf_counter()
    acc = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), b.max_length)
    eval_seconds = time.perf_counter() - t0
    loop_cpu = stats["cpu_seconds"] - dev_cpu[0]  # dev evaluation is the stopping rule, not training
    tracker_counted = method == "auto"  # in the auto runs the tracker is part of the method
    row = {
        "task": b.task, "method": method, "config": name, "embeddings_frozen": emb, "frozen_blocks": k,
        "seed": seed, "lr": b.lr, "accuracy": acc, "dev_accuracy": best["acc"], "dev_history": hist,
        "best_epoch": best["epoch"], "epochs": stats["epochs"], "steps": stats["steps"],
        "best_step": best["step"], "total_steps_scheduled": total_steps,
        "train_cpu_seconds": loop_cpu - (0.0 if tracker_counted else track_cpu[0]),
        "tracker_cpu_seconds": track_cpu[0], "dev_eval_cpu_seconds": dev_cpu[0], "ref_full_step_cpu": ref_step,
        "grad_hook_cpu_seconds": grads.cpu_seconds if grads is not None else 0.0,
        "train_seconds": stats["seconds"], "trainable_params": stats["trainable_params"],
        "final_trainable_params": final_trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": stats["peak_rss_mb"], "final_loss": stats["final_loss"], "eval_seconds": eval_seconds,
        "check_every": check_every, "tracked_probe_texts": n_track if tracker is not None else 0, "budget": asdict(b), "torch_threads": torch.get_num_threads(), **side,
    }
    if method in ("full", "auto") and tracker is not None:
        tf = tracker.to_frame()
        path = run_file(cache, b.task, method, name, b.lr, seed, "trajectory.csv")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, tf.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    if method == "auto" and tracker.policy is not None:
        atomic_write_text(run_file(cache, b.task, method, name, b.lr, seed, "freeze_log.csv"),
                          tracker.policy.log_frame().to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    if method == "full":
        from layerprobe.comparison.compare import compare
        from layerprobe.snapshot.take import take_snapshot

        tuned = take_snapshot(model, tok, probe_texts, max_length=b.max_length, progress=progress)
        cmp = compare(base, tuned)  # bootstrap interval on by default at this probe size
        atomic_write_text(run_file(cache, b.task, method, name, b.lr, seed, "comparison.json"), cmp.to_json())
    return row


def _lora_model(model, num_labels: int):
    """``model`` wrapped in a peft LoRA adapter (:data:`LORA`); the classification head trains in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                     lora_dropout=LORA["lora_dropout"], target_modules=LORA["target_modules"])
    return get_peft_model(model, cfg)


def linear_probe_task(b: TaskBudget, data: dict, cache: str, n_train: int = 2000) -> dict:
    """Per entry of the base model: dev accuracy of a linear classifier on its pooled output (cached)."""
    path = os.path.join(cache, b.task, "linear_probe.json")
    want = {"budget": asdict(replace(b, lr=None)), "n_train": n_train}
    if os.path.exists(path):
        with open(path) as fh:
            row = json.load(fh)
        if {k: row.get(k) for k in want} == want:
            return row
    from study_measure import linear_probe

    from layerprobe.demo.shipped import default_model_path, load_classifier, sample
    from layerprobe.model.blocks import find_blocks

    model, tok = load_classifier(default_model_path(), b.num_labels, 0)
    train = data["train"] if len(data["train"]) <= n_train else sample(data["train"], n_train, seed=0, stratify=True)
    c0 = time.process_time()
    acc = linear_probe(model, tok, train["text"].tolist(), train["label"].to_numpy(), data["dev"]["text"].tolist(),
                       data["dev"]["label"].to_numpy(), b.max_length, find_blocks(model).names)
    row = {**want, "accuracy": acc, "majority": float(data["dev"]["label"].value_counts(normalize=True).max()),
           "cpu_seconds": time.process_time() - c0}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(clean(row), indent=1) + "\n")
    return row


def _lr_factor(step: int, total: int, warm: int) -> float:
    from layerprobe.demo.train import lr_factor

    return lr_factor(step, total, warm)


# %% plan
def chosen_lr(cache: str, b: TaskBudget, grid) -> float | None:
    """The lr of the best dev accuracy among the seed-0 full runs of ``grid`` (None until all ran)."""
    best = None
    for lr in grid:
        path = run_file(cache, b.task, "full", "full", lr, 0)
        row = _read_row(path, replace(b, lr=lr))
        if row is None:
            return None
        if best is None or row["dev_accuracy"] > best[1]:
            best = (lr, row["dev_accuracy"])
    return best[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def claimed(path: str):
    """Hold ``<path>.lock`` (this process's pid) while the run ``path`` is made, so that two study processes
    (lanes) never make the same run at once: yields True when this process holds it, False when another live
    process does. A lock left by a dead process is taken over; the lock is removed when the run is done."""
    lock = path + ".lock"
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(lock) as fh:
                    pid = int(fh.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                yield False
                return
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        try:
            yield True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
        return
    yield False


def _read_row(path: str, b: TaskBudget) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        row = json.load(fh)
    return row if row.get("budget") == asdict(b) else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 lr, few configs, 1 seed (CI)")
    p.add_argument("--tasks", default=None, help=f"default {','.join(BUDGETS)} (smoke: rt,bbc, the installed data)")
    p.add_argument("--seeds", default=None, help="default 0,1,2 (smoke: 0)")
    p.add_argument("--stage", default="full,linear,fixed,auto,lora,midrun",
                   help="which methods to run, in this order; 'ref' (not by default) makes a full run again as "
                        "config 'ref' to read a full run without a CPU reference in reference units; 'midrun' is the "
                        "mid-run scan of plan amendment 5 (the last stage by default)")
    p.add_argument("--fixed", default="0,1,2,3,4,5,6", help="frozen block counts k (embeddings frozen too)")
    p.add_argument("--midrun", default=",".join(map(str, MIDRUN_KS)),
                   help="frozen block counts k of the mid-run scan, in the order they are run")
    p.add_argument("--cache", default=None, help="run cache (default analyses/cache; smoke: a temp dir)")
    p.add_argument("--out", default=None, help="results dir (default analyses/results)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="do not rebuild results after each run")
    p.add_argument("--auto-fit", default="static", choices=("static", "midrun"),
                   help="what drives the auto stage: the fold predictors fit on prefixes frozen from step 0 (the "
                        "plan's auto runs), or those fit on the mid-run scan (plan amendment 5; cached as config "
                        f"{MIDFIT!r}, reported in its section)")
    p.add_argument("--auto-variant", default=None, metavar="NAME=JSON",
                   help="exploratory: run the auto stage with this rule (Thresholds keywords as JSON) instead of "
                        "rule.json's, cached as config NAME; study_report lists it apart from the targets")
    a = p.parse_args(argv)
    variant: tuple[str, dict] | None = None
    if a.auto_variant:
        vname, _, vjson = a.auto_variant.partition("=")
        if not re.fullmatch(r"[a-z0-9.+-]+", vname) or vname == "full":
            p.error(f"--auto-variant: NAME must be [a-z0-9.+-]+ and not 'full', got {vname!r}")
        variant = (f"rule-{vname}", json.loads(vjson))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks = [t.strip() for t in (a.tasks or ("rt,bbc" if a.smoke else ",".join(BUDGETS))).split(",") if t.strip()]
    seeds = [int(s) for s in (a.seeds or ("0" if a.smoke else "0,1,2")).split(",")]
    stages = [s.strip() for s in a.stage.split(",") if s.strip()]
    budgets = {t: (SMOKE_BUDGETS if a.smoke else BUDGETS)[t] for t in tasks}
    grid = SMOKE_LR_GRID if a.smoke else LR_GRID
    fixed_ks = [int(k) for k in a.fixed.split(",") if k.strip()]
    midrun_ks = [int(k) for k in a.midrun.split(",") if k.strip()]
    if a.smoke:
        import tempfile

        out = a.out or tempfile.mkdtemp(prefix="freeze_smoke_")
        fixed_ks = [k for k in fixed_ks if k in (2, N_BLOCKS)] or [N_BLOCKS]
        midrun_ks = [k for k in midrun_ks if k == N_BLOCKS] or [N_BLOCKS]
    else:
        out = a.out or os.path.join(ROOT, "analyses", "results")
    cache = a.cache or (os.path.join(out, "cache") if a.smoke else os.path.join(ROOT, "analyses", "cache"))
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(1)  # one thread per run: CPU time is clean on a shared machine
    data_cache: dict = {}

    def do(b: TaskBudget, method: str, emb: bool, k: int, seed: int, auto_opts=None,
           config: str | None = None) -> dict:
        path = run_file(cache, b.task, method, config or config_name(emb, k), b.lr, seed)
        row = _read_row(path, b)
        # a full run at the task's chosen lr also owes its predictor measurements (measures.json)
        # (a re-made run, config "ref", owes nothing: it only lends its CPU units)
        at_chosen = method == "full" and config is None and b.lr == chosen_lr(cache, replace(b, lr=None), grid)
        owes = at_chosen and not os.path.exists(run_file(cache, b.task, method, "full", b.lr, seed, "measures.json"))
        # ... and its CPU reference (ref_full_step_cpu): the new tasks' fixed runs are read against it; RT and
        # BBC keep their complete 2026-11 set, whose runs were all made in one session (raw CPU comparable)
        owes = owes or (at_chosen and row is not None and b.task not in ("rt", "bbc")
                        and (row.get("ref_full_step_cpu") is None or row.get("grad_hook_cpu_seconds") is None))
        # an auto run stands while it is of the kind the options now ask for (the same rule, or a predictor fit
        # without its task: refits after later tasks land do not make a held-out run stale)
        held_out = config in (None, MIDFIT)  # a held-out run stands whichever fold fit led when it ran
        if row is not None and not owes and (method != "auto" or not held_out and row.get("auto_options") ==
                                             clean(auto_opts or {}) or held_out and
                                             auto_kind(row.get("auto_options"), b.task) ==
                                             auto_kind(auto_opts, b.task) != ("leaked",)):
            return row
        with claimed(path) as mine:
            if not mine:  # another lane is making this run now
                tqdm.write(f"{path}: being made by another study process; skipped here")
                return row or {}
            again = _read_row(path, b)
            if again is not None and again != row:  # the other lane finished it before this one claimed it
                return again
            if b.task not in data_cache:
                data_cache[b.task] = task_splits(b)
            row = run_one(b, method, emb, k, seed, data_cache[b.task], cache, not a.no_progress, auto_opts, config)
            if method == "auto":
                row["auto_options"] = auto_opts or {}
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_text(path, json.dumps(clean(row), indent=1) + "\n")
        tqdm.write(f"{b.task} {method} {row['config']:>6} lr {b.lr:g} seed {seed}: acc {row['accuracy']:.4f} "
                   f"dev {row['dev_accuracy']:.4f} epochs {row['epochs']:.2f} (best {row['best_epoch']}) "
                   f"cpu {row['train_cpu_seconds']:.0f}s wall {row['train_seconds']:.0f}s")
        if not a.no_report:
            _report(cache, out, a.smoke)
        return row

    stop_file = os.path.join(cache, "STOP")
    for task in tasks:
        b0 = budgets[task]
        grid_order = sorted(grid, key=lambda x: (x != 1e-4, x))

        def lr_now(task: str = task, b0: TaskBudget = b0, grid_order: list = grid_order) -> float | None:
            """The chosen lr when every grid run is cached; before that the best finished one (provisional)."""
            lr = chosen_lr(cache, replace(b0, lr=None), grid)
            if lr is not None:
                return lr
            done = [(lr, _read_row(run_file(cache, task, "full", "full", lr, 0), replace(b0, lr=lr)))
                    for lr in grid_order]
            done = [(lr, r["dev_accuracy"]) for lr, r in done if r is not None]
            return max(done, key=lambda t: t[1])[0] if done else None

        # priority order, so that partial results are useful: the first lr's full run (seed 0), the
        # fixed-prefix scan at the best lr so far (seed 0: the oracle's shape), the rest of the lr grid,
        # then the other seeds (full, fixed, in order of relevance), then the auto runs.
        steps = []
        if "full" in stages and seeds[0] == 0:
            steps.append(("full", grid_order[0], 0, None))
        if "fixed" in stages and seeds[0] == 0:
            steps += [("fixed", None, 0, k) for k in fixed_ks]
        if "full" in stages and seeds[0] == 0:
            steps += [("full", lr, 0, None) for lr in grid_order[1:]]
        for stage in stages:
            if stage == "linear":
                steps.append(("linear", None, 0, None))
            for seed in seeds:
                if stage == "full":  # seed 0 again: measures owed at the chosen lr
                    steps.append(("full", None, seed, None))
                elif stage == "lora" and seed in seeds[:2]:
                    steps.append(("lora", LORA["lr"], seed, None))
                elif stage == "fixed":  # seed 0 again: its scan above may have run at a provisional lr
                    steps += [("fixed", None, seed, k) for k in _fixed_order(out, task, fixed_ks)]
                elif stage == "auto":
                    steps.append(("auto", None, seed, None))
                elif stage == "ref":  # a full run made again for its CPU reference (see study_report.lend_units)
                    steps.append(("ref", None, seed, None))
                elif stage == "midrun":  # plan amendment 5
                    steps += [("midrun", None, seed, k) for k in midrun_ks]
        for method, lr, seed, k in steps:
            if os.path.exists(stop_file):
                print(f"{stop_file} exists: stopping before the next run")
                return 0
            lr = lr if lr is not None else lr_now()
            if lr is None:
                print(f"{task}: no lr chosen yet (run the full stage first); skipping {method} seed {seed}")
                continue
            b = replace(b0, lr=lr)
            if method == "linear":
                if b.task not in data_cache:
                    data_cache[b.task] = task_splits(b)
                linear_probe_task(b0, data_cache[b.task], cache)
            elif method == "lora":
                do(b, "lora", False, 0, seed, config="lora")
            elif method == "full":
                do(b, "full", False, 0, seed)
            elif method == "ref":
                do(b, "full", False, 0, seed, config="ref")
            elif method == "fixed":
                do(b, "fixed", True, k, seed)
            elif method == "midrun":
                do(b, "midrun", True, k, seed, config=midrun_config(k))
            elif variant is not None:
                opts = auto_options(out)
                do(b, "auto", False, 0, seed, {**opts, "thresholds": variant[1]}, variant[0])
            elif a.auto_fit == "midrun":
                opts = auto_options(out, task, "loto_predictors_midrun")
                if "predictor" not in opts:
                    print(f"{task}: no mid-run fold predictor yet (the mid-run scan of four tasks); skipping auto")
                    continue
                do(b, "auto", False, 0, seed, opts, MIDFIT)
            else:
                do(b, "auto", False, 0, seed, auto_options(out, task))
    _report(cache, out, a.smoke)
    print(f"results in {out}")
    return 0


def _fixed_order(out: str, task: str, ks: list[int]) -> list[int]:
    """Fixed prefixes for seeds > 0, most relevant first: the seed-0 oracle and its neighbour, the
    advised prefixes, then the rest (read from the results; plain order when none yet)."""
    path = os.path.join(out, "oracle.json")
    first: list[int] = []
    if os.path.exists(path):
        with open(path) as fh:
            info = json.load(fh).get(task, {})
        for k in [info.get("seed0_oracle_k"), (info.get("seed0_oracle_k") or 0) + 1, *info.get("advised_ks", [])]:
            if k is not None and k in ks and k not in first:
                first.append(k)
    return first + [k for k in ks if k not in first]


def _report(cache: str, out: str, smoke: bool) -> None:
    """Rebuild the results from the cache; a failure here never stops the runs (it is retried later)."""
    try:
        from study_report import build_outputs  # analyses/ is on sys.path when run as a script

        build_outputs(cache, out, smoke=smoke)
    except Exception as exc:  # noqa: BLE001 - the report is rebuilt by analyses/study_report.py anyway
        print(f"report not rebuilt: {type(exc).__name__}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
