"""Watch fine-tuning as it happens: per-entry CKA and weight drift every N steps.

:class:`Tracker` is the engine, usable from any loop: ``start()`` before the first optimizer step,
then ``maybe_record(step)`` (or ``on_step(step, model)``, the signature of
``layerprobe.train.fine_tune(..., on_step=[...])``) after each step. Every ``every_n_steps`` steps
it runs a small probe set once through the model (:func:`layerprobe.snapshot.run_probe`, which
captures every entry in one forward pass, in eval mode with no grad, and restores the train mode)
and records, per entry (embeddings and each block, names as in ``compare``):

* ``cka_to_start`` — linear CKA of the probe representation with the one at the start
  (similarity, 1 = unchanged);
* ``cka_to_previous`` — linear CKA with the previous check (NaN at the first check);
* ``change`` — ``1 - cka_to_previous``: how much the entry changed during the last interval
  (distance, 0 = unchanged); what :class:`FreezePolicy` watches;
* ``weight_drift`` — ‖W_t − W_0‖/‖W_0‖ over the entry's parameters (distance, 0 = unchanged).
  The start weights are copied to CPU once; drift is accumulated tensor by tensor in float64
  chunks (:class:`layerprobe.metrics.drift.DriftAccumulator`), never as a second full copy;
* ``frozen`` — whether every parameter of the entry has ``requires_grad=False`` after this
  check (and after the policy's decision at it);
* ``track_seconds`` — wall time this check took (probe + CKA + drift + policy), and
  ``track_seconds_total`` — the running total, so the overhead is visible in the file.

:class:`LayerProbeCallback` wraps a Tracker as a ``transformers.TrainerCallback`` and writes
``layerprobe_trajectory.csv`` (and, with a policy, ``layerprobe_freeze_log.csv``) into
``args.output_dir`` at every check and at the end of training.

:class:`FreezePolicy` (opt-in) freezes, online, the bottom entries whose ``change`` stayed below a
threshold for ``patience`` consecutive checks — always as a bottom prefix, embeddings first, as
AutoFreeze does — and logs every decision with its numbers.

>>> import torch
>>> from transformers import BertConfig, BertModel, BertTokenizerFast
>>> torch.manual_seed(0) and None
>>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
...                          intermediate_size=20, vocab_size=50)).train()
>>> tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(
...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d"])})
>>> t = Tracker(m, tok, ["a b c", "b c d", "d a", "c c a b", "a"], every_n_steps=2, progress=False)
>>> t.start()
>>> t.to_frame()[["step", "block", "cka_to_start", "weight_drift"]].round(6).values.tolist()
[[0, 'embeddings', 1.0, 0.0], [0, 'block.0', 1.0, 0.0], [0, 'block.1', 1.0, 0.0]]
>>> m.training  # train mode restored after the probe
True
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ._atomic import atomic_write_text
from .batching import pad_id
from .blocks import Blocks, find_blocks
from .errors import LayerProbeError
from .freeze import freeze, trainable_parameters
from .metrics.cka import linear_cka
from .metrics.drift import DriftAccumulator
from .snapshot import run_probe, tokenize_probe

__all__ = [
    "COLUMNS",
    "DEFAULT_EVERY_N_STEPS",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_PROBE_SIZE",
    "FREEZE_LOG_CSV",
    "TRAJECTORY_CSV",
    "FreezePolicy",
    "LayerProbeCallback",
    "Tracker",
]

TRAJECTORY_CSV = "layerprobe_trajectory.csv"
FREEZE_LOG_CSV = "layerprobe_freeze_log.csv"

#: Columns of the trajectory table, in order.
COLUMNS = (
    "step", "block", "cka_to_start", "cka_to_previous", "change", "weight_drift", "frozen",
    "track_seconds", "track_seconds_total", "lr_sum",
)

#: Defaults chosen so that tracking costs ≤ 5% of training time on MiniLM-L6 with batch 32
#: (benchmarks/bench_tracking.py): one check measured 0.54 of a training step, so every 50 steps ≈ 1.1%.
DEFAULT_EVERY_N_STEPS = 50
DEFAULT_PROBE_SIZE = 64
DEFAULT_MAX_LENGTH = 64

#: Elements converted to float64 at a time when accumulating drift (8 MB per chunk).
_DRIFT_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Online freeze policy
# --------------------------------------------------------------------------------------------


@dataclass
class FreezePolicy:
    """Freeze a growing bottom prefix of entries that stopped changing (opt-in).

    At each check the policy reads every entry's ``change = 1 - cka_to_previous``. An entry's
    *streak* counts consecutive checks with ``change < threshold`` (reset to 0 otherwise). The
    frozen prefix then grows from the bottom (embeddings first) over the entries whose streak is
    ``≥ patience``, stopping at the first entry that does not qualify — so the frozen set is
    always a bottom prefix, never a hole in the middle. At least ``min_train_blocks`` blocks stay
    trainable. Freezing never reverses.

    Every decision for every entry is appended to :attr:`log` with its numbers (``step, block,
    change, streak, action, reason, trainable_params``).

    The threshold is per check interval, so scale it with the interval: the default 2e-3 suits
    checks every 50 steps (on MiniLM-L6 it picks the embeddings + 2 blocks after 50 steps). The
    change also shrinks as the learning rate decays, so late in a run slowed-down blocks qualify.

    Args:
        threshold: largest per-interval change (1 − CKA to the previous check) counted as "still".
        patience: consecutive still checks needed (M).
        every_n_steps: decide only at checks whose step is a multiple of this (None: every check
            of the tracker; must be a multiple of the tracker's ``every_n_steps``).
        min_train_blocks: blocks always left trainable at the top.
        embeddings: allow freezing the embeddings (they are the bottom of the prefix).

    Note: with the plain loop and the Trainer the optimizer still holds the frozen parameters,
    but with ``requires_grad=False`` they get no gradient (``grad is None`` after
    ``zero_grad(set_to_none=True)``) and ``torch.optim.AdamW`` skips them entirely — no update and
    no weight decay (checked in tests/test_freeze.py).
    """

    threshold: float = 2e-3
    patience: int = 2
    every_n_steps: int | None = None
    min_train_blocks: int = 1
    embeddings: bool = True
    log: list[dict] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    _streak: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not (self.threshold >= 0 and math.isfinite(self.threshold)):
            raise LayerProbeError(f"threshold must be a finite number ≥ 0, got {self.threshold=}")
        if self.patience < 1:
            raise LayerProbeError(f"patience must be ≥ 1, got {self.patience=}")
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise LayerProbeError(f"every_n_steps must be ≥ 1, got {self.every_n_steps=}")
        if self.min_train_blocks < 0:
            raise LayerProbeError(f"min_train_blocks must be ≥ 0, got {self.min_train_blocks=}")

    def decide(self, step: int, changes: dict[str, float], model: nn.Module, blocks: Blocks) -> list[str]:
        """Update the streaks with one check's changes, freeze the grown prefix; return new names.

        Args:
            step: the optimizer step of this check.
            changes: ``{entry: 1 - cka_to_previous}`` in model order (NaN counts as not still).
            model: the model to freeze in place.
            blocks: its entries.
        """
        if self.every_n_steps is not None and step % self.every_n_steps:
            return []
        order = [n for n in blocks.names if self.embeddings or n != "embeddings"]
        n_blocks = len(blocks.blocks)
        max_blocks = max(0, n_blocks - self.min_train_blocks)
        for name in order:
            c = changes.get(name, math.nan)
            still = name in self.frozen or (not math.isnan(c) and c < self.threshold)
            self._streak[name] = self._streak.get(name, 0) + 1 if still else 0
        new: list[str] = []
        reasons: dict[str, tuple[str, str]] = {}
        blocked_by = None
        frozen_blocks = sum(1 for n in self.frozen if n != "embeddings")
        for name in order:
            c, s = changes.get(name, math.nan), self._streak[name]
            if name in self.frozen:
                reasons[name] = ("frozen", "frozen earlier")
                continue
            if blocked_by is not None:
                reasons[name] = ("train", f"{blocked_by} below still trains (frozen set stays a bottom prefix)")
                continue
            is_block = name != "embeddings"
            if s < self.patience:
                why = (f"change {c:.3g} ≥ threshold {self.threshold:g}" if not (c < self.threshold)
                       else f"still for {s} < {self.patience} checks")
                reasons[name] = ("train", why)
                blocked_by = name
            elif is_block and frozen_blocks + 1 > max_blocks:
                reasons[name] = ("train", f"min_train_blocks={self.min_train_blocks} keeps the top trainable")
                blocked_by = name
            else:
                new.append(name)
                frozen_blocks += int(is_block)
                reasons[name] = ("freeze", f"change < {self.threshold:g} for {s} ≥ {self.patience} checks")
        trainable = freeze(model, new, blocks) if new else trainable_parameters(model)
        self.frozen.extend(new)
        for name in order:
            action, reason = reasons[name]
            self.log.append({
                "step": int(step), "block": name, "change": float(changes.get(name, math.nan)),
                "streak": int(self._streak[name]), "threshold": float(self.threshold),
                "patience": int(self.patience), "action": action, "reason": reason,
                "trainable_params": int(trainable),
            })
        return new

    def log_frame(self):
        """The decision log as a pandas DataFrame."""
        import pandas as pd

        cols = ["step", "block", "change", "streak", "threshold", "patience", "action", "reason",
                "trainable_params"]
        return pd.DataFrame(self.log, columns=cols)

    def write_csv(self, path: str | os.PathLike) -> str:
        """Write the decision log atomically; returns the path."""
        return atomic_write_text(path, self.log_frame().to_csv(index=False, float_format="%.10g",
                                                               lineterminator="\n"))


# --------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------


class Tracker:
    """Per-entry CKA to the start / previous check and weight drift, every ``every_n_steps``.

    Args:
        model: the model being trained (may be None and given to :meth:`start` instead).
        tokenizer: its tokenizer.
        probe_texts: a small probe set (64–128 texts is plenty; the default budget assumes 64).
        every_n_steps: steps between checks (default 50; with a ``freeze_policy`` whose
            ``every_n_steps`` is set and no value here, the policy's).
        max_length: probe truncation in tokens.
        pooling: ``"mean"`` (default), ``"first"`` or ``"last"`` (not ``"tokens"``).
        blocks: entries (found with :func:`find_blocks` if None).
        batch_size: probe examples per forward pass.
        freeze_policy: an optional :class:`FreezePolicy` that acts after each check.
        progress: show a progress bar for each probe pass (off by default).
        lr_schedule: optional ``step -> learning rate`` of optimizer step ``step`` (0-based); with
            it each row carries ``lr_sum``, the sum of the learning rates applied since the previous
            check (the denominator of a learning-rate-normalised change). Without it ``lr_sum`` is
            NaN unless :meth:`add_lr` is fed the rate of each step.
    """

    def __init__(
        self,
        model: nn.Module | None,
        tokenizer,
        probe_texts: Sequence[str],
        every_n_steps: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        pooling: str = "mean",
        blocks: Blocks | None = None,
        batch_size: int = 64,
        freeze_policy: FreezePolicy | None = None,
        progress: bool = False,
        lr_schedule: Callable[[int], float] | None = None,
    ) -> None:
        if pooling not in ("mean", "first", "last"):
            raise LayerProbeError(f"tracking needs one vector per example: pooling mean/first/last, got {pooling!r}")
        if every_n_steps is None:
            pe = freeze_policy.every_n_steps if freeze_policy is not None else None
            every_n_steps = pe if pe is not None else DEFAULT_EVERY_N_STEPS
        if int(every_n_steps) < 1:
            raise LayerProbeError(f"every_n_steps must be ≥ 1, got {every_n_steps=}")
        if freeze_policy is not None and freeze_policy.every_n_steps is not None \
                and freeze_policy.every_n_steps % int(every_n_steps):
            raise LayerProbeError(
                f"the policy's every_n_steps={freeze_policy.every_n_steps} is not a multiple of the "
                f"tracker's every_n_steps={every_n_steps}")
        texts = [str(t) for t in probe_texts]
        if len(texts) < 2:
            raise LayerProbeError(f"the probe needs at least 2 texts for CKA, got {len(texts)}")
        self.model = model
        self.tokenizer = tokenizer
        self.every_n_steps = int(every_n_steps)
        self.max_length = int(max_length)
        self.pooling = pooling
        self.blocks = blocks
        self.batch_size = int(batch_size)
        self.policy = freeze_policy
        self.progress = progress
        self.lr_schedule = lr_schedule
        self._lr_acc = 0.0
        self._lr_fed = False
        self.examples, self.fingerprint = tokenize_probe(tokenizer, texts, self.max_length)
        self.rows: list[dict] = []
        self.seconds_total = 0.0
        self.last_step: int | None = None
        self._start_reps: dict[str, torch.Tensor] | None = None
        self._prev_reps: dict[str, torch.Tensor] | None = None
        self._start_weights: dict[str, list[tuple[str, torch.Tensor]]] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._start_reps is not None

    def start(self, model: nn.Module | None = None, step: int = 0) -> None:
        """Record the starting point (call before the first optimizer step)."""
        if model is not None:
            self.model = model
        if self.model is None:
            raise LayerProbeError("Tracker.start needs the model (pass it to Tracker(...) or start(model))")
        self.blocks = self.blocks if self.blocks is not None else find_blocks(self.model)
        t0 = time.perf_counter()
        self._start_weights = self._copy_weights()
        self._start_reps = None
        self.rows.clear()
        self.seconds_total = 0.0
        self._record(step, t0)

    def maybe_record(self, step: int) -> bool:
        """Record if ``step`` is a multiple of ``every_n_steps`` (and not recorded yet)."""
        if not self.started:
            raise LayerProbeError("call Tracker.start() before training (step 0 is the reference)")
        if step % self.every_n_steps or step == self.last_step:
            return False
        self._record(step, time.perf_counter())
        return True

    def add_lr(self, lr: float) -> None:
        """Feed the learning rate of one optimizer step (for loops without an ``lr_schedule``)."""
        self._lr_acc += float(lr)
        self._lr_fed = True

    def _lr_since_last(self, step: int) -> float:
        if self.lr_schedule is not None:
            start = 0 if self.last_step is None else self.last_step
            return float(sum(self.lr_schedule(s) for s in range(start, step)))
        if self._lr_fed:
            v, self._lr_acc = self._lr_acc, 0.0
            return v
        return math.nan

    def on_step(self, step: int, model: nn.Module | None = None) -> None:
        """``fine_tune(..., on_step=[tracker.on_step])`` hook: start at step 0 is required first."""
        if model is not None and self.model is not None and model is not self.model:
            raise LayerProbeError("Tracker.on_step got a different model from the one being tracked")
        self.maybe_record(step)

    def finish(self, step: int) -> bool:
        """Record the final state if the last step was not a check; returns whether it recorded."""
        if not self.started or step == self.last_step:
            return False
        self._record(step, time.perf_counter())
        return True

    # -- internals ----------------------------------------------------------------------------

    def _entry_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        out: dict[str, list[tuple[str, nn.Parameter]]] = {n: [] for n in self.blocks.names}
        for name, p in self.model.named_parameters():
            e = self.blocks.entry_of(name)
            if e is not None:
                out[e.name].append((name, p))
        return out

    def _copy_weights(self) -> dict[str, list[tuple[str, torch.Tensor]]]:
        return {e: [(n, p.detach().to("cpu", copy=True)) for n, p in ps] for e, ps in self._entry_params().items()}

    def _drift(self) -> dict[str, float]:
        out = {}
        for entry, params in self._entry_params().items():
            acc = DriftAccumulator(chunk=_DRIFT_CHUNK)
            for (name, p), (_, w0) in zip(params, self._start_weights[entry]):
                acc.add(name, w0, p.detach())
            out[entry] = acc.result()["weight_drift"]
        return out

    def _record(self, step: int, t0: float) -> None:
        reps, _ = run_probe(self.model, self.examples, self.blocks, self.pooling, None, self.batch_size,
                            pad_id(self.tokenizer), self.progress)
        first = self._start_reps is None
        if first:
            self._start_reps = reps
        lr_sum = 0.0 if first else self._lr_since_last(step)
        drift = self._drift()
        rows, changes = [], {}
        for name in self.blocks.names:
            to_start = linear_cka(self._start_reps[name], reps[name])
            to_prev = math.nan if first else linear_cka(self._prev_reps[name], reps[name])
            changes[name] = 1.0 - to_prev
            rows.append({"step": int(step), "block": name, "cka_to_start": to_start, "cka_to_previous": to_prev,
                         "change": 1.0 - to_prev, "weight_drift": drift[name], "lr_sum": lr_sum})
        self._prev_reps = reps
        self.last_step = int(step)
        if self.policy is not None and not first:
            self.policy.decide(step, changes, self.model, self.blocks)
        params = self._entry_params()  # frozen = state after this check's policy decision
        for r in rows:
            r["frozen"] = all(not p.requires_grad for _, p in params[r["block"]])
        seconds = time.perf_counter() - t0
        self.seconds_total += seconds
        for r in rows:
            r["track_seconds"] = seconds
            r["track_seconds_total"] = self.seconds_total
        self.rows.extend(rows)

    # -- output -------------------------------------------------------------------------------

    def to_frame(self):
        """The trajectory as a pandas DataFrame with :data:`COLUMNS`, one row per check and entry."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def write_csv(self, path: str | os.PathLike) -> str:
        """Write the trajectory atomically (never a half-written file); returns the path."""
        return atomic_write_text(path, self.to_frame().to_csv(index=False, float_format="%.10g",
                                                              lineterminator="\n"))


# --------------------------------------------------------------------------------------------
# transformers.Trainer callback
# --------------------------------------------------------------------------------------------

try:
    from transformers import TrainerCallback as _TrainerCallback
except ImportError:  # pragma: no cover - transformers is a dependency
    _TrainerCallback = object


class LayerProbeCallback(_TrainerCallback):
    """A ``transformers.TrainerCallback`` that tracks every entry and writes the trajectory CSV.

    At train begin it records step 0; every ``every_n_steps`` optimizer steps it records a check
    and rewrites ``<args.output_dir>/layerprobe_trajectory.csv`` (atomically); at train end it
    records the final step. With a ``freeze_policy`` the policy acts after each check and its log
    goes to ``layerprobe_freeze_log.csv``.

    Args:
        tokenizer: the model's tokenizer.
        probe_texts: a small probe set (e.g. 64 texts).
        every_n_steps, max_length, pooling, blocks, batch_size, freeze_policy: as for
            :class:`Tracker`.
        filename: name of the trajectory file in ``args.output_dir``.

    Example::

        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          callbacks=[LayerProbeCallback(tokenizer=tok, probe_texts=probe)])
        trainer.train()   # -> args.output_dir/layerprobe_trajectory.csv
    """

    def __init__(self, tokenizer=None, probe_texts: Sequence[str] = (), every_n_steps: int | None = None,
                 max_length: int = DEFAULT_MAX_LENGTH, pooling: str = "mean", blocks: Blocks | None = None,
                 batch_size: int = 64, freeze_policy: FreezePolicy | None = None,
                 filename: str = TRAJECTORY_CSV) -> None:
        if tokenizer is None:
            raise LayerProbeError("LayerProbeCallback needs tokenizer=...")
        self.tracker = Tracker(None, tokenizer, probe_texts, every_n_steps=every_n_steps, max_length=max_length,
                               pooling=pooling, blocks=blocks, batch_size=batch_size, freeze_policy=freeze_policy)
        self.filename = filename
        self.output_dir: str | None = None

    @property
    def policy(self) -> FreezePolicy | None:
        return self.tracker.policy

    def _write(self) -> None:
        if self.output_dir is None:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        self.tracker.write_csv(os.path.join(self.output_dir, self.filename))
        if self.policy is not None:
            self.policy.write_csv(os.path.join(self.output_dir, FREEZE_LOG_CSV))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise LayerProbeError("LayerProbeCallback: the Trainer passed no model to on_train_begin")
        self.output_dir = args.output_dir
        self.tracker.start(model, step=int(state.global_step))
        self._write()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker.maybe_record(int(state.global_step)):
            self._write()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.finish(int(state.global_step))
        self._write()
        return control
