"""Online freeze policies: decide, during training, which bottom prefix to freeze.

* :class:`FreezePolicy` — the simple threshold policy: freeze entries whose per-interval change
  stayed below a threshold for ``patience`` checks.
* :class:`AutoFreezePolicy` — the same-run policy behind ``LayerProbeCallback(auto_freeze=True)``:
  freezes the advised prefix once each of its entries has settled (learning-rate-normalised
  change), and hands the frozen prefix to a :class:`~layerprobe.freezing.prefix_cache.PrefixCache`.

Both act through :meth:`decide`/``observe`` called by :class:`~layerprobe.tracking.tracker.Tracker` after
each check, keep the frozen set a bottom prefix (embeddings first) that never shrinks, and log
every decision with its numbers.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from layerprobe.errors import LayerProbeError, one_line
from layerprobe.freezing.apply import freeze, trainable_parameters
from layerprobe.io.outputs import atomic_write_text
from layerprobe.model.blocks import Blocks
from layerprobe.options import CSV_OPTIONS

if TYPE_CHECKING:  # pragma: no cover
    from layerprobe.freezing.prefix_cache import PrefixCache
    from layerprobe.freezing.rule import Thresholds

__all__ = ["DEFAULT_AUTO_RULE", "LOG_COLUMNS", "AutoFreezePolicy", "FreezePolicy", "policy_state", "restore_policy_state"]

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
        return atomic_write_text(path, self.log_frame().to_csv(**CSV_OPTIONS))




# --------------------------------------------------------------------------------------------
# Same-run auto freeze
# --------------------------------------------------------------------------------------------

#: The default rule of the same-run policy: the static advice's default (CKA to the start >= 0.99; the
#: freeze study's fit on Rotten Tomatoes, docs/freeze_study.md). Replayed on the study's recorded full
#: runs it freezes the embeddings + 1 block at 24% of every Rotten Tomatoes run and the embeddings at 24% of
#: every BBC News run, the static advice at the end of each run. The earlier defaults were unsafe there: CKA
#: >= 0.95 froze embeddings + 4 blocks at 21% of a Trainer run and kept 93.3% of full fine-tuning accuracy,
#: and the relative rule at 5% advises embeddings + 2 blocks on Rotten Tomatoes (98.7% over three seeds).
DEFAULT_AUTO_RULE: dict[str, Any] = {"min_cka": 0.99, "max_relative_change": None, "use_interval": False}

LOG_COLUMNS = ("step", "block", "cka_to_start", "change", "lr_sum", "speed", "peak_speed", "advised_streak",
               "settled_streak", "action", "reason", "frozen_prefix", "trainable_params")


@dataclass
class AutoFreezePolicy:
    """Freeze the advised bottom prefix during the run, once each of its entries has settled.

    At every tracker check (after the first ``warmup_checks``), for each entry *i*:

    * ``d_i = 1 - CKA(start, now)`` — how far its representation has moved; the static rule
      (:func:`~layerprobe.freezing.rule.recommend` with ``thresholds``) applied to these values gives
      the *current advice*, a bottom prefix;
    * ``speed_i = change_i / lr_sum`` — its change over the last interval per unit of learning
      rate (``change = 1 - CKA(previous check, now)``, ``lr_sum`` the learning rates applied in
      the interval), so a decaying schedule is not mistaken for convergence; its running maximum
      is ``peak_i``.

    An entry is *advised* at a check when it lies in the current advice, and *settled* when
    ``speed_i <= settle * max(peak_i, speed of the fastest block now)``: it has slowed to a
    fraction of its own peak, or it moves at a fraction of the pace of the block that moves most. The frozen prefix grows (never shrinks) to the longest bottom
    prefix whose entries have been advised **and** settled for ``patience`` consecutive checks;
    at least ``thresholds.min_train_blocks`` blocks keep training. Without a learning rate
    (``lr_sum`` NaN) the raw change is used as the speed.

    With ``cache=True``, once the embeddings and ``k >= 1`` blocks are frozen a
    :class:`~layerprobe.freezing.prefix_cache.PrefixCache` stands in for them (re-attached, and refilled,
    when the prefix grows): later epochs stop recomputing the frozen prefix. The frozen prefix then
    runs in eval mode (no dropout there). The cache stores training-mode passes only
    (``store_in_eval=False``): an evaluation loop and the tracker's probe are served from it but add
    nothing to it. A model the cache cannot serve (e.g. the decoder stack of an
    encoder-decoder model) keeps training with plain freezing: a
    :class:`~layerprobe.freezing.prefix_cache.PrefixCacheOffWarning` says why, and so does
    :attr:`cache_refused` (or the cache's ``stats()["disabled"]`` when a forward pass showed it).

    Every decision for every entry is appended to :attr:`log` (:data:`LOG_COLUMNS`).

    The current advice is :func:`~layerprobe.freezing.rule.recommend`'s on the check's measurements:
    with a ``tolerance`` (or, without one, once the shipped ``predictor.json`` makes the prediction the default
    rule and the check has the best shipped predictor's measurement) the largest prefix whose
    *predicted* accuracy loss is within it (from the relative CKA and drift, or the revert test when the
    tracker runs it: ``Tracker(revert=True)``), else the CKA rule with ``thresholds``.

    Args:
        thresholds: the rule's knobs (default :data:`DEFAULT_AUTO_RULE`: CKA to the start >= 0.99).
        tolerance: the accuracy loss accepted, in [0, 1): the prediction decides what is advised.
        predictor: a :class:`~layerprobe.freezing.predict.Predictor` to predict with instead of the best
            shipped one (its measurements must be at the check: a ``revert_*`` one needs
            ``Tracker(revert=True)``); it decides the advice.
        settle: fraction of its own peak speed below which an entry counts as settled.
        patience: consecutive checks an entry must be advised and settled before it freezes.
        warmup_checks: checks (after the start) that only observe (the profile is not formed yet).
        wait_for_lr_peak: also only observe while the mean learning rate per step still rises
            (the schedule's warm-up): the block profile forms once the rate has peaked.
        cache: attach a prefix cache to the frozen prefix.
        cache_dtype: storage dtype of the cache (``torch.float32`` if None).
    """

    thresholds: Thresholds | None = None
    tolerance: float | None = None
    predictor: Any = None
    settle: float = 0.5
    patience: int = 2
    warmup_checks: int = 2
    cache: bool = True
    cache_dtype: Any = None
    wait_for_lr_peak: bool = True
    log: list[dict] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    freeze_steps: dict[str, int] = field(default_factory=dict)
    prefix_cache: PrefixCache | None = field(default=None, repr=False)
    cache_refused: str | None = field(default=None, repr=False)
    _checks: int = field(default=0, repr=False)
    _last_rate: float = field(default=math.nan, repr=False)
    _lr_peaked: bool = field(default=False, repr=False)
    _last_step: int | None = field(default=None, repr=False)
    _peak: dict[str, float] = field(default_factory=dict, repr=False)
    _advised: dict[str, int] = field(default_factory=dict, repr=False)
    _settled: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from layerprobe.freezing.rule import Thresholds

        if self.thresholds is None:
            self.thresholds = Thresholds(**DEFAULT_AUTO_RULE)
        if self.tolerance is not None:
            from layerprobe.freezing.predict import check_tolerance

            self.tolerance = check_tolerance(self.tolerance)
        if self.predictor is not None:  # a wrong type or a feature no check measures: refused now, not mid-run
            from layerprobe.freezing.predict import check_predictor

            self.predictor = check_predictor(self.predictor, where="AutoFreezePolicy: predictor")
        if not (0 < self.settle <= 1 and math.isfinite(self.settle)):
            raise LayerProbeError(f"settle must be in (0, 1], got {self.settle=}")
        if int(self.patience) < 1:
            raise LayerProbeError(f"patience must be ≥ 1, got {self.patience=}")
        if int(self.warmup_checks) < 0:
            raise LayerProbeError(f"warmup_checks must be ≥ 0, got {self.warmup_checks=}")

    def observe(self, step: int, rows: list[dict], model: nn.Module, blocks: Blocks,
                revert: list[dict] | None = None) -> list[str]:
        """Take one check's rows (:class:`~layerprobe.tracking.tracker.Tracker` columns) and, optionally, its
        revert-test rows; freeze; return the newly frozen names."""
        from layerprobe.freezing.rule import recommend

        self._checks += 1
        by = {r["block"]: r for r in rows}
        order = [n for n in blocks.names if n in by]
        speeds = {}
        for n in order:
            r = by[n]
            c, lr = r.get("change", math.nan), r.get("lr_sum", math.nan)
            sp = c / lr if (lr is not None and math.isfinite(lr) and lr > 0) else c
            speeds[n] = sp
            if math.isfinite(sp) and n not in self.frozen:
                self._peak[n] = max(self._peak.get(n, 0.0), sp)
        block_speeds = [v for n, v in speeds.items() if n != "embeddings" and math.isfinite(v)]
        top_now = max(block_speeds) if block_speeds else math.nan
        lr_sum = next((float(r.get("lr_sum", math.nan)) for r in rows), math.nan)
        steps_in = int(step) - (self._last_step if self._last_step is not None else 0)
        rate = lr_sum / steps_in if steps_in > 0 and math.isfinite(lr_sum) else math.nan
        if not self._lr_peaked and (not math.isfinite(rate) or
                                    (math.isfinite(self._last_rate) and rate <= self._last_rate * (1 + 1e-9))):
            self._lr_peaked = True  # the mean rate stopped rising: warm-up is over (or no lr is known)
        rising = math.isfinite(self._last_rate) and math.isfinite(rate) and rate > self._last_rate * (1 + 1e-9)
        self._last_rate = rate
        self._last_step = int(step)
        observing = self._checks <= self.warmup_checks or (self.wait_for_lr_peak and not self._lr_peaked)
        n_params = {n: 0 for n in order}
        for pname, p in model.named_parameters():
            e = blocks.entry_of(pname)
            if e is not None and e.name in n_params:
                n_params[e.name] += p.numel()
        entries = [{"name": n, "kind": "embeddings" if n == "embeddings" else "block", "n_params": n_params[n],
                    "weight_drift": by[n].get("weight_drift", math.nan), "cka": by[n].get("cka_to_start")}
                   for n in order]
        unavailable = None
        if self.predictor is not None:  # e.g. cka_rel while no block has changed yet: no advice at this check
            from layerprobe.freezing.predict import prefix_features

            if self.predictor.name not in prefix_features(entries, revert):
                unavailable = f"the {self.predictor.name} predictor's measurement is undefined at this check"
        advised = set() if unavailable else set(recommend(entries, self.thresholds, tolerance=self.tolerance,
                                                          revert=revert, predictor=self.predictor).freeze)
        reasons: dict[str, tuple[str, str]] = {}
        new: list[str] = []
        blocked_by = None
        for n in order:
            sp, peak = speeds[n], self._peak.get(n, math.nan)
            ref = max(v for v in (peak, top_now, 0.0) if math.isfinite(v))
            settled = math.isfinite(sp) and ref > 0 and sp <= self.settle * ref
            self._advised[n] = self._advised.get(n, 0) + 1 if (n in advised or n in self.frozen) else 0
            self._settled[n] = self._settled.get(n, 0) + 1 if (settled or n in self.frozen) else 0
            if n in self.frozen:
                reasons[n] = ("frozen", f"frozen at step {self.freeze_steps[n]}")
                continue
            if observing:
                reasons[n] = ("train", f"observing: check {self._checks} (warm-up: {self.warmup_checks} checks"
                                       f"{_lr_note(self._lr_peaked, rising)})")
                continue
            if blocked_by is not None:
                reasons[n] = ("train", f"{blocked_by} below still trains (the frozen set stays a bottom prefix)")
                continue
            if self._advised[n] < self.patience:
                why = unavailable or "not in the current advice" if n not in advised else \
                    f"advised for {self._advised[n]} < {self.patience} checks"
            elif self._settled[n] < self.patience:
                why = (f"speed {sp:.3g} > {self.settle:g} x max(own peak, fastest block now) {ref:.3g}" if not settled
                       else f"settled for {self._settled[n]} < {self.patience} checks")
            else:
                new.append(n)
                reasons[n] = ("freeze", f"advised for {self._advised[n]} and settled (speed {sp:.3g} <= "
                                        f"{self.settle:g} x {ref:.3g}) for {self._settled[n]} checks")
                continue
            reasons[n] = ("train", why)
            blocked_by = n
        trainable = freeze(model, new, blocks) if new else trainable_parameters(model)
        for n in new:
            self.frozen.append(n)
            self.freeze_steps[n] = int(step)
        if new and self.cache:
            self._attach_cache(model, blocks)
        prefix = len(self.frozen)
        for n in order:
            action, reason = reasons[n]
            r = by[n]
            self.log.append({
                "step": int(step), "block": n, "cka_to_start": float(r.get("cka_to_start", math.nan)),
                "change": float(r.get("change", math.nan)), "lr_sum": float(r.get("lr_sum", math.nan)),
                "speed": float(speeds[n]), "peak_speed": float(self._peak.get(n, math.nan)),
                "advised_streak": int(self._advised[n]), "settled_streak": int(self._settled[n]),
                "action": action, "reason": reason, "frozen_prefix": prefix, "trainable_params": int(trainable),
            })
        return new

    def _attach_cache(self, model: nn.Module, blocks: Blocks) -> None:
        k = sum(1 for n in self.frozen if n != "embeddings")
        emb_ok = "embeddings" not in blocks.names or "embeddings" in self.frozen
        if k < 1 or not emb_ok:
            return
        from layerprobe.freezing.prefix_cache import PrefixCache, PrefixCacheOffWarning

        try:
            if self.prefix_cache is None:
                import torch

                self.prefix_cache = PrefixCache(model, k, blocks=blocks, dtype=self.cache_dtype or torch.float32,
                                                store_in_eval=False)  # evaluation passes: served only
            else:
                self.prefix_cache.attach(k)
        except LayerProbeError as e:  # a model the cache cannot serve: keep training with plain freezing
            self.cache = False
            self.cache_refused = str(e)
            warnings.warn(f"layerprobe auto-freeze: no prefix cache ({e}); the frozen prefix is computed as usual",
                          PrefixCacheOffWarning, stacklevel=2)

    def close(self) -> None:
        """Detach the prefix cache (the model is left frozen as decided)."""
        if self.prefix_cache is not None:
            self.prefix_cache.detach()

    def summary(self) -> dict:
        """Frozen entries with the step each froze at, and the cache's counters."""
        return {"frozen": list(self.frozen), "freeze_steps": dict(self.freeze_steps), "checks": self._checks,
                "cache": self.prefix_cache.stats() if self.prefix_cache is not None else None,
                "cache_refused": self.cache_refused}

    def log_frame(self):
        """The decision log as a pandas DataFrame (:data:`LOG_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame(self.log, columns=list(LOG_COLUMNS))

    def write_csv(self, path: str | os.PathLike) -> str:
        """Write the decision log atomically; returns the path."""
        return atomic_write_text(path, self.log_frame().to_csv(**CSV_OPTIONS))


def _lr_note(peaked: bool, rising: bool) -> str:
    """Why the warm-up still waits on the learning rate: only say "rising" when it was seen to rise
    (a schedule without warm-up gave that reason at the first check, with one rate known)."""
    if peaked:
        return ""
    return " and the learning rate still rising" if rising else " and the learning-rate trend not known yet (one reading)"


#: the fields of each policy that change during a run (what a resumed run needs back)
_RUN_STATE = {"FreezePolicy": ("log", "frozen", "_streak"),
              "AutoFreezePolicy": ("log", "frozen", "freeze_steps", "cache", "cache_refused", "_checks", "_last_rate",
                                   "_lr_peaked", "_last_step", "_peak", "_advised", "_settled")}


def policy_state(policy: FreezePolicy | AutoFreezePolicy) -> dict[str, Any]:
    """The run state of a policy as JSON-able values (:func:`restore_policy_state` reads it back)."""
    import copy

    return {k: copy.deepcopy(getattr(policy, k)) for k in _RUN_STATE.get(type(policy).__name__, ())}


def _run_state_ok(key: str, v: Any) -> bool:
    """Whether ``v`` (read back from JSON) has the shape of the run-state field ``key``."""
    def num(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    def count(x: Any) -> bool:
        return type(x) is int  # noqa: E721 (true is not a count)

    if key == "log":
        return isinstance(v, list) and all(isinstance(r, dict) for r in v)
    if key == "frozen":
        return isinstance(v, list) and all(isinstance(n, str) for n in v)
    if key in ("cache", "_lr_peaked"):
        return isinstance(v, bool)
    if key == "cache_refused":
        return v is None or isinstance(v, str)
    if key == "_last_rate":
        return num(v)
    if key in ("_checks", "_last_step"):
        return count(v) or (key == "_last_step" and v is None)
    ok = num if key == "_peak" else count  # _streak, freeze_steps, _advised, _settled: counts or steps per entry
    return isinstance(v, dict) and all(isinstance(n, str) and ok(x) for n, x in v.items())


def restore_policy_state(policy: FreezePolicy | AutoFreezePolicy, state: dict[str, Any]) -> None:
    """Put back :func:`policy_state`'s values (the frozen prefix itself is re-applied by the caller).

    Raises:
        ValueError: ``state`` is not an object or a field has the wrong shape (e.g. ``frozen`` not a list of entry
            names), before any field is set (else the run would fail at a later check, from inside the Trainer).
    """
    if not isinstance(state, dict):
        raise ValueError(f"the policy state must be an object, got {type(state).__name__}")
    keys = [k for k in _RUN_STATE.get(type(policy).__name__, ()) if k in state]
    bad = next((k for k in keys if not _run_state_ok(k, state[k])), None)
    if bad is not None:
        raise ValueError(f"policy.{bad} has the wrong shape: {one_line(repr(state[bad]), 60)}")
    for k in keys:
        setattr(policy, k, state[k])
