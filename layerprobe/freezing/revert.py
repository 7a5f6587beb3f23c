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

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.apply import bottom_prefix, parameter_names
from layerprobe.freezing.prefix_rows import no_cache
from layerprobe.freezing.revert_shortcut import RevertShortcut, StackOutputs
from layerprobe.model.batching import forward_inputs
from layerprobe.model.blocks import Blocks, block_modules, find_blocks

__all__ = ["MAX_REVERT_OUTPUTS", "forward_batch", "last_token_positions", "output_divergence", "revert_test",
           "tied_outside"]


#: the most values of the tuned model's reference outputs (probe texts x classes, or x vocabulary for a
#: causal LM) the revert test keeps: 2**28, 1 GiB in float32 (e.g. 5,000 texts x a 50,257-token vocabulary)
MAX_REVERT_OUTPUTS = 1 << 28


def _divergence_sums(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per-set sums ``[agreeing rows, KL, TV]`` of two ``(n, classes)`` logit sets, in float64."""
    lp, lq = ref.double().log_softmax(-1), other.double().log_softmax(-1)
    p = lp.exp()
    kl = (p * (lp - lq)).sum(-1).clamp_min(0.0)
    tv = 0.5 * (p - lq.exp()).abs().sum(-1)
    agree = (ref.argmax(-1) == other.argmax(-1)).double()
    return torch.stack([agree.sum(), kl.sum(), tv.sum()])


def output_divergence(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Agreement of the argmax, mean KL(p_ref ‖ p_other) and mean total variation of two ``(n, classes)`` logit sets.

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> d = output_divergence(z, z.flip(-1)); (d["agreement"], round(d["tv"], 4))   # (tanh(1) + tanh(1/2)) / 2
    (0.0, 0.6119)
    """
    if ref.shape != other.shape or ref.dim() != 2 or ref.shape[0] == 0:
        raise LayerProbeError(f"output_divergence needs two (n, classes) logit sets, got {tuple(ref.shape)} and "
                              f"{tuple(other.shape)}")
    agree, kl, tv = (_divergence_sums(ref, other) / ref.shape[0]).tolist()
    return {"agreement": agree, "kl": kl, "tv": tv}


def last_token_positions(mask: torch.Tensor | None, width: int) -> torch.Tensor:
    """The position of each row's last real token (``attention_mask`` 1), whatever side was padded.

    >>> last_token_positions(torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]]), 3).tolist()
    [1, 2, 2]
    """
    if mask is None:
        return torch.full((1,), width - 1, dtype=torch.long)
    real = mask.bool()
    if not bool(real.any(-1).all()):
        raise LayerProbeError("revert test: a row of the inputs has no real token (its attention_mask is all 0)")
    return (real.long() * torch.arange(real.shape[-1], device=real.device)).argmax(-1)


def forward_batch(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Any:
    """``model(**batch)`` as a probe pass runs it (:func:`~layerprobe.model.batching.forward_inputs`)."""
    return model(**forward_inputs(model, batch))


@torch.no_grad()
def _logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One batch's output distribution per example, ``(rows, classes)`` in float32 on the CPU; a causal LM's
    ``(rows, positions, vocab)`` logits give the next-token distribution after each row's last real token."""
    out = forward_batch(model, batch)
    z = out.logits if hasattr(out, "logits") else out[0]
    if z.dim() == 3 and z.shape[1] == 1:  # one position (an encoder-decoder's first decoded token)
        z = z[:, 0]
    elif z.dim() == 3:
        last = last_token_positions(batch.get("attention_mask"), z.shape[1]).to(z.device)
        z = z[torch.arange(z.shape[0], device=z.device), last.expand(z.shape[0])]
    if z.dim() != 2:
        raise LayerProbeError(f"revert test: {type(model).__name__} gives logits of shape {tuple(z.shape)}, expected "
                              "(examples, classes) or a causal LM's (examples, positions, vocabulary)")
    z = z.detach().cpu()
    return z if z.dtype == torch.float64 else z.float()


def tied_outside(model: nn.Module, names: Iterable[str]) -> dict[str, list[str]]:
    """Parameters among ``names`` that are the very tensor of a parameter outside them, e.g. GPT-2's
    ``transformer.wte.weight`` and ``lm_head.weight`` (tied embeddings): ``{name: [other names]}``."""
    wanted = set(names)
    by_tensor: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), []).append(n)
    out: dict[str, list[str]] = {}
    for group in by_tensor.values():
        inside = [n for n in group if n in wanted]
        outside = [n for n in group if n not in wanted]
        for n in inside:
            if outside:
                out[n] = outside
    return out


