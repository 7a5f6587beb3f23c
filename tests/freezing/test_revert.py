"""The revert test: outputs of the tuned model with a bottom prefix put back to the base weights."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.revert import output_divergence, revert_test

CFG = BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24, vocab_size=80,
                 num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)


def _pair(scale: float = 0.3):
    torch.manual_seed(0)
    base = BertForSequenceClassification(CFG)
    tuned = BertForSequenceClassification(CFG)
    tuned.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.detach().std().clamp_min(1e-3))
    return base, tuned


def _batches(n: int = 12):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 80, (n, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 5:] = 0
    return [{"input_ids": ids[:6], "attention_mask": mask[:6]}, {"input_ids": ids[6:], "attention_mask": mask[6:]}]


def test_reverting_everything_below_the_head_gives_the_base_encoder_with_the_tuned_head():
    base, tuned = _pair()
    batches = _batches()
    rows = revert_test(tuned, base.state_dict(), batches)
    assert [r["k"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["freeze"] == ["embeddings"] and rows[3]["freeze"] == ["embeddings", "block.0", "block.1", "block.2"]
    # an independent computation: a model with the base encoder and the tuned head (and pooler)
    hybrid = BertForSequenceClassification(CFG)
    state = tuned.state_dict()
    state.update({n: t for n, t in base.state_dict().items() if n.startswith(("bert.embeddings", "bert.encoder"))})
    hybrid.load_state_dict(state)
    hybrid.eval()
    tuned.eval()
    with torch.no_grad():
        ref = torch.cat([tuned(**b).logits for b in batches]).double()
        z = torch.cat([hybrid(**b).logits for b in batches]).double()
    p = ref.softmax(-1)
    kl = float((p * (ref.log_softmax(-1) - z.log_softmax(-1))).sum(-1).mean())
    assert rows[3]["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12)
    assert rows[3]["agreement"] == pytest.approx(float((ref.argmax(-1) == z.argmax(-1)).double().mean()))
    assert rows[3]["kl"] > 0


def test_the_tuned_model_is_restored_weights_and_mode_even_on_error():
    base, tuned = _pair()
    before = {n: t.clone() for n, t in tuned.state_dict().items()}
    tuned.train()
    revert_test(tuned, base.state_dict(), _batches(), ks=[1, 2])
    assert tuned.training
    assert all(torch.equal(before[n], t) for n, t in tuned.state_dict().items())
    broken = {n: t for n, t in base.state_dict().items() if "encoder.layer.1." not in n}
    with pytest.raises(LayerProbeError, match=r"the base weights have no 'bert\.encoder\.layer\.1\."):
        revert_test(tuned, broken, _batches(), ks=[0, 3])
    assert all(torch.equal(before[n], t) for n, t in tuned.state_dict().items())
    wrong = dict(base.state_dict())
    wrong["bert.embeddings.word_embeddings.weight"] = torch.zeros(81, 16)
    with pytest.raises(LayerProbeError, match=r"\(81, 16\) in the base, \(80, 16\) in the tuned model"):
        revert_test(tuned, wrong, _batches(), ks=[0])


def test_eval_mode_makes_it_deterministic_and_labels_give_accuracies():
    base, tuned = _pair()
    labels = torch.tensor([0, 1, 2] * 4)
    a = revert_test(tuned, base.state_dict(), _batches(), labels=labels)
    b = revert_test(tuned, base.state_dict(), _batches(), labels=labels)
    assert a == b
    tuned.eval()
    with torch.no_grad():
        acc = float((torch.cat([tuned(**x).logits for x in _batches()]).argmax(-1) == labels).double().mean())
    assert all(r["accuracy_tuned"] == pytest.approx(acc) for r in a)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in a)


def test_a_bigger_change_of_the_prefix_moves_the_outputs_more():
    base, small = _pair(0.05)
    _, large = _pair(0.6)
    s = revert_test(small, base.state_dict(), _batches(), ks=[3])[0]
    lg = revert_test(large, base.state_dict(), _batches(), ks=[3])[0]
    assert lg["kl"] > s["kl"] > 0


def test_output_divergence_against_closed_forms():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = output_divergence(z, z.flip(-1))
    # two classes, logits swapped: TV = tanh(a/2), KL = a * tanh(a/2)
    assert d["tv"] == pytest.approx((math.tanh(1.0) + math.tanh(0.5)) / 2, rel=1e-12)
    assert d["kl"] == pytest.approx((2 * math.tanh(1.0) + 1 * math.tanh(0.5)) / 2, rel=1e-12)
    assert d["agreement"] == 0.0
    with pytest.raises(LayerProbeError, match=r"two \(n, classes\) logit sets"):
        output_divergence(z, z[:1])
