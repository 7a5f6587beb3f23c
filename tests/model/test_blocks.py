"""find_blocks: one generic rule across architectures, bare and with a task head."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from layerprobe import find_blocks
from layerprobe.model.blocks import blocks_from_names
from layerprobe.errors import LayerProbeError

KW = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37, vocab_size=99)


def make(arch: str, head: bool):
    torch.manual_seed(0)
    if arch == "bert":
        cfg, bare, task = T.BertConfig(**KW), T.BertModel, T.BertForSequenceClassification
    elif arch == "roberta":
        cfg, bare, task = T.RobertaConfig(**KW), T.RobertaModel, T.RobertaForSequenceClassification
    elif arch == "distilbert":
        cfg = T.DistilBertConfig(dim=32, n_layers=3, n_heads=2, hidden_dim=37, vocab_size=99)
        bare, task = T.DistilBertModel, T.DistilBertForSequenceClassification
    elif arch == "electra":
        cfg, bare, task = T.ElectraConfig(embedding_size=16, **KW), T.ElectraModel, T.ElectraForSequenceClassification
    elif arch == "deberta":
        cfg = T.DebertaV2Config(relative_attention=True, position_buckets=8, **KW)
        bare, task = T.DebertaV2Model, T.DebertaV2ForSequenceClassification
    elif arch == "gpt2":
        cfg = T.GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=99, bos_token_id=0, eos_token_id=0)
        bare, task = T.GPT2Model, T.GPT2LMHeadModel
    elif arch == "llama":
        cfg, bare, task = T.LlamaConfig(num_key_value_heads=2, **KW), T.LlamaModel, T.LlamaForCausalLM
    elif arch == "vit":
        cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                          image_size=16, patch_size=4)
        bare, task = T.ViTModel, T.ViTForImageClassification
    else:
        raise KeyError(arch)
    return (task if head else bare)(cfg).eval()


ARCHS = ["bert", "roberta", "distilbert", "electra", "deberta", "gpt2", "llama", "vit"]
EMBEDDINGS = {
    "bert": ("embeddings",), "roberta": ("embeddings",), "distilbert": ("embeddings",),
    "electra": ("embeddings", "embeddings_project"), "gpt2": ("wte", "wpe"), "llama": ("embed_tokens",),
    "vit": ("embeddings",),
}


@pytest.mark.parametrize("head", [False, True], ids=["bare", "head"])
@pytest.mark.parametrize("arch", ARCHS)
def test_find_blocks_generic(arch, head):
    model = make(arch, head)
    b = find_blocks(model)
    assert b.names == ["embeddings", "block.0", "block.1", "block.2"]
    assert [e.index for e in b] == [-1, 0, 1, 2]
    if arch in EMBEDDINGS:
        assert b.entries[0].modules == EMBEDDINGS[arch]
    # every parameter is assigned exactly once; blocks hold equal parameter counts
    names = [n for n, _ in model.named_parameters()]
    groups = b.group(names)
    assert sorted(sum(groups.values(), [])) == sorted(names)
    sizes = {sum(dict(model.named_parameters())[n].numel() for n in groups[f"block.{i}"]) for i in range(3)}
    assert len(sizes) == 1 and sizes.pop() > 0
    # the name-only rule (state dict without a model) agrees with the module rule
    assert blocks_from_names(names) == b


@pytest.mark.parametrize("arch", ARCHS)
def test_bare_and_head_models_share_canonical_names(arch):
    bare, task = find_blocks(make(arch, False)), find_blocks(make(arch, True))
    assert [e.modules for e in bare.blocks] == [e.modules for e in task.blocks]
    assert bare.stack == task.stack


def test_deberta_relative_embeddings_count_as_embeddings():
    b = find_blocks(make("deberta", False))
    assert b.entries[0].modules == ("embeddings", "encoder.rel_embeddings")


def test_override_by_pattern():
    m = make("bert", False)
    b = find_blocks(m, blocks="encoder.layer.*", embeddings="embeddings.word_embeddings")
    assert b.names == ["embeddings", "block.0", "block.1", "block.2"]
    assert b.entries[0].modules == ("embeddings.word_embeddings",)
    # regex form, and ordering by numeric suffix
    b2 = find_blocks(m, blocks=r"encoder\.layer\.\d+")
    assert [e.modules[0] for e in b2.blocks] == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    with pytest.raises(LayerProbeError, match="matches no module"):
        find_blocks(m, blocks="decoder.*")


def test_more_than_ten_blocks_stay_in_numeric_order():
    torch.manual_seed(0)
    m = T.BertModel(T.BertConfig(**{**KW, "num_hidden_layers": 12}))
    b = find_blocks(m, blocks="encoder.layer.*")
    assert [e.modules[0] for e in b.blocks][9:] == ["encoder.layer.9", "encoder.layer.10", "encoder.layer.11"]


def test_no_stack_is_a_clear_error():
    with pytest.raises(LayerProbeError, match="no repeated block stack"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(LayerProbeError, match="no repeated block stack"):
        blocks_from_names(["a.weight", "b.bias"])


def test_other_model_with_repeated_stack_works_without_code_change():
    torch.manual_seed(0)
    m = T.T5EncoderModel(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=2, vocab_size=99))
    b = find_blocks(m)
    assert b.names == ["embeddings", "block.0", "block.1"]
    assert b.stack == "encoder.block"


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_encoder_decoder_blocks_are_the_encoders_from_the_model_and_from_the_names(arch):
    """The decoder's stack (cross-attention: more parameters) is not the block stack; the model's and the
    state dict's names give the same entries, and no decoder embedding (BART's decoder positions, T5's
    decoder relative bias) sits in the embeddings entry."""
    import transformers as T

    torch.manual_seed(0)
    if arch == "bart":
        m = T.BartForSequenceClassification(T.BartConfig(
            d_model=16, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=24, decoder_ffn_dim=24, vocab_size=50, max_position_embeddings=32))
    else:
        m = T.T5ForConditionalGeneration(T.T5Config(d_model=16, d_kv=8, d_ff=24, num_layers=3, num_heads=2,
                                                    vocab_size=50))
    b = find_blocks(m)
    assert b.stack in ("encoder.layers", "encoder.block") and len(b.blocks) == 3
    names = [n for n, _ in m.named_parameters()]
    groups = b.group(names)
    assert not any(".decoder." in "." + n for e, ns in groups.items() if e != "other" for n in ns)
    assert any(".decoder." in "." + n for n in groups["other"])
    saved = list(m.state_dict())  # the names a weights file holds (a tied embedding under one of its names)
    from_names = blocks_from_names(saved)
    assert from_names.names == b.names and from_names.stack == b.stack
    assert from_names.group(saved) == b.group(saved)
