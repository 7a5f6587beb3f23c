"""Predict what freezing each bottom prefix costs: accuracy relative to full fine-tuning, compute and memory saved.

The freeze study (``docs/freeze_study.md``, ``docs/freeze_study_plan.md``) measured, on its tasks
(``predictor.json`` names them), what freezing the embeddings + ``k`` bottom blocks from the first step costs
against full fine-tuning, and fit
for each candidate measurement a monotone map from a *prefix feature* ``x(k)`` (larger = the tuned model
relies more on the prefix's change) to the accuracy loss ``1 − acc_frozen / acc_full``. The fitted maps
ship as ``predictor.json`` beside this module (isotonic knots, the residual interval, and which tasks
each was fit on). :func:`predict_prefixes` applies the best candidate whose measurements are present:

* ``revert_kl`` / ``revert_disagree`` — the tuned model with the prefix put back to the base weights, run
  on the probe texts (:func:`layerprobe.revert_test`): how far its outputs move (needs both models' weights
  and the head);
* ``cka_rel`` / ``cka_abs`` / ``drift_rel`` — from the per-entry CKA and weight drift of any comparison.

Each prefix gets a predicted relative accuracy with an interval (the fit's 10th–90th residual percentiles),
the share of a training epoch's compute it saves (with the frozen-prefix cache, from the step cost per
entry) and the training memory it saves (gradients and AdamW state of its parameters: 12 bytes per fp32
parameter). The advice is the largest prefix whose predicted loss, and that of every smaller prefix, is
within the user's tolerance — or, for a predictor fit to decide on its interval's pessimistic end
(``decide="upper"``), whose predicted loss *plus the interval's upper residual* is.

>>> entries = [{"name": "embeddings", "kind": "embeddings", "cka": 1.0, "weight_drift": 0.001, "n_params": 100}] + [
...     {"name": f"block.{i}", "kind": "block", "cka": c, "weight_drift": 0.01, "n_params": 50}
...     for i, c in enumerate([0.999, 0.99, 0.9, 0.5])]
>>> feats = prefix_features(entries)
>>> [round(v, 3) for v in feats["cka_rel"]]
[0.0, 0.002, 0.02, 0.2, 1.0]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from layerprobe.errors import LayerProbeError

__all__ = ["FEATURES", "MAX_KNOTS", "PrefixPrediction", "Predictor", "check_predictor", "default_predictor",
           "predict_prefixes", "prefix_features", "shipped_meta",
           "check_tolerance", "shipped_prefers_revert"]

PREDICTOR_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "predictor.json")
BYTES_PER_FROZEN_PARAM = 12  # fp32 gradient + AdamW's two moments, not kept for a frozen parameter
#: the prefix features the library measures (:func:`prefix_features`): a predictor of another one cannot run here
FEATURES = ("cka_rel", "cka_abs", "drift_rel", "revert_kl", "revert_disagree")
#: knots accepted in one predictor (the shipped ones have 9-14)
MAX_KNOTS = 10_000
#: the largest magnitude of a knot or interval value: sums and differences of two stay finite (no inf, no NaN)
MAX_VALUE = 1e300


def _pessimistic_change(entry: Mapping[str, Any]) -> float | None:
    c = entry.get("cka")
    if c is None or not math.isfinite(c):
        return None
    ci = entry.get("cka_ci") or [c]
    lo = ci[0] if ci[0] is not None and math.isfinite(ci[0]) else c
    return 1.0 - min(float(c), float(lo))


def _prefix_max(values: Sequence[float | None], k: int) -> float | None:
    """The largest value among entries ``0..k`` (embeddings + ``k`` blocks); None if any is missing."""
    part = values[: k + 1]
    return None if any(v is None for v in part) else max(part)  # type: ignore[type-var]


def prefix_features(entries: Sequence[Mapping[str, Any]], revert: Sequence[Mapping[str, Any]] | None = None
                    ) -> dict[str, list[float]]:
    """Every candidate's feature per prefix ``k = 0..n_blocks`` (embeddings + ``k`` blocks) that the
    measurements allow; a candidate whose inputs are missing is absent.

    Args:
        entries: the comparison's entries, embeddings first then blocks bottom-up (``cka``, ``cka_ci``,
            ``weight_drift``, ``kind``).
        revert: optional rows of a revert test, one per ``k``: ``{"k", "kl", "agreement"}``.
    """
    entries = [e for e in entries if e.get("kind") in ("embeddings", "block")]
    if not entries or entries[0].get("kind") != "embeddings":
        return {}
    n = len(entries)
    ks = range(n)  # k = 0..n_blocks
    out: dict[str, list[float]] = {}
    change = [_pessimistic_change(e) for e in entries]
    if all(c is not None for c in change):
        top = change[-1]
        abs_ = [_prefix_max(change, k) for k in ks]
        out["cka_abs"] = [float(v) for v in abs_ if v is not None]
        if top is not None and top > 0:
            rel = [c / top if c is not None else None for c in change]
            out["cka_rel"] = [float(_prefix_max(rel, k) or 0.0) for k in ks]
    drift = [e.get("weight_drift") for e in entries]
    if all(d is not None and math.isfinite(d) for d in drift) and drift[-1]:
        rel_d = [d / drift[-1] for d in drift]
        out["drift_rel"] = [float(_prefix_max(rel_d, k) or 0.0) for k in ks]
    if revert:
        by_k = {int(r["k"]): r for r in revert}
        if all(k in by_k for k in ks):
            out["revert_kl"] = [float(by_k[k]["kl"]) for k in ks]
            out["revert_disagree"] = [1.0 - float(by_k[k]["agreement"]) for k in ks]
    return out


@dataclass(frozen=True)
class Predictor:
    """One fitted candidate: a non-decreasing map from its prefix feature to the accuracy loss."""

    name: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    interval: tuple[float, float]
    fit_on: tuple[str, ...]
    label_free: bool = True
    #: how the advice reads the prediction: ``"point"`` — the predicted loss within the tolerance; ``"upper"`` — the
    #: interval's pessimistic end (predicted loss + ``interval[1]``) within the tolerance
    decide: str = "point"
    #: its leave-one-task-out scores in the freeze study (``tasks``, ``tasks_ge_985``, ...; empty: not scored)
    loto: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def validated(self) -> bool:
        """Scored leave-one-task-out on at least three held-out tasks."""
        return int(self.loto.get("tasks") or 0) >= 3

    def decision_loss(self, x: float) -> float:
        """The loss the advice holds to the tolerance: the prediction, or its interval's upper end (``decide``).

        >>> Predictor("t", (0.0, 1.0), (0.0, 0.1), (-0.01, 0.02), ("a",), decide="upper").decision_loss(0.5)
        0.07
        """
        return self.loss(x) + (self.interval[1] if self.decide == "upper" else 0.0)

    @property
    def label(self) -> str:
        """Its name as the advice cites it (``revert_disagree``, or ``revert_disagree, upper end`` for ``upper``)."""
        return self.name if self.decide == "point" else f"{self.name}, {self.decide} end"

    def loss(self, x: float) -> float:
        """The predicted accuracy loss at feature ``x`` (linear between knots, flat outside).

        >>> Predictor("t", (0.0, 1.0), (0.0, 0.1), (-0.01, 0.01), ("a",)).loss(0.5)
        0.05
        """
        xs, ys = self.xs, self.ys
        if x != x:  # NaN: no prediction (never the flat end of the map)
            return math.nan
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        for i in range(1, len(xs)):
            if x <= xs[i]:
                t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
                return ys[i - 1] + t * (ys[i] - ys[i - 1])
        return ys[-1]  # pragma: no cover - the loop always returns

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "predictor", *, monotone: bool = True) -> Predictor:
        """A predictor from its JSON form (an entry of ``predictor.json``'s ``predictors``), checked: a
        string ``name``, lists ``xs``/``ys`` of at most :data:`MAX_KNOTS` finite numbers with ``xs``
        increasing and ``ys`` non-decreasing, the interval ``[lo, hi]`` with ``lo <= hi``, ``fit_on`` a list of
        strings, ``label_free`` a boolean and ``decide`` (optional) ``"point"`` or ``"upper"`` (``"upper"``: with
        ``hi >= 0``, a pessimistic end). A bad one is a one-line :class:`LayerProbeError` naming ``source``.
        Numbers are at most :data:`MAX_VALUE` in size. ``monotone=False`` skips the order of ``ys`` (a
        :class:`Predictor` built directly, see :func:`check_predictor`).

        >>> Predictor.from_dict({"name": "cka_rel", "xs": [0, 1], "ys": [0, 0.2], "interval": [-0.01, 0.01],
        ...                      "fit_on": ["a"]}).loss(0.25)
        0.05
        """
        def bad(why: str) -> LayerProbeError:
            return LayerProbeError(f"{source}: not a freeze predictor: {why}")

        if not isinstance(d, Mapping):
            raise bad(f"expected an object, got {type(d).__name__}")
        missing = [k for k in ("name", "xs", "ys", "interval") if k not in d]
        if missing:
            raise bad(f"missing {missing[0]!r}")
        name = d["name"]
        if not isinstance(name, str) or not name:
            raise bad(f"name must be a non-empty string, got {_shown(name)}")

        def numbers(key: str, at_most: int) -> tuple[float, ...]:
            v = d[key]
            if not isinstance(v, (list, tuple)):
                raise bad(f"{name!r}: {key} must be a list of numbers, got {type(v).__name__}")
            if len(v) > at_most:
                raise bad(f"{name!r}: {key} has {len(v):,} values, more than the {at_most:,} accepted")
            out = []
            for i, x in enumerate(v):
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise bad(f"{name!r}: {key}[{i}] must be a number, got {_shown(x)}")
                try:
                    f = float(x)
                except OverflowError:
                    f = math.inf
                if not math.isfinite(f):
                    raise bad(f"{name!r}: {key}[{i}] is not a finite number")
                if abs(f) > MAX_VALUE:  # before: xs [-1e308, 1e308] interpolated as flat, ys to -inf
                    raise bad(f"{name!r}: {key}[{i}] is beyond ±{MAX_VALUE:g}")
                out.append(f)
            return tuple(out)

        xs, ys = numbers("xs", MAX_KNOTS), numbers("ys", MAX_KNOTS)
        interval = numbers("interval", 2)
        if not xs or len(xs) != len(ys):
            raise bad(f"{name!r}: needs as many xs as ys, at least one (got {len(xs)} and {len(ys)})")
        if len(interval) != 2 or interval[0] > interval[1]:
            raise bad(f"{name!r}: interval must be [lo, hi] with lo <= hi, got {list(interval)}")
        if not all(a < b for a, b in zip(xs, xs[1:])):
            raise bad(f"{name!r}: xs must be increasing")
        if monotone and not all(a <= b for a, b in zip(ys, ys[1:])):
            raise bad(f"{name!r}: ys must be non-decreasing")
        fit_on = d.get("fit_on") or []
        if not isinstance(fit_on, (list, tuple)) or not all(isinstance(t, str) for t in fit_on):
            raise bad(f"{name!r}: fit_on must be a list of task names, got {_shown(fit_on)}")
        label_free = d.get("label_free", True)
        if not isinstance(label_free, bool):
            raise bad(f"{name!r}: label_free must be true or false, got {_shown(label_free)}")
        decide = d.get("decide", "point")
        if decide not in ("point", "upper"):
            raise bad(f"{name!r}: decide must be 'point' or 'upper', got {_shown(decide)}")
        if decide == "upper" and interval[1] < 0:  # else 'upper' would advise more than the point prediction
            raise bad(f"{name!r}: decide 'upper' needs an interval whose upper end is >= 0, got {list(interval)}")
        raw = d.get("loto")
        loto: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        for key in ("tasks", "tasks_ge_985"):  # counts of held-out tasks: read as numbers by validated and the notes
            v = loto.get(key)
            if v is not None and (type(v) is not int or not 0 <= v <= 10_000):
                raise bad(f"{name!r}: loto.{key} must be a count of tasks, got {_shown(v)}")
        return cls(name=name, xs=xs, ys=ys, interval=(interval[0], interval[1]), fit_on=tuple(fit_on),
                   label_free=label_free, decide=decide, loto=loto)


def _shown(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def check_predictor(predictor: Any, revert: bool | None = None, where: str = "predictor") -> Predictor | None:
    """``predictor`` if the library can feed it: a :class:`Predictor` (or its JSON dict) whose feature is one of
    :data:`FEATURES`, and, when ``revert`` is False (no revert test will run), not a ``revert_*`` one; else a
    one-line :class:`LayerProbeError` (before any training or model run)."""
    if predictor is None:
        return None
    if isinstance(predictor, Mapping):
        predictor = Predictor.from_dict(predictor, where)
    if not isinstance(predictor, Predictor):
        from layerprobe.errors import LayerProbeTypeError

        raise LayerProbeTypeError(f"{where} must be a layerprobe Predictor (Predictor.from_dict), got "
                                  f"{type(predictor).__name__}")
    # one built directly gets the same checks (before: decide='lower' read as 'point', empty xs an IndexError)
    Predictor.from_dict({"name": predictor.name, "xs": predictor.xs, "ys": predictor.ys, "interval": predictor.interval,
                         "fit_on": predictor.fit_on, "label_free": predictor.label_free, "decide": predictor.decide,
                         "loto": predictor.loto}, where, monotone=False)
    if predictor.name not in FEATURES:
        raise LayerProbeError(f"{where} {predictor.name!r} predicts from a measurement layerprobe does not take; "
                              f"expected one of {', '.join(FEATURES)}")
    if revert is False and predictor.name.startswith("revert"):
        raise LayerProbeError(f"{where} {predictor.name!r} needs the revert test at every check: "
                              "Tracker(revert=True) / LayerProbeCallback(revert_test=True)")
    return predictor


@lru_cache(maxsize=1)
def _shipped() -> tuple[tuple[Predictor, ...], dict]:
    try:
        with open(PREDICTOR_FILE, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise LayerProbeError(f"{PREDICTOR_FILE}: the shipped freeze predictor is unreadable ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("predictors"), list):
        raise LayerProbeError(f"{PREDICTOR_FILE}: the shipped freeze predictor has no list of 'predictors'")
    preds = tuple(Predictor.from_dict(p, PREDICTOR_FILE) for p in raw["predictors"])
    return preds, {k: v for k, v in raw.items() if k != "predictors"}


def shipped_meta() -> dict:
    """What the shipped file says about itself: ``fit_on``, ``validated``, ``default_rule``, ``tolerance_default``."""
    return dict(_shipped()[1])


def shipped_prefers_revert() -> bool:
    """Whether the best shipped predictor needs the revert test (then :func:`layerprobe.compare` runs it
    by default where it can)."""
    preds, _ = _shipped()
    return bool(preds) and preds[0].name.startswith("revert")


def shipped_lead() -> Predictor | None:
    """The best shipped predictor (first in the study's leave-one-task-out ranking), or None."""
    preds, _ = _shipped()
    return preds[0] if preds else None


def decides_by_default(predictor: Predictor) -> bool:
    """Whether ``predictor`` decides the advice without a tolerance: the shipped file names the prediction its
    default rule (``default_rule``) and this is the predictor that earned it — the first, the best in the study's
    leave-one-task-out — not a fallback read where its measurement is missing."""
    return shipped_meta().get("default_rule") == "predictor" and predictor == shipped_lead()


def default_predictor(features: Mapping[str, Sequence[float]]) -> Predictor | None:
    """The best shipped predictor (in the study's leave-one-task-out ranking) whose feature is available."""
    preds, _ = _shipped()
    return next((p for p in preds if p.name in features), None)


@dataclass
class PrefixPrediction:
    """What freezing one bottom prefix is predicted to cost and save."""

    freeze: list[str]
    predicted_rel_acc: float
    interval: list[float]
    compute_saved: float
    memory_saved_mb: float
    within_tolerance: bool
    basis: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_tolerance(tolerance: object) -> float:
    """``tolerance`` as a float in [0, 1), or :class:`LayerProbeError` naming what was given."""
    import numbers

    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0.0 <= float(tolerance) < 1.0:
        raise LayerProbeError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
    return float(tolerance)


def predict_prefixes(entries: Sequence[Mapping[str, Any]], tolerance: float = 0.01,
                     revert: Sequence[Mapping[str, Any]] | None = None,
                     step_cost: Sequence[float] | None = None, min_train_blocks: int = 1,
                     predictor: Predictor | None = None) -> tuple[list[PrefixPrediction], int, Predictor | None]:
    """Predictions for every bottom prefix that leaves ``min_train_blocks`` blocks to train, and the advice.

    Args:
        entries: the comparison's entries (embeddings first).
        tolerance: the accuracy loss the user accepts, in [0, 1) (0.01: keep 99% of full fine-tuning).
        revert: optional revert-test rows (see :func:`prefix_features`).
        step_cost: share of a training step's compute per entry (same order as ``entries``; sums to at most
            1, the rest is the head and the optimizer); default: blocks by parameter count, embeddings 0.
        min_train_blocks: blocks that always train.
        predictor: the fitted map to use; default :func:`default_predictor`.

    Returns:
        ``(predictions, advised, predictor)``: one prediction per prefix ``k = 0..``; ``advised`` the index of
        the recommended prefix (-1: freeze nothing); the predictor used (None: no measurement to predict
        from, every prediction is NaN and nothing is advised).
    """
    check_tolerance(tolerance)
    entries = [e for e in entries if e.get("kind") in ("embeddings", "block")]
    feats = prefix_features(entries, revert)
    pred = check_predictor(predictor) if predictor is not None else default_predictor(feats)
    if pred is not None and pred.name not in feats:
        raise LayerProbeError(f"the {pred.name!r} predictor needs measurements this comparison lacks")
    if not entries or entries[0].get("kind") != "embeddings":
        return [], -1, None
    n_blocks = len(entries) - 1
    cost = list(step_cost) if step_cost is not None else _param_cost(entries)
    if len(cost) != len(entries):
        raise LayerProbeError(f"step_cost has {len(cost)} values for {len(entries)} entries")
    out: list[PrefixPrediction] = []
    advised, blocked = -1, False
    for k in range(max(0, n_blocks - min_train_blocks + 1)):
        names = [str(e["name"]) for e in entries[: k + 1]]
        mem = sum(int(e.get("n_params") or 0) for e in entries[: k + 1]) * BYTES_PER_FROZEN_PARAM / 2 ** 20
        saved = float(sum(cost[: k + 1]))
        if pred is None:
            out.append(PrefixPrediction(names, math.nan, [math.nan, math.nan], saved, mem, False, "none"))
            continue
        loss = pred.loss(feats[pred.name][k])
        lo, hi = loss + pred.interval[0], loss + pred.interval[1]
        ok = pred.decision_loss(feats[pred.name][k]) <= tolerance
        if ok and not blocked:
            advised = k
        blocked = blocked or not ok
        out.append(PrefixPrediction(names, 1.0 - loss, [1.0 - hi, 1.0 - lo], saved, mem, ok, pred.name))
    return out, advised, pred


def _param_cost(entries: Sequence[Mapping[str, Any]]) -> list[float]:
    """Default step cost: blocks share the step by parameter count; the embedding lookup costs ~nothing."""
    block_params = [float(e.get("n_params") or 0) if e.get("kind") == "block" else 0.0 for e in entries]
    total = sum(block_params)
    return [p / total if total else 0.0 for p in block_params]
