"""The frozen-prefix feature cache: same training as plain freezing (no dropout), for several
architectures, with shuffling, dynamic padding and several epochs; refusals; detach restores."""

from __future__ import annotations

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification,
                          LlamaConfig, LlamaForSequenceClassification)

from layerprobe.model.blocks import find_blocks
from layerprobe.errors import LayerProbeError
from layerprobe.freezing.apply import bottom_prefix, freeze
from layerprobe.freezing.prefix_cache import PrefixCache, PrefixCacheOffWarning
from layerprobe.demo.train import TrainConfig, train_loop

V = 40


def _bert():
    return BertForSequenceClassification(BertConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24, vocab_size=V,
        num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=32))


def _gpt2():
    m = GPT2ForSequenceClassification(GPT2Config(
        n_embd=16, n_layer=4, n_head=2, vocab_size=V, n_positions=32, num_labels=3, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0))
    return m


def _llama():
    return LlamaForSequenceClassification(LlamaConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2, intermediate_size=24,
        vocab_size=V, max_position_embeddings=32, num_labels=3, pad_token_id=0))


MAKERS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama}


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 12, (n,), generator=g).tolist()
    seqs = [torch.randint(4, V, (L,), generator=g).tolist() for L in lens]
    seqs[5] = list(seqs[3])  # a duplicate example shares its entry
    y = torch.randint(0, 3, (n,), generator=g)
    return seqs, y


def _collate(seqs):
    w = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (w - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (w - len(s)) for s in seqs])
    return ids, mask


def _train(kind, k, use_cache, epochs=3, embeddings=None, prefill=False):
    torch.manual_seed(0)
    model = MAKERS[kind]()
    blocks = find_blocks(model, embeddings=embeddings)
    freeze(model, bottom_prefix(blocks, k), blocks)
    cache = PrefixCache(model, k, blocks=blocks) if use_cache else None
    seqs, y = _data()
    losses = []
    if prefill:  # an evaluation pass without grad (positional arguments) before training: fills the store
        with torch.no_grad():
            for i in range(0, len(seqs), 5):
                model(*_collate(seqs[i: i + 5]))

    def batch_loss(idx):
        ids, mask = _collate([seqs[i] for i in idx])
        loss = model(input_ids=ids, attention_mask=mask, labels=y[idx]).loss
        losses.append(float(loss.detach()))
        return loss

    train_loop(model, len(seqs), batch_loss, TrainConfig(epochs=epochs, lr=1e-3, batch_size=5, seed=1),
               progress=False)
    return model, losses, cache


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("k", [1, 3, 4])
def test_cache_trains_like_plain_freezing(kind, k):
    m0, plain, _ = _train(kind, k, use_cache=False)
    m1, cached, cache = _train(kind, k, use_cache=True)
    assert len(plain) == len(cached) == 15  # 3 epochs x 5 batches
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-4, atol=1e-5)
    s = cache.stats()
    # epoch 1 fills (5 misses: the batch holding the duplicate's second copy is the one that checks serving
    # in part, so it runs whole), epochs 2 and 3 are served (10 hits); the duplicate is stored once
    assert (s["miss_batches"], s["partial_batches"], s["hit_batches"], s["uncached_batches"]) == (5, 0, 10, 0)
    assert (s["miss_rows"], s["hit_rows"]) == (24, 48)
    assert s["examples"] == 23 and s["stored"] == 23
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    assert sd0.keys() == sd1.keys()  # no wrapper: names unchanged
    for n in sd0:
        torch.testing.assert_close(sd1[n], sd0[n], rtol=1e-3, atol=1e-4)


def test_detach_restores_the_model_and_cache_is_skipped_when_hits_are_impossible():
    torch.manual_seed(0)
    m = _bert().eval()
    freeze(m, bottom_prefix(find_blocks(m), 2))
    ids, mask = _collate(_data()[0][:4])
    ref = m(input_ids=ids, attention_mask=mask).logits
    cache = PrefixCache(m, 2)
    m(input_ids=ids, attention_mask=mask)
    emb = m(inputs_embeds=m.bert.embeddings.word_embeddings(ids), attention_mask=mask).logits  # no ids: computed
    torch.testing.assert_close(emb, ref, rtol=1e-5, atol=1e-5)
    assert cache.stats()["uncached_batches"] == 1
    holed = mask.clone()
    holed[0, 1] = 0  # not one contiguous run: not cacheable, computed normally
    m(input_ids=ids, attention_mask=holed)
    assert cache.stats()["uncached_batches"] == 2
    cache.detach()
    assert all("forward" not in mod.__dict__ for mod in m.modules())
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits, ref)


