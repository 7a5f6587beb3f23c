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


# -- adversarial review: decoders, padding, tied heads, non-finite outputs, bounds, a prefix cache ------------


def _gpt2_pair(tie: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, tie_word_embeddings=tie,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    base, tuned = GPT2LMHeadModel(cfg).eval(), GPT2LMHeadModel(cfg).eval()
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.2 * torch.randn(p.shape) * p.detach().std().clamp_min(1e-3))
    return base, tuned


def _padded(lengths, left: bool):
    g = torch.Generator().manual_seed(3)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    pos = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        row = torch.randint(1, 50, (n,), generator=g)
        sl = slice(width - n, width) if left else slice(0, n)
        ids[i, sl], mask[i, sl], pos[i, sl] = row, 1, torch.arange(n)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def test_a_causal_lm_is_read_at_the_last_real_token_with_left_or_right_padding():
    """Before: the last token was mask.sum - 1, a padding position of every shorter left-padded row."""
    base, tuned = _gpt2_pair()
    lengths = [5, 2, 7, 3, 7, 1]
    right = revert_test(tuned, base.state_dict(), [_padded(lengths, left=False)])
    left = revert_test(tuned, base.state_dict(), [_padded(lengths, left=True)])
    for r, s in zip(right, left):
        assert r["agreement"] == s["agreement"]
        assert r["kl"] == pytest.approx(s["kl"], rel=1e-5, abs=1e-9)
    # an independent reference: one example at a time, unpadded, its last position
    b = _padded(lengths, left=False)
    hybrid = type(tuned)(tuned.config).eval()
    hybrid.load_state_dict({**tuned.state_dict(), **{n: t for n, t in base.state_dict().items()
                                                      if n.startswith(("transformer.wte", "transformer.wpe",
                                                                       "transformer.h.0.", "lm_head"))}})  # tied
    with torch.no_grad():
        z_ref = torch.stack([tuned(input_ids=b["input_ids"][i:i + 1, :n]).logits[0, -1]
                             for i, n in enumerate(lengths)])
        z_rev = torch.stack([hybrid(input_ids=b["input_ids"][i:i + 1, :n]).logits[0, -1]
                             for i, n in enumerate(lengths)])
    want = output_divergence(z_ref.double(), z_rev.double())
    assert right[1]["kl"] == pytest.approx(want["kl"], rel=1e-5)


def test_tied_embeddings_revert_the_head_too_and_are_named():
    """GPT-2's lm_head.weight is transformer.wte.weight: reverting the embeddings reverts the head, as
    freezing them freezes it (one tensor); tied_outside names the pair, and k=0 moves the outputs only
    through that shared tensor when everything else is the tuned model's."""
    from layerprobe.freezing.apply import parameter_names
    from layerprobe.freezing.revert import tied_outside

    base, tuned = _gpt2_pair(tie=True)
    names = parameter_names(tuned, ["embeddings"])
    assert tied_outside(tuned, names) == {"transformer.wte.weight": ["lm_head.weight"]}
    assert tied_outside(_gpt2_pair(tie=False)[1], names) == {}
    rows = revert_test(tuned, base.state_dict(), [_padded([4, 6, 3, 5], left=False)], ks=[0])
    assert rows[0]["kl"] > 0
    assert torch.equal(tuned.lm_head.weight, tuned.transformer.wte.weight)  # restored, still tied


def test_non_finite_outputs_and_rows_without_tokens_are_one_line_errors():
    base, tuned = _pair()
    before = {n: t.clone() for n, t in tuned.state_dict().items()}
    broken = dict(base.state_dict())
    key = "bert.encoder.layer.0.output.dense.weight"
    broken[key] = torch.full_like(broken[key], float("nan"))
    with pytest.raises(LayerProbeError, match=r"block\.0 reverted to the base weights the outputs are not finite"):
        revert_test(tuned, broken, _batches())
    assert all(torch.equal(before[n], t) for n, t in tuned.state_dict().items())  # restored after the error
    with torch.no_grad():
        tuned.classifier.weight[0, 0] = float("inf")
    with pytest.raises(LayerProbeError, match="tuned model's outputs are not finite"):
        revert_test(tuned, base.state_dict(), _batches())
    gbase, gtuned = _gpt2_pair()
    b = _padded([3, 4, 2], left=False)
    b["attention_mask"][1] = 0  # before: read at position -1, a padding position, without a word
    with pytest.raises(LayerProbeError, match="has no real token"):
        revert_test(gtuned, gbase.state_dict(), [b])


