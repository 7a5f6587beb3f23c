"""The revert test's shortcut: reverted prefixes served from the whole-stack pass give the long way's rows."""

from __future__ import annotations

import pytest
import torch
from transformers import (AlbertConfig, AlbertForSequenceClassification, BertConfig, BertForSequenceClassification,
                          GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForSequenceClassification)

from layerprobe.freezing.revert import revert_test
from layerprobe.freezing.revert_shortcut import RevertShortcut
from layerprobe.model.blocks import block_modules, find_blocks


def _perturbed(make, seed: int = 0, scale: float = 0.3):
    torch.manual_seed(seed)
    base, tuned = make(), make()
    tuned.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.detach().std().clamp_min(1e-3))
    return base.eval(), tuned


def _bert(n_layers: int = 4):
    cfg = BertConfig(hidden_size=16, num_hidden_layers=n_layers, num_attention_heads=2, intermediate_size=24,
                     vocab_size=80, num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2,
                     initializer_range=0.3)  # outputs far enough apart that a wrong row would show
    return _perturbed(lambda: BertForSequenceClassification(cfg))


def _batches(n: int = 12, vocab: int = 50, right_pad: bool = True):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, vocab, (n, 7), generator=g)
    mask = torch.ones_like(ids)
    if right_pad:
        mask[::3, 5:] = 0
    half = n // 2
    return [{"input_ids": ids[:half], "attention_mask": mask[:half]},
            {"input_ids": ids[half:], "attention_mask": mask[half:]}]


def _same_rows(a, b):
    assert [r["k"] for r in a] == [r["k"] for r in b]
    for x, y in zip(a, b):
        assert x["freeze"] == y["freeze"]
        for key in ("agreement", "kl", "tv"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["k"], key)


def _long_way(tuned, base, batches, **kw):
    off = RevertShortcut()
    off.turn_off("the long way, for reference")
    return revert_test(tuned, base.state_dict(), batches, shortcut=off, **kw)


class _Counter:
    """Counts how often each block really computes (its class forward), not the served calls."""

    def __init__(self, model, monkeypatch):
        blocks = find_blocks(model)
        mods = block_modules(model, blocks)
        self.ids = {id(mods[e.name][0]): i for i, e in enumerate(blocks.blocks)}
        self.calls = [0] * len(blocks.blocks)
        cls = type(mods[blocks.blocks[0].name][0])
        orig = cls.forward

        def counted(mod, *a, **kw):
            if id(mod) in self.ids:
                self.calls[self.ids[id(mod)]] += 1
            return orig(mod, *a, **kw)
        monkeypatch.setattr(cls, "forward", counted)


def test_served_rows_equal_the_long_way_and_the_blocks_below_the_prefix_do_not_run(monkeypatch):
    base, tuned = _bert(n_layers=4)
    batches = _batches()
    labels = torch.tensor([0, 1, 2] * 4)
    long = _long_way(tuned, base, batches, labels=labels)
    counter = _Counter(tuned, monkeypatch)
    shortcut = RevertShortcut()
    first = revert_test(tuned, base.state_dict(), batches, labels=labels, shortcut=shortcut)
    assert shortcut.checked and shortcut.off is None
    _same_rows(first, long)
    kls = [r["kl"] for r in long]
    assert kls[0] < kls[-1] and len({round(k, 6) for k in kls}) == 5  # rows far apart: a mix-up would show
    assert [r["accuracy"] for r in first] == [r["accuracy"] for r in long]
    counter.calls = [0] * 4
    second = revert_test(tuned, base.state_dict(), batches, labels=labels, shortcut=shortcut)
    _same_rows(second, long)
    # per batch: the tuned pass, k=0 and k=4 run every block; k=1..3 only the blocks above the prefix
    assert counter.calls == [2 * 3, 2 * 4, 2 * 5, 2 * 6]
    assert sum(counter.calls) < 2 * 4 * 6  # the long way: 6 passes of 4 blocks per batch


def test_the_model_is_left_as_it_was():
    base, tuned = _bert()
    before = {n: t.clone() for n, t in tuned.state_dict().items()}
    mods = block_modules(tuned, find_blocks(tuned))
    tuned.train()
    revert_test(tuned, base.state_dict(), _batches(), shortcut=RevertShortcut())
    assert tuned.training
    assert all(torch.equal(before[n], t) for n, t in tuned.state_dict().items())
    assert all("forward" not in m[0].__dict__ for m in mods.values())  # no patched forward left behind


def test_a_forward_patched_by_someone_else_comes_back():
    base, tuned = _bert()
    mods = block_modules(tuned, find_blocks(tuned))
    layer = mods["block.0"][0]
    theirs = layer.forward
    layer.forward = lambda *a, **kw: theirs(*a, **kw)
    mine = layer.__dict__["forward"]
    revert_test(tuned, base.state_dict(), _batches(), shortcut=RevertShortcut())
    assert layer.__dict__["forward"] is mine


def test_a_decoder_with_tied_embeddings_and_left_padding():
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=3, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    base, tuned = _perturbed(lambda: GPT2LMHeadModel(cfg), scale=0.2)
    batches = _batches()
    for b in batches:
        b["attention_mask"] = b["attention_mask"].flip(-1)  # left padding
    shortcut = RevertShortcut()
    _same_rows(revert_test(tuned, base.state_dict(), batches, shortcut=shortcut), _long_way(tuned, base, batches))
    assert shortcut.checked and shortcut.off is None