def test_prefix_in_eval_mode_no_dropout_in_the_frozen_part():
    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24, vocab_size=V,
        num_labels=2, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
    freeze(m, bottom_prefix(find_blocks(m), 2))
    cache = PrefixCache(m, 2)
    ids, mask = _collate(_data()[0][:4])
    m.train()
    m(input_ids=ids, attention_mask=mask)
    stored = [cache._store[k].clone() for k in sorted(cache._store)]
    cache.detach()
    # recompute the prefix in eval mode without the cache: equal to what was stored
    with torch.no_grad():
        m.eval()
        out = m.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    want = sorted(
        [(cache._keys({"input_ids": ids[r:r + 1], "attention_mask": mask[r:r + 1]}, ())["keys"][0],
          out[r, : int(mask[r].sum())]) for r in range(4)], key=lambda t: t[0])
    assert len(stored) == 4
    for s, (_, w) in zip(stored, want):
        torch.testing.assert_close(s, w, rtol=1e-5, atol=1e-5)


def test_refuses_a_trainable_prefix_and_bad_k():
    m = _bert()
    with pytest.raises(LayerProbeError, match="still train"):
        PrefixCache(m, 2)
    freeze(m, bottom_prefix(find_blocks(m), 2))
    with pytest.raises(LayerProbeError, match="1 <= k <= 4"):
        PrefixCache(m, 0)
    with pytest.raises(LayerProbeError, match="still train"):
        PrefixCache(m, 3)


def test_attach_a_longer_prefix_empties_the_store_and_keeps_serving():
    torch.manual_seed(0)
    m = _bert().eval()
    blocks = find_blocks(m)
    freeze(m, bottom_prefix(blocks, 3), blocks)
    ids, mask = _collate(_data()[0][:6])
    ref = m(input_ids=ids, attention_mask=mask).logits
    cache = PrefixCache(m, 1, blocks=blocks)
    m(input_ids=ids, attention_mask=mask)
    assert len(cache) == 5  # 6 examples, one a duplicate
    cache.attach(3)
    assert len(cache) == 0 and cache.k == 3
    m(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits, ref, rtol=1e-5, atol=1e-5)
    assert cache.stats()["hit_batches"] == 1


def test_max_bytes_bounds_the_store():
    m = _bert().eval()
    freeze(m, bottom_prefix(find_blocks(m), 2))
    cache = PrefixCache(m, 2, max_bytes=16 * 4 * 12)  # room for about 12 tokens
    ids, mask = _collate(_data()[0][:6])
    m(input_ids=ids, attention_mask=mask)
    assert 0 < len(cache) < 6 and cache.stats()["mb"] * 2**20 <= 16 * 4 * 12


@pytest.mark.parametrize("prefill", [False, True])
def test_a_prefix_fed_by_trainable_parameters_turns_the_cache_off_and_trains_like_plain_freezing(prefill):
    """The embeddings entry is only the word embeddings here: the position embeddings and the LayerNorm
    between it and block 0 still train, so the prefix's output depends on trainable parameters. The
    cache must neither serve it nor run it without grad (which silently stopped them learning); it turns
    itself off at the first training pass, also when an evaluation pass without grad filled it first."""
    emb = "bert.embeddings.word_embeddings"
    m0, plain, _ = _train("bert", 2, use_cache=False, embeddings=emb, prefill=prefill)
    with pytest.warns(PrefixCacheOffWarning, match="depends on trainable parameters"):
        m1, cached, cache = _train("bert", 2, use_cache=True, embeddings=emb, prefill=prefill)
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-5, atol=1e-6)
    for n, p in m0.state_dict().items():
        torch.testing.assert_close(m1.state_dict()[n], p, rtol=1e-4, atol=1e-6)
    ln0, ln1 = m0.bert.embeddings.LayerNorm.weight, m1.bert.embeddings.LayerNorm.weight
    assert ln1.requires_grad and not torch.equal(ln1, torch.ones_like(ln1))  # it learned, as with plain freezing
    torch.testing.assert_close(ln1, ln0)
    s = cache.stats()
    assert s["disabled"] and s["examples"] == 0 and s["hit_batches"] == (1 if prefill else 0)


