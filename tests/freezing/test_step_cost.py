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
