"""The revert test between two resolved sides: the tuned model with each bottom prefix put back to the
base side's weights, run on the probe (:func:`layerprobe.freezing.revert.revert_test`).

It needs the tuned side as a model that gives ``logits`` (its output head) and the base side's weights;
every prefix parameter of the tuned model must have a base tensor of the same shape, matched by entry
and name relative to the entry (so a base loaded without the head — ``encoder.layer.0...`` — matches a
classifier's ``bert.encoder.layer.0...``). When it cannot run, :func:`side_revert` says why instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from layerprobe.comparison.sides import Side
from layerprobe.freezing.prefix_cache import no_store
from layerprobe.freezing.revert import revert_test
from layerprobe.model.batching import collate, pad_id
from layerprobe.model.blocks import BlockRef, Blocks
from layerprobe.model.unwrap import unwrap
from layerprobe.snapshot.take import tokenize_probe

__all__ = ["side_revert"]


def _side_blocks(side: Side) -> Blocks:
    entries = tuple(BlockRef(e["name"], e["kind"], int(e["index"]), tuple(e["modules"])) for e in side.meta["entries"])
    return Blocks(entries, side.meta.get("stack", ""), side.meta.get("prefix", ""))


def side_revert(base: Side, tuned: Side, texts: Sequence[str] | None, max_length: int,
                batch_size: int = 64) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``(rows, None)`` — one row per prefix ``k = 0..n_blocks`` (``k``, ``agreement``, ``kl``, ``tv``) —
    or ``(None, why)`` when the test cannot run on these sides."""
    model, tok = tuned.model, tuned.tokenizer
    if texts is None:
        return None, "no probe given"
    if model is None or tok is None:
        return None, f"{tuned.label} is not a model that can run (a weights file or a snapshot)"
    if base.weights is None:
        return None, f"{base.label} holds no weights"
    model = unwrap(model)
    blocks = _side_blocks(tuned)
    examples, _ = tokenize_probe(tok, list(texts), max_length)
    device = next((p.device for p in model.parameters()), None)
    pad = pad_id(tok)
    batches = [collate(examples[i:i + batch_size], pad, device) for i in range(0, len(examples), batch_size)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), no_store():
            out = model(**collate(examples[:1], pad, device))
    finally:
        model.train(was)
    if getattr(out, "logits", None) is None:
        who = type(model).__name__ if tuned.label == type(model).__name__ else f"{tuned.label} ({type(model).__name__})"
        return None, f"{who} gives no logits (no output head)"
    state: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        e = blocks.entry_of(n)
        if e is None:
            continue
        key = base.weights.index.get(e.name, {}).get(e.relative(blocks.canonical(n)))
        if key is None:
            return None, f"{base.label} has no weight for {n!r} (entry {e.name})"
        if tuple(base.weights.shapes[key]) != tuple(p.shape):
            return None, f"{n!r} is {tuple(base.weights.shapes[key])} in {base.label}, {tuple(p.shape)} in {tuned.label}"
        state[n] = base.weights.get(key)
    with no_store():
        rows = revert_test(model, state, batches, blocks=blocks)
    return [{k: v for k, v in r.items() if k != "freeze"} for r in rows], None