def test_per_layer_outputs_are_computed_not_served():
    """A call asking for every layer's hidden states gets the real ones, not pass-through copies."""
    torch.manual_seed(0)
    m = _bert().eval()
    freeze(m, bottom_prefix(find_blocks(m), 3))
    ids, mask = _collate(_data()[0][:4])
    ref = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    cache = PrefixCache(m, 3)
    m(input_ids=ids, attention_mask=mask)
    hs = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert cache.stats()["uncached_batches"] == 1 and cache.stats()["hit_batches"] == 0
    for a, b in zip(hs, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_an_instance_forward_set_before_the_cache_is_called_and_restored():
    """accelerate (device_map / offload) sets an instance ``forward`` on modules: the cache wraps it
    and puts it back on detach instead of dropping it."""
    torch.manual_seed(0)
    m = _bert().eval()
    freeze(m, bottom_prefix(find_blocks(m), 2))
    block = m.bert.encoder.layer[0]
    calls = []

    def device_hook(*args, **kwargs):
        calls.append(1)
        return type(block).forward(block, *args, **kwargs)

    block.forward = device_hook
    cache = PrefixCache(m, 2)
    ids, mask = _collate(_data()[0][:4])
    m(input_ids=ids, attention_mask=mask)
    assert calls == [1] and cache.stats()["miss_batches"] == 1
    cache.detach()
    assert block.forward is device_hook


def test_context_manager_removes_its_patch_when_training_raises():
    """``with PrefixCache(...)``: an exception mid-training detaches the cache (issue 18); a hook the user
    registered before stays."""
    torch.manual_seed(0)
    m = _bert().eval()
    freeze(m, bottom_prefix(find_blocks(m), 2))
    ids, mask = _collate(_data()[0][:4])
    ref = m(input_ids=ids, attention_mask=mask).logits
    calls = []
    user = m.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(RuntimeError, match="mid-training"):
        with PrefixCache(m, 2) as cache:
            m(input_ids=ids, attention_mask=mask)
            assert cache.stats()["miss_batches"] == 1 and any("forward" in mod.__dict__ for mod in m.modules())
            raise RuntimeError("mid-training")
    assert all("forward" not in mod.__dict__ for mod in m.modules())
    assert not cache._handles and len(cache) == 4  # hooks gone, store kept
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits, ref)
    assert len(calls) == 2  # the user's hook was never removed: it saw both passes
    user.remove()


#: training batches (indices into _data()) built so that most are only partly stored; example 5 is a
#: copy of example 3. B1 fills; B2 is the first that could be served in part, so it runs whole and
#: checks the row-restricted prefix against the full one; B3, B4 are served in part (B4 interleaves
#: stored and new rows); B5 is a full hit, B6 a full miss.
PART_BATCHES = [[0, 1, 2, 3, 4], [0, 1, 5, 6, 7], [2, 5, 8, 9, 10], [11, 0, 12, 3, 6], [1, 2, 4, 8, 9],
                [13, 14, 15, 16, 17]]


def _steps(model, batches, seqs, y):
    """SGD steps on the given batches; per step the logits, the loss and the trainable parameters' grads."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = []
    for idx in batches:
        ids, mask = _collate([seqs[i] for i in idx])
        res = model(input_ids=ids, attention_mask=mask, labels=y[idx])
        opt.zero_grad()
        res.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        out.append((res.logits.detach().clone(), res.loss.detach().clone(), grads))
        opt.step()
    return out


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("k", [1, 3])
def test_partly_stored_batches_train_exactly_like_plain_freezing(kind, k):
    """The stored rows are served, the others run through the prefix, the batch is reassembled in its
    order and width: logits, loss and every trainable gradient equal plain freezing's, step by step."""
    seqs, y = _data()
    runs, caches = [], []
    for use_cache in (False, True):
        torch.manual_seed(0)
        m = MAKERS[kind]()
        blocks = find_blocks(m)
        freeze(m, bottom_prefix(blocks, k), blocks)
        caches.append(PrefixCache(m, k, blocks=blocks) if use_cache else None)
        runs.append(_steps(m, PART_BATCHES, seqs, y))
    for (l0, loss0, g0), (l1, loss1, g1) in zip(*runs):
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
        assert g1.keys() == g0.keys() and g0
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6)
    s = caches[1].stats()
    assert (s["miss_batches"], s["partial_batches"], s["hit_batches"]) == (3, 2, 1)
    # rows served: B3 2 (examples 2 and 5 = 3), B4 3, B5 5; computed: B1 5, B2 5 (checked whole), B3 3, B4 2, B6 5
    assert (s["hit_rows"], s["miss_rows"]) == (10, 20)
    assert s["examples"] == s["stored"] == 17  # examples 0..17, 5 a copy of 3


def test_partial_serving_off_is_the_old_behaviour():
    """``partial=False``: a batch only partly stored runs whole (a miss), training unchanged."""
    seqs, y = _data()
    torch.manual_seed(0)
    m = _bert()
    freeze(m, bottom_prefix(find_blocks(m), 2))
    cache = PrefixCache(m, 2, partial=False)
    _steps(m, PART_BATCHES, seqs, y)
    s = cache.stats()
    assert (s["miss_batches"], s["partial_batches"], s["hit_batches"]) == (5, 0, 1)
    assert (s["hit_rows"], s["miss_rows"]) == (5, 25)


