"""Tracker, LayerProbeCallback and plot-trajectory on tiny random BERTs."""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest
import torch

from conftest import tiny_bert
from layerprobe import LayerProbeCallback, LayerProbeError, Tracker
from layerprobe.cli import main
from layerprobe import FreezePolicy
from layerprobe.results.trajectory import COLUMNS, TRAJECTORY_CSV
from layerprobe.tracking.tracker import FREEZE_LOG_CSV
from layerprobe.demo.train import TrainConfig, fine_tune

NAMES = ["embeddings", "block.0", "block.1", "block.2", "block.3"]


def _rows(df, step):
    return df[df["step"] == step].set_index("block")


def test_step0_is_identity_and_train_mode_restored(tokenizer, texts):
    m = tiny_bert(0).train()
    t = Tracker(m, tokenizer, texts, every_n_steps=3)
    t.start()
    df = t.to_frame()
    assert list(df.columns) == list(COLUMNS)
    assert df["block"].tolist() == NAMES and (df["step"] == 0).all()
    assert df["cka_to_start"].tolist() == pytest.approx([1.0] * 5, abs=1e-9)
    assert df["weight_drift"].tolist() == [0.0] * 5
    assert df["cka_to_previous"].isna().all()
    assert m.training and all(mod.training for mod in m.modules())
    assert torch.is_grad_enabled()


def test_perturbing_top_block_changes_only_top_rows(tokenizer, texts):
    m = tiny_bert(0)
    t = Tracker(m, tokenizer, texts, every_n_steps=2)
    t.start()
    assert not t.maybe_record(1)  # not a multiple of 2
    with torch.no_grad():
        for p in m.encoder.layer[3].parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert t.maybe_record(2)
    assert not t.maybe_record(2)  # no duplicate check
    r = _rows(t.to_frame(), 2)
    for name in NAMES[:-1]:
        assert r.loc[name, "cka_to_start"] == pytest.approx(1.0, abs=1e-9)
        assert r.loc[name, "cka_to_previous"] == pytest.approx(1.0, abs=1e-9)
        assert r.loc[name, "weight_drift"] == 0.0
    assert r.loc["block.3", "cka_to_start"] < 0.99
    assert r.loc["block.3", "change"] == pytest.approx(1 - r.loc["block.3", "cka_to_previous"])
    assert r.loc["block.3", "weight_drift"] > 0.1
    # a second, unperturbed interval: no change since the previous check, still far from the start
    assert t.maybe_record(4)
    r4 = _rows(t.to_frame(), 4)
    assert r4.loc["block.3", "cka_to_previous"] == pytest.approx(1.0, abs=1e-9)
    assert r4.loc["block.3", "cka_to_start"] == pytest.approx(r.loc["block.3", "cka_to_start"], abs=1e-9)
    assert (t.to_frame()["track_seconds"] > 0).all()


def test_drift_matches_definition(tokenizer, texts):
    m = tiny_bert(0)
    t = Tracker(m, tokenizer, texts, every_n_steps=1)
    t.start()
    w0 = [p.detach().clone() for p in m.encoder.layer[1].parameters()]
    with torch.no_grad():
        for p in m.encoder.layer[1].parameters():
            p.mul_(1.1)
    t.maybe_record(1)
    num = sum(float(((p.detach().double() - q.double()) ** 2).sum()) for p, q in zip(m.encoder.layer[1].parameters(), w0))
    den = sum(float((q.double() ** 2).sum()) for q in w0)
    assert _rows(t.to_frame(), 1).loc["block.1", "weight_drift"] == pytest.approx(math.sqrt(num / den), rel=1e-9)
    assert _rows(t.to_frame(), 1).loc["block.1", "weight_drift"] == pytest.approx(0.1, rel=1e-6)


def test_plain_loop_and_csv(tokenizer, texts, tmp_path):
    m = tiny_bert(0, head=True)
    t = Tracker(m, tokenizer, texts[:16], every_n_steps=2)
    with pytest.raises(LayerProbeError, match="start"):
        t.on_step(2, m)
    t.start()
    stats = fine_tune(m, tokenizer, texts, [i % 2 for i in range(len(texts))],
                      TrainConfig(epochs=1, batch_size=8, lr=1e-3), on_step=[t.on_step], progress=False)
    t.finish(stats["steps"])
    path = t.write_csv(tmp_path / "traj.csv")
    df = pd.read_csv(path)
    assert sorted(df["step"].unique()) == [0, 2, 4, 6]
    assert list(df.columns) == list(COLUMNS)
    last = _rows(df, 6)
    assert (last["weight_drift"] > 0).all() and (last["cka_to_start"] < 1).all()


