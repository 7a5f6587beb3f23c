"""Frozen-prefix feature cache: exact equivalence with the full model on tiny BERTs."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_bert
from layerprobe import LayerProbeError, find_blocks, freeze
from layerprobe.batching import collate, encode
from layerprobe.feature_cache import FeatureCache, build_cache, cached_logits, train_on_cache
from layerprobe.freeze import bottom_prefix
from layerprobe.train import TrainConfig, fine_tune


def _model(impl="eager", seed=0, **kw):
    # a larger init so that logits really differ between examples (the default 0.02 gives ~constant ones)
    m = tiny_bert(seed, head=True, initializer_range=0.3, **kw)
    m.config._attn_implementation = impl
    return m


def _full_logits(m, tokenizer, texts):
    with torch.no_grad():
        return m(**collate(encode(tokenizer, texts, 64), tokenizer.pad_token_id)).logits


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("k", [0, 2, 4])
def test_cached_logits_equal_full_model(tokenizer, texts, impl, k):
    m = _model(impl).train()  # build/eval switch to eval themselves and restore train mode
    full = _full_logits(m.eval(), tokenizer, texts).clone()
    m.train()
    cache = build_cache(m, tokenizer, texts, k, progress=False)
    assert m.training
    assert full.std(0).min() > 1e-3  # logits vary across examples: the comparison is not vacuous
    assert torch.allclose(cached_logits(m, cache), full, atol=1e-5, rtol=0)
    assert len(cache) == len(texts)
    lens = [len(e["input_ids"]) for e in encode(tokenizer, texts, 64)]
    assert cache.hidden.shape == (sum(lens), 32)  # padding trimmed
    other = _model(impl, seed=1)
    assert not torch.allclose(cached_logits(other, cache), full, atol=1e-3)  # really uses the suffix


def test_float16_cache_close_and_half_size(tokenizer, texts):
    m = _model()
    c32 = build_cache(m, tokenizer, texts, 2, progress=False)
    c16 = build_cache(m, tokenizer, texts, 2, dtype="float16", progress=False)
    assert c16.hidden.dtype == torch.float16
    assert c16.nbytes < 0.6 * c32.nbytes
    assert torch.allclose(cached_logits(m, c16), cached_logits(m, c32), atol=1e-2)


def test_save_load_roundtrip(tokenizer, texts, tmp_path):
    m = _model()
    c = build_cache(m, tokenizer, texts, 3, progress=False)
    c.save(tmp_path / "c.safetensors")
    d = FeatureCache.load(tmp_path / "c.safetensors")
    assert d.k == 3 and torch.equal(d.hidden, c.hidden) and torch.equal(d.offsets, c.offsets)
    (tmp_path / "bad.safetensors").write_bytes(b"not a cache")
    with pytest.raises(LayerProbeError):
        FeatureCache.load(tmp_path / "bad.safetensors")


def test_training_on_cache_equals_frozen_training_without_dropout(tokenizer, texts):
    """With dropout 0 the cached path takes exactly the steps that plain freezing takes."""
    labels = [i % 2 for i in range(len(texts))]
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, seed=3)
    kw = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a, b = _model(**kw), _model(**kw)
    freeze(a, bottom_prefix(find_blocks(a), 2))
    fine_tune(a, tokenizer, texts, labels, cfg, progress=False)
    stats = train_on_cache(b, build_cache(b, tokenizer, texts, 2, progress=False), labels, cfg, progress=False)
    assert stats["steps"] == 6 and stats["trainable_params"] == sum(p.numel() for p in a.parameters()
                                                                   if p.requires_grad)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if n.endswith("attention.self.key.bias"):
            # softmax ignores a key bias: its true gradient is 0, Adam turns float noise into ±lr steps
            continue
        assert torch.allclose(p, q, atol=1e-5), n
    x = collate(encode(tokenizer, texts, 64), tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(a.eval()(**x).logits, b.eval()(**x).logits, atol=1e-5)
    start = _model(**kw)
    assert not torch.allclose(start.bert.encoder.layer[3].output.dense.weight,
                              b.bert.encoder.layer[3].output.dense.weight)  # it did train
    assert torch.equal(start.bert.encoder.layer[1].output.dense.weight, b.bert.encoder.layer[1].output.dense.weight)


def test_unsupported_architectures_fail_clearly(tokenizer, texts):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    with pytest.raises(LayerProbeError, match="BertForSequenceClassification"):
        build_cache(tiny_bert(0), tokenizer, texts, 1)  # bare BertModel: no head
    d = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2,
                                                             hidden_dim=37, max_position_embeddings=64))
    with pytest.raises(LayerProbeError, match="DistilBertForSequenceClassification"):
        build_cache(d, tokenizer, texts, 1)
    with pytest.raises(LayerProbeError, match="5 blocks"):
        build_cache(_model(), tokenizer, texts, 5)
    with pytest.raises(LayerProbeError, match="absolute"):
        build_cache(_model(position_embedding_type="relative_key"), tokenizer, texts, 1)
    c = build_cache(_model(), tokenizer, texts, 1, progress=False)
    with pytest.raises(LayerProbeError, match="labels"):
        train_on_cache(_model(), c, [0, 1], progress=False)