def test_a_model_whose_blocks_cannot_run_on_a_subset_turns_partial_serving_off():
    """The first batch that could be served in part also runs the prefix on its new rows alone; a block
    that fails there (here: it insists on the batch's full size) turns serving in part off with a
    warning, and that batch and every later one are computed exactly as with plain freezing."""
    seqs, y = _data()
    runs = []
    for use_cache in (False, True):
        torch.manual_seed(0)
        m = _bert()
        freeze(m, bottom_prefix(find_blocks(m), 2))
        layer = m.bert.encoder.layer[1]

        def picky(hidden, *args, _layer=layer, **kwargs):
            if hidden.shape[0] != 5:
                raise RuntimeError("needs the whole batch")
            return type(_layer).forward(_layer, hidden, *args, **kwargs)

        layer.forward = picky
        cache = PrefixCache(m, 2) if use_cache else None
        if use_cache:
            with pytest.warns(PrefixCacheOffWarning, match="could not run on a subset"):
                runs.append(_steps(m, PART_BATCHES, seqs, y))
            s = cache.stats()
            assert cache.partial is False and s["disabled"] is None
            assert (s["miss_batches"], s["partial_batches"], s["hit_batches"]) == (5, 0, 1)
        else:
            runs.append(_steps(m, PART_BATCHES, seqs, y))
    for (l0, _, g0), (l1, _, g1) in zip(*runs):
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6)


def test_no_store_serves_but_stores_nothing_and_store_in_eval_false_stores_training_passes_only():
    torch.manual_seed(0)
    m = _bert()
    freeze(m, bottom_prefix(find_blocks(m), 2))
    seqs, _ = _data()
    cache = PrefixCache(m, 2, store_in_eval=False)
    ids, mask = _collate(seqs[:5])
    m.eval()
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).logits
        assert len(cache) == 0  # an eval-mode pass is computed, not stored
        m.train()
        with cache.no_store():
            m(input_ids=ids, attention_mask=mask)
        assert len(cache) == 0
        m(input_ids=ids, attention_mask=mask)  # a training-mode pass stores
        assert len(cache) == 5
        m.eval()
        with cache.no_store():  # served (a hit), exactly
            torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits, ref, rtol=1e-5, atol=1e-6)
        ids2, mask2 = _collate(seqs[3:9])  # partly stored, in eval mode: the new rows are computed, not stored
        out2 = m(input_ids=ids2, attention_mask=mask2).logits
    assert len(cache) == 5
    cache.detach()
    with torch.no_grad():
        torch.testing.assert_close(out2, m(input_ids=ids2, attention_mask=mask2).logits, rtol=1e-5, atol=1e-6)


def test_tracker_probe_passes_are_served_but_never_stored():
    """A real Tracker checking every step while a PrefixCache stands in for the frozen prefix: the cache
    holds exactly the distinct training examples seen, none of the probe texts."""
    from conftest import WORDS, make_tokenizer
    from transformers import BertConfig

    from layerprobe.tracking.tracker import Tracker

    tok = make_tokenizer()
    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24, vocab_size=len(tok),
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    freeze(m, bottom_prefix(find_blocks(m), 1))
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(n),), generator=g))
             for n in torch.randint(3, 9, (30,), generator=g)]
    train, probe = texts[:20], texts[20:]
    cache = PrefixCache(m, 1)
    tracker = Tracker(m, tok, probe, every_n_steps=1)
    tracker.start()
    assert len(cache) == 0  # the start's probe pass: not stored
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    order = torch.randperm(20, generator=g).tolist() + torch.randperm(20, generator=g).tolist()
    seen: set[str] = set()
    m.train()
    for step, i in enumerate(range(0, 40, 4), start=1):
        batch = [train[j] for j in order[i: i + 4]]
        seen.update(batch)
        enc = tok(batch, padding=True, return_tensors="pt")
        loss = m(**enc, labels=torch.tensor([j % 2 for j in order[i: i + 4]])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.maybe_record(step)
    assert len(tracker.rows) == 11 * 4  # start + 10 checks, 4 entries
    assert not set(probe) & set(train)
    assert len(cache) == cache.stats()["stored"] == len(seen) == 20
    s = cache.stats()
    assert s["hit_rows"] == 20  # the second epoch's rows; the probe texts are computed at every check
    assert s["miss_rows"] == 20 + 11 * len(probe)
