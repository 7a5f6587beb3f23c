"""Watch fine-tuning as it happens: per-entry CKA and weight drift every N steps.

:class:`Tracker` is the engine, usable from any loop: ``start()`` before the first optimizer step,
then ``maybe_record(step)`` (or ``on_step(step, model)``, the signature of
``layerprobe.demo.train.fine_tune(..., on_step=[...])``) after each step. Every ``every_n_steps`` steps
it runs a small probe set once through the model (:func:`layerprobe.snapshot.take.run_probe`, which
captures every entry in one forward pass, in eval mode with no grad, and restores the train mode)
and records, per entry (embeddings and each block, names as in ``compare``):

* ``cka_to_start`` — linear CKA of the probe representation with the one at the start
  (similarity, 1 = unchanged);
* ``cka_to_previous`` — linear CKA with the previous check (NaN at the first check);
* ``change`` — ``1 - cka_to_previous``: how much the entry changed during the last interval
  (distance, 0 = unchanged); what the freeze policies (:mod:`layerprobe.freezing.policy`) watch;
* ``weight_drift`` — ‖W_t − W_0‖/‖W_0‖ over the entry's parameters (distance, 0 = unchanged).
  The start weights are copied to CPU once; drift is accumulated tensor by tensor in float64
  chunks (:class:`layerprobe.metrics.drift.DriftAccumulator`), never as a second full copy;
* ``frozen`` — whether every parameter of the entry has ``requires_grad=False`` after this
  check (and after the policy's decision at it);
* ``track_seconds`` — wall time this check took (probe + CKA + drift + policy), and
  ``track_seconds_total`` — the running total, so the overhead is visible in the file;
* ``lr_sum`` — the sum of the learning rates applied since the previous check (with an
  ``lr_schedule`` or :meth:`Tracker.add_lr`; NaN otherwise): the denominator of a
  learning-rate-normalised change.

A frozen bottom prefix cannot change any more (its parameters and its inputs are fixed), so its
representations are carried from the check at which it froze instead of being recomputed — which
also keeps them right when a :class:`~layerprobe.freezing.prefix_cache.PrefixCache` stands in for it. The probe
passes run inside :func:`layerprobe.freezing.prefix_cache.no_store`: a prefix cache may serve them but never
stores the probe texts (they are not training examples).

:meth:`Tracker.advice` gives the freeze advice from the latest check at any step.

With ``revert=True`` each check after the start also runs the **revert test**
(:func:`layerprobe.freezing.revert.revert_test`) on the probe: the model with each bottom prefix put
back to its start weights, its outputs against the model's own (agreement, KL). The rows are kept
per step in :attr:`Tracker.revert_rows`, the advice and an
:class:`~layerprobe.freezing.policy.AutoFreezePolicy` predict from them, and they cost
``n_blocks + 2`` forward passes of the probe per check (it needs the model's output head, e.g.
``*ForSequenceClassification``).
The ``transformers.Trainer`` integration is :class:`layerprobe.integrations.hf.LayerProbeCallback`.

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
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.prefix_cache import no_store
from layerprobe.freezing.revert_shortcut import RevertShortcut
from layerprobe.io.outputs import atomic_write_text
from layerprobe.metrics.cka import linear_cka
from layerprobe.metrics.distinct import MIN_DISTINCT_ROWS
from layerprobe.metrics.drift import DriftAccumulator
from layerprobe.model.batching import PROBE_BATCH_SIZE, length_batches, pad_id, pad_known
from layerprobe.model.blocks import Blocks, find_blocks
from layerprobe.options import CSV_OPTIONS, DEFAULT_MAX_LENGTH, DEFAULT_POOLING, ProbeOptions
from layerprobe.results.trajectory import COLUMNS, TRAJECTORY_CSV
from layerprobe.snapshot.take import distinct_examples, run_probe, tokenize_probe

if TYPE_CHECKING:  # pragma: no cover
    from layerprobe.freezing.policy import AutoFreezePolicy, FreezePolicy
    from layerprobe.freezing.rule import Recommendation, Thresholds

__all__ = [
    "COLUMNS",
    "DEFAULT_EVERY_N_STEPS",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_PROBE_SIZE",
    "FREEZE_LOG_CSV",
    "TRAJECTORY_CSV",
    "Tracker",
    "checked_revert_rows",
    "revert_unavailable",
]


FREEZE_LOG_CSV = "layerprobe_freeze_log.csv"


#: Defaults chosen so that tracking costs ≤ 5% of training time on MiniLM-L6 with batch 32
#: (benchmarks/bench_tracking.py, CPU time): one check measured 0.42 of a training step, so every 50 steps ≈ 0.8%
#: (with the revert test 2.5 steps, ≈ 5.0%).
DEFAULT_EVERY_N_STEPS = 50
DEFAULT_PROBE_SIZE = 64

#: Elements converted to float64 at a time when accumulating drift (8 MB per chunk).
_DRIFT_CHUNK = 1 << 20



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
        freeze_policy: an optional :class:`~layerprobe.freezing.policy.FreezePolicy` or
            :class:`~layerprobe.freezing.policy.AutoFreezePolicy` that acts after each check.
        progress: show a progress bar for each probe pass (off by default).
        probe: a :class:`~layerprobe.options.ProbeOptions` (pooling, max_length, batch_size) instead
            of the loose keywords, as for :func:`~layerprobe.compare`.
        lr_schedule: optional ``step -> learning rate`` of optimizer step ``step`` (0-based); with
            it each row carries ``lr_sum``, the sum of the learning rates applied since the previous
            check (the denominator of a learning-rate-normalised change). Without it ``lr_sum`` is
            NaN unless :meth:`add_lr` is fed the rate of each step.
        revert: also run the revert test at each check (see the module docstring); refused for a
            model without an output head (checked at :meth:`start`) and for sharded (FSDP) parameters.
    """

    def __init__(
        self,
        model: nn.Module | None,
        tokenizer,
        probe_texts: Sequence[str],
        every_n_steps: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        pooling: str = DEFAULT_POOLING,
        blocks: Blocks | None = None,
        batch_size: int = PROBE_BATCH_SIZE,
        freeze_policy: FreezePolicy | AutoFreezePolicy | None = None,
        progress: bool = False,
        lr_schedule: Callable[[int], float] | None = None,
        probe: ProbeOptions | None = None,
        revert: bool = False,
    ) -> None:
        if probe is not None:  # the shared option object wins over the loose keywords
            pooling = probe.pooling or pooling
            max_length = probe.max_length or max_length
            batch_size = probe.batch_size
            if probe.max_tokens is not None:
                raise LayerProbeError("tracking pools one vector per example: ProbeOptions.max_tokens does not apply")
        if pooling not in ("mean", "first", "last"):
            raise LayerProbeError(f"tracking needs one vector per example: pooling mean/first/last, got {pooling!r}")
        if every_n_steps is None:
            pe = getattr(freeze_policy, "every_n_steps", None)
            every_n_steps = pe if pe is not None else DEFAULT_EVERY_N_STEPS
        if int(every_n_steps) < 1:
            raise LayerProbeError(f"every_n_steps must be ≥ 1, got {every_n_steps=}")
        policy_every = getattr(freeze_policy, "every_n_steps", None)
        if policy_every is not None and policy_every % int(every_n_steps):
            raise LayerProbeError(
                f"the policy's every_n_steps={policy_every} is not a multiple of the "
                f"tracker's every_n_steps={every_n_steps}")
        from layerprobe.io.probe_files import check_texts

        texts = check_texts(probe_texts, "probe_texts")
        if len(texts) < MIN_DISTINCT_ROWS:
            raise LayerProbeError(f"the probe needs at least {MIN_DISTINCT_ROWS} distinct texts for CKA, got "
                                  f"{len(texts)}")
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
        self._texts = texts
        self.examples, self.fingerprint = _distinct_probe(tokenizer, texts, self.max_length)
        self.rows: list[dict] = []
        self.seconds_total = 0.0
        self.last_step: int | None = None
        self._start_reps: dict[str, torch.Tensor] | None = None
        self._prev_reps: dict[str, torch.Tensor] | None = None
        self._start_weights: dict[str, list[tuple[str, torch.Tensor]]] | None = None
        if not isinstance(revert, bool):
            from layerprobe.errors import LayerProbeTypeError

            raise LayerProbeTypeError(f"revert must be True or False, got {revert!r}")
        self.revert = revert
        predictor = getattr(freeze_policy, "predictor", None)
        if predictor is not None:  # a revert_* predictor without the revert test: refused now, not at a check
            from layerprobe.freezing.predict import check_predictor

            check_predictor(predictor, revert=revert, where="the policy's predictor")
        #: revert-test rows per checked step (``revert=True``): ``{step: [{"k", "freeze", "agreement", "kl", "tv"}]}``
        self.revert_rows: dict[int, list[dict[str, Any]]] = {}
        self._shortcut = RevertShortcut()  # the revert test's shortcut, checked once per model

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._start_reps is not None

    @property
    def n_probe(self) -> int:
        """Probe texts run at each check."""
        return len(self.examples)

    @property
    def n_texts(self) -> int:
        """Probe texts given (:meth:`limit_probe` may run fewer)."""
        return len(self._texts)

    def limit_probe(self, n: int) -> None:
        """Probe with ``n`` of the texts (evenly spaced over the given order) from now on; before
        :meth:`start` only, since every check is compared with the start on the same texts."""
        if self.started:
            raise LayerProbeError("Tracker.limit_probe: the probe is fixed once start() has run")
        n = int(n)
        if n < MIN_DISTINCT_ROWS:
            raise LayerProbeError(f"the probe needs at least {MIN_DISTINCT_ROWS} distinct texts for CKA, got {n}")
        n = min(n, len(self._texts))
        idx = sorted({round(i * (len(self._texts) - 1) / max(1, n - 1)) for i in range(n)})
        self.examples, self.fingerprint = _distinct_probe(self.tokenizer, [self._texts[i] for i in idx],
                                                          self.max_length)

    def start(self, model: nn.Module | None = None, step: int = 0) -> None:
        """Record the starting point (call before the first optimizer step)."""
        if model is not None:
            self.model = model
        if self.model is None:
            raise LayerProbeError("Tracker.start needs the model (pass it to Tracker(...) or start(model))")
        self.blocks = self.blocks if self.blocks is not None else find_blocks(self.model)
        t0 = time.perf_counter()
        if self.revert:
            _check_revertable(self.model, self.examples[0], pad_id(self.tokenizer))
        self._start_weights = self._copy_weights()
        self._shortcut = RevertShortcut()
        self._start_reps = None
        self.rows.clear()
        self.revert_rows.clear()
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

    def _model_blocks(self) -> tuple[nn.Module, Blocks]:
        """The tracked model and its entries, both set by :meth:`start`."""
        if self.model is None or self.blocks is None:
            raise LayerProbeError("call Tracker.start() before training (step 0 is the reference)")
        return self.model, self.blocks

    def _entry_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        model, blocks = self._model_blocks()
        out: dict[str, list[tuple[str, nn.Parameter]]] = {n: [] for n in blocks.names}
        for name, p in model.named_parameters():
            e = blocks.entry_of(name)
            if e is not None:
                out[e.name].append((name, p))
        return out

    def _copy_weights(self) -> dict[str, list[tuple[str, torch.Tensor]]]:
        from layerprobe.model.unwrap import full_tensor as _full  # FSDP2: the whole tensor (every rank calls it)

        return {e: [(n, _full(p.detach()).to("cpu", copy=True)) for n, p in ps]
                for e, ps in self._entry_params().items()}

    def _drift(self) -> dict[str, float]:
        from layerprobe.model.unwrap import full_tensor as _full

        start_weights = self._start_weights
        assert start_weights is not None  # copied by start() before its first check
        out = {}
        for entry, params in self._entry_params().items():
            acc = DriftAccumulator(chunk=_DRIFT_CHUNK)
            for (name, p), (_, w0) in zip(params, start_weights[entry]):
                acc.add(name, w0, _full(p.detach()))
            out[entry] = acc.result()["weight_drift"]
        return out

    def _frozen_prefix(self) -> list[str]:
        """Entries of the frozen bottom prefix (every parameter frozen, and every entry below too)."""
        params = self._entry_params()
        _, blocks = self._model_blocks()
        out = []
        for name in blocks.names:
            ps = params[name]
            if ps and all(not p.requires_grad for _, p in ps):
                out.append(name)
            else:
                break
        return out

    def _record(self, step: int, t0: float) -> None:
        model, blocks = self._model_blocks()
        with no_store():  # probe texts are served by a prefix cache, never stored in it (not training data)
            reps, _ = run_probe(model, self.examples, blocks, self.pooling, None, self.batch_size,
                                pad_id(self.tokenizer), self.progress)
        first = self._start_reps is None
        if self._start_reps is None:
            self._start_reps = reps
        elif self._prev_reps is not None:
            # a frozen prefix cannot change: carry its representations (a prefix cache may stand in for it)
            for name in self._frozen_prefix():
                reps[name] = self._prev_reps[name]
        start_reps = self._start_reps
        lr_sum = 0.0 if first else self._lr_since_last(step)
        drift = self._drift()
        rows: list[dict[str, Any]] = []
        changes: dict[str, float] = {}
        prev_reps = None if first else self._prev_reps
        assert first or prev_reps is not None, "a check after the first one follows a recorded check"
        for name in blocks.names:
            to_start = linear_cka(start_reps[name], reps[name])
            to_prev = math.nan if prev_reps is None else linear_cka(prev_reps[name], reps[name])
            changes[name] = 1.0 - to_prev
            rows.append({"step": int(step), "block": name, "cka_to_start": to_start, "cka_to_previous": to_prev,
                         "change": 1.0 - to_prev, "weight_drift": drift[name], "lr_sum": lr_sum})
        self._prev_reps = reps
        self.last_step = int(step)
        revert = None
        if self.revert and not first:
            revert = self._revert(model, blocks)
            if revert is not None:
                self.revert_rows[int(step)] = revert
        if self.policy is not None and not first:
            observe = getattr(self.policy, "observe", None)
            if observe is not None:
                if revert is not None:
                    observe(step, rows, model, blocks, revert=revert)
                else:
                    observe(step, rows, model, blocks)
            else:  # a FreezePolicy (an AutoFreezePolicy has observe)
                cast("FreezePolicy", self.policy).decide(step, changes, model, blocks)
        params = self._entry_params()  # frozen = state after this check's policy decision
        for r in rows:
            r["frozen"] = all(not p.requires_grad for _, p in params[r["block"]])
        seconds = time.perf_counter() - t0
        self.seconds_total += seconds
        for r in rows:
            r["track_seconds"] = seconds
            r["track_seconds_total"] = self.seconds_total
        self.rows.extend(rows)

    def latest(self) -> list[dict]:
        """The rows of the latest check (one per entry, model order); empty before :meth:`start`."""
        if not self.rows:
            return []
        step = self.rows[-1]["step"]
        return [r for r in self.rows if r["step"] == step]

    def advice(self, thresholds: Thresholds | None = None, prefix_savings: Any = None,
               tolerance: float | None = None) -> Recommendation:
        """The freeze advice from the latest check (CKA of each entry to the start, weight drift and,
        with ``revert=True``, the revert test), at any step.

        Uses :func:`layerprobe.freezing.rule.recommend` with ``thresholds`` (its defaults if None) and
        ``tolerance`` (the accuracy loss accepted; given, the predicted cost of each prefix decides) on the
        tracker's probe; parameter counts are those of the model's entries. ``prefix_savings`` (from
        :func:`~layerprobe.freezing.step_cost.calibrate_prefix_savings`): report the measured saving.
        """
        from layerprobe.freezing.rule import recommend

        rows = self.latest()
        if not rows:
            raise LayerProbeError("no check recorded yet: call Tracker.start() first")
        params = self._entry_params()
        model, _ = self._model_blocks()
        entries: list[dict[str, Any]] = [
            {"name": r["block"], "kind": "embeddings" if r["block"] == "embeddings" else "block",
             "n_params": sum(p.numel() for _, p in params[r["block"]]), "weight_drift": r["weight_drift"],
             "cka": r["cka_to_start"]} for r in rows]
        inside = sum(e["n_params"] for e in entries)
        other = sum(p.numel() for p in model.parameters()) - inside
        revert = self.revert_rows.get(int(rows[0]["step"]))
        return recommend(entries, thresholds, other_params=other, prefix_savings=prefix_savings, tolerance=tolerance,
                         revert=revert)

    def _revert(self, model: nn.Module, blocks: Blocks) -> list[dict[str, Any]] | None:
        """The revert test on the probe against the start weights (no prefix cache stores these passes)."""
        from layerprobe.freezing.revert import revert_test

        assert self._start_weights is not None
        base = {n: w for ps in self._start_weights.values() for n, w in ps}
        device = next((p.device for p in model.parameters()), None)
        pad = pad_id(self.tokenizer)
        batches = length_batches(self.examples, self.batch_size, pad, device)
        try:
            with no_store(), pad_known(model, pad):
                rows = revert_test(model, base, batches, blocks=blocks, shortcut=self._shortcut)
        except LayerProbeError as exc:  # e.g. outputs that overflowed: this check has no rows, training goes on
            from layerprobe.errors import LayerProbeWarning

            warnings.warn(f"Tracker: no revert test at this check: {exc}", LayerProbeWarning, stacklevel=3)
            return None
        return [{k: v for k, v in r.items() if k != "freeze"} for r in rows]

    # -- resumable state ----------------------------------------------------------------------

    def export_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """What a restart needs: ``(JSON-able fields, representations, start weights)``.

        Representations are the start's (``start/<entry>``) and the latest check's
        (``previous/<entry>``); start weights are keyed by parameter name. Used by
        :class:`~layerprobe.integrations.hf.LayerProbeCallback` to save with each Trainer checkpoint.
        """
        if not self.started:
            raise LayerProbeError("Tracker.export_state: nothing recorded yet (call start() first)")
        reps = {f"start/{k}": v.contiguous() for k, v in (self._start_reps or {}).items()}
        reps.update({f"previous/{k}": v.contiguous() for k, v in (self._prev_reps or {}).items()})
        weights = {n: w.contiguous() for ps in (self._start_weights or {}).values() for n, w in ps}
        fields = {"rows": self.rows, "seconds_total": self.seconds_total, "last_step": self.last_step,
                  "every_n_steps": self.every_n_steps, "n_probe": self.n_probe, "fingerprint": self.fingerprint,
                  "lr_acc": self._lr_acc, "lr_fed": self._lr_fed,
                  "revert_rows": {str(k): v for k, v in self.revert_rows.items()}}
        return fields, reps, weights

    def restore_state(self, model: nn.Module, fields: dict[str, Any], reps: dict[str, torch.Tensor],
                      weights: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`export_state`'s output: the reference stays the run's start (not the
        model being resumed), the rows recorded so far are kept and later checks are appended."""
        self.model = model
        self._shortcut = RevertShortcut()
        self.blocks = self.blocks if self.blocks is not None else find_blocks(model)
        if int(fields["n_probe"]) < self.n_probe:
            self.limit_probe(int(fields["n_probe"]))
        if self.fingerprint != fields["fingerprint"]:
            raise LayerProbeError("the saved layerprobe state was recorded on another probe (texts, tokenizer or "
                                  "max_length differ): resume with the callback's original arguments")
        names = self.blocks.names
        missing = [n for n in names if f"start/{n}" not in reps]
        if missing:
            raise LayerProbeError(f"the saved layerprobe state lacks entry {missing[0]!r} (another model?)")
        self._start_reps = {n: reps[f"start/{n}"] for n in names}
        self._prev_reps = {n: reps[f"previous/{n}"] for n in names if f"previous/{n}" in reps} or None
        start: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for entry, params in self._entry_params().items():
            lost = [n for n, _ in params if n not in weights]
            if lost:
                raise LayerProbeError(f"the saved start weights lack {lost[0]!r} (another model?)")
            start[entry] = [(n, weights[n]) for n, _ in params]
        self._start_weights = start
        self.rows = [dict(r) for r in fields["rows"]]
        self.seconds_total = float(fields["seconds_total"])
        self.last_step = None if fields["last_step"] is None else int(fields["last_step"])
        self.every_n_steps = int(fields["every_n_steps"])
        self._lr_acc, self._lr_fed = float(fields["lr_acc"]), bool(fields["lr_fed"])
        self.revert_rows = checked_revert_rows(fields.get("revert_rows"))

    # -- output -------------------------------------------------------------------------------

    def to_frame(self):
        """The trajectory as a pandas DataFrame with :data:`COLUMNS`, one row per check and entry."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def write_csv(self, path: str | os.PathLike) -> str:
        """Write the trajectory atomically (never a half-written file); returns the path."""
        return atomic_write_text(path, self.to_frame().to_csv(**CSV_OPTIONS))


def checked_revert_rows(saved: Any, where: str = "the saved layerprobe state") -> dict[int, list[dict[str, Any]]]:
    """Revert-test rows read back from a saved state, ``{step: [{"k", "agreement", "kl", "tv"}, ...]}``, held to
    their form (a step, then rows with an integer ``k`` and finite numbers); else a one-line :class:`LayerProbeError`."""
    if saved is None:
        return {}
    if not isinstance(saved, dict):
        raise LayerProbeError(f"{where}: revert_rows must be an object of steps, got {type(saved).__name__}")
    out: dict[int, list[dict[str, Any]]] = {}
    for step, rows in saved.items():
        ok = isinstance(step, (str, int)) and str(step).isdigit() and len(str(step)) <= 18 and isinstance(rows, list)
        for r in rows if ok else ():
            ok = ok and isinstance(r, dict) and type(r.get("k")) is int and all(
                isinstance(r.get(f), (int, float)) and not isinstance(r.get(f), bool) and math.isfinite(r[f])
                for f in ("agreement", "kl", "tv"))
        if not ok:
            raise LayerProbeError(f"{where}: revert_rows[{str(step)[:20]!r}] is not a list of revert-test rows "
                                  "(k, agreement, kl, tv)")
        out[int(step)] = [dict(r) for r in rows]
    return out


def revert_unavailable(model: nn.Module, tokenizer: Any, example: dict) -> str | None:
    """Why the revert test cannot run on ``model`` (sharded parameters, no logits), or None when it can."""
    try:
        _check_revertable(model, example, pad_id(tokenizer))
    except LayerProbeError as err:
        return err.message.split(": ", 1)[-1]
    return None


def _check_revertable(model: nn.Module, example: dict, pad: int) -> None:
    """The revert test needs whole parameters it can overwrite and an output head: one example's forward
    pass must give ``logits``."""
    if any(type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor" for p in model.parameters()):
        raise LayerProbeError("Tracker(revert=True): the revert test cannot run on sharded (FSDP) parameters; "
                              "track without it")
    from layerprobe.model.batching import collate, forward_inputs

    device = next((p.device for p in model.parameters()), None)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), no_store():
            out = model(**forward_inputs(model, collate([example], pad, device)))
    finally:
        model.train(was)
    if getattr(out, "logits", None) is None:
        raise LayerProbeError(f"Tracker(revert=True): {type(model).__name__} gives no logits to compare the "
                              "reverted model's predictions with (use a model with its output head, e.g. "
                              "*ForSequenceClassification)")


def _distinct_probe(tokenizer: Any, texts: list[str], max_length: int) -> tuple[list[dict], str]:
    """Tokenize the probe; refuse one with fewer distinct examples than CKA needs (a check during training
    would otherwise report CKA 1 for every block, and a freeze policy act on it)."""
    examples, fp = tokenize_probe(tokenizer, texts, max_length)
    k = distinct_examples(examples)
    if k < MIN_DISTINCT_ROWS:
        raise LayerProbeError(f"the probe needs at least {MIN_DISTINCT_ROWS} distinct texts for CKA, got {k} "
                              f"(of {len(texts)} texts: {len(texts) - k} duplicates after tokenization)")
    return examples, fp