@torch.no_grad()
def revert_test(tuned: nn.Module, base_state: Mapping[str, torch.Tensor], batches: Iterable[Mapping[str, torch.Tensor]],
                ks: Iterable[int] | None = None, labels: torch.Tensor | None = None,
                blocks: Blocks | None = None, shortcut: RevertShortcut | None = None) -> list[dict[str, Any]]:
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
        shortcut: whether the reverted prefixes may be served from the whole-stack pass
            (:mod:`layerprobe.freezing.revert_shortcut`); pass the same one to every test of a model so
            that the check against the long way runs once (a new one per call if None).

    Returns:
        One dict per ``k``: ``k``, ``freeze`` (entry names), ``agreement``, ``kl``, ``tv`` (and the accuracies).

    A causal LM's logits ``(examples, positions, vocabulary)`` are read at each example's last real token
    (the last 1 of ``attention_mask``: left- and right-padded batches give the same rows). Tied weights are
    one tensor: reverting GPT-2's embeddings reverts its ``lm_head`` too (:func:`tied_outside` names them),
    exactly as freezing the embeddings freezes the head. The tuned model's reference outputs are kept in
    float32 on the CPU, at most :data:`MAX_REVERT_OUTPUTS` values (examples x classes or vocabulary); the
    statistics are float64, summed batch by batch.

    Raises:
        LayerProbeError: the model has no logits, a prefix parameter is missing from ``base_state`` or has
            another shape, an input row has no real token, the outputs are not finite (tuned, or with a
            prefix reverted), or the reference outputs would exceed :data:`MAX_REVERT_OUTPUTS`.
    """
    blocks = blocks if blocks is not None else find_blocks(tuned)
    batches = list(batches)
    if not batches:
        raise LayerProbeError("revert_test needs at least one batch of inputs")
    ks = list(range(len(blocks.blocks) + 1)) if ks is None else list(ks)
    y = None if labels is None else torch.as_tensor(labels).reshape(-1).cpu()
    was = tuned.training
    tuned.eval()
    params = dict(tuned.named_parameters())
    shortcut = shortcut if shortcut is not None else RevertShortcut()
    with no_cache():  # a prefix cache would serve the tuned prefix's stored outputs for reverted weights
        return _revert_rows(tuned, base_state, batches, ks, y, blocks, params, was, shortcut)


def _reverted_logits(tuned: nn.Module, batches: list, k: int, n: int, stack: StackOutputs | None,
                     names: list[str]) -> Iterator[torch.Tensor]:
    """The reverted model's outputs batch by batch: blocks ``0..k-1`` served from ``stack`` where it may
    (``1 <= k < n``), the whole-stack pass (``k = n``) captured into it."""
    if stack is None:
        for b in batches:
            yield _logits(tuned, b)
        return
    serve = stack.usable and 1 <= k < n
    keep = k == n and stack.shortcut.off is None
    for i, b in enumerate(batches):
        if serve and stack.usable:
            with stack.serving(k, i):
                z = _logits(tuned, b)
            if not stack.shortcut.checked:  # its first use: the long way too, on this batch
                long = _logits(tuned, b)
                if z.shape == long.shape and torch.allclose(z, long, rtol=1e-4, atol=1e-5):
                    stack.shortcut.checked = True
                else:
                    stack.shortcut.turn_off(f"with {', '.join(names)} reverted the served pass differs from "
                                            "the computed one")
                    z = long
        elif keep:
            with stack.capture():
                z = _logits(tuned, b)
        else:
            z = _logits(tuned, b)
        yield z


class _NotFinite(LayerProbeError):
    """The reverted model's outputs are not finite."""