def test_the_reference_outputs_are_bounded(monkeypatch):
    """A causal LM keeps n x vocabulary reference values (float32); past the bound: one line before the
    other batches run. At the bound it runs."""
    from layerprobe.freezing import revert as rv

    base, tuned = _gpt2_pair()
    batches = [_padded([3, 4], left=False), _padded([5, 2], left=False)]
    monkeypatch.setattr(rv, "MAX_REVERT_OUTPUTS", 4 * 50)
    assert len(revert_test(tuned, base.state_dict(), batches, ks=[0])) == 1
    monkeypatch.setattr(rv, "MAX_REVERT_OUTPUTS", 4 * 50 - 1)
    with pytest.raises(LayerProbeError, match=r"4 x 50 values .* more than the 199 accepted; use fewer probe texts"):
        revert_test(tuned, base.state_dict(), batches, ks=[0])


def test_a_prefix_cache_never_serves_the_reverted_passes():
    """A frozen, cached prefix: stored outputs are the tuned prefix's; the revert test must compute the
    reverted prefix from its weights (before: served from the store, kl 0 for a prefix that changed)."""
    from layerprobe.freezing.apply import freeze
    from layerprobe.freezing.prefix_cache import PrefixCache

    base, tuned = _pair()
    batches = _batches()
    want = revert_test(tuned, base.state_dict(), batches, ks=[2])[0]
    freeze(tuned, ["embeddings", "block.0", "block.1"])
    tuned.train()
    with PrefixCache(tuned, k=2, store_in_eval=True) as cache:
        tuned.eval()
        with torch.no_grad():
            for b in batches:  # fills the store, then a pass is served from it
                tuned(**b)
            tuned(**batches[0])
        assert cache.stats()["hit_batches"] >= 1
        got = revert_test(tuned, base.state_dict(), batches, ks=[2])[0]
    assert got["kl"] == pytest.approx(want["kl"], rel=1e-6) and got["kl"] > 0


def test_a_seq2seq_lm_is_read_at_its_first_decoded_token():
    """T5ForConditionalGeneration runs on the probe with its decoder start token: the prefix is the encoder's,
    the outputs the first decoded token's distribution; reverting to its own weights changes nothing, and
    reverting to moved ones moves the outputs more the larger the prefix."""
    import copy

    from transformers import T5Config, T5ForConditionalGeneration

    from layerprobe import find_blocks

    torch.manual_seed(0)
    tuned = T5ForConditionalGeneration(T5Config(d_model=16, d_kv=8, d_ff=24, num_layers=3, num_heads=2,
                                                vocab_size=50, decoder_start_token_id=0)).eval()
    base = copy.deepcopy(tuned)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in base.encoder.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g) * p.std())
    ids = torch.randint(2, 50, (10, 7), generator=g)
    batches = [{"input_ids": ids[:5], "attention_mask": torch.ones(5, 7, dtype=torch.long)},
               {"input_ids": ids[5:], "attention_mask": torch.ones(5, 7, dtype=torch.long)}]
    assert find_blocks(tuned).stack == "encoder.block"
    same = revert_test(tuned, tuned.state_dict(), batches)
    assert all(r["agreement"] == 1.0 and abs(r["kl"]) < 1e-9 for r in same)
    rows = revert_test(tuned, base.state_dict(), batches)
    assert [r["k"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["kl"] > rows[1]["kl"] > 0 and all(math.isfinite(r["tv"]) for r in rows)
