"""Measurements the freeze study records to find what predicts the cost of freezing a bottom prefix.

Each is a candidate input of the freeze rule (``docs/freeze_study.md``, "Predictors"):

* :class:`GradNormRecorder` — per entry, the L1 and L2 norms of the gradient accumulated between
  checks (AutoFreeze's signal), and the parameter norm at the start (for ``‖g‖ / ‖θ‖``).
* :func:`revert_test` — the tuned model with its embeddings + ``k`` bottom blocks put back to the
  base weights: agreement of its predictions with the tuned model's and the mean KL divergence of
  its output distribution from the tuned one on the probe texts (label-free), and its accuracy on a
  labelled set. It asks how much the tuned model relies on the prefix's change.
* :func:`relative_drift` — ``‖θ − θ₀‖ / ‖θ₀‖`` per entry.
* :func:`linear_probe` — how well each entry's output of the **base** model already separates the
  classes: a multinomial logistic regression on mean-pooled block outputs (train split), accuracy on
  dev. Needs labels, no training of the model.

All numerics in float64 on CPU; nothing here changes the model (its weights are restored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from layerprobe.batching import collate, encode, pad_id
from layerprobe.blocks import Blocks
from layerprobe.freeze import bottom_prefix, parameter_names


def entry_parameters(model: nn.Module, blocks: Blocks) -> dict[str, list[tuple[str, nn.Parameter]]]:
    out: dict[str, list[tuple[str, nn.Parameter]]] = {n: [] for n in blocks.names}
    for n, p in model.named_parameters():
        e = blocks.entry_of(n)
        if e is not None:
            out[e.name].append((n, p))
    return out


class GradNormRecorder:
    """Per-entry gradient norms accumulated over the optimizer steps between two :meth:`check` calls.

    A post-accumulate-grad hook on every parameter of every entry adds ``Σ|g|`` and ``Σg²`` of the
    step's gradient; :meth:`check` stores the window (L1 sum, L2 of the summed squares, steps in the
    window) and starts a new one. :meth:`close` removes the hooks.
    """

    def __init__(self, model: nn.Module, blocks: Blocks) -> None:
        self.names = list(blocks.names)
        params = entry_parameters(model, blocks)
        n = len(self.names)
        self._l1 = torch.zeros(n, dtype=torch.float64)
        self._sq = torch.zeros(n, dtype=torch.float64)
        self._steps = 0
        self._last_step = 0
        self.param_norm = [math.sqrt(sum(float(p.detach().double().pow(2).sum()) for _, p in params[name]))
                           for name in self.names]
        self.rows: list[dict] = []
        self._handles = []
        for i, name in enumerate(self.names):
            for _, p in params[name]:
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._hook(i)))

    def _hook(self, i: int):
        def add(p: torch.Tensor) -> None:
            g = p.grad
            if g is not None:
                g = g.detach()
                self._l1[i] += float(g.abs().sum(dtype=torch.float64))
                self._sq[i] += float(g.pow(2).sum(dtype=torch.float64))
        return add

    def check(self, step: int) -> None:
        self.rows.append({"step": int(step), "steps_in_window": int(step - self._last_step),
                          "l1": self._l1.tolist(), "l2": self._sq.sqrt().tolist()})
        self._l1.zero_()
        self._sq.zero_()
        self._last_step = step

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def to_dict(self) -> dict:
        return {"names": self.names, "param_norm": self.param_norm, "windows": self.rows}


@torch.no_grad()
def logits(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Output logits per text, float64 (eval mode, the model's mode restored)."""
    was = model.training
    model.eval()
    data = encode(tokenizer, texts, max_length)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    pad = pad_id(tokenizer)
    out: torch.Tensor | None = None
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        z = model(**collate([data[j] for j in idx], pad)).logits.double()
        if out is None:
            out = torch.empty(len(data), z.shape[-1], dtype=torch.float64)
        out[idx] = z
    model.train(was)
    assert out is not None
    return out


def output_divergence(ref: torch.Tensor, other: torch.Tensor) -> dict:
    """Agreement of the argmax, mean KL(p_ref ‖ p_other) and mean total variation of two logit sets.

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> d = output_divergence(z, z); (d["agreement"], d["kl"], d["tv"])
    (1.0, 0.0, 0.0)
    """
    lp, lq = ref.log_softmax(-1), other.log_softmax(-1)
    p = lp.exp()
    kl = (p * (lp - lq)).sum(-1)
    tv = 0.5 * (p - lq.exp()).abs().sum(-1)
    return {"agreement": float((ref.argmax(-1) == other.argmax(-1)).double().mean()),
            "kl": float(kl.clamp_min(0).mean()), "tv": float(tv.mean())}


