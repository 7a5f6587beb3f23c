"""LayerProbeCallback inside the Trainer (integrations/hf.py): resume, best model, logs (issue 19 items 3, 4, 7).

DDP and FSDP runs are in tests/test_ddp.py (slow tier, torchrun on gloo).
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from conftest import tiny_bert
from layerprobe import FreezePolicy, LayerProbeCallback
from layerprobe.integrations.hf import REFERENCE_FILE, STATE_JSON, STATE_TENSORS
from layerprobe.tracking.tracker import FREEZE_LOG_CSV, TRAJECTORY_CSV


def _data(tokenizer, texts):
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=32)
    return Dataset.from_dict({**enc, "labels": [i % 2 for i in range(len(texts))]})


def _trainer(model, tokenizer, texts, out, callbacks, steps=8, **kw):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    extra = {k: kw.pop(k) for k in ("compute_metrics", "eval_dataset") if k in kw}
    opts = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
                report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    opts.update(kw)
    return Trainer(model=model, args=TrainingArguments(**opts), train_dataset=_data(tokenizer, texts),
                   data_collator=DataCollatorWithPadding(tokenizer), callbacks=callbacks, **extra)


def _callback(tokenizer, texts):
    return LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], every_n_steps=2,
                              freeze_policy=FreezePolicy(threshold=1.0, patience=1, min_train_blocks=2))


def test_resume_from_checkpoint_continues_the_run(tokenizer, texts, tmp_path):
    """Item 3: the reference stays the pretrained model, rows and the freeze log continue, and the
    frozen prefix is frozen before the first resumed step."""
    full = _callback(tokenizer, texts)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "full", [full]).train()
    want = pd.read_csv(tmp_path / "full" / TRAJECTORY_CSV)

    out = tmp_path / "run"
    first = _callback(tokenizer, texts)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [first], save_strategy="steps", save_steps=4).train()
    assert (out / "checkpoint-4" / STATE_JSON).is_file() and (out / "checkpoint-4" / STATE_TENSORS).is_file()
    assert (out / REFERENCE_FILE).is_file()

    frozen_at_resume = {}

    class Grab(LayerProbeCallback.__mro__[1]):  # a plain TrainerCallback
        def on_step_begin(self, args, state, control, model=None, **kw):
            if not frozen_at_resume:
                frozen_at_resume.update({n: p.requires_grad for n, p in model.named_parameters()})

    cb = _callback(tokenizer, texts)
    model = tiny_bert(0, head=True)
    _trainer(model, tokenizer, texts, out, [cb, Grab()], save_strategy="steps",
             save_steps=4).train(resume_from_checkpoint=str(out / "checkpoint-4"))
    got = pd.read_csv(out / TRAJECTORY_CSV)
    assert cb.resumed_from == 4
    assert sorted(got["step"].unique()) == [0, 2, 4, 6, 8]  # before: [4, 6, 8], step 4 the new reference
    for col in ("cka_to_start", "weight_drift"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy(), abs=1e-6), col
    assert not frozen_at_resume["bert.embeddings.word_embeddings.weight"]
    assert not frozen_at_resume["bert.encoder.layer.1.output.dense.weight"]
    assert frozen_at_resume["bert.encoder.layer.3.output.dense.weight"]
    log = pd.read_csv(out / FREEZE_LOG_CSV)
    assert sorted(log["step"].unique()) == [2, 4, 6, 8]
    assert cb.policy.frozen == full.policy.frozen == ["embeddings", "block.0", "block.1"]


def test_resume_with_restore_callback_states_keeps_the_users_callback(tokenizer, texts, tmp_path):
    out = tmp_path / "run"
    _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [_callback(tokenizer, texts)],
             save_strategy="steps", save_steps=4).train()
    cb = _callback(tokenizer, texts)
    trainer = _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [cb], save_strategy="steps", save_steps=4,
                       restore_callback_states_from_checkpoint=True)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert cb in trainer.callback_handler.callbacks and cb.resumed_from == 4
    assert cb.advice().freeze  # the user's object holds the run


def test_load_best_model_at_end_keeps_the_last_steps_row(tokenizer, texts, tmp_path):
    """Item 4: the Trainer reloads the best checkpoint before on_train_end; the final row must
    still measure the last step's model."""
    calls = iter(range(1, 100))

    def metrics(_):
        return {"score": 1.0 / next(calls)}  # the first evaluation is the best

    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], every_n_steps=2)
    model = tiny_bert(0, head=True)
    _trainer(model, tokenizer, texts, tmp_path, [cb], steps=7, eval_strategy="steps", eval_steps=2,
             save_strategy="steps", save_steps=2, load_best_model_at_end=True, metric_for_best_model="score",
             greater_is_better=True, eval_dataset=_data(tokenizer, texts[:8]), compute_metrics=metrics).train()
    df = pd.read_csv(tmp_path / TRAJECTORY_CSV)
    assert sorted(df["step"].unique()) == [0, 2, 4, 6, 7]
    last, best = df[df["step"] == 7], df[df["step"] == 2]
    assert cb.best_step == 2 and cb.best_step_measured
    # before: the step-7 row measured the reloaded step-2 model (drift equal to step 2's)
    assert (last["weight_drift"].to_numpy() > best["weight_drift"].to_numpy() * 1.2).all()


