"""AutoFreezePolicy (pure decisions on synthetic checks), Tracker.advice, and auto_freeze=True in a
real transformers.Trainer run with the prefix cache."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import tiny_bert
from layerprobe import LayerProbeCallback, Thresholds, Tracker
from layerprobe.model.blocks import find_blocks
from layerprobe.errors import LayerProbeError
from layerprobe.freezing.policy import LOG_COLUMNS, AutoFreezePolicy
from layerprobe.tracking.tracker import FREEZE_LOG_CSV, TRAJECTORY_CSV
from layerprobe.demo.train import TrainConfig, fine_tune

NAMES = ["embeddings", "block.0", "block.1", "block.2", "block.3"]


def _rows(step, cka, change, lr_sum):
    return [{"step": step, "block": n, "cka_to_start": c, "change": d, "lr_sum": lr_sum, "weight_drift": 0.01}
            for n, c, d in zip(NAMES, cka, change)]


def test_policy_waits_for_warmup_advice_and_settling_then_grows_a_prefix():
    m = tiny_bert(0)
    blocks = find_blocks(m)
    pol = AutoFreezePolicy(thresholds=Thresholds(min_cka=0.95), settle=0.5, patience=2, warmup_checks=1,
                           cache=False)
    cka = [0.999, 0.99, 0.97, 0.8, 0.5]  # advice: embeddings, block.0, block.1
    # check 1 (warm-up): peaks are set, nothing freezes
    assert pol.observe(10, _rows(10, cka, [1e-3, 2e-3, 4e-3, 1e-2, 2e-2], 1.0), m, blocks) == []
    # check 2: embeddings and block.0 move at < half the fastest block's pace, advised and settled for 2
    # checks (streaks count during the warm-up too); block.1 keeps moving fast
    assert pol.observe(20, _rows(20, cka, [4e-4, 8e-4, 1.5e-2, 1e-2, 2e-2], 1.0), m, blocks) == \
        ["embeddings", "block.0"]
    assert pol.observe(30, _rows(30, cka, [4e-4, 8e-4, 1.5e-2, 1e-2, 2e-2], 1.0), m, blocks) == []
    assert all(not p.requires_grad for p in m.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in m.encoder.layer[1].parameters())
    log = pol.log_frame()
    assert list(log.columns) == list(LOG_COLUMNS)
    assert log[log.step == 10].reason.str.startswith("observing").all()
    last = log[log.step == 30].set_index("block")
    assert last.loc["block.1", "action"] == "train" and "fastest block" in last.loc["block.1", "reason"]
    assert last.loc["block.2", "reason"].startswith("block.1 below still trains")
    assert last.loc["block.0", "action"] == "frozen"
    assert pol.summary()["freeze_steps"] == {"embeddings": 20, "block.0": 20}


def test_policy_normalises_by_learning_rate():
    """A change that shrinks only because the learning rate decays is not 'settled'."""
    m = tiny_bert(0)
    blocks = find_blocks(m)
    pol = AutoFreezePolicy(thresholds=Thresholds(min_cka=0.0), settle=0.5, patience=1, warmup_checks=0,
                           cache=False)
    cka = [0.99] * 5
    for step, lr in ((10, 1.0), (20, 0.3), (30, 0.1)):  # raw change falls 10x, change per unit lr is flat
        assert pol.observe(step, _rows(step, cka, [1e-3 * lr] * 5, lr), m, blocks) == []
    assert pol.log_frame().query("step == 30 and block == 'embeddings'").reason.item().startswith("speed")
    # now the change per unit of learning rate falls: embeddings .. block.2 freeze (one block keeps training)
    assert pol.observe(40, _rows(40, cka, [1e-5] * 5, 0.1), m, blocks) == ["embeddings", "block.0", "block.1",
                                                                           "block.2"]


def test_policy_waits_while_the_learning_rate_rises():
    m = tiny_bert(0)
    blocks = find_blocks(m)
    pol = AutoFreezePolicy(thresholds=Thresholds(min_cka=0.0), settle=1.0, patience=1, warmup_checks=0,
                           cache=False)
    cka, chg = [0.99] * 5, [1e-3] * 5
    for step, lr in ((10, 0.2), (20, 0.6), (30, 1.0)):  # linear warm-up: observe only
        assert pol.observe(step, _rows(step, cka, chg, lr), m, blocks) == []
    assert "learning rate still rising" in pol.log[-1]["reason"]
    assert "not known yet" in pol.log[0]["reason"]  # one rate seen: not called "rising"
    assert pol.observe(40, _rows(40, cka, chg, 0.9), m, blocks) == NAMES[:4]  # decaying: decide


def test_a_schedule_without_warm_up_is_never_called_rising():
    """Issue 19 item 10: a constant rate read "the learning rate still rising" at the first check."""
    m = tiny_bert(0)
    blocks = find_blocks(m)
    pol = AutoFreezePolicy(thresholds=Thresholds(min_cka=0.0), settle=1.0, patience=1, warmup_checks=0,
                           cache=False)
    for step in (10, 20):
        pol.observe(step, _rows(step, [0.99] * 5, [1e-3] * 5, 1.0), m, blocks)
    assert not any("still rising" in r["reason"] for r in pol.log)


def test_policy_bad_knobs():
    with pytest.raises(LayerProbeError, match="settle"):
        AutoFreezePolicy(settle=0.0)
    with pytest.raises(LayerProbeError, match="patience"):
        AutoFreezePolicy(patience=0)


def test_tracker_advice_at_any_step(tokenizer, texts):
    m = tiny_bert(0, head=True).train()
    t = Tracker(m, tokenizer, texts[:16], every_n_steps=2)
    t.start()
    a0 = t.advice()  # at step 0 nothing has moved: everything but the top block qualifies
    assert a0.freeze == ["embeddings", "block.0", "block.1", "block.2"]
    fine_tune(m, tokenizer, texts, [i % 2 for i in range(len(texts))], TrainConfig(epochs=1, lr=5e-3, batch_size=8),
              on_step=[t.on_step], progress=False)
    a = t.advice(Thresholds(min_cka=0.9999999))
    assert a.freeze != a0.freeze and a.basis == "cka"
    assert set(a.reasons) == set(NAMES)


def _trainer(model, tokenizer, texts, out, callback, epochs=4):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    enc = tokenizer(texts, truncation=True, max_length=32)
    ds = Dataset.from_dict({**enc, "labels": [i % 2 for i in range(len(texts))]})
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8,
                             learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
                   callbacks=[callback])


def test_trainer_auto_freeze_freezes_caches_and_logs(tokenizer, texts, tmp_path):
    m = tiny_bert(0, head=True)
    pol = AutoFreezePolicy(thresholds=Thresholds(min_cka=0.0), settle=1.0, patience=1, warmup_checks=1)
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], every_n_steps=3, freeze_policy=pol)
    snap = {}

    trainer = _trainer(m, tokenizer, texts, tmp_path, cb)  # 48 texts, batch 8: 6 steps/epoch, 24 steps

    class Grab(LayerProbeCallback.__mro__[1]):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6:
                snap.update({n: p.detach().clone() for n, p in m.named_parameters()})

    trainer.add_callback(Grab())
    trainer.train()
    # check 1 (step 3) observes; at step 6 everything the permissive rule advises freezes
    assert pol.frozen == ["embeddings", "block.0", "block.1", "block.2"]
    assert set(pol.freeze_steps.values()) == {6}
    for n, p in m.named_parameters():
        if n.startswith(("bert.embeddings", "bert.encoder.layer.0.", "bert.encoder.layer.2.")):
            assert not p.requires_grad and torch.equal(p, snap[n]), n
    assert not torch.equal(m.bert.encoder.layer[3].output.dense.weight, snap["bert.encoder.layer.3.output.dense.weight"])
    s = pol.summary()["cache"]
    # 48 training examples stored during epoch 2; epochs 3 and 4 (12 batches) served from the cache
    assert s["k"] == 3 and s["hit_batches"] >= 12 and s["examples"] >= 48
    assert all("forward" not in mod.__dict__ for mod in m.modules())  # detached at train end
    log = pd.read_csv(tmp_path / FREEZE_LOG_CSV)
    assert (log[log.action == "freeze"]["step"] == 6).all() and len(log[log.action == "freeze"]) == 4
    traj = pd.read_csv(tmp_path / TRAJECTORY_CSV)
    last = traj[traj.step == traj.step.max()].set_index("block")
    assert last.loc[["embeddings", "block.0", "block.1", "block.2"], "frozen"].all()
    assert not last.loc["block.3", "frozen"]
    assert (traj["lr_sum"].iloc[len(NAMES):] > 0).all()  # the Trainer's rates were read
    # frozen entries are carried (cannot change), so their CKA to the previous check is exactly 1
    after = traj[(traj.step > 6) & traj.block.isin(["block.0", "block.2"])]
    assert after["cka_to_previous"].tolist() == pytest.approx([1.0] * len(after), abs=1e-12)
    assert len(cb.advice().freeze) == 4


def test_trainer_auto_freeze_contract_keyword_runs_with_defaults(tokenizer, texts, tmp_path):
    m = tiny_bert(0, head=True)
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], auto_freeze=True)
    _trainer(m, tokenizer, texts, tmp_path, cb, epochs=2).train()
    # 12 steps: too short for 20 checks of 16 texts within 5%, so the minimum of 8, every ceil(12 / 8) = 2 steps
    assert cb.tracker.every_n_steps == 2 and cb.probe_plan["checks"] == 6
    log = pd.read_csv(tmp_path / FREEZE_LOG_CSV)
    assert set(log.block) == set(NAMES) and len(log) > 0
    assert isinstance(cb.policy, AutoFreezePolicy)
    assert math.isfinite(float(log["speed"].dropna().iloc[-1]))


def test_callback_refuses_mixed_options(tokenizer, texts):
    with pytest.raises(LayerProbeError, match="not both"):
        LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts, auto_freeze=True,
                           freeze_policy=AutoFreezePolicy())
    with pytest.raises(LayerProbeError, match="configure auto_freeze"):
        LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts, settle=0.5)


def test_tracker_takes_the_shared_probe_options(tokenizer, texts):
    from layerprobe.options import ProbeOptions

    m = tiny_bert(0)
    t = Tracker(m, tokenizer, texts[:8], probe=ProbeOptions(pooling="first", max_length=8, batch_size=4))
    assert (t.pooling, t.max_length, t.batch_size) == ("first", 8, 4)
    with pytest.raises(LayerProbeError, match="max_tokens"):
        Tracker(m, tokenizer, texts[:8], probe=ProbeOptions(max_tokens=4))


def test_policy_with_a_tolerance_follows_the_prediction():
    """Same checks, two policies: the CKA rule (min CKA 0.99999) advises nothing; with a tolerance the
    predicted cost of each prefix decides (a pinned map from the relative CKA change, so that a refit of
    the shipped predictor does not move the test): a loose tolerance freezes a prefix, a zero tolerance
    fewer, and the policy freezes exactly what predict_prefixes advises."""
    from layerprobe.freezing.predict import Predictor, predict_prefixes

    pinned = Predictor("cka_rel", (0.0, 0.5, 1.0), (0.0, 0.1, 0.6), (-0.01, 0.01), ("x",))
    cka = [0.9999, 0.999, 0.99, 0.9, 0.5]
    strict = Thresholds(min_cka=0.99999)
    frozen = {}
    for tol in (None, 0.0, 0.2):
        m = tiny_bert(0)
        blocks = find_blocks(m)
        pol = AutoFreezePolicy(thresholds=strict, tolerance=tol, settle=1.0, patience=1, warmup_checks=0,
                               wait_for_lr_peak=False, cache=False, predictor=None if tol is None else pinned)
        pol.observe(10, _rows(10, cka, [1e-4] * 5, 1.0), m, blocks)
        frozen[tol] = list(pol.frozen)
    entries = [{"name": n, "kind": "embeddings" if n == "embeddings" else "block", "cka": c, "weight_drift": 0.01,
                "n_params": 1} for n, c in zip(NAMES, cka)]
    for tol in (0.0, 0.2):
        preds, advised, _ = predict_prefixes(entries, tol, predictor=pinned)
        assert frozen[tol] == ([] if advised < 0 else preds[advised].freeze)
    assert frozen[None] == [] and frozen[0.2] != []
    assert len(frozen[0.0]) < len(frozen[0.2])
    with pytest.raises(LayerProbeError, match="tolerance"):
        AutoFreezePolicy(tolerance=1.5)


def test_callback_tolerance_configures_auto_freeze(tokenizer, texts):
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], auto_freeze=True, tolerance=0.02)
    assert cb.policy.tolerance == 0.02
    with pytest.raises(LayerProbeError, match="tolerance"):
        LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], tolerance=0.02)


def test_trainer_auto_freeze_with_revert_test_budgets_and_predicts(tokenizer, texts, tmp_path):
    """revert_test=True: every check after the start has revert rows, the probe budget counts the
    n_blocks + 3 passes per check (fewer texts or checks than without), and the policy's advice is the
    prediction's at the tolerance."""
    plans = {}
    for revert in (False, True):
        m = tiny_bert(0, head=True)
        cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts, auto_freeze=True, tolerance=0.05,
                                revert_test=revert)
        _trainer(m, tokenizer, texts, tmp_path / str(revert), cb, epochs=2).train()
        plans[revert] = cb.probe_plan
    assert plans[True]["passes_per_check"] == 7 and plans[False]["passes_per_check"] == 1
    # 12 steps: both plans sit at the minimums (8 checks, 32 texts), so the revert plan states 7x the cost
    assert plans[True]["probe_texts"] == plans[False]["probe_texts"] == 32
    assert plans[True]["probe_share_planned"] == pytest.approx(7 * plans[False]["probe_share_planned"])
    steps = sorted({int(r["step"]) for r in cb.tracker.rows} - {0})
    assert sorted(cb.tracker.revert_rows) == steps
    a = cb.advice(tolerance=0.05)
    assert a.tolerance == 0.05 and a.candidates and a.predictor is not None