def test_bad_arguments(tokenizer, texts):
    m = tiny_bert(0)
    with pytest.raises(LayerProbeError, match="pooling"):
        Tracker(m, tokenizer, texts, pooling="tokens")
    for probe in (texts[:1], texts[:3], [texts[0]] * 9 + [texts[1]], [texts[0], texts[0].upper()] * 4):
        with pytest.raises(LayerProbeError, match="at least 4 distinct"):
            Tracker(m, tokenizer, probe)
    with pytest.raises(LayerProbeError, match="multiple"):
        Tracker(m, tokenizer, texts, every_n_steps=3, freeze_policy=FreezePolicy(every_n_steps=4))


def _trainer(model, tokenizer, texts, out, callback, steps=4):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    enc = tokenizer(texts, truncation=True, max_length=32)
    ds = Dataset.from_dict({**enc, "labels": [i % 2 for i in range(len(texts))]})
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
                   callbacks=[callback])


def test_trainer_callback_writes_csv(tokenizer, texts, tmp_path):
    m = tiny_bert(0, head=True)
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], every_n_steps=2)
    _trainer(m, tokenizer, texts, tmp_path, cb, steps=5).train()
    df = pd.read_csv(tmp_path / TRAJECTORY_CSV)
    assert {"step", "block", "cka_to_start", "cka_to_previous", "weight_drift"} <= set(df.columns)
    assert sorted(df["step"].unique()) == [0, 2, 4, 5]  # checks + the final step
    assert df[df["step"] == 0]["cka_to_start"].tolist() == pytest.approx([1.0] * 5)
    assert (df[df["step"] == 5]["weight_drift"] > 0).all()


def test_trainer_callback_with_policy_freezes_prefix(tokenizer, texts, tmp_path):
    m = tiny_bert(0, head=True)
    policy = FreezePolicy(threshold=1.0, patience=1, min_train_blocks=2)  # everything counts as still
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], every_n_steps=2, freeze_policy=policy)
    trainer = _trainer(m, tokenizer, texts, tmp_path, cb, steps=6)
    snap = {}

    class Grab(LayerProbeCallback.__mro__[1]):  # a plain TrainerCallback: weights right after the freeze
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                snap.update({n: p.detach().clone() for n, p in m.named_parameters()})

    trainer.add_callback(Grab())
    trainer.train()
    assert policy.frozen == ["embeddings", "block.0", "block.1"]
    log = pd.read_csv(tmp_path / FREEZE_LOG_CSV)
    assert set(log[log["action"] == "freeze"]["block"]) == {"embeddings", "block.0", "block.1"}
    assert (log[log["action"] == "freeze"]["step"] == 2).all()
    for n, p in m.named_parameters():
        if n.startswith(("bert.embeddings", "bert.encoder.layer.0.", "bert.encoder.layer.1.")):
            assert not p.requires_grad and torch.equal(p, snap[n]), n  # AdamW skipped them
        elif n.startswith("bert.encoder.layer.3."):
            assert p.requires_grad
    assert not torch.equal(m.classifier.weight, snap["classifier.weight"])
    traj = pd.read_csv(tmp_path / TRAJECTORY_CSV)
    assert traj[(traj["step"] == 6) & traj["block"].isin(["embeddings", "block.0", "block.1"])]["frozen"].all()


def test_cli_plot_trajectory(tokenizer, texts, tmp_path):
    m = tiny_bert(0)
    t = Tracker(m, tokenizer, texts[:16], every_n_steps=1)
    t.start()
    with torch.no_grad():
        m.encoder.layer[3].output.dense.weight.mul_(1.5)
    t.maybe_record(1)
    t.write_csv(tmp_path / TRAJECTORY_CSV)
    assert main(["plot-trajectory", str(tmp_path)]) == 0
    assert (tmp_path / "layerprobe_trajectory.png").stat().st_size > 1000
    out = tmp_path / "x.png"
    assert main(["plot-trajectory", str(tmp_path / TRAJECTORY_CSV), "-o", str(out)]) == 0
    assert out.exists()


