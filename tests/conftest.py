"""Shared fixtures: tiny seeded random models and a tiny offline tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

WORDS = (
    "the a movie film was is great good bad awful boring fun plot actor story and but not very "
    "too long short funny sad best worst ever i it this that of to in with"
).split()


def make_tokenizer():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tok("good movie")["input_ids"][1] != tok.unk_token_id
    return tok


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return make_tokenizer()


def tiny_bert_config(**kw):
    from transformers import BertConfig

    base = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                vocab_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1)
    base.update(kw)
    return BertConfig(**base)


def tiny_bert(seed: int = 0, head: bool = False, **kw):
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cls = BertForSequenceClassification if head else BertModel
    return cls(tiny_bert_config(**kw)).eval()


@pytest.fixture
def bert():
    return tiny_bert(0)


@pytest.fixture(scope="session")
def texts():
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(48)]