def test_a_rotary_decoder_classifier():
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=0)
    base, tuned = _perturbed(lambda: LlamaForSequenceClassification(cfg), scale=0.2)
    batches = _batches(right_pad=False)
    shortcut = RevertShortcut()
    _same_rows(revert_test(tuned, base.state_dict(), batches, shortcut=shortcut), _long_way(tuned, base, batches))
    assert shortcut.checked and shortcut.off is None


def test_a_block_applied_several_times_turns_it_off_with_the_same_rows():
    cfg = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=4, num_hidden_groups=1,
                       num_attention_heads=2, intermediate_size=24, num_labels=2, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
    base, tuned = _perturbed(lambda: AlbertForSequenceClassification(cfg))
    batches = _batches()
    shortcut = RevertShortcut()
    rows = revert_test(tuned, base.state_dict(), batches, shortcut=shortcut)
    _same_rows(rows, _long_way(tuned, base, batches))
    if len(find_blocks(tuned).blocks) > 1:  # entries found per layer: each shared layer applied several times
        assert shortcut.off is not None and "times in one forward pass" in shortcut.off


def test_a_prefix_block_that_reads_weights_above_it_is_caught_by_the_check():
    base, tuned = _bert(n_layers=3)
    layer0 = tuned.bert.encoder.layer[0]
    top_weight = tuned.bert.encoder.layer[2].output.dense.weight
    orig = layer0.forward

    def reads_the_top(hidden, *a, **kw):  # block 0 reads a parameter of block 2: not served exactly
        out = orig(hidden, *a, **kw)
        h = out if torch.is_tensor(out) else out[0]
        h = h + 3 * top_weight[:, 0]
        return h if torch.is_tensor(out) else (h,) + tuple(out[1:])
    layer0.forward = reads_the_top
    batches = _batches()
    shortcut = RevertShortcut()
    rows = revert_test(tuned, base.state_dict(), batches, shortcut=shortcut)
    assert shortcut.off is not None and "differs from the computed one" in shortcut.off
    assert not shortcut.checked
    _same_rows(rows, _long_way(tuned, base, batches))


def test_outputs_beyond_the_bound_take_the_long_way():
    base, tuned = _bert()
    batches = _batches()
    shortcut = RevertShortcut(max_bytes=1000)
    _same_rows(revert_test(tuned, base.state_dict(), batches, shortcut=shortcut), _long_way(tuned, base, batches))
    assert "MiB" in shortcut.off


def test_a_subset_of_prefixes_and_their_order_are_kept():
    base, tuned = _bert(n_layers=4)
    batches = _batches()
    ks = [3, 0, 4, 1]
    rows = revert_test(tuned, base.state_dict(), batches, ks=ks, shortcut=RevertShortcut())
    assert [r["k"] for r in rows] == ks
    _same_rows(rows, _long_way(tuned, base, batches, ks=ks))
    no_top = RevertShortcut()  # without the whole stack among them there is nothing to serve from
    revert_test(tuned, base.state_dict(), batches, ks=[1, 2], shortcut=no_top)
    assert not no_top.checked and no_top.off is None


def test_a_broken_base_is_said_of_the_smallest_prefix_that_breaks():
    from layerprobe.errors import LayerProbeError

    base, tuned = _bert(n_layers=3)
    broken = dict(base.state_dict())
    key = "bert.encoder.layer.1.output.dense.weight"
    broken[key] = torch.full_like(broken[key], float("nan"))
    with pytest.raises(LayerProbeError, match=r"with embeddings, block\.0, block\.1 reverted"):
        revert_test(tuned, broken, _batches(), shortcut=RevertShortcut())


def _deberta():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    cfg = DebertaV2Config(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=24, num_labels=3, relative_attention=True, position_buckets=8,
                          pos_att_type=["p2c", "c2p"], max_relative_positions=16, initializer_range=0.5)
    return DebertaV2ForSequenceClassification(cfg)


def _t5():
    from transformers import T5Config, T5ForSequenceClassification

    cfg = T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2, num_labels=3,
                   decoder_start_token_id=0, eos_token_id=2, initializer_factor=5.0)
    return T5ForSequenceClassification(cfg)


def _bart():
    from transformers import BartConfig, BartForSequenceClassification

    cfg = BartConfig(vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, num_labels=3,
                     max_position_embeddings=40, eos_token_id=2, init_std=0.5)
    return BartForSequenceClassification(cfg)


@pytest.mark.parametrize("make", [_deberta, _t5, _bart], ids=["deberta-v2", "t5", "bart"])
def test_families_whose_blocks_read_more_than_the_hidden_states(make):
    """DeBERTa's blocks read relative position embeddings held outside them, T5's hand a position bias up the
    stack, BART's encoder feeds a decoder: served, the rows are the long way's."""
    base, tuned = _perturbed(make, scale=0.5)
    batches = _batches(n=8, right_pad=False)
    for b in batches:
        b["input_ids"][:, -1] = 2  # an end-of-sequence token closes each row (T5 and BART classify at it)
    long = _long_way(tuned, base, batches)
    assert max(r["kl"] for r in long) > 1e-3  # the prefixes move the outputs: a wrong row would show
    shortcut = RevertShortcut()
    _same_rows(revert_test(tuned, base.state_dict(), batches, shortcut=shortcut), long)
    assert shortcut.checked and shortcut.off is None
