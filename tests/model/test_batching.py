"""layerprobe.model.batching: the probe pass's arguments (forward_inputs) and a padding token the model
can find rows' ends by (pad_known)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from conftest import tiny_bert
from layerprobe.model.batching import collate, forward_inputs, pad_known


def _qwen2_cls(pad_token_id):
    torch.manual_seed(0)
    cfg = T.Qwen2Config(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=60, num_labels=3, pad_token_id=pad_token_id)
    return T.Qwen2ForSequenceClassification(cfg).eval()


def test_forward_inputs_keeps_what_forward_takes_and_turns_off_the_cache():
    batch = collate([{"input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0]},
                     {"input_ids": [2, 3], "token_type_ids": [0, 0]}], pad=0)
    bert = tiny_bert()
    assert set(forward_inputs(bert, batch)) == {"input_ids", "attention_mask", "token_type_ids", "use_cache"}
    qwen = _qwen2_cls(0)
    kw = forward_inputs(qwen, batch)
    assert kw["use_cache"] is False  # (its forward takes **kwargs: the rest is handed on)
    assert torch.equal(kw["input_ids"], batch["input_ids"])


def test_a_seq2seq_lm_gets_its_decoder_start_token_and_a_classifier_its_own_shift():
    torch.manual_seed(0)
    cfg = dict(d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2, vocab_size=50, decoder_start_token_id=0)
    t5 = T.T5ForConditionalGeneration(T.T5Config(**cfg)).eval()
    batch = {"input_ids": torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]]), "attention_mask": torch.tensor([[1] * 4, [1, 1, 1, 0]])}
    kw = forward_inputs(t5, batch)
    assert torch.equal(kw["decoder_input_ids"], torch.zeros(2, 1, dtype=torch.long))
    with torch.no_grad():
        assert t5(**kw).logits.shape == (2, 1, 50)  # the first decoded token's distribution
    bart = T.BartForSequenceClassification(T.BartConfig(
        d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=24, decoder_ffn_dim=24, vocab_size=50, max_position_embeddings=32, eos_token_id=1,
        num_labels=3)).eval()
    assert "decoder_input_ids" not in forward_inputs(bart, batch)  # its head reads the decoder at the input's eos
    given = dict(batch, decoder_input_ids=torch.ones(2, 3, dtype=torch.long))
    assert torch.equal(forward_inputs(t5, given)["decoder_input_ids"], given["decoder_input_ids"])


def test_pad_known_lets_a_decoder_classifier_without_a_pad_token_take_batches():
    model = _qwen2_cls(None)
    rows = [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}]
    batch = collate(rows, pad=0)
    with pytest.raises(ValueError, match="padding token"):
        with torch.no_grad():
            model(**forward_inputs(model, batch))
    with torch.no_grad(), pad_known(model, 0):
        both = model(**forward_inputs(model, batch)).logits
        assert model.config.pad_token_id == 0
    assert model.config.pad_token_id is None  # put back
    with torch.no_grad():  # one row at a time needs no padding: the same logits, read at each row's last token
        alone = torch.cat([model(**forward_inputs(model, collate([r], pad=0))).logits for r in rows])
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-6)
    named = _qwen2_cls(4)
    with pad_known(named, 0):
        assert named.config.pad_token_id == 4  # a model's own padding token is never replaced
