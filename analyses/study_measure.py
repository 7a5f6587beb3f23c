"""Measurements the freeze study records to find what predicts the cost of freezing a bottom prefix.

Each is a candidate input of the freeze rule (``docs/freeze_study.md``, "Predictors"):

* :class:`GradNormRecorder` — per entry, the L1 and L2 norms of the gradient accumulated between
  checks (AutoFreeze's signal), and the parameter norm at the start (for ``‖g‖ / ‖θ‖``).
* :func:`revert_test` (the library's :func:`layerprobe.freezing.revert.revert_test` on texts) — the tuned model with its embeddings + ``k`` bottom blocks put back to the
  base weights: agreement of its predictions with the tuned model's and the mean KL divergence of
  its output distribution from the tuned one on the probe texts (label-free), and its accuracy on a
  labelled set. It asks how much the tuned model relies on the prefix's change.
* :func:`relative_drift` — ``‖θ − θ₀‖ / ‖θ₀‖`` per entry.
* :func:`reference_step_cpu` — the CPU time of one full fine-tuning step (nothing frozen) on the run's
  own first batch, timed in the run's process just before it trains: the unit its training CPU time is
  read in, so that savings compare runs made under different load or on different machines (on a shared
  2-core box a step's CPU time was seen to double under load).
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

from layerprobe.freezing.revert import revert_test as lp_revert
from layerprobe.model.batching import collate, encode, pad_id
from layerprobe.model.blocks import Blocks


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
    window) and starts a new one. :meth:`close` removes the hooks. :attr:`cpu_seconds` is the CPU time
    spent in the hooks (measurement, not training: the study subtracts it from the run's training CPU —
    at TREC's short sequences it was a third of a step).
    """

    def __init__(self, model: nn.Module, blocks: Blocks) -> None:
        self.names = list(blocks.names)
        params = entry_parameters(model, blocks)
        n = len(self.names)
        self._l1 = torch.zeros(n, dtype=torch.float64)
        self._sq = torch.zeros(n, dtype=torch.float64)
        self._steps = 0
        self._last_step = 0
        self.cpu_seconds = 0.0
        self.param_norm = [math.sqrt(sum(float(p.detach().double().pow(2).sum()) for _, p in params[name]))
                           for name in self.names]
        self.rows: list[dict] = []
        self._handles = []
        for i, name in enumerate(self.names):
            for _, p in params[name]:
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._hook(i)))

    def _hook(self, i: int):
        import time

        def add(p: torch.Tensor) -> None:
            g = p.grad
            if g is not None:
                c = time.process_time()
                g = g.detach()
                self._l1[i] += float(g.abs().sum(dtype=torch.float64))
                self._sq[i] += float(g.pow(2).sum(dtype=torch.float64))
                self.cpu_seconds += time.process_time() - c
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


def batches_of(tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64) -> tuple[list[dict], list[int]]:
    """The texts tokenized and collated in batches of similar length, and the order they were put in."""
    data = encode(tokenizer, texts, max_length)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    pad = pad_id(tokenizer)
    return [collate([data[j] for j in order[i: i + batch_size]], pad) for i in range(0, len(order), batch_size)], order


def relative_drift(model: nn.Module, base_state: dict[str, torch.Tensor], blocks: Blocks) -> dict[str, float]:
    """``‖θ − θ₀‖ / ‖θ₀‖`` per entry (float64)."""
    out = {}
    for name, params in entry_parameters(model, blocks).items():
        num = sum(float((p.detach().double() - base_state[n].double()).pow(2).sum()) for n, p in params)
        den = sum(float(base_state[n].double().pow(2).sum()) for n, _ in params)
        out[name] = math.sqrt(num / den) if den > 0 else float("nan")
    return out


def revert_test(model: nn.Module, base_state: dict[str, torch.Tensor], blocks: Blocks, tokenizer,
                probe_texts: Sequence[str], max_length: int, ks: Sequence[int],
                dev_texts: Sequence[str] | None = None, dev_labels: Sequence[int] | None = None) -> list[dict]:
    """:func:`layerprobe.freezing.revert.revert_test` on the probe texts (label-free) and, where given, on a
    labelled dev set: one dict per ``k`` with probe ``agreement``/``kl``/``tv`` and ``dev_accuracy``,
    ``dev_accuracy_tuned``, ``dev_agreement``, ``dev_kl``."""
    probe, _ = batches_of(tokenizer, probe_texts, max_length)
    rows = [{k: v for k, v in r.items() if k != "freeze"}
            for r in lp_revert(model, base_state, probe, ks=list(ks), blocks=blocks)]
    if dev_texts is not None and dev_labels is not None:
        dev, order = batches_of(tokenizer, dev_texts, max_length)
        y = torch.as_tensor([int(dev_labels[i]) for i in order])
        for row, d in zip(rows, lp_revert(model, base_state, dev, ks=list(ks), labels=y, blocks=blocks)):
            row.update(dev_accuracy=d["accuracy"], dev_accuracy_tuned=d["accuracy_tuned"],
                       dev_agreement=d["agreement"], dev_kl=d["kl"])
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


def reference_step_cpu(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int,
                       batch_size: int, lr: float, steps: int = 3) -> float:
    """Median CPU seconds (this process, its torch threads) of one full fine-tuning step — forward,
    backward, AdamW step — of a deep copy of ``model`` with every parameter trainable, on the first
    ``batch_size`` texts; one untimed warm-up step first. ``model`` itself is not changed."""
    import copy
    import statistics
    import time

    m = copy.deepcopy(model).train()
    for p in m.parameters():
        p.requires_grad_(True)
    n = min(batch_size, len(texts))
    batch = collate(encode(tokenizer, list(texts[:n]), max_length), pad_id(tokenizer))
    y = torch.tensor([int(v) for v in labels[:n]])
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    times = []
    for i in range(steps + 1):
        c = time.process_time()
        m(**batch, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.process_time() - c)
    del m, opt
    return float(statistics.median(times))