# -- adversarial review: tolerance and predictor checked at construction, not mid-training -----------------


@pytest.mark.parametrize("bad", [True, math.nan, "0.01", -0.1, 1.0, [0.01]])
def test_bad_tolerances_are_refused_at_construction(bad, tokenizer, texts):
    with pytest.raises(LayerProbeError, match="tolerance must be a number in"):
        AutoFreezePolicy(tolerance=bad)
    with pytest.raises(LayerProbeError, match="tolerance must be a number in"):
        LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], auto_freeze=True, tolerance=bad)


def test_a_numpy_tolerance_is_a_number():
    np = pytest.importorskip("numpy")
    assert AutoFreezePolicy(tolerance=np.float32(0.25)).tolerance == 0.25


def _predictor(name):
    from layerprobe.freezing.predict import Predictor

    return Predictor(name, (0.0, 1.0), (0.0, 0.5), (0.0, 0.0), ("x",))


def test_a_predictor_the_checks_cannot_feed_is_refused_before_training(tokenizer, texts):
    """Before: a revert_* predictor without revert=True, or a predictor given as a string, raised at the
    first check after the warm-up (mid-training)."""
    with pytest.raises(LayerProbeError, match="must be a layerprobe Predictor"):
        AutoFreezePolicy(predictor="revert_kl")
    with pytest.raises(LayerProbeError, match="does not take"):
        AutoFreezePolicy(predictor=_predictor("grad_rel"))
    pol = AutoFreezePolicy(predictor=_predictor("revert_kl"), tolerance=0.1)
    with pytest.raises(LayerProbeError, match="'revert_kl' needs the revert test at every check"):
        Tracker(tiny_bert(0, head=True), tokenizer, texts[:16], freeze_policy=pol)
    with pytest.raises(LayerProbeError, match="'revert_kl' needs the revert test"):
        LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts[:16], freeze_policy=pol)
    Tracker(tiny_bert(0, head=True), tokenizer, texts[:16], freeze_policy=pol, revert=True)  # fine with it


