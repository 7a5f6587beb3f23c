"""``transformers.Trainer`` integration: :class:`LayerProbeCallback`.

Importing this module imports ``transformers`` (the Trainer callback base class); nothing else in
layerprobe does at import time.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, cast

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from layerprobe.errors import LayerProbeError, LayerProbeWarning
from layerprobe.freezing.policy import AutoFreezePolicy, FreezePolicy
from layerprobe.integrations.hf_state import (
    REFERENCE_FILE,
    STATE_JSON,
    STATE_TENSORS,
    restore_state,
    save_state,
    stored_state,
)
from layerprobe.model.batching import PROBE_BATCH_SIZE
from layerprobe.model.blocks import Blocks
from layerprobe.options import DEFAULT_POOLING
from layerprobe.tracking.budget import DEFAULT_PROBE_SHARE, probe_passes, probe_plan, probe_texts_within
from layerprobe.tracking.tracker import DEFAULT_MAX_LENGTH, FREEZE_LOG_CSV, TRAJECTORY_CSV, Tracker

__all__ = ["STATE_JSON", "STATE_TENSORS", "REFERENCE_FILE", "LayerProbeCallback"]

_DEFAULT: Any = object()  # probe_share not given


logger = logging.getLogger("layerprobe")
_LIVE: weakref.WeakSet = weakref.WeakSet()  # callbacks built in this process (see __new__)


class LayerProbeCallback(TrainerCallback, ExportableState):
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

    Like the Trainer's own state, the callback's state is saved with every checkpoint (the
    stateful-callback mechanism, :class:`transformers.trainer_callback.ExportableState`):
    ``checkpoint-N/layerprobe_state.json`` and ``.safetensors`` hold the rows, the freeze log and
    policy, the frozen parameters, the probe plan and the reference and latest representations;
    the start weights go once to ``<output_dir>/layerprobe_reference.safetensors``. With
    ``trainer.train(resume_from_checkpoint=...)`` the reference stays the pretrained model, the
    trajectory and freeze log continue (rows after the checkpoint are dropped, as the Trainer drops
    their log entries) and the frozen prefix is frozen again before the first resumed step.

    At each ``on_log`` the latest check's numbers join the Trainer's logs (console,
    ``trainer.state.log_history``, the ``report_to`` trackers): ``layerprobe/cka_to_start/<entry>``,
    ``layerprobe/frozen_fraction`` and ``layerprobe/probe_share`` (probe seconds / train seconds);
    each freeze decision is also one line on the ``layerprobe`` logger. To reach the trackers on
    the same step the callback moves itself before them in the Trainer's callback list.

    With ``load_best_model_at_end`` the final row measures the model of the last step (before the
    Trainer reloads the best checkpoint); :attr:`best_step` names the best checkpoint's step and
    :attr:`best_step_measured` whether the trajectory has a row there.

    Under DDP rank 0 measures and every rank gets its rows (so :meth:`advice` gives the same answer
    everywhere) and its freeze decisions. Under FSDP every rank runs the probe (the sharded forward
    pass needs them all) and rank 0 writes; freezing during an FSDP run is refused at train begin.

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
        tolerance: with ``auto_freeze``, the accuracy loss accepted (e.g. 0.01): the policy freezes what the
            *predicted* cost of freezing allows (:mod:`layerprobe.freezing.predict`) instead of the CKA
            rule; :meth:`advice` takes its own ``tolerance``.
        revert_test: run the revert test at every check (:class:`~layerprobe.tracking.tracker.Tracker`'s
            ``revert``): the strongest input of the prediction, at ``n_blocks + 2`` extra probe passes per
            check, which the ``probe_share`` budget counts. Needs the model's output head. ``None``
            (default): on when ``auto_freeze`` follows the prediction (a ``tolerance``, or the shipped
            predictor is the default rule) and the best shipped predictor reads the revert test, if the
            model gives logits (else off, said in :attr:`revert_note`); ``False``/``True``: off/required.
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

    def __new__(cls, *args: Any, _layerprobe_resume: bool = False, **kwargs: Any):
        # ``restore_callback_states_from_checkpoint=True`` makes the Trainer rebuild each stateful
        # callback as ``type(cb)(**state()["args"])``; a tokenizer cannot travel in JSON, so the
        # rebuilt callback is the one this process already made (the same object stays the user's).
        if _layerprobe_resume:
            live = [cb for cb in _LIVE if type(cb) is cls]
            if len(live) != 1:
                raise LayerProbeError(f"{cls.__name__}: cannot tell which of {len(live)} callbacks to restore; "
                                      "use restore_callback_states_from_checkpoint=False (the state is restored "
                                      "from the checkpoint anyway)")
            return live[0]
        return super().__new__(cls)

    def __init__(self, tokenizer=None, probe_texts: Sequence[str] = (), every_n_steps: int | None = None,
                 max_length: int = DEFAULT_MAX_LENGTH, pooling: str = DEFAULT_POOLING, blocks: Blocks | None = None,
                 batch_size: int = PROBE_BATCH_SIZE, freeze_policy: FreezePolicy | AutoFreezePolicy | None = None,
                 filename: str = TRAJECTORY_CSV, *, auto_freeze: bool = False, thresholds=None,
                 settle: float | None = None, patience: int | None = None, cache: bool = True,
                 probe_share: Any = _DEFAULT, tolerance: float | None = None, revert_test: bool | None = None,
                 _layerprobe_resume: bool = False) -> None:
        if _layerprobe_resume:  # the Trainer's rebuild: this object already exists (see __new__)
            return
        if tokenizer is None:
            raise LayerProbeError("LayerProbeCallback needs tokenizer=...")
        if auto_freeze and freeze_policy is not None:
            raise LayerProbeError("LayerProbeCallback: give auto_freeze=True or freeze_policy=..., not both")
        if not auto_freeze and (settle is not None or patience is not None or thresholds is not None
                                or tolerance is not None):
            raise LayerProbeError("LayerProbeCallback: thresholds/settle/patience/tolerance configure "
                                  "auto_freeze=True (advice() takes its own tolerance)")
        if auto_freeze:
            knobs = (("thresholds", thresholds), ("settle", settle), ("patience", patience), ("tolerance", tolerance))
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
                               pooling=pooling, blocks=blocks, batch_size=batch_size, freeze_policy=freeze_policy,
                               revert=bool(revert_test))
        self._revert_auto = revert_test is None
        #: why the automatic revert test is off for this run (None: on, or not wanted)
        self.revert_note: str | None = None
        self.filename = filename
        self.output_dir: str | None = None
        self.is_main = True
        self._model: nn.Module | None = None
        self._distributed = False
        self._fsdp = False
        self._step = 0
        self._saving = False
        self._train_t0: float | None = None
        self._logged_step: int | None = None
        self._logged_freezes = 0
        self._reordered = False
        #: set by the Trainer's callback rebuild (or read from ``state.stateful_callbacks``) on resume
        self.resume_state: dict[str, Any] | None = None
        #: the step whose state was restored by a resume (None: a fresh run)
        self.resumed_from: int | None = None
        #: the best checkpoint's step (``load_best_model_at_end``), and whether a row was recorded there
        self.best_step: int | None = None
        self.best_step_measured = False
        _LIVE.add(self)

    @property
    def policy(self) -> FreezePolicy | AutoFreezePolicy | None:
        return self.tracker.policy

    def advice(self, thresholds=None, tolerance: float | None = None):
        """The freeze advice from the latest check (:meth:`Tracker.advice`): with a ``tolerance`` the
        largest prefix whose predicted accuracy loss is within it; ``candidates`` lists every prefix's
        prediction either way."""
        return self.tracker.advice(thresholds, tolerance=tolerance)

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
        self._fsdp = self._distributed and _is_fsdp(model)
        self._train_t0 = time.perf_counter()
        self._move_before_reporters()
        if self._fsdp and self.policy is not None:
            raise LayerProbeError("LayerProbeCallback: freezing during an FSDP run is not supported (sharded "
                                  "parameters are frozen per rank and the prefix cache would serve one shard); "
                                  "track without a freeze policy, or freeze before training")
        if self._distributed and self.policy is not None:
            _check_ddp_freezing(args, model)
            if getattr(self.policy, "cache", False):  # the cache would stand in on rank 0 only
                cast(AutoFreezePolicy, self.policy).cache = False  # FreezePolicy has no cache
        step = int(state.global_step)
        if self.is_main and step == 0:
            self._warn_short_probe(kwargs.get("train_dataloader"))
        self._choose_revert(model)  # before a resume too: the restored run measures as the saved one did
        resume = self.resume_state or stored_state(state, type(self).__name__)
        if step > 0 and resume:
            self._restore(args, state, model, resume)
            return control
        if step > 0:
            warnings.warn(f"LayerProbeCallback: resumed at step {step} without a saved layerprobe state (a "
                          "checkpoint written before this version, or without the callback): the reference is "
                          "the resumed model, not the pretrained one", stacklevel=2)
        self._plan_checks(args, state)
        if self._measures:
            self.tracker.start(model, step=step)
        else:  # advice() on every rank: the rows arrive from rank 0 (_share)
            self._attach_model(model)
        self._write()
        return control

    def _choose_revert(self, model: nn.Module) -> None:
        """``revert_test=None``: run the revert test when the policy follows the prediction and the best
        shipped predictor reads it, and the model can run it (else say why in :attr:`revert_note`)."""
        from layerprobe.freezing.predict import shipped_meta, shipped_prefers_revert

        policy = self.policy
        if not self._revert_auto or not isinstance(policy, AutoFreezePolicy) or policy.predictor is not None:
            return
        if not (policy.tolerance is not None or shipped_meta().get("default_rule") == "predictor"):
            return
        if not shipped_prefers_revert():
            return
        from layerprobe.tracking.tracker import revert_unavailable

        why = "sharded (FSDP) parameters" if self._fsdp else \
            revert_unavailable(model, self.tracker.tokenizer, self.tracker.examples[0])
        if why is None:
            self.tracker.revert = True
        else:
            # without a tolerance the default prediction needed it: a fallback read of CKA and drift only informs
            then = "the prediction uses CKA and drift" if policy.tolerance is not None else \
                "the default prediction needs it, so the CKA rule decides (the predictions from CKA and drift are listed)"
            self.revert_note = f"revert test off: {why}; {then}"
            logger.warning("layerprobe: %s", self.revert_note)

    @property
    def _measures(self) -> bool:
        """This process runs the probe: rank 0, or every rank under FSDP (its forward needs them all)."""
        return self.is_main or self._fsdp

    def _attach_model(self, model: nn.Module) -> None:
        from layerprobe.model.blocks import find_blocks

        self.tracker.model = model
        self.tracker.blocks = self.tracker.blocks or find_blocks(model)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self._measures and optimizer is not None and optimizer.param_groups:  # the rate this step will apply
            self.tracker.add_lr(float(optimizer.param_groups[0]["lr"]))
        return control

    def on_step_end(self, args, state, control, **kwargs):
        step = self._step = int(state.global_step)
        recorded = False
        if self._measures:
            recorded = self.tracker.maybe_record(step)
            if not recorded and step >= int(getattr(state, "max_steps", 0) or 0) > 0:
                recorded = self.tracker.finish(step)  # the last step: measured before a best-model reload
        if self._distributed and not self._fsdp and (step % self.tracker.every_n_steps == 0 or
                                                     step >= int(getattr(state, "max_steps", 0) or 0) > 0):
            self._share()  # every rank, same step: rank 0's rows and freezing everywhere
        if recorded:
            self._write()
            self._announce_freezes()
        self._saving = bool(control.should_save)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        step = self._step = int(state.global_step)
        if control.should_training_stop and self._measures and self.tracker.started and self.tracker.finish(step):
            self._write()  # early stopping: the final row before any best-model reload
        self._saving = self._saving or bool(control.should_save)
        return control

    def on_save(self, args, state, control, **kwargs):
        self._saving = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self.tracker.rows:
            return control
        latest = self.tracker.latest()
        step = int(latest[0]["step"])
        if step == self._logged_step:
            return control
        self._logged_step = step
        extra: dict[str, float] = {f"layerprobe/cka_to_start/{r['block']}": float(r["cka_to_start"]) for r in latest}
        extra["layerprobe/frozen_fraction"] = self._frozen_fraction()
        if self._train_t0 is not None:
            elapsed = time.perf_counter() - self._train_t0
            extra["layerprobe/probe_share"] = float(latest[0].get("track_seconds_total", 0.0)) / max(elapsed, 1e-9)
        logs.update(extra)
        history = getattr(state, "log_history", None)
        if history and history[-1].get("step") == int(state.global_step):
            history[-1].update(extra)  # the Trainer appended this entry before calling on_log
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._measures:
            self.tracker.finish(int(state.global_step))  # no-op when the last step was recorded
        if self._distributed and not self._fsdp:
            self._share()
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()
        best = getattr(state, "best_model_checkpoint", None)
        m = re.search(r"checkpoint-(\d+)$", str(best).rstrip("/\\")) if best else None
        if m:
            self.best_step = int(m.group(1))
            self.best_step_measured = any(int(r["step"]) == self.best_step for r in self.tracker.rows)
        self._write()
        return control

    # -- the Trainer's stateful-callback mechanism ---------------------------------------------

    def state(self) -> dict:
        """``ExportableState``: called by the Trainer while it writes a checkpoint (``trainer_state.json``).

        Writes this process's state into the checkpoint directory (:data:`STATE_JSON`,
        :data:`STATE_TENSORS`) and returns where it is; outside a checkpoint save it writes nothing."""
        where = None
        if self._saving and self.is_main and self.tracker.started and self.output_dir is not None:
            where = self._save_state(os.path.join(self.output_dir, f"checkpoint-{self._step}"))
        return {"args": {"_layerprobe_resume": True}, "attributes": {"resume_state": where}}

    def _save_state(self, ckpt: str) -> dict[str, Any] | None:
        return save_state(self, ckpt)

    def _restore(self, args, state, model: nn.Module, resume: dict[str, Any]) -> None:
        """Continue the run saved in the checkpoint being resumed (see :meth:`state`)."""
        restore_state(self, args, state, model, resume)

    # -- visible decisions ---------------------------------------------------------------------

    def _frozen_fraction(self) -> float:
        model = self._trained_model()
        total = frozen = 0
        for p in model.parameters():
            total += p.numel()
            frozen += 0 if p.requires_grad else p.numel()
        return frozen / total if total else 0.0

    def _announce_freezes(self) -> None:
        if self.policy is None or not self.is_main:
            return
        new = self.policy.frozen[self._logged_freezes:]
        self._logged_freezes = len(self.policy.frozen)
        if new:
            logger.warning("layerprobe: froze %s at step %d (%.1f%% of parameters frozen); see %s",
                           ", ".join(new), self._step, 100 * self._frozen_fraction(), FREEZE_LOG_CSV)

    def _move_before_reporters(self) -> None:
        """Put this callback right after the Trainer's flow callback, ahead of the ``report_to``
        callbacks, so its ``on_log`` values reach them on the same step. Safe during the handler's
        loop: only this callback moves, and only towards the front."""
        if self._reordered:
            return
        self._reordered = True
        frame = sys._getframe(2)  # CallbackHandler.call_event -> on_train_begin
        from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

        handler = frame.f_locals.get("self")
        if not isinstance(handler, CallbackHandler) or self not in handler.callbacks:
            return
        cbs = handler.callbacks
        cbs.remove(self)
        at = next((i + 1 for i, cb in enumerate(cbs) if isinstance(cb, DefaultFlowCallback)), 0)
        cbs.insert(at, self)

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
        mult = 1  # probe passes per check: with the revert test also its n_blocks + 2
        if self.tracker.revert:
            from layerprobe.model.blocks import find_blocks

            mult = len((self.tracker.blocks or find_blocks(self._trained_model())).blocks) + 3
        checks, n = probe_plan(texts, examples // mult, share=share) if share is not None and self._auto_every \
            else (20, texts)
        if self._auto_every:
            self.tracker.every_n_steps = math.ceil(steps / checks)
        if share is None:
            return
        every = self.tracker.every_n_steps
        passes = probe_passes(steps, every)
        if not self._auto_every:  # the user's cadence: only the probe is sized
            n = probe_texts_within(share * 3 * examples / mult, passes, texts)
        if n < self.tracker.n_probe:
            self.tracker.limit_probe(n)
        self.probe_plan = {"checks": steps // every, "probe_passes": passes, "probe_texts": self.tracker.n_probe,
                           "of_texts": texts, "train_examples": examples, "share": share,
                           "passes_per_check": mult,
                           "probe_share_planned": mult * passes * self.tracker.n_probe / (3 * examples)}

    def _warn_short_probe(self, loader: Any) -> None:
        """Warn once when probe texts are cut at ``max_length`` while the training examples are longer: the
        probe then compares only the first ``max_length`` tokens of what the model is trained on."""
        limit = self.tracker.max_length
        cut = sum(1 for e in self.tracker.examples if len(e["input_ids"]) >= limit)
        longest = _longest_training_example(loader)
        if not cut or longest is None or longest <= limit:
            return
        warnings.warn(f"LayerProbeCallback: {cut} of {len(self.tracker.examples)} probe texts are cut at "
                      f"max_length={limit} tokens while training examples reach {longest}: the probe compares only "
                      f"their first {limit} tokens (pass max_length={longest} to see all; the probe's cost grows with "
                      "it)", LayerProbeWarning, stacklevel=3)

    def _trained_model(self) -> nn.Module:
        """The model the Trainer passed to :meth:`on_train_begin`."""
        if self._model is None:
            raise LayerProbeError("LayerProbeCallback: on_train_begin has not run yet (no model)")
        return self._model

    def _share(self) -> None:
        """Broadcast rank 0's rows and frozen parameter names; every other rank keeps the same rows
        (so :meth:`advice` answers there too) and freezes the same parameters."""
        import torch.distributed as dist

        model = self._trained_model()
        names: list[Any] = [[n for n, p in model.named_parameters() if not p.requires_grad] if self.is_main else None,
                            self.tracker.rows if self.is_main else None,
                            self.tracker.revert_rows if self.is_main else None]
        dist.broadcast_object_list(names, src=0)
        if not self.is_main:
            self.tracker.rows = list(names[1] or [])
            self.tracker.revert_rows = dict(names[2] or {})
        if self.policy is None:
            return
        frozen: set[str] = set(names[0] or ())
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


def _is_fsdp(model: nn.Module) -> bool:
    """Sharded parameters (FSDP2 ``fully_shard`` / DTensor, or an FSDP1 wrapper)."""
    kinds: tuple[type, ...] = ()
    try:
        from torch.distributed.fsdp import FSDPModule

        kinds = (FSDPModule,)
    except ImportError:  # pragma: no cover - older torch
        pass
    for m in model.modules():
        if isinstance(m, kinds) or type(m).__name__ == "FullyShardedDataParallel":
            return True
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _check_ddp_freezing(args, model) -> None:
    """Online freezing under DDP needs the reducer to accept parameters without gradients."""
    find_unused = getattr(args, "ddp_find_unused_parameters", None)
    if find_unused is None:  # what the Trainer then uses (transformers 5: activation checkpointing, model or args)
        on = getattr(model, "is_activation_checkpointing", None)
        if on is None:  # older transformers
            on = getattr(model, "is_gradient_checkpointing", False)
        find_unused = not (bool(on) or bool(getattr(args, "activation_checkpointing", False)))
    if not find_unused:
        raise LayerProbeError(
            "LayerProbeCallback: freezing during a DDP run needs ddp_find_unused_parameters=True in "
            "TrainingArguments (frozen parameters get no gradient; with False DDP stops with 'Expected to have "
            "finished reduction in the prior iteration'); or track without a freeze policy")


def _longest_training_example(loader: Any, sample: int = 256) -> int | None:
    """The most tokens among the first ``sample`` examples of the Trainer's training set (``input_ids``), or None
    when it cannot be looked at without iterating the loader (an iterable dataset, examples without ids)."""
    dataset = getattr(loader, "dataset", None)

    def tokens(ids: Any) -> int:
        if isinstance(ids, (str, bytes)):
            raise TypeError("text, not token ids")
        shape = getattr(ids, "shape", None)
        return int(shape[-1]) if shape is not None and len(shape) else len(ids)  # [L] or [1, L]: the last axis

    try:
        n = min(len(dataset), sample)  # type: ignore[arg-type]
        lengths = [tokens(dataset[i]["input_ids"]) for i in range(n)]  # type: ignore[index]
    except Exception:  # noqa: BLE001 - any dataset layout: no warning rather than a failed run
        return None
    return max(lengths) if lengths else None