def _prefix_row(tuned: nn.Module, base_state: Mapping[str, torch.Tensor], batches: list, ref: list[torch.Tensor],
                k: int, y: torch.Tensor | None, blocks: Blocks, params: dict[str, nn.Parameter],
                stack: StackOutputs | None) -> dict[str, Any]:
    """The revert test's row of one prefix (its weights put back, the outputs compared, the weights restored)."""
    names = bottom_prefix(blocks, k, embeddings=True)
    pnames = parameter_names(tuned, names, blocks)
    for p in pnames:
        if p not in base_state:
            raise LayerProbeError(f"revert test: the base weights have no {p!r}")
        if tuple(base_state[p].shape) != tuple(params[p].shape):
            raise LayerProbeError(f"revert test: {p!r} is {tuple(base_state[p].shape)} in the base, "
                                  f"{tuple(params[p].shape)} in the tuned model")
    saved = {p: params[p].detach().clone() for p in pnames}
    sums = torch.zeros(3, dtype=torch.float64)
    correct = 0.0
    at = 0
    try:
        for p in pnames:
            params[p].copy_(base_state[p])
        for r, z in zip(ref, _reverted_logits(tuned, batches, k, len(blocks.blocks), stack, names)):
            if not bool(torch.isfinite(z).all()):
                raise _NotFinite(f"revert test: with {', '.join(names)} reverted to the base weights the outputs "
                                 "are not finite (NaN/Inf): the base weights are broken or overflow in the tuned "
                                 "model's dtype")
            sums += _divergence_sums(r, z)
            if y is not None:
                correct += float((z.argmax(-1) == y[at:at + z.shape[0]]).sum())
            at += z.shape[0]
    finally:
        for p in pnames:
            params[p].copy_(saved[p])
    agree, kl, tv = (sums / at).tolist()
    row: dict[str, Any] = {"k": int(k), "freeze": names, "agreement": agree, "kl": kl, "tv": tv}
    if y is not None:
        row["accuracy"] = correct / at
        row["accuracy_tuned"] = float((torch.cat(ref).argmax(-1) == y).double().mean())
    return row


def _revert_rows(tuned: nn.Module, base_state: Mapping[str, torch.Tensor], batches: list,
                 ks: list[int], y: torch.Tensor | None, blocks: Blocks, params: dict[str, nn.Parameter],
                 was: bool, shortcut: RevertShortcut) -> list[dict[str, Any]]:
    try:
        ref: list[torch.Tensor] = []
        n_rows = sum(int(next(iter(b.values())).shape[0]) for b in batches)
        for b in batches:
            ref.append(_logits(tuned, b))
            if len(ref) == 1 and n_rows * ref[0].shape[-1] > MAX_REVERT_OUTPUTS:
                raise LayerProbeError(
                    f"revert test: the tuned model's outputs on {n_rows:,} probe texts hold {n_rows:,} x "
                    f"{ref[0].shape[-1]:,} values ({n_rows * ref[0].shape[-1] * 4 / 2 ** 30:.1f} GiB in float32), "
                    f"more than the {MAX_REVERT_OUTPUTS:,} accepted; use fewer probe texts (--max-examples)")
        ref_all = torch.cat(ref)
        if not bool(torch.isfinite(ref_all).all()):
            raise LayerProbeError("revert test: the tuned model's outputs are not finite (NaN/Inf) on the probe: "
                                  "the weights are broken or overflow in their dtype")
        if y is not None and y.shape[0] != ref_all.shape[0]:
            raise LayerProbeError(f"revert test: {y.shape[0]} labels for {ref_all.shape[0]} examples")
        n = len(blocks.blocks)
        stack = None
        if shortcut.off is None and n in ks and any(1 <= k < n for k in ks):
            mods = block_modules(tuned, blocks)
            if all(len(mods[e.name]) == 1 for e in blocks.blocks):
                stack = StackOutputs([mods[e.name][0] for e in blocks.blocks], shortcut)
        by_k: dict[int, dict[str, Any]] = {}
        if stack is not None:
            try:  # the whole stack reverted first: its block outputs stand in for every smaller prefix's
                for k in sorted(set(ks), key=lambda k: (k != n, k)):
                    by_k[k] = _prefix_row(tuned, base_state, batches, ref, k, y, blocks, params, stack)
            except _NotFinite:  # said below, of the smallest prefix that breaks, as without the shortcut
                by_k.clear()
        for k in ks:
            if k not in by_k:
                by_k[k] = _prefix_row(tuned, base_state, batches, ref, k, y, blocks, params, None)
        return [dict(by_k[k], freeze=list(by_k[k]["freeze"])) for k in ks]
    finally:
        tuned.train(was)