def test_a_check_where_the_predictors_measurement_is_undefined_advises_nothing():
    """cka_rel needs a top block that changed: at a check where nothing changed it is undefined; before,
    recommend raised 'needs measurements this comparison lacks' inside the training loop."""
    m = tiny_bert(0)
    blocks = find_blocks(m)
    pol = AutoFreezePolicy(predictor=_predictor("cka_rel"), tolerance=0.5, settle=1.0, patience=1, warmup_checks=0,
                           wait_for_lr_peak=False, cache=False)
    assert pol.observe(10, _rows(10, [1.0] * 5, [0.0] * 5, 1.0), m, blocks) == []
    assert "cka_rel predictor's measurement is undefined" in pol.log_frame().reason.iloc[0]
    assert pol.observe(20, _rows(20, [0.9999, 0.999, 0.99, 0.9, 0.5], [1e-4] * 5, 1.0), m, blocks) != []


def test_auto_freeze_with_a_tolerance_runs_the_revert_test_when_the_shipped_predictor_reads_it(
        tokenizer, texts, tmp_path, monkeypatch):
    """revert_test=None (default): with a tolerance and a shipped predictor that reads the revert test, the
    callback turns it on for a model with a head; for one that cannot run it, it stays off and says why;
    without a tolerance (the CKA rule decides) it stays off."""
    import layerprobe.tracking.tracker as tr
    from layerprobe.freezing import predict as pr

    monkeypatch.setattr(pr, "shipped_prefers_revert", lambda: True)
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts, auto_freeze=True, tolerance=0.05)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "on", cb, epochs=1).train()
    assert cb.tracker.revert and cb.revert_note is None and cb.tracker.revert_rows
    assert cb.probe_plan["passes_per_check"] == 7
    monkeypatch.setattr(tr, "revert_unavailable", lambda *a: "NoHead gives no logits")
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts, auto_freeze=True, tolerance=0.05)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "off", cb, epochs=1).train()
    assert not cb.tracker.revert and "NoHead gives no logits" in cb.revert_note and not cb.tracker.revert_rows
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts, auto_freeze=True)  # the CKA rule decides
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "rule", cb, epochs=1).train()
    assert not cb.tracker.revert and cb.revert_note is None


