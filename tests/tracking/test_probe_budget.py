"""The auto-freeze probe budget: probe_plan / probe_texts_within (pure), Tracker.limit_probe, and the
LayerProbeCallback sizing its probe and cadence from the Trainer's run length."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import tiny_bert
from layerprobe import LayerProbeCallback, Tracker
from layerprobe.errors import LayerProbeError
from layerprobe.tracking.budget import MIN_CHECKS, MIN_PROBE_TEXTS, probe_passes, probe_plan, probe_texts_within
from layerprobe.tracking.tracker import FREEZE_LOG_CSV


@pytest.mark.parametrize("n_texts", [2, 16, 64, 128, 512])
@pytest.mark.parametrize("train_examples", [0, 40, 160, 3072, 16_000, 1_000_000])
@pytest.mark.parametrize("share", [0.01, 0.05, 0.2])
def test_probe_plan_keeps_the_share_unless_a_minimum_binds(n_texts, train_examples, share):
    checks, n = probe_plan(n_texts, train_examples, share=share)
    assert MIN_CHECKS <= checks <= 20 and min(n_texts, MIN_PROBE_TEXTS) <= n <= n_texts
    budget = share * 3 * train_examples
    passes = checks + 2  # the start, the checks, a final pass
    if passes * n > budget + 1e-9:  # over budget only at both minimums
        assert checks == MIN_CHECKS and n == min(n_texts, MIN_PROBE_TEXTS)
    else:
        # nothing left on the table: all texts at 20 checks, or one more text would break the budget
        assert (checks == 20 and n == n_texts) or passes * (n + 1) > budget or n == n_texts
    if n < n_texts and checks == 20:  # shrinking the probe comes before checking less often
        assert n >= MIN_PROBE_TEXTS


@pytest.mark.parametrize("steps", [1, 7, 60, 96, 500])
@pytest.mark.parametrize("checks", [1, 8, 12, 20])
def test_probe_passes_counts_what_a_run_does_and_rounding_up_keeps_the_plan(steps, checks):
    every = -(-steps // checks)  # the callback rounds the interval up
    ran = [0] + [s for s in range(1, steps + 1) if s % every == 0]
    ran += [] if ran[-1] == steps else [steps]  # the final pass at train end
    assert probe_passes(steps, every) == len(ran) <= checks + 2


def test_probe_plan_values():
    assert probe_plan(64, 96 * 32) == (12, 32)     # 14 passes x 32 = 448 <= 5% of 3 x 3072 = 460.8
    assert probe_plan(64, 500 * 32) == (20, 64)
    assert probe_plan(128, 4000 * 3) == (20, 81)   # 22 x 81 = 1782 <= 1800
    assert probe_plan(64, 20 * 8) == (8, 32)
    assert probe_texts_within(600.0, 4, 128) == 128 and probe_texts_within(214.95, 4, 128) == 53


def test_limit_probe_takes_evenly_spaced_texts_and_only_before_start(tokenizer, texts):
    t = Tracker(None, tokenizer, texts[:10], progress=False)
    assert (t.n_probe, t.n_texts) == (10, 10)
    fp = t.fingerprint
    t.limit_probe(4)
    ref = Tracker(None, tokenizer, [texts[i] for i in (0, 3, 6, 9)], progress=False)
    assert t.n_probe == 4 and t.fingerprint == ref.fingerprint != fp
    t.limit_probe(50)  # more than given: all of them
    assert t.n_probe == 10 and t.fingerprint == fp
    for n in (1, 3):
        with pytest.raises(LayerProbeError, match="at least 4 distinct"):
            t.limit_probe(n)
    t.start(tiny_bert(0))
    with pytest.raises(LayerProbeError, match="fixed once start"):
        t.limit_probe(4)


def _trainer(model, tokenizer, texts, out, callback, epochs, batch=8):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    enc = tokenizer(texts, truncation=True, max_length=32)
    ds = Dataset.from_dict({**enc, "labels": [i % 2 for i in range(len(texts))]})
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=batch,
                             learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
                   callbacks=[callback])


def test_callback_sizes_probe_and_cadence_from_the_run(tokenizer, texts, tmp_path):
    """48 texts x 10 epochs at batch 8 = 60 steps, 480 examples: 5% is 72 probe passes -> the floor
    of 32 texts binds, so it checks less often: 8 checks, every ceil(60 / 8) = 8 steps; passes: the
    start, steps 8..56 and the final step 60 = 9."""
    probe = [f"{a} {b}" for a in texts[:8] for b in texts[:8]][:64]
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=probe, auto_freeze=True)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path, cb, epochs=10).train()
    plan = cb.probe_plan
    assert plan is not None
    assert (plan["checks"], plan["probe_passes"], plan["probe_texts"], plan["of_texts"]) == (7, 9, 32, 64)
    assert plan["train_examples"] == 480 and cb.tracker.every_n_steps == 8 and cb.tracker.n_probe == 32
    traj = pd.read_csv(tmp_path / "layerprobe_trajectory.csv")
    assert sorted(traj.step.unique()) == [0, 8, 16, 24, 32, 40, 48, 56, 60]
    assert traj.step.nunique() == plan["probe_passes"]  # the plan counts what ran
    assert plan["probe_share_planned"] == pytest.approx(9 * 32 / (3 * 480))
    assert (tmp_path / FREEZE_LOG_CSV).exists()


def test_callback_budget_follows_a_long_run(tokenizer, texts, tmp_path):
    """A run long enough for 20 checks of every text: 48 texts x 40 epochs at batch 8 = 240 steps,
    1,920 examples; at probe_share 0.2 the budget is 1,152 passes, and 20 checks (22 passes) of all
    40 texts take 880 of them; the interval is ceil(240 / 20) = 12 steps."""
    probe = [f"{a} {b}" for a in texts[:8] for b in texts[:8]][:40]
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=probe, auto_freeze=True, probe_share=0.2)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path, cb, epochs=40).train()
    assert (cb.probe_plan["checks"], cb.probe_plan["probe_texts"]) == (20, 40) and cb.tracker.every_n_steps == 12
    assert cb.probe_plan["probe_share_planned"] <= 0.2


def test_callback_probe_share_none_and_explicit_cadence(tokenizer, texts, tmp_path):
    probe = [f"{a} {b}" for a in texts[:8] for b in texts[:8]][:64]
    every = LayerProbeCallback(tokenizer=tokenizer, probe_texts=probe, auto_freeze=True, probe_share=None)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "a", every, epochs=2).train()
    assert every.probe_plan is None and every.tracker.n_probe == 64 and every.tracker.every_n_steps == 1  # 12 / 20
    # the user's cadence is kept (every 3 steps of 12: 5 passes) and only the probe is sized to it:
    # 5% of 3 x 96 = 14.4 passes over 5 -> under the floor, so the floor (32 texts)
    own = LayerProbeCallback(tokenizer=tokenizer, probe_texts=probe, auto_freeze=True, every_n_steps=3)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "b", own, epochs=2).train()
    assert own.tracker.every_n_steps == 3 and own.probe_plan["probe_passes"] == 5 and own.tracker.n_probe == 32
    # plain tracking (no auto freeze) is never trimmed, and a budget without auto_freeze is refused
    plain = LayerProbeCallback(tokenizer=tokenizer, probe_texts=probe)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "c", plain, epochs=1).train()
    assert plain.probe_plan is None and plain.tracker.n_probe == 64
    with pytest.raises(LayerProbeError, match="probe_share budgets auto_freeze"):
        LayerProbeCallback(tokenizer=tokenizer, probe_texts=probe, probe_share=0.1)
    for bad in (0, -0.1, 1.5, "x", True, float("nan")):
        with pytest.raises(LayerProbeError, match="probe_share must be"):
            LayerProbeCallback(tokenizer=tokenizer, probe_texts=probe, auto_freeze=True, probe_share=bad)
