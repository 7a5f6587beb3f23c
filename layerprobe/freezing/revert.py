"""The revert test: how much does a fine-tuned model rely on the change of its bottom prefix?

Put the embeddings + the bottom ``k`` blocks of the tuned model back to the base weights, run the probe
texts, and compare the outputs with the tuned model's: the share of predictions that agree and the mean
KL divergence ``KL(p_tuned ‖ p_reverted)`` of the output distributions (label-free; with labels, the
reverted model's accuracy too). A prefix whose revert leaves the outputs in place is one the task did not
need to train — the freeze study found this the input that predicts the cost of freezing
(``docs/freeze_study.md``). It needs the tuned model *with its head* and the base weights of the prefix.

The tuned model is changed in place during the test and restored before it returns (also on error);
everything runs in eval mode without gradients, in float64 for the statistics.

>>> import torch
>>> from transformers import BertConfig, BertForSequenceClassification
>>> cfg = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
...                  vocab_size=60, num_labels=2)
>>> torch.manual_seed(0) and None
>>> base = BertForSequenceClassification(cfg); tuned = BertForSequenceClassification(cfg)
>>> _ = tuned.load_state_dict(base.state_dict())
>>> batches = [{"input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]),
...             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}]
>>> rows = revert_test(tuned, base.state_dict(), batches)
>>> [(r["k"], r["agreement"], round(r["kl"], 12)) for r in rows]   # identical weights: nothing moves
[(0, 1.0, 0.0), (1, 1.0, 0.0), (2, 1.0, 0.0)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.apply import bottom_prefix, parameter_names
from layerprobe.model.blocks import Blocks, find_blocks

__all__ = ["output_divergence", "revert_test"]


def output_divergence(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Agreement of the argmax, mean KL(p_ref ‖ p_other) and mean total variation of two ``(n, classes)`` logit sets.

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> d = output_divergence(z, z.flip(-1)); (d["agreement"], round(d["tv"], 4))   # (tanh(1) + tanh(1/2)) / 2
    (0.0, 0.6119)
    """
    if ref.shape != other.shape or ref.dim() != 2 or ref.shape[0] == 0:
        raise LayerProbeError(f"output_divergence needs two (n, classes) logit sets, got {tuple(ref.shape)} and "
                              f"{tuple(other.shape)}")
    lp, lq = ref.double().log_softmax(-1), other.double().log_softmax(-1)
    p = lp.exp()
    kl = (p * (lp - lq)).sum(-1).clamp_min(0.0)
    tv = 0.5 * (p - lq.exp()).abs().sum(-1)
    return {"agreement": float((ref.argmax(-1) == other.argmax(-1)).double().mean()),
            "kl": float(kl.mean()), "tv": float(tv.mean())}


@torch.no_grad()
def _logits(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    outs = []
    for b in batches:
        out = model(**b)
        z = out.logits if hasattr(out, "logits") else out[0]
        if z.dim() == 3:  # a causal LM: the next-token distribution after the last real token
            last = b["attention_mask"].sum(1) - 1
            z = z[torch.arange(z.shape[0]), last]
        outs.append(z.double())
    return torch.cat(outs)


@torch.no_grad()
def revert_test(tuned: nn.Module, base_state: Mapping[str, torch.Tensor], batches: Iterable[Mapping[str, torch.Tensor]],
                ks: Iterable[int] | None = None, labels: torch.Tensor | None = None,
                blocks: Blocks | None = None) -> list[dict[str, Any]]:
    """For each ``k``: the tuned model with the embeddings + ``k`` bottom blocks set to ``base_state``.

    Args:
        tuned: the fine-tuned model with its output head (``*ForSequenceClassification`` or any model whose
            output has ``logits``); restored before returning.
        base_state: the base weights by the tuned model's parameter names (a ``state_dict``); only the
            prefix's parameters are read.
        batches: model inputs (``input_ids``, ``attention_mask``, ...), e.g. the probe texts collated.
        ks: the prefixes to test (default every one, ``0..n_blocks``).
        labels: optional labels of the examples, in batch order: adds ``accuracy`` and ``accuracy_tuned``.
        blocks: the tuned model's entries (found if None).

    Returns:
        One dict per ``k``: ``k``, ``freeze`` (entry names), ``agreement``, ``kl``, ``tv`` (and the accuracies).

    Raises:
        LayerProbeError: the model has no logits, a prefix parameter is missing from ``base_state`` or has
            another shape.
    """
    blocks = blocks if blocks is not None else find_blocks(tuned)
    batches = list(batches)
    if not batches:
        raise LayerProbeError("revert_test needs at least one batch of inputs")
    ks = list(range(len(blocks.blocks) + 1)) if ks is None else list(ks)
    was = tuned.training
    tuned.eval()
    params = dict(tuned.named_parameters())
    try:
        ref = _logits(tuned, batches)
        rows = []
        for k in ks:
            names = bottom_prefix(blocks, k, embeddings=True)
            pnames = parameter_names(tuned, names, blocks)
            for n in pnames:
                if n not in base_state:
                    raise LayerProbeError(f"revert test: the base weights have no {n!r}")
                if tuple(base_state[n].shape) != tuple(params[n].shape):
                    raise LayerProbeError(f"revert test: {n!r} is {tuple(base_state[n].shape)} in the base, "
                                          f"{tuple(params[n].shape)} in the tuned model")
            saved = {n: params[n].detach().clone() for n in pnames}
            try:
                for n in pnames:
                    params[n].copy_(base_state[n])
                z = _logits(tuned, batches)
            finally:
                for n in pnames:
                    params[n].copy_(saved[n])
            row: dict[str, Any] = {"k": int(k), "freeze": names, **output_divergence(ref, z)}
            if labels is not None:
                y = torch.as_tensor(labels).reshape(-1)
                row["accuracy"] = float((z.argmax(-1) == y).double().mean())
                row["accuracy_tuned"] = float((ref.argmax(-1) == y).double().mean())
            rows.append(row)
        return rows
    finally:
        tuned.train(was)
