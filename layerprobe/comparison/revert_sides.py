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
from layerprobe.errors import LayerProbeError
from layerprobe.freezing.prefix_cache import no_store
from layerprobe.freezing.revert import forward_batch, revert_test, tied_outside
from layerprobe.model.batching import PROBE_BATCH_SIZE, collate, length_batches, pad_id, pad_known
from layerprobe.model.blocks import BlockRef, Blocks
from layerprobe.model.unwrap import input_device, lora_layers, unwrap
from layerprobe.snapshot.take import tokenize_probe

__all__ = ["side_revert"]


def _side_blocks(side: Side) -> Blocks:
    entries = tuple(BlockRef(e["name"], e["kind"], int(e["index"]), tuple(e["modules"])) for e in side.meta["entries"])
    return Blocks(entries, side.meta.get("stack", ""), side.meta.get("prefix", ""))


def _base_value(n: str, p: torch.Tensor, base: Side, tuned: Side, blocks: Blocks, lora: dict[str, Any]
                ) -> tuple[torch.Tensor | None, str | None]:
    """The base's value of the tuned model's prefix parameter ``n`` (or why there is none).

    A peft LoRA layer's ``base_layer.*`` is matched by its plain name; its update is reverted by a zero
    ``lora_B`` (``B·A = 0``), ``lora_A`` stays as it is; a DoRA magnitude cannot be put back.
    """
    assert base.weights is not None
    plain = n
    owner = next((path for path in lora if n.startswith(path + ".")), None)
    if owner is not None:
        rest = n[len(owner) + 1:]
        if rest.startswith(("lora_B.", "lora_embedding_B.")):
            return torch.zeros_like(p), None
        if rest.startswith(("lora_A.", "lora_embedding_A.")):
            return p.detach().clone(), None
        if not rest.startswith("base_layer."):
            return None, (f"{tuned.label}: {n!r} is an adapter parameter the revert test cannot put back "
                          "(only LoRA's lora_A/lora_B; DoRA magnitudes are not supported)")
        plain = f"{owner}.{rest[len('base_layer.'):]}"
    e = blocks.entry_of(plain)
    key = base.weights.index.get(e.name, {}).get(e.relative(blocks.canonical(plain))) if e is not None else None
    if key is None:
        return None, f"{base.label} has no weight for {plain!r} (entry {e.name if e else '?'})"
    if tuple(base.weights.shapes[key]) != tuple(p.shape):
        return None, f"{plain!r} is {tuple(base.weights.shapes[key])} in {base.label}, {tuple(p.shape)} in {tuned.label}"
    return base.weights.get(key), None


#: most probe texts the revert test runs (evenly spaced over the probe): the freeze study fit its predictors
#: on probes of 192-512 texts, and the test costs ``n_blocks + 2`` forward passes of them
MAX_REVERT_TEXTS = 512


def side_revert(base: Side, tuned: Side, texts: Sequence[str] | None, max_length: int,
                batch_size: int = PROBE_BATCH_SIZE) -> tuple[list[dict[str, Any]] | None, str | None, list[str]]:
    """``(rows, None, notes)`` — one row per prefix ``k = 0..n_blocks`` (``k``, ``agreement``, ``kl``,
    ``tv``), and what the reader must know about them (a head tied to the embeddings) — or
    ``(None, why, [])`` when the test cannot run on these sides. A LoRA adapter as the tuned side is
    reverted by zeroing the prefix's ``lora_B`` (the base weights under it are the base's already)."""
    model, tok = tuned.model, tuned.tokenizer
    if texts is None:
        return None, "no probe given", []
    if model is None or tok is None:
        return None, f"{tuned.label} is not a model that can run (a weights file or a snapshot)", []
    if base.weights is None:
        return None, f"{base.label} holds no weights", []
    model = unwrap(model)
    blocks = _side_blocks(tuned)
    texts = list(texts)
    if len(texts) > MAX_REVERT_TEXTS:
        texts = [texts[round(i * (len(texts) - 1) / (MAX_REVERT_TEXTS - 1))] for i in range(MAX_REVERT_TEXTS)]
    examples, _ = tokenize_probe(tok, texts, max_length)
    device = input_device(model)
    pad = pad_id(tok)
    batches = length_batches(examples, batch_size, pad, device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), no_store():
            out = forward_batch(model, collate(examples[:1], pad, device))
    finally:
        model.train(was)
    if getattr(out, "logits", None) is None:
        who = type(model).__name__ if tuned.label == type(model).__name__ else f"{tuned.label} ({type(model).__name__})"
        return None, f"{who} gives no logits (no output head)", []
    lora = lora_layers(model)
    state: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        if blocks.entry_of(n) is None:
            continue
        value, why = _base_value(n, p, base, tuned, blocks, lora)
        if value is None:
            return None, why, []
        state[n] = value
    notes = []
    tied = tied_outside(model, state)
    if tied:
        n, others = next(iter(tied.items()))
        notes.append(f"revert test: {n} is tied to {', '.join(others)} (one tensor): reverting the prefix reverts "
                     "it too, as freezing the prefix freezes it")
    try:
        with no_store(), pad_known(model, pad):
            rows = revert_test(model, state, batches, blocks=blocks)
    except LayerProbeError as exc:  # non-finite outputs, too many reference values: said, not a crash of the default
        return None, str(exc).removeprefix("revert test: "), []
    return [{k: v for k, v in r.items() if k != "freeze"} for r in rows], None, notes