@pytest.mark.shipped_default("predictor")
def test_auto_freeze_without_a_tolerance_follows_the_default_prediction(tokenizer, texts, tmp_path, monkeypatch):
    """Once the shipped file makes the prediction the default rule, auto_freeze=True alone (the contract)
    runs the revert test the lead predictor reads and the policy freezes what that prediction advises."""
    from layerprobe.freezing import predict as pr

    lead = pr.Predictor("revert_disagree", (0.0, 0.5, 1.0), (0.0, 0.0, 0.5), (-0.01, 0.0), ("x",), decide="upper",
                        loto={"tasks": 6, "tasks_ge_985": 6})
    monkeypatch.setattr(pr, "_shipped", lambda: ((lead,), {"default_rule": "predictor", "tolerance_default": 0.01,
                                                            "validated": True, "fit_on": ["x"]}))
    monkeypatch.setattr(pr, "shipped_meta", lambda: dict(pr._shipped()[1]))
    cb = LayerProbeCallback(tokenizer=tokenizer, probe_texts=texts, auto_freeze=True)
    assert cb.policy.tolerance is None and cb.policy.predictor is None
    _trainer(tiny_bert(0, head=True), tokenizer, texts, tmp_path / "run", cb, epochs=1).train()
    assert cb.tracker.revert and cb.revert_note is None and cb.tracker.revert_rows
    # the advice now is the lead prediction's at the shipped 1% (not the CKA rule's), with its reasons
    adv = cb.advice()
    assert adv.predictor["name"] == "revert_disagree" and adv.predictor["decide"] == "upper" and adv.tolerance == 0.01
    assert all(r.startswith(("freeze: predicted", "train: predicted", "train: above", "train: at least"))
               for r in adv.reasons.values())