def relative_drift(model: nn.Module, base_state: dict[str, torch.Tensor], blocks: Blocks) -> dict[str, float]:
    """``‖θ − θ₀‖ / ‖θ₀‖`` per entry (float64)."""
    out = {}
    for name, params in entry_parameters(model, blocks).items():
        num = sum(float((p.detach().double() - base_state[n].double()).pow(2).sum()) for n, p in params)
        den = sum(float(base_state[n].double().pow(2).sum()) for n, _ in params)
        out[name] = math.sqrt(num / den) if den > 0 else float("nan")
    return out


@torch.no_grad()
def revert_test(model: nn.Module, base_state: dict[str, torch.Tensor], blocks: Blocks, tokenizer,
                probe_texts: Sequence[str], max_length: int, ks: Sequence[int],
                dev_texts: Sequence[str] | None = None, dev_labels: Sequence[int] | None = None) -> list[dict]:
    """For each ``k`` in ``ks``: the model with embeddings + ``k`` bottom blocks reverted to ``base_state``.

    Returns one dict per ``k``: ``k``, probe ``agreement``/``kl``/``tv`` against the unreverted model,
    and where labels are given ``dev_accuracy`` (reverted), ``dev_accuracy_tuned`` and dev
    agreement/kl. The model's weights are restored before returning (also on error).
    """
    ref_probe = logits(model, tokenizer, probe_texts, max_length)
    ref_dev = logits(model, tokenizer, dev_texts, max_length) if dev_texts is not None else None
    params = dict(model.named_parameters())
    rows = []
    for k in ks:
        names = parameter_names(model, bottom_prefix(blocks, k, embeddings=True), blocks)
        saved = {n: params[n].detach().clone() for n in names}
        try:
            for n in names:
                params[n].copy_(base_state[n])
            row = {"k": int(k), **output_divergence(ref_probe, logits(model, tokenizer, probe_texts, max_length))}
            if ref_dev is not None and dev_labels is not None:
                z = logits(model, tokenizer, dev_texts, max_length)
                y = torch.as_tensor(list(dev_labels))
                d = output_divergence(ref_dev, z)
                row.update(dev_accuracy=float((z.argmax(-1) == y).double().mean()),
                           dev_accuracy_tuned=float((ref_dev.argmax(-1) == y).double().mean()),
                           dev_agreement=d["agreement"], dev_kl=d["kl"])
        finally:
            for n in names:
                params[n].copy_(saved[n])
        rows.append(row)
    return rows


@torch.no_grad()
def pooled_outputs(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64
                   ) -> list[np.ndarray]:
    """Mean-pooled (padding excluded) hidden states per entry (embeddings, block 0, ...), float64 arrays."""
    was = model.training
    model.eval()
    data = encode(tokenizer, texts, max_length)
    pad = pad_id(tokenizer)
    chunks: list[list[np.ndarray]] | None = None
    for i in range(0, len(data), batch_size):
        batch = collate(data[i: i + batch_size], pad)
        hs = model(**batch, output_hidden_states=True).hidden_states
        m = batch["attention_mask"].unsqueeze(-1).double()
        pooled = [((h.double() * m).sum(1) / m.sum(1)).numpy() for h in hs]
        if chunks is None:
            chunks = [[] for _ in pooled]
        for c, p in zip(chunks, pooled):
            c.append(p)
    model.train(was)
    assert chunks is not None
    return [np.concatenate(c) for c in chunks]


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mu, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    return torch.from_numpy((train - mu) / sd), torch.from_numpy((test - mu) / sd)


def logistic_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                      l2: float = 1e-2, iters: int = 200) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression (L-BFGS, float64, standardised).

    >>> rng = np.random.default_rng(0); y = rng.integers(0, 2, 200); x = rng.normal(size=(200, 3)); x[:, 0] += 4 * y
    >>> logistic_accuracy(x[:100], y[:100], x[100:], y[100:]) > 0.95
    True
    """
    xt, xs = _standardise(np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64))
    yt = torch.as_tensor(np.array(y_train), dtype=torch.long)
    c = int(max(int(yt.max()), int(np.max(y_test))) + 1)
    w = torch.zeros(xt.shape[1], c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(xt @ w + b, yt) + l2 * w.pow(2).sum() / 2
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (xs @ w + b).argmax(-1).numpy()
    return float((pred == np.asarray(y_test)).mean())


def linear_probe(model: nn.Module, tokenizer, train_texts, train_labels, test_texts, test_labels, max_length: int,
                 names: Sequence[str]) -> dict[str, float]:
    """Per entry of the (base) model: accuracy of a linear classifier on its mean-pooled output."""
    tr = pooled_outputs(model, tokenizer, train_texts, max_length)
    te = pooled_outputs(model, tokenizer, test_texts, max_length)
    if len(tr) != len(names):
        raise ValueError(f"{len(tr)} hidden states for {len(names)} entries")
    return {n: logistic_accuracy(a, np.asarray(train_labels), b, np.asarray(test_labels))
            for n, a, b in zip(names, tr, te)}
