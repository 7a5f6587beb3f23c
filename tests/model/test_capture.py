"""capture: one forward pass, masked pooling, hooks removed and mode restored, even on error."""

from __future__ import annotations

import pytest
import torch

from layerprobe import capture, find_blocks
from layerprobe.model.capture import pool
from layerprobe.errors import LayerProbeError


def batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_one_forward_pass_records_every_entry(bert, tokenizer, texts):
    calls = []
    bert.register_forward_pre_hook(lambda *a: calls.append(1))
    with capture(bert) as cap:
        bert(**batch(tokenizer, texts[:8]))
    assert len(calls) == 1
    out = cap.outputs
    assert list(out) == ["embeddings", "block.0", "block.1", "block.2", "block.3"]
    assert all(v.shape == (8, 32) and v.dtype == torch.float64 for v in out.values())


def test_block_outputs_match_hidden_states(bert, tokenizer, texts):
    enc = batch(tokenizer, texts[:6])
    with torch.no_grad():
        hs = bert(**enc, output_hidden_states=True).hidden_states
    with capture(bert) as cap:
        bert(**enc)
    m = enc["attention_mask"].unsqueeze(-1).double()
    for i, name in enumerate(["embeddings", "block.0", "block.1", "block.2", "block.3"]):
        expect = (hs[i].double() * m).sum(1) / m.sum(1)
        torch.testing.assert_close(cap.outputs[name], expect, rtol=1e-6, atol=1e-6)


def test_padding_never_enters_a_representation(bert, tokenizer, texts):
    """The same sentence alone and padded next to a long one gives the same vector."""
    short, long = "good movie", " ".join(["great fun plot"] * 8)
    with capture(bert) as cap:
        bert(**batch(tokenizer, [short]))
        bert(**batch(tokenizer, [short, long]))
    for name, v in cap.outputs.items():
        torch.testing.assert_close(v[0], v[1], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("pooling", ["first", "last"])
def test_first_and_last_pooling(bert, tokenizer, pooling):
    enc = batch(tokenizer, ["good", "a very long boring movie"])
    with torch.no_grad():
        last_hidden = bert(**enc).last_hidden_state
    with capture(bert, pooling=pooling) as cap:
        bert(**enc)
    lengths = enc["attention_mask"].sum(1)
    pos = [0, 0] if pooling == "first" else [int(lengths[0]) - 1, int(lengths[1]) - 1]
    expect = torch.stack([last_hidden[i, p] for i, p in enumerate(pos)]).double()
    torch.testing.assert_close(cap.outputs["block.3"], expect)


def test_token_pooling_keeps_real_tokens_with_cap(bert, tokenizer):
    enc = batch(tokenizer, ["good", "a very long boring movie with a bad plot"])
    n_real = enc["attention_mask"].sum(1).tolist()
    with capture(bert, pooling="tokens") as cap:
        bert(**enc)
    assert cap.outputs["block.0"].shape[0] == sum(n_real)
    assert cap.token_examples.tolist() == [0] * n_real[0] + [1] * n_real[1]
    with capture(bert, pooling="tokens", max_tokens=4) as cap:
        bert(**enc)
        bert(**enc)
    assert cap.token_examples.tolist() == [0] * 3 + [1] * 4 + [2] * 3 + [3] * 4


def test_hooks_removed_and_mode_restored_even_on_error(bert, tokenizer):
    user = bert.encoder.layer[0].register_forward_hook(lambda *a: None)
    before = n_hooks(bert)
    bert.train()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(bert):
            assert not bert.training and not torch.is_grad_enabled()
            raise RuntimeError("boom")
    assert n_hooks(bert) == before  # only our hooks removed; the user's stays
    assert bert.training and torch.is_grad_enabled()
    user.remove()


def test_forward_that_raises_inside_capture(bert):
    bert.eval()
    before = n_hooks(bert)
    with pytest.raises(Exception):
        with capture(bert):
            bert(input_ids=torch.tensor([[1, 2, 99999]]))  # out-of-vocabulary id: the forward raises
    assert n_hooks(bert) == before and not bert.training


def test_explicit_blocks_and_tuple_outputs():
    import transformers as T

    torch.manual_seed(0)
    m = T.DebertaV2Model(T.DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=37, vocab_size=99)).eval()
    with capture(m, find_blocks(m)) as cap:  # DeBERTa blocks return tuples
        m(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor([[1, 1, 1]]))
    assert set(cap.outputs) == {"embeddings", "block.0", "block.1"}


def test_pool_rejects_bad_input():
    h = torch.zeros(2, 3, 4)
    with pytest.raises(LayerProbeError, match="no real token"):
        pool(h, torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(LayerProbeError, match="does not match"):
        pool(h, torch.ones(2, 5))
    with pytest.raises(LayerProbeError, match="unknown pooling"):
        pool(h, None, "max")


@pytest.mark.parametrize("groups,layers_per_entry", [(1, [4]), (2, [2, 4])])
@pytest.mark.parametrize("pooling", ["mean", "tokens"])
def test_weight_shared_blocks_give_one_row_per_example_at_their_last_application(tokenizer, texts, groups,
                                                                               layers_per_entry, pooling):
    """ALBERT applies each layer group several times per forward pass: an entry is read after its last
    application (the embeddings before the first), whatever the batching (it used to mix the calls)."""
    import transformers as T

    from layerprobe.snapshot.take import run_probe, tokenize_probe

    torch.manual_seed(0)
    m = T.AlbertModel(T.AlbertConfig(hidden_size=16, embedding_size=8, num_hidden_layers=4, num_hidden_groups=groups,
                                     num_attention_heads=2, intermediate_size=24, vocab_size=len(tokenizer))).eval()
    blocks = find_blocks(m)
    assert blocks.names == ["embeddings"] + [f"block.{i}" for i in range(groups)]
    enc = batch(tokenizer, texts[:10])
    with torch.no_grad():
        hs = m(**enc, output_hidden_states=True).hidden_states
    examples, _ = tokenize_probe(tokenizer, texts[:10], 64)
    whole, _ = run_probe(m, examples, blocks, pooling, batch_size=64, progress=False)
    split, _ = run_probe(m, examples, blocks, pooling, batch_size=3, progress=False)
    mask = enc["attention_mask"].bool()
    for name, layer in zip(blocks.names, [0, *layers_per_entry]):
        if pooling == "mean":
            m_ = mask.unsqueeze(-1).double()
            expect = (hs[layer].double() * m_).sum(1) / m_.sum(1)
        else:
            expect = hs[layer][mask].float()
        torch.testing.assert_close(whole[name].to(expect.dtype), expect, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-6)


def test_two_calls_of_the_base_model_inside_one_capture_keep_their_rows_apart():
    """Rows are closed per pass of the module that runs the blocks, so calling ``m.bert`` twice gives the
    rows of both batches for every entry, the same as calling the top model twice."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=20, vocab_size=50))
    ids1, ids2 = torch.randint(5, 50, (2, 6)), torch.randint(5, 50, (3, 6))
    with capture(m) as top:
        m(input_ids=ids1)
        m(input_ids=ids2)
    with capture(m) as base:
        m.bert(input_ids=ids1)
        m.bert(input_ids=ids2)
    assert {k: tuple(v.shape) for k, v in base.outputs.items()} == \
        {"embeddings": (5, 16), "block.0": (5, 16), "block.1": (5, 16)}
    for k, v in top.outputs.items():
        assert torch.allclose(v, base.outputs[k], atol=1e-6), k
