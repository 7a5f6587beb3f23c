"""The prefix cache and ``LayerProbeCallback(auto_freeze=True)`` across Hugging Face architectures.

Tiny seeded random ``*ForSequenceClassification`` models built from configs (no downloads), one per
family: BERT-style encoders (DistilBERT, RoBERTa, XLM-RoBERTa, ALBERT with weight-shared layer groups,
ELECTRA, DeBERTa-v2, MPNet), decoders (Qwen2, Mistral, Gemma, GPT-NeoX, OPT, Phi, Falcon) and
encoder-decoders (BART, T5).

* ``PrefixCache`` trains exactly like plain freezing of the same prefix (3 epochs, shuffled, dynamic
  padding, a duplicate example), or — where it cannot stand in for the prefix — is refused up front
  (the decoder stack of an encoder-decoder) or turns itself off at the first pass and training is
  plain freezing (T5's blocks hand their position bias up the stack).
* A short ``Trainer`` run with ``auto_freeze=True`` completes, freezes, writes the freeze log, and the
  model still predicts.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
import transformers as tf

from conftest import WORDS, make_tokenizer
from layerprobe import LayerProbeCallback, Thresholds
from layerprobe.model.blocks import find_blocks
from layerprobe.errors import LayerProbeError
from layerprobe.freezing.apply import bottom_prefix, freeze
from layerprobe.freezing.prefix_cache import PrefixCache, PrefixCacheOffWarning
from layerprobe.tracking.tracker import FREEZE_LOG_CSV, TRAJECTORY_CSV
from layerprobe.demo.train import TrainConfig, train_loop

V = 40  # = len(make_tokenizer()): one tokenizer fits every model
EOS = 3  # [SEP]: T5 and BART classify at the end-of-sequence token, which every example must hold

_ENC = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24, vocab_size=V,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_DEC = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
            vocab_size=V, max_position_embeddings=40, pad_token_id=0)
_BART = dict(d_model=16, encoder_layers=4, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
             encoder_ffn_dim=24, decoder_ffn_dim=24, vocab_size=V, max_position_embeddings=40, pad_token_id=0,
             eos_token_id=EOS, bos_token_id=2, decoder_start_token_id=EOS, dropout=0.0, attention_dropout=0.0,
             activation_dropout=0.0, classifier_dropout=0.0)
_T5 = dict(d_model=16, d_kv=8, d_ff=24, num_layers=4, num_decoder_layers=2, num_heads=2, vocab_size=V,
           pad_token_id=0, eos_token_id=EOS, decoder_start_token_id=0, dropout_rate=0.0)

#: name -> (config class, model class, config keywords)
ZOO = {
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification",
                   dict(dim=16, n_layers=4, n_heads=2, hidden_dim=24, vocab_size=V, max_position_embeddings=40,
                        dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", dict(_ENC, pad_token_id=0)),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification", dict(_ENC, pad_token_id=0)),
    # ALBERT: 4 layers share one layer group (one block entry applied 4 times) or two (2 + 2)
    "albert": ("AlbertConfig", "AlbertForSequenceClassification",
               dict(_ENC, embedding_size=8, classifier_dropout_prob=0.0)),
    "albert-2groups": ("AlbertConfig", "AlbertForSequenceClassification",
                       dict(_ENC, embedding_size=8, classifier_dropout_prob=0.0, num_hidden_groups=2)),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", dict(_ENC, embedding_size=8)),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification",
                   dict(_ENC, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
                        pooler_dropout=0.0, pooler_hidden_size=16, pad_token_id=0)),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification", dict(_ENC, pad_token_id=0)),
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification", _DEC),
    "mistral": ("MistralConfig", "MistralForSequenceClassification", _DEC),
    "gemma": ("GemmaConfig", "GemmaForSequenceClassification", dict(_DEC, head_dim=8)),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForSequenceClassification",
                 dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24, vocab_size=V,
                      max_position_embeddings=40, pad_token_id=0, hidden_dropout=0.0, attention_dropout=0.0)),
    "opt": ("OPTConfig", "OPTForSequenceClassification",
            dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, ffn_dim=24, vocab_size=V,
                 max_position_embeddings=40, pad_token_id=0, word_embed_proj_dim=16, dropout=0.0,
                 attention_dropout=0.0)),
    "phi": ("PhiConfig", "PhiForSequenceClassification",
            dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24, vocab_size=V,
                 max_position_embeddings=40, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)),
    "falcon": ("FalconConfig", "FalconForSequenceClassification",
               dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, vocab_size=V, pad_token_id=0,
                    hidden_dropout=0.0, attention_dropout=0.0, new_decoder_architecture=False, alibi=False)),
    # encoder-decoders: the encoder's stack is the block stack (the decoder's, with cross-attention, is larger)
    "bart": ("BartConfig", "BartForSequenceClassification", _BART),
    "bart-symmetric": ("BartConfig", "BartForSequenceClassification", dict(_BART, decoder_layers=4)),
    "t5": ("T5Config", "T5ForSequenceClassification", _T5),
    "t5-symmetric": ("T5Config", "T5ForSequenceClassification", dict(_T5, num_decoder_layers=4)),
}
#: the encoder's stack of an encoder-decoder (found by default) and its decoder's (refused by the cache, with
#: the encoder's as the hint)
ENCODER = {"bart": "model.encoder.layers.*", "bart-symmetric": "model.encoder.layers.*",
           "t5": "transformer.encoder.block.*", "t5-symmetric": "transformer.encoder.block.*"}
DECODER = {"bart-symmetric": "model.decoder.layers.*", "t5-symmetric": "transformer.decoder.block.*"}
#: blocks that hand more than their hidden states up the stack: the cache turns itself off
OFF = {"t5": "position bias", "t5-symmetric": "position bias"}
CACHED = [k for k in ZOO if k not in OFF]


def make(kind: str, seed: int = 0) -> torch.nn.Module:
    config_cls, model_cls, kw = ZOO[kind]
    torch.manual_seed(seed)
    return getattr(tf, model_cls)(getattr(tf, config_cls)(num_labels=3, **kw))


def _data(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 12, (n,), generator=g).tolist()
    seqs = [torch.randint(4, V, (L,), generator=g).tolist() + [EOS] for L in lens]
    seqs[5] = list(seqs[3])  # a duplicate example shares its entry
    return seqs, torch.randint(0, 3, (n,), generator=g)


def _collate(seqs, left=False):
    w = max(map(len, seqs))
    pad = [[0] * (w - len(s)) for s in seqs]
    ids = torch.tensor([p + s if left else s + p for s, p in zip(seqs, pad)])
    mask = torch.tensor([p + [1] * len(s) if left else [1] * len(s) + p for s, p in zip(seqs, pad)])
    return ids, mask


def _train(kind: str, k: int, use_cache: bool, blocks_pattern: str | None = None, left: bool = False):
    """3 epochs of batch 5 over 24 examples (shuffled, padded per batch), the bottom k blocks frozen."""
    model = make(kind)
    blocks = find_blocks(model, blocks=blocks_pattern)
    freeze(model, bottom_prefix(blocks, k), blocks)
    cache = PrefixCache(model, k, blocks=blocks) if use_cache else None
    seqs, y = _data()
    losses = []

    def batch_loss(idx):
        ids, mask = _collate([seqs[i] for i in idx], left=left)
        loss = model(input_ids=ids, attention_mask=mask, labels=y[idx]).loss
        losses.append(float(loss.detach()))
        return loss

    train_loop(model, len(seqs), batch_loss, TrainConfig(epochs=3, lr=1e-3, batch_size=5, seed=1), progress=False)
    return model, losses, cache


def _assert_same_training(plain, cached):
    (m0, losses0, _), (m1, losses1, _) = plain, cached
    assert len(losses0) == len(losses1) == 15  # 3 epochs x 5 batches
    torch.testing.assert_close(torch.tensor(losses1), torch.tensor(losses0), rtol=1e-4, atol=1e-5)
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    assert sd0.keys() == sd1.keys()  # no wrapper: names unchanged
    for n in sd0:
        torch.testing.assert_close(sd1[n], sd0[n], rtol=1e-3, atol=1e-4)


#: frozen blocks to test: 1 and 3 of 4 (ALBERT: one entry per layer group)
KS = {"albert": [1], "albert-2groups": [1, 2]}


@pytest.mark.parametrize("kind,k", [(kind, k) for kind in CACHED for k in KS.get(kind, [1, 3])])
def test_cache_trains_like_plain_freezing(kind, k):
    plain = _train(kind, k, use_cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrefixCacheOffWarning)
        cached = _train(kind, k, use_cache=True)
    _assert_same_training(plain, cached)
    s = cached[2].stats()
    # epoch 1 fills (5 misses: the batch holding the duplicate's second copy is the one that checks serving
    # in part, so it runs whole), epochs 2 and 3 are served (10 hits); the duplicate is stored once
    assert (s["miss_batches"], s["partial_batches"], s["hit_batches"], s["uncached_batches"]) == (5, 0, 10, 0)
    assert (s["miss_rows"], s["hit_rows"]) == (24, 48)
    assert s["examples"] == 23 and s["disabled"] is None


@pytest.mark.parametrize("kind", ["qwen2", "opt", "falcon"])
def test_left_padded_decoders_train_like_plain_freezing(kind):
    """Left padding: an example's key includes where it starts (a rotary model counts positions from the
    padded edge), so it is served only at the same padded width, never with wrong positions."""
    plain = _train(kind, 2, use_cache=False, left=True)
    cached = _train(kind, 2, use_cache=True, left=True)
    _assert_same_training(plain, cached)
    assert cached[2].stats()["hit_batches"] >= 1


def test_albert_shared_layer_group_is_served_after_its_last_application():
    """One ALBERT layer group applied 4 times is one block entry: the cache stores and serves the
    output of its 4th application (the prefix is all four layers), never the first."""
    m = make("albert").eval()
    blocks = find_blocks(m)
    assert blocks.names == ["embeddings", "block.0"]
    freeze(m, bottom_prefix(blocks, 1), blocks)
    ids, mask = _collate(_data()[0][:6])
    ref = m(input_ids=ids, attention_mask=mask).logits
    cache = PrefixCache(m, 1, blocks=blocks)
    m(input_ids=ids, attention_mask=mask)
    hit = m(input_ids=ids, attention_mask=mask).logits
    assert cache.stats()["hit_batches"] == 1
    torch.testing.assert_close(hit, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        last = m.albert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    key = cache._keys({"input_ids": ids[:1], "attention_mask": mask[:1]}, ())["keys"][0]
    torch.testing.assert_close(cache._store[key], last[0, : int(mask[0].sum())], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(OFF))
def test_cache_turns_itself_off_when_blocks_hand_more_than_hidden_states_up(kind):
    plain = _train(kind, 1, use_cache=False)
    with pytest.warns(PrefixCacheOffWarning, match=OFF[kind]):
        cached = _train(kind, 1, use_cache=True)
    _assert_same_training(plain, cached)  # exactly plain freezing: nothing was served
    s = cached[2].stats()
    assert s["hit_batches"] == 0 and s["examples"] == 0 and OFF[kind] in s["disabled"]
    assert (s["miss_batches"], s["uncached_batches"]) == (1, 14)


def test_a_cache_that_turned_itself_off_stays_off_when_the_prefix_grows():
    """What turns the cache off is the model's (T5's blocks hand their position bias up), not k's: a
    longer prefix must not switch it back on, warn again or serve anything."""
    m = make("t5")
    blocks = find_blocks(m)
    freeze(m, bottom_prefix(blocks, 1), blocks)
    cache = PrefixCache(m, 1, blocks=blocks)
    ids, mask = _collate(_data()[0][:5], left=False)
    with pytest.warns(PrefixCacheOffWarning):
        m(input_ids=ids, attention_mask=mask)
    reason = cache.disabled
    assert reason and "position bias" in reason
    freeze(m, bottom_prefix(blocks, 2), blocks)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PrefixCacheOffWarning)
        cache.attach(2)
        for _ in range(2):
            m(input_ids=ids, attention_mask=mask)
    s = cache.stats()
    assert s["k"] == 2 and s["disabled"] == reason and s["hit_batches"] == 0 and s["examples"] == 0
    cache.detach()


@pytest.mark.parametrize("kind", sorted(ENCODER))
def test_the_block_stack_of_an_encoder_decoder_is_its_encoders(kind):
    m = make(kind)
    blocks = find_blocks(m)
    enc = ENCODER[kind].removesuffix(".*")
    assert f"{blocks.prefix}.{blocks.stack}" == enc and len(blocks.blocks) == 4
    dec = enc.replace("encoder", "decoder").rsplit(".", 1)[0]
    groups = blocks.group([n for n, _ in m.named_parameters()])
    # every encoder parameter is in an entry (embeddings or a block), none of the decoder's is
    entry_params = [n for e, ns in groups.items() if e != "other" for n in ns]
    assert not any(n.startswith(dec + ".") for n in entry_params)
    assert all(n in entry_params for n, _ in m.named_parameters() if n.startswith(enc.rsplit(".", 1)[0] + ".")
               and ".layer" in n.removeprefix(enc.rsplit(".", 1)[0]))


@pytest.mark.parametrize("kind", sorted(DECODER))
def test_decoder_stack_of_an_encoder_decoder_is_refused_with_the_encoder_as_hint(kind):
    m = make(kind)
    blocks = find_blocks(m, blocks=DECODER[kind])
    assert blocks.stack.startswith("decoder")
    freeze(m, bottom_prefix(blocks, 2), blocks)
    with pytest.raises(LayerProbeError, match=r"encoder-decoder.*" + ENCODER[kind].replace(".", r"\.")
                       .replace("*", r"\*")):
        PrefixCache(m, 2, blocks=blocks)
    assert all("forward" not in mod.__dict__ for mod in m.modules())  # nothing left attached


def test_the_hinted_encoder_stack_of_a_symmetric_bart_trains_like_plain_freezing():
    pattern = ENCODER["bart-symmetric"]
    plain = _train("bart-symmetric", 2, use_cache=False, blocks_pattern=pattern)
    cached = _train("bart-symmetric", 2, use_cache=True, blocks_pattern=pattern)
    _assert_same_training(plain, cached)
    assert cached[2].stats()["hit_batches"] == 10


# -- Trainer runs --------------------------------------------------------------------------------


N_TEXTS, EPOCHS = 48, 4


def _texts(n=None):
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n or N_TEXTS)]


def _trainer_run(kind, out, cache=True, blocks_pattern=None, **training_args):
    """auto_freeze=True over 4 epochs of 48 texts (24 steps) with a permissive rule (any CKA, settled at
    the fastest block's pace, patience 1), so the run freezes and, from then on, serves from the cache."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tok = make_tokenizer()
    model = make(kind)
    texts = _texts()
    blocks = find_blocks(model, blocks=blocks_pattern) if blocks_pattern else None
    cb = LayerProbeCallback(tokenizer=tok, probe_texts=texts[:16], auto_freeze=True, blocks=blocks,
                            thresholds=Thresholds(min_cka=0.0), settle=1.0, patience=1, cache=cache)
    enc = tok(texts, truncation=True, max_length=32)
    ds = Dataset.from_dict({**enc, "labels": [i % 3 for i in range(len(texts))]})
    args = TrainingArguments(**{**dict(output_dir=str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=8,
                                       learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                                       logging_strategy="no", disable_tqdm=True, seed=0), **training_args})
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[cb])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrefixCacheOffWarning)
        trainer.train()
    off = [str(w.message) for w in caught if issubclass(w.category, PrefixCacheOffWarning)]
    return model, cb, tok, texts, off


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_trainer_auto_freeze_runs_freezes_logs_and_the_model_predicts(kind, tmp_path):
    model, cb, tok, texts, off = _trainer_run(kind, tmp_path)
    pol = cb.policy
    names = find_blocks(model).names
    log = pd.read_csv(tmp_path / FREEZE_LOG_CSV)
    assert set(log.block) == set(names) and (log.action == "freeze").any()
    assert pol.frozen == names[: len(pol.frozen)] and pol.frozen  # a bottom prefix froze
    traj = pd.read_csv(tmp_path / TRAJECTORY_CSV)
    assert traj[["cka_to_start", "weight_drift"]].notna().all().all()
    assert all("forward" not in mod.__dict__ for mod in model.modules())  # the cache is detached at train end
    model.eval()
    batch = tok(texts[:5], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    s = pol.summary()
    if kind in OFF:
        assert s["cache"]["hit_batches"] == 0 and OFF[kind] in s["cache"]["disabled"] and off
    elif kind == "albert":  # one shared block: min_train_blocks keeps it training, only the embeddings freeze
        assert pol.frozen == ["embeddings"] and s["cache"] is None and not off
    else:
        assert s["cache"]["hit_batches"] > 0 and s["cache"]["disabled"] is None and not off


@pytest.mark.parametrize("kind", ["albert-2groups", pytest.param("qwen2", marks=pytest.mark.slow),
                                  pytest.param("bart", marks=pytest.mark.slow)])
def test_trainer_auto_freeze_with_the_cache_trains_like_without(kind, tmp_path):
    m0, cb0, *_ = _trainer_run(kind, tmp_path / "plain", cache=False)
    m1, cb1, *_ = _trainer_run(kind, tmp_path / "cached", cache=True)
    assert cb1.policy.frozen == cb0.policy.frozen and cb1.policy.freeze_steps == cb0.policy.freeze_steps
    assert cb1.policy.summary()["cache"]["hit_batches"] > 0
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    for n in sd0:
        torch.testing.assert_close(sd1[n], sd0[n], rtol=1e-3, atol=1e-4)


def test_trainer_with_the_hinted_encoder_stack_caches_a_symmetric_bart(tmp_path):
    model, cb, *_ , off = _trainer_run("bart-symmetric", tmp_path, blocks_pattern=ENCODER["bart-symmetric"])
    s = cb.policy.summary()
    assert not off and s["cache"]["hit_batches"] > 0 and cb.tracker.blocks.stack == "encoder.layers"


def test_trainer_with_reentrant_gradient_checkpointing_trains_like_without_the_cache(tmp_path):
    """Gradient checkpointing marks the embeddings' output as requiring grad (``enable_input_require_grads``)
    so that a reentrant checkpointed block still gives its parameters gradients. The cache hands the mark
    on with the states it serves or computes without grad (without it the trainable blocks silently
    stopped learning); the mark alone, with no trainable parameter behind it, does not turn the cache off."""
    ckpt = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    m0, cb0, *_ = _trainer_run("qwen2", tmp_path / "plain", cache=False, **ckpt)
    m1, cb1, *_, off = _trainer_run("qwen2", tmp_path / "cached", cache=True, **ckpt)
    assert m1.is_gradient_checkpointing and not off
    assert cb1.policy.frozen == cb0.policy.frozen and cb1.policy.summary()["cache"]["hit_batches"] > 0
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    for n in sd0:
        torch.testing.assert_close(sd1[n], sd0[n], rtol=1e-3, atol=1e-4)
