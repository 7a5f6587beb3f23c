"""Measured step cost per frozen prefix: structure, the model left untouched, and the advice using it
(no timing assertions: CPU times depend on the machine)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.rule import recommend
from layerprobe.freezing.step_cost import PrefixSavings, calibrate_prefix_savings
from layerprobe.model.blocks import find_blocks


def _model():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24, vocab_size=40,
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def test_calibration_times_every_prefix_and_leaves_the_model_alone():
    m = _model()
    before = {n: p.detach().clone() for n, p in m.state_dict().items()}
    threads = torch.get_num_threads()
    ids = torch.randint(4, 40, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}
    cal = calibrate_prefix_savings(m, batch, steps=1)
    assert cal.prefixes == ["embeddings", "block.0", "block.1", "block.2"]
    assert cal.batch_shape == (4, 7) and cal.threads == 1 and cal.full > 0
    assert all(v > 0 for v in cal.served.values()) and all(v > 0 for v in cal.fill.values())
    assert cal.saving("") == 0.0 and cal.saving("block.0") == pytest.approx(1 - cal.served["block.0"] / cal.full)
    e = cal.epoch_saving("block.1", 3)
    assert e == pytest.approx(1 - (cal.fill["block.1"] + 2 * cal.served["block.1"]) / (3 * cal.full))
    assert set(cal.to_dict()["saving"]) == set(cal.prefixes)
    assert torch.get_num_threads() == threads
    assert all(p.requires_grad for p in m.parameters())  # the copy was frozen, not the model
    assert all("forward" not in mod.__dict__ for mod in m.modules())
    for n, t in m.state_dict().items():
        assert torch.equal(t, before[n])
    with pytest.raises(LayerProbeError, match="steps >= 1"):
        calibrate_prefix_savings(m, batch, steps=0)


def test_recommend_reports_the_measured_saving_of_the_advised_prefix():
    m = _model()
    names = find_blocks(m).names
    e = [dict(name=n, kind="embeddings" if n == "embeddings" else "block", n_params=10, weight_drift=0.01,
              cka=0.999 if n in ("embeddings", "block.0") else 0.5) for n in names]
    est = recommend(e)
    assert est.freeze == ["embeddings", "block.0"] and est.est_compute_saving == pytest.approx(1 / 3)
    cal = PrefixSavings(full=1.0, served={"embeddings": 0.8, "block.0": 0.7, "block.1": 0.4, "block.2": 0.1},
                        fill={"embeddings": 0.8, "block.0": 0.9, "block.1": 0.7, "block.2": 0.6},
                        batch_shape=(32, 64), steps=3, threads=1)
    r = recommend(e, prefix_savings=cal)
    assert r.freeze == est.freeze and r.est_compute_saving == pytest.approx(0.3)
    assert any(n.startswith("compute saving measured") and "30%" in n and "23% over 3 epochs" in n
               for n in r.notes)  # 1 - (0.9 + 2 * 0.7) / 3
    assert cal.uncached == {} and any("frozen and cached" in n for n in r.notes)
    off = PrefixSavings(full=1.0, served=cal.served, fill=cal.served, batch_shape=(32, 64), steps=3, threads=1,
                        uncached={"block.0": "its blocks hand a position bias up"})
    note = next(n for n in recommend(e, prefix_savings=off).notes if n.startswith("compute saving measured"))
    assert "30%" in note and "not cached (the prefix cache is off: its blocks hand a position bias up)" in note
    assert "filling the cache" not in note


def test_calibration_says_where_the_prefix_cache_could_not_serve():
    """T5's blocks hand their position bias up the stack: the cache turns itself off, the steps are timed
    frozen without it, and the result says so for every block prefix (the embeddings need no cache)."""
    import warnings

    from transformers import T5Config, T5ForSequenceClassification

    torch.manual_seed(0)
    m = T5ForSequenceClassification(T5Config(d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=2,
                                              num_heads=2, vocab_size=40, num_labels=2, dropout_rate=0.0,
                                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    ids = torch.randint(4, 40, (4, 7))
    ids[:, -1] = 1  # T5's classifier reads the end-of-sequence token
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks to the user: the result says it
        cal = calibrate_prefix_savings(m, batch, steps=1)
    assert cal.prefixes == ["embeddings", "block.0", "block.1"]
    assert set(cal.uncached) == {"block.0", "block.1"} and all("position bias" in w for w in cal.uncached.values())
    assert cal.to_dict()["uncached"] == cal.uncached