def test_on_log_reaches_history_trackers_and_console(tokenizer, texts, tmp_path, caplog):
    """Item 7: per-entry CKA, frozen fraction and probe share in every log after a check, also for a
    report_to tracker registered before the callback; one log line per freeze decision."""
    from transformers import TrainerCallback

    seen = []

    class Reporter(TrainerCallback):  # like TensorBoardCallback: added before user callbacks
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs or {}))

    cb = _callback(tokenizer, texts)
    with caplog.at_level(logging.WARNING, logger="layerprobe"):
        trainer = _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path, [Reporter(), cb], steps=6,
                           logging_strategy="steps", logging_steps=2)
        trainer.train()
    logged = [h for h in trainer.state.log_history if "layerprobe/frozen_fraction" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    assert logged[0]["layerprobe/cka_to_start/block.3"] < 1.0 and 0 < logged[-1]["layerprobe/frozen_fraction"] < 1
    assert 0 < logged[-1]["layerprobe/probe_share"] < 1
    assert sum("layerprobe/frozen_fraction" in s for s in seen) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "layerprobe"]
    assert lines == [lines[0]] and lines[0].startswith("layerprobe: froze embeddings, block.0, block.1 at step 2")
    frac = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad) / \
        sum(p.numel() for p in trainer.model.parameters())
    assert logged[-1]["layerprobe/frozen_fraction"] == pytest.approx(frac)
    assert torch.is_tensor(next(trainer.model.parameters()))


def test_a_probe_shorter_than_the_training_examples_is_warned(tokenizer, texts, tmp_path):
    """issue 19 leftover: probe texts cut at max_length while training examples are longer: one warning naming
    both lengths; none when the probe sees whole texts."""
    import warnings

    from layerprobe.errors import LayerProbeWarning

    def run(max_length):
        cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], every_n_steps=2, max_length=max_length)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / str(max_length), [cb], steps=2).train()
        return [str(w.message) for w in caught if issubclass(w.category, LayerProbeWarning)]

    longest = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=32)["input_ids"])
    assert longest > 6
    short = [m for m in run(6) if "probe texts are cut" in m]
    assert len(short) == 1 and "max_length=6 tokens" in short[0] and f"reach {longest}:" in short[0]
    assert f"pass max_length={longest}" in short[0]
    assert not [m for m in run(64) if "probe texts are cut" in m]


def test_the_longest_training_example_reads_token_ids_of_any_layout():
    import torch

    from layerprobe.integrations.hf import _longest_training_example

    class Loader:
        def __init__(self, items):
            self.dataset = items

    assert _longest_training_example(Loader([{"input_ids": [1, 2, 3]}, {"input_ids": [1] * 7}])) == 7
    assert _longest_training_example(Loader([{"input_ids": torch.ones(1, 9, dtype=torch.long)}])) == 9  # was 1
    assert _longest_training_example(Loader([{"input_ids": torch.ones(5, dtype=torch.long)}])) == 5
    assert _longest_training_example(Loader([{"input_ids": "a text, not ids"}])) is None  # was its characters
    assert _longest_training_example(Loader([])) is None and _longest_training_example(None) is None


def test_ddp_freezing_check_follows_the_trainers_find_unused_default():
    """The Trainer (transformers 5) leaves find_unused_parameters off when activation checkpointing is on (the
    model's or TrainingArguments'); freezing then needs it set explicitly. Read without the deprecated
    is_gradient_checkpointing (a FutureWarning, removed in v6)."""
    import types
    import warnings

    from layerprobe.errors import LayerProbeError
    from layerprobe.integrations.hf import _check_ddp_freezing

    model = tiny_bert(0, head=True)
    args = types.SimpleNamespace(ddp_find_unused_parameters=None, activation_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning
        _check_ddp_freezing(args, model)  # the Trainer would pass find_unused=True
        with pytest.raises(LayerProbeError, match="ddp_find_unused_parameters=True"):
            _check_ddp_freezing(types.SimpleNamespace(ddp_find_unused_parameters=None, activation_checkpointing=True),
                                model)
        model.activation_checkpointing_enable()
        with pytest.raises(LayerProbeError, match="ddp_find_unused_parameters=True"):
            _check_ddp_freezing(args, model)
        _check_ddp_freezing(types.SimpleNamespace(ddp_find_unused_parameters=True), model)


@pytest.mark.shipped_default("predictor")
def test_without_a_tolerance_the_revert_note_says_the_cka_rule_decides(tokenizer, texts, monkeypatch):
    """Once the shipped file makes the prediction the default rule, auto_freeze=True alone asks for the revert
    test the lead predictor reads; on a model without a head it stays off, and the note says what then decides:
    the CKA rule (a fallback prediction only informs), not "the prediction uses CKA and drift"."""
    from layerprobe.freezing import predict as pr

    monkeypatch.setattr(pr, "shipped_prefers_revert", lambda: True)  # a revert predictor leads (a refit may move it)
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], auto_freeze=True)
    cb._choose_revert(tiny_bert(0))  # a BertModel: no logits
    assert not cb.tracker.revert
    assert cb.revert_note is not None and cb.revert_note.startswith("revert test off: ")
    assert cb.revert_note.endswith("; the default prediction needs it, so the CKA rule decides (the predictions "
                                   "from CKA and drift are listed)")
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], auto_freeze=True, tolerance=0.05)
    cb._choose_revert(tiny_bert(0))  # a tolerance: the prediction decides, from CKA and drift
    assert cb.revert_note is not None and cb.revert_note.endswith("; the prediction uses CKA and drift")
