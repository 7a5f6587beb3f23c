"""``transformers.Trainer`` integration: :class:`LayerProbeCallback`.

Importing this module imports ``transformers`` (the Trainer callback base class); nothing else in
layerprobe does at import time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, cast

from torch import nn
from transformers import TrainerCallback

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.policy import AutoFreezePolicy, FreezePolicy
from layerprobe.model.blocks import Blocks
from layerprobe.options import DEFAULT_POOLING
from layerprobe.tracking.budget import DEFAULT_PROBE_SHARE, probe_passes, probe_plan, probe_texts_within
from layerprobe.tracking.tracker import DEFAULT_MAX_LENGTH, FREEZE_LOG_CSV, TRAJECTORY_CSV, Tracker

__all__ = ["LayerProbeCallback"]

_DEFAULT: Any = object()  # probe_share not given

class LayerProbeCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that tracks every entry, gives the current advice, and
    (with ``auto_freeze=True``) freezes the bottom prefix in the same run.

    At train begin it records step 0; every ``every_n_steps`` optimizer steps it records a check
    and rewrites ``<args.output_dir>/layerprobe_trajectory.csv`` (atomically); at train end it
    records the final step. With a policy (``auto_freeze=True`` or ``freeze_policy=``) the policy
    acts after each check and logs every decision with its numbers to
    ``<args.output_dir>/layerprobe_freeze_log.csv``.

    ``auto_freeze=True`` uses :class:`~layerprobe.freezing.policy.AutoFreezePolicy`: it freezes the advised
    bottom prefix once each of its blocks has settled (change per unit of learning rate, read from
    the Trainer's optimizer at every step) and, with ``cache=True``, stops recomputing the frozen
    prefix: a :class:`~layerprobe.freezing.prefix_cache.PrefixCache` serves each example's stored output of
    the last frozen block from the next epoch on. Nothing else in the user's script changes. What
    does change: the frozen prefix runs in eval mode (no dropout there). At train end the cache is
    detached and the model is a plain model again (its frozen parameters stay frozen).

    Args:
        tokenizer: the model's tokenizer.
        probe_texts: a small probe set (e.g. 64 texts).
        auto_freeze: freeze progressively in the same run (contract keyword).
        every_n_steps: steps between checks; default 50, or with ``auto_freeze`` up to 20 checks per
            run (see ``probe_share``).
        max_length, pooling, blocks, batch_size: as for :class:`~layerprobe.tracking.tracker.Tracker`.
        freeze_policy: an explicit policy instead of the default one (``FreezePolicy`` or
            ``AutoFreezePolicy``).
        thresholds, settle, patience, cache: knobs of the default ``AutoFreezePolicy``.
        probe_share: with ``auto_freeze`` (default 0.05), the share of this process's training compute
            (the steps left x ``train_batch_size`` x gradient accumulation, at ~3 forward passes per
            training example) the probe passes may cost, the start and a final pass included: at train
            begin the callback picks the checks per run (20, fewer on short runs, at least 8) and how
            many of ``probe_texts`` to run (evenly spaced, at least 32) with
            :func:`~layerprobe.tracking.budget.probe_plan`; the plan is in :attr:`probe_plan`. Tracking is paid
            before anything is frozen, so an unbudgeted probe can eat what freezing saves. ``None``:
            every text at every check. Refused without ``auto_freeze``.
        filename: name of the trajectory file in ``args.output_dir``.

    Example::

        cb = LayerProbeCallback(tokenizer=tok, probe_texts=probe, auto_freeze=True)
        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
        trainer.train()   # -> layerprobe_trajectory.csv, layerprobe_freeze_log.csv in output_dir
        cb.advice()       # the current advice, at any step
    """

    def __init__(self, tokenizer=None, probe_texts: Sequence[str] = (), every_n_steps: int | None = None,
                 max_length: int = DEFAULT_MAX_LENGTH, pooling: str = DEFAULT_POOLING, blocks: Blocks | None = None,
                 batch_size: int = 64, freeze_policy: FreezePolicy | AutoFreezePolicy | None = None,
                 filename: str = TRAJECTORY_CSV, *, auto_freeze: bool = False, thresholds=None,
                 settle: float | None = None, patience: int | None = None, cache: bool = True,
                 probe_share: Any = _DEFAULT) -> None:
        if tokenizer is None:
            raise LayerProbeError("LayerProbeCallback needs tokenizer=...")
        if auto_freeze and freeze_policy is not None:
            raise LayerProbeError("LayerProbeCallback: give auto_freeze=True or freeze_policy=..., not both")
        if not auto_freeze and (settle is not None or patience is not None or thresholds is not None):
            raise LayerProbeError("LayerProbeCallback: thresholds/settle/patience configure auto_freeze=True")
        if auto_freeze:
            knobs = (("thresholds", thresholds), ("settle", settle), ("patience", patience))
            kw: dict[str, Any] = {k: v for k, v in knobs if v is not None}
            freeze_policy = AutoFreezePolicy(cache=cache, **kw)
        if probe_share is not _DEFAULT and not auto_freeze:
            raise LayerProbeError("LayerProbeCallback: probe_share budgets auto_freeze=True's probe passes")
        if probe_share is _DEFAULT:
            probe_share = DEFAULT_PROBE_SHARE
        if probe_share is not None and not (isinstance(probe_share, (int, float)) and not isinstance(probe_share, bool)
                                            and 0 < float(probe_share) <= 1):
            raise LayerProbeError(f"LayerProbeCallback: probe_share must be a number in (0, 1] or None, "
                                  f"got {probe_share!r}")
        self._auto_every = auto_freeze and every_n_steps is None
        self._probe_share = float(probe_share) if auto_freeze and probe_share is not None else None
        #: the checks and probe size chosen at train begin (``auto_freeze`` with a ``probe_share``)
        self.probe_plan: dict[str, Any] | None = None
        self.tracker = Tracker(None, tokenizer, probe_texts, every_n_steps=every_n_steps, max_length=max_length,
                               pooling=pooling, blocks=blocks, batch_size=batch_size, freeze_policy=freeze_policy)
        self.filename = filename
        self.output_dir: str | None = None
        self.is_main = True
        self._model: nn.Module | None = None
        self._distributed = False

    @property
    def policy(self) -> FreezePolicy | AutoFreezePolicy | None:
        return self.tracker.policy

    def advice(self, thresholds=None):
        """The freeze advice from the latest check (:meth:`Tracker.advice`)."""
        return self.tracker.advice(thresholds)

    def _write(self) -> None:
        if self.output_dir is None or not self.is_main:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        self.tracker.write_csv(os.path.join(self.output_dir, self.filename))
        if self.policy is not None:
            self.policy.write_csv(os.path.join(self.output_dir, FREEZE_LOG_CSV))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise LayerProbeError("LayerProbeCallback: the Trainer passed no model to on_train_begin")
        self.output_dir = args.output_dir
        self.is_main = bool(getattr(state, "is_world_process_zero", True))
        self._model = model
        self._distributed = _world_size() > 1
        if self._distributed and self.policy is not None:
            _check_ddp_freezing(args, model)
            if getattr(self.policy, "cache", False):  # the cache would stand in on rank 0 only
                cast(AutoFreezePolicy, self.policy).cache = False  # FreezePolicy has no cache
        self._plan_checks(args, state)
        if self.is_main:  # only the main process measures and writes
            self.tracker.start(model, step=int(state.global_step))
            self._write()
        return control

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.is_main and optimizer is not None and optimizer.param_groups:  # the rate this step will apply
            self.tracker.add_lr(float(optimizer.param_groups[0]["lr"]))
        return control

    def on_step_end(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if self.is_main and self.tracker.maybe_record(step):
            self._write()
        if self._distributed and self.policy is not None and step % self.tracker.every_n_steps == 0:
            self._share_freezing()  # every rank, same step: rank 0's decision applied everywhere
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.is_main:
            self.tracker.finish(int(state.global_step))
        if self._distributed and self.policy is not None:
            self._share_freezing()
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()
        self._write()
        return control

    def _plan_checks(self, args, state) -> None:
        """Set the cadence (auto-freeze default: up to 20 checks per run) and the probe budget.

        The share is of this process's training compute: under DDP the probe runs on rank 0 while the
        other ranks wait, so the world size does not enlarge the budget."""
        steps = int(getattr(state, "max_steps", 0) or 0) - int(getattr(state, "global_step", 0) or 0)
        if steps <= 0 or self.tracker.started:
            return
        share, texts = self._probe_share, self.tracker.n_texts
        per_step = int(getattr(args, "train_batch_size", 0) or getattr(args, "per_device_train_batch_size", 8)
                       or 8) * int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        examples = steps * per_step
        checks, n = probe_plan(texts, examples, share=share) if share is not None and self._auto_every \
            else (20, texts)
        if self._auto_every:
            self.tracker.every_n_steps = math.ceil(steps / checks)
        if share is None:
            return
        every = self.tracker.every_n_steps
        passes = probe_passes(steps, every)
        if not self._auto_every:  # the user's cadence: only the probe is sized
            n = probe_texts_within(share * 3 * examples, passes, texts)
        if n < self.tracker.n_probe:
            self.tracker.limit_probe(n)
        self.probe_plan = {"checks": steps // every, "probe_passes": passes, "probe_texts": self.tracker.n_probe,
                           "of_texts": texts, "train_examples": examples, "share": share,
                           "probe_share_planned": passes * self.tracker.n_probe / (3 * examples)}

    def _trained_model(self) -> nn.Module:
        """The model the Trainer passed to :meth:`on_train_begin`."""
        if self._model is None:
            raise LayerProbeError("LayerProbeCallback: on_train_begin has not run yet (no model)")
        return self._model

    def _share_freezing(self) -> None:
        """Broadcast rank 0's frozen parameter names; every other rank freezes the same ones."""
        import torch.distributed as dist

        model = self._trained_model()
        names = [[n for n, p in model.named_parameters() if not p.requires_grad] if self.is_main else None]
        dist.broadcast_object_list(names, src=0)
        frozen = set(names[0] or ())
        for n, p in model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        if not self.is_main and self.policy is not None:
            self.policy.frozen = sorted({*self.policy.frozen, *self._entries_of(frozen)},
                                        key=self._order)

    def _entries_of(self, names: set[str]) -> list[str]:
        from layerprobe.model.blocks import find_blocks

        model = self._trained_model()
        blocks = self.tracker.blocks or find_blocks(model)
        self.tracker.blocks = blocks
        params = blocks.group(n for n, _ in model.named_parameters())
        return [e for e, ps in params.items() if e != "other" and ps and all(p in names for p in ps)]

    def _order(self, name: str) -> int:
        names = self.tracker.blocks.names if self.tracker.blocks is not None else []
        return names.index(name) if name in names else len(names)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _check_ddp_freezing(args, model) -> None:
    """Online freezing under DDP needs the reducer to accept parameters without gradients."""
    find_unused = getattr(args, "ddp_find_unused_parameters", None)
    if find_unused is None:  # what the Trainer then uses
        find_unused = not bool(getattr(model, "is_gradient_checkpointing", False))
    if not find_unused:
        raise LayerProbeError(
            "LayerProbeCallback: freezing during a DDP run needs ddp_find_unused_parameters=True in "
            "TrainingArguments (frozen parameters get no gradient; with False DDP stops with 'Expected to have "
            "finished reduction in the prior iteration'); or track without a freeze policy")