def test_cli_plot_trajectory_bad_input(tmp_path, capsys):
    assert main(["plot-trajectory", str(tmp_path)]) == 2  # no CSV
    (tmp_path / TRAJECTORY_CSV).write_text("step,block\n0,embeddings\n")
    assert main(["plot-trajectory", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lacks columns" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "layerprobe_trajectory.png")


@pytest.mark.slow
def test_real_minilm_trainer_callback_auto_freeze_and_cache(tmp_path):
    """The shipped MiniLM-L6 in a Trainer with auto_freeze: freezes, serves the prefix from the cache
    in the second epoch, and the cache reproduces the frozen prefix (eval mode) exactly."""
    from layerprobe.freezing.policy import AutoFreezePolicy
    from layerprobe.freezing.prefix_cache import PrefixCache
    from layerprobe.freezing.rule import Thresholds
    from layerprobe.demo.shipped import default_model_path, load_classifier, load_rotten_tomatoes, sample

    df = sample(load_rotten_tomatoes(), 40, seed=0)
    model, tok = load_classifier(default_model_path(), 2, seed=0)
    texts = df["text"].tolist()
    policy = AutoFreezePolicy(thresholds=Thresholds(min_cka=0.0), settle=1.0, patience=1, warmup_checks=0,
                              wait_for_lr_peak=False)
    cb = LayerProbeCallback(tokenizer=tok, probe_texts=texts[:16], every_n_steps=1, max_length=32,
                            freeze_policy=policy)
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    enc = tok(texts[16:], truncation=True, max_length=32)
    ds = Dataset.from_dict({**enc, "labels": df["label"].tolist()[16:]})
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8,
                             learning_rate=1e-4, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
            callbacks=[cb]).train()
    assert policy.frozen == ["embeddings"] + [f"block.{i}" for i in range(5)]
    s = policy.summary()["cache"]
    # frozen after step 1: steps 2-3 store their 16 rows; the Trainer reshuffles, so epoch 2's batches are
    # only partly stored: the first is checked against the full prefix, the next two served in part
    assert s["stored"] == 24 and s["examples"] == 24  # every training example stored once, probe rows never
    assert s["partial_batches"] >= 2 and s["hit_rows"] >= 8  # epoch 2 served rows from the cache
    df_t = pd.read_csv(tmp_path / TRAJECTORY_CSV)
    assert df_t["block"].nunique() == 7 and df_t["step"].max() == 6
    # the cache reproduces the frozen prefix exactly (eval mode)
    from layerprobe.model.batching import collate, encode

    batch = collate(encode(tok, texts[:8], 32), tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        ref = model(**batch).logits
        cache = PrefixCache(model, 5)
        model(**batch)
        served = model(**batch).logits
    cache.detach()
    assert cache.stats()["hit_batches"] == 1
    assert torch.allclose(served, ref, atol=1e-4)


def test_revert_test_at_each_check_matches_an_independent_run(tokenizer, texts):
    """Tracker(revert=True): the rows kept per check equal revert_test run by hand against a copy of the
    start weights; a check that reverts nothing (k has no change) agrees fully."""
    from layerprobe.freezing.revert import revert_test
    from layerprobe.freezing.revert_shortcut import RevertShortcut
    from layerprobe.model.batching import collate

    m = tiny_bert(0, head=True).train()
    start = {n: p.detach().clone() for n, p in m.named_parameters()}
    t = Tracker(m, tokenizer, texts[:16], every_n_steps=2, revert=True)
    t.start()
    assert t.revert_rows == {}  # nothing to revert at the start
    fine_tune(m, tokenizer, texts, [i % 2 for i in range(len(texts))], TrainConfig(epochs=1, lr=5e-3, batch_size=8),
              on_step=[t.on_step], progress=False)
    steps = sorted({r["step"] for r in t.rows} - {0})
    assert sorted(t.revert_rows) == steps
    last = t.revert_rows[steps[-1]]
    assert [r["k"] for r in last] == list(range(5))  # embeddings + 0..4 blocks
    was = m.training
    batches = [collate(t.examples, tokenizer.pad_token_id)]
    long_way = RevertShortcut()
    long_way.turn_off("every prefix computed, for reference")
    ref = revert_test(m, start, batches, shortcut=long_way)
    assert m.training == was
    assert t._shortcut.checked and t._shortcut.off is None  # the tracker's checks were served from the stack
    for got, want in zip(last, ref):
        assert got["agreement"] == want["agreement"]
        assert got["kl"] == pytest.approx(want["kl"], rel=1e-6, abs=1e-12)
    assert all(r["kl"] >= 0 and 0 <= r["agreement"] <= 1 for r in last)
    assert last[-1]["kl"] > 0  # reverting everything moves the trained outputs
    # the advice predicts from the revert rows when a tolerance is given
    a = t.advice(tolerance=0.5)
    assert a.tolerance == 0.5 and len(a.candidates) == 4  # k = 0..3: one block always trains
    # resumable: the rows travel with the exported state
    fields, reps, weights = t.export_state()
    t2 = Tracker(m, tokenizer, texts[:16], every_n_steps=2, revert=True)
    t2.restore_state(m, fields, reps, weights)
    assert t2.revert_rows == t.revert_rows


def test_revert_needs_an_output_head(tokenizer, texts):
    t = Tracker(tiny_bert(0), tokenizer, texts[:16], every_n_steps=2, revert=True)
    with pytest.raises(LayerProbeError, match="no logits"):
        t.start()
    with pytest.raises(LayerProbeError, match="True or False"):
        Tracker(tiny_bert(0, head=True), tokenizer, texts[:16], revert="yes")


# -- adversarial review: revert rows read back from a checkpoint, outputs that overflow mid-run -------------


@pytest.mark.parametrize("saved, message", [
    ([1, 2], "revert_rows must be an object of steps, got list"),
    ({"x": []}, r"revert_rows\['x'\] is not a list of revert-test rows"),
    ({"10": [{"k": "0", "agreement": 1, "kl": 0, "tv": 0}]}, r"revert_rows\['10'\]"),
    ({"10": [{"k": 0, "agreement": 1, "kl": float("nan"), "tv": 0}]}, r"revert_rows\['10'\]"),
    ({"10": [{"k": 0, "agreement": True, "kl": 0, "tv": 0}]}, r"revert_rows\['10'\]"),
    ({"1" * 40: []}, r"revert_rows\['11111111111111111111'\]"),
])
def test_saved_revert_rows_are_checked_on_restore(saved, message, tokenizer, texts):
    """Before: taken as they were; advice() then failed (KeyError/TypeError) or predicted from NaN."""
    from layerprobe.tracking.tracker import checked_revert_rows

    with pytest.raises(LayerProbeError, match=message):
        checked_revert_rows(saved)
    m = tiny_bert(0, head=True)
    t = Tracker(m, tokenizer, texts[:16], every_n_steps=2, revert=True)
    t.start()
    fields, reps, weights = t.export_state()
    t2 = Tracker(m, tokenizer, texts[:16], every_n_steps=2, revert=True)
    with pytest.raises(LayerProbeError, match=message):
        t2.restore_state(m, {**fields, "revert_rows": saved}, reps, weights)
    assert checked_revert_rows({"4": [{"k": 0, "agreement": 1.0, "kl": 0.0, "tv": 0.0}]}) == \
        {4: [{"k": 0, "agreement": 1.0, "kl": 0.0, "tv": 0.0}]}


def test_a_check_whose_revert_outputs_overflow_warns_and_training_goes_on(tokenizer, texts):
    """The tuned outputs turn non-finite mid-run: that check has no revert rows and one warning line;
    before, the LayerProbeError from the revert test stopped the training loop."""
    from layerprobe.errors import LayerProbeWarning

    m = tiny_bert(0, head=True)
    t = Tracker(m, tokenizer, texts[:16], every_n_steps=1, revert=True)
    t.start()
    with torch.no_grad():
        m.classifier.weight.fill_(float("inf"))
    with pytest.warns(LayerProbeWarning, match="no revert test at this check: revert test: the tuned model's outputs"):
        assert t.maybe_record(1)
    assert t.revert_rows == {} and t.latest()[0]["step"] == 1
