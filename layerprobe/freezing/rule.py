"""Turn per-entry measurements into freeze advice: a bottom prefix, with a reason per entry.

The rule (documented in README, calibrated in ``analyses/freeze_study.py``):

1. Walk the entries bottom-up, embeddings first.
2. An entry *qualifies* when its representation barely changed: CKA(base, tuned) >= ``min_cka``
   — using the lower end of the bootstrap interval when one was computed (``use_interval``) —
   and, if ``max_drift`` is set, its relative weight drift <= ``max_drift``; and, if
   ``max_relative_change`` is set, its change ``1 - CKA`` (upper end of the interval) is at most
   ``max_relative_change`` times the largest change among the blocks (a criterion relative to how
   much the top blocks moved, so it does not depend on how long or how hard the run trained).
   ``min_cka=None`` drops the absolute criterion.
3. Freeze the longest qualifying bottom prefix; the first entry that does not qualify and every
   entry above it train (freezing is only useful as a prefix: a frozen block above a trainable
   one still needs the backward pass through it).
4. At least ``min_train_blocks`` blocks always train.

Without CKA (weights-only comparison) the advice uses ``max_drift`` alone, and only if it was
given: weight drift is nearly flat across blocks (see REFERENCES.md), so a drift-only rule is
weak and layerprobe says so rather than guessing.

Savings are reported as the share of parameters frozen and the training compute saved. Given a
**measured** calibration (``prefix_savings=``, from
:func:`layerprobe.freezing.step_cost.calibrate_prefix_savings`: timed training steps per frozen and
cached prefix on the model, at the run's batch shape, one thread) ``est_compute_saving`` is the
measured share of a step's CPU time saved. Without it, an estimate — the same as the candidates'
``compute_saved``: the frozen blocks' share of the block parameters (their forward and backward,
skipped with the prefix cached), which ignores the embeddings' gradient and optimizer update and
under-estimates (17% for the embeddings + 1 block of MiniLM-L6, where 27-42% per step was measured).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Recommendation", "Thresholds", "decided_by", "recommend", "top_change"]


@dataclass(frozen=True)
class Thresholds:
    """The knobs of the freeze rule (CLI flags ``--min-cka``, ``--max-drift``, ...).

    The default ``min_cka`` 0.99 (on the bootstrap interval's lower end) comes from the freeze study's
    fit on Rotten Tomatoes (docs/freeze_study.md): it keeps 99.5% of full fine-tuning accuracy over three
    seeds there, statistically tied with the fit's pick (the relative rule at 3%, 99.2%); 0.95 advised
    one block more and kept 98.7%.
    """

    min_cka: float | None = 0.99
    max_drift: float | None = None
    use_interval: bool = True
    min_train_blocks: int = 1
    max_relative_change: float | None = None

    def __post_init__(self) -> None:
        from layerprobe.errors import LayerProbeError

        for name in ("min_cka", "max_relative_change"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
                raise LayerProbeError(f"{name} must be a number in [0, 1], got {v!r}")
        if self.max_drift is not None and not (isinstance(self.max_drift, (int, float))
                                               and math.isfinite(self.max_drift) and self.max_drift >= 0):
            raise LayerProbeError(f"max_drift must be a finite number >= 0, got {self.max_drift!r}")
        if isinstance(self.min_train_blocks, bool) or not isinstance(self.min_train_blocks, int) \
                or self.min_train_blocks < 0:
            raise LayerProbeError(f"min_train_blocks must be an integer >= 0, got {self.min_train_blocks!r}")


@dataclass
class Recommendation:
    """Which entries to freeze (a bottom prefix) and which to train, with reasons."""

    freeze: list[str]
    train: list[str]
    reasons: dict[str, str]
    thresholds: dict
    frozen_param_fraction: float
    basis: str
    est_compute_saving: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: one row per bottom prefix (``layerprobe.freezing.predict``): entries frozen, predicted accuracy relative
    #: to full fine-tuning with its interval, compute and memory saved, within the tolerance or not
    candidates: list[dict] = field(default_factory=list)
    #: the accuracy loss accepted (None: the CKA rule decided; the candidates are shown for information)
    tolerance: float | None = None
    #: the fitted predictor behind the candidates: name, tasks fit on, whether it was validated leave-one-task-out
    predictor: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def _repr_html_(self) -> str:
        """Jupyter: one row per entry (advised-frozen rows highlighted) with its reason, then the totals."""
        import html

        rows = []
        for name in [*self.freeze, *self.train]:
            frozen = name in self.freeze
            style = " style='background-color:#dbe9f6'" if frozen else ""
            rows.append(f"<tr{style}><td>{html.escape(name)}</td><td>{'FREEZE' if frozen else 'train'}</td>"
                        f"<td style='text-align:left'>{html.escape(self.reasons.get(name, ''))}</td></tr>")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return ("<table><thead><tr><th>entry</th><th>advice</th><th>reason</th></tr></thead><tbody>"
                + "".join(rows) + "</tbody></table>"
                + f"<p>frozen parameters: {self.frozen_param_fraction:.1%}; estimated training compute saved: "
                  f"{self.est_compute_saving:.0%}</p>" + (f"<ul>{notes}</ul>" if notes else ""))


def _fmt_cka(entry: dict) -> str:
    s = f"CKA {entry['cka']:.4f}"
    ci = entry.get("cka_ci")
    if ci and all(v is not None and math.isfinite(v) for v in ci):
        s += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return s


def _cmp(a: float, b: float) -> int:
    return (a > b) - (a < b)


def _decimals(value: float, limit: float, places: int = 4) -> int:
    """The fewest decimals (at least ``places``) at which ``value`` and ``limit``, both rounded, compare
    as the exact numbers do: a reason line never reads "0.9900 < 0.99" or "drift 0.0100 > 0.01".

    >>> _decimals(0.98991, 0.99), _decimals(0.989996, 0.99), _decimals(0.01000002, 0.01), _decimals(0.99, 0.99)
    (4, 6, 8, 4)
    """
    for k in range(places, 17):
        if _cmp(float(f"{value:.{k}f}"), float(f"{limit:.{k}f}")) == _cmp(value, limit):
            return k
    return 17


def _beside(value: float, limit: float, places: int = 4) -> str:
    """``value`` with enough decimals that it reads on its own side of ``limit`` (0.989996 < 0.99,
    never "0.9900 < 0.99").

    >>> _beside(0.98991, 0.99), _beside(0.989996, 0.99), _beside(0.99, 0.99), _beside(2e-5, 1e-5)
    ('0.9899', '0.989996', '0.9900', '0.00002')
    """
    k = _decimals(value, limit, places)
    return f"{value:.{k}f}" if k <= 16 else repr(value)


def top_change(entries: list[dict]) -> float:
    """The largest representation change ``1 - CKA`` among the blocks (point estimates; NaN if none)."""
    vals = [1.0 - e["cka"] for e in entries
            if e.get("kind") == "block" and e.get("cka") is not None and math.isfinite(e["cka"])]
    return max(vals) if vals else math.nan


def _qualifies(entry: dict, t: Thresholds, basis: str, top: float = math.nan) -> tuple[bool, str]:
    parts, ok = [], True
    if basis == "cka":
        cka = entry.get("cka")
        if cka is None or not math.isfinite(cka):
            return False, "CKA undefined"
        ci = entry.get("cka_ci")
        use_low = bool(t.use_interval and ci and ci[0] is not None and math.isfinite(ci[0]))
        value = ci[0] if (use_low and ci) else cka
        if t.min_cka is not None:
            ok = value >= t.min_cka
            shown = _beside(value, t.min_cka)
            what = f"{_fmt_cka(entry)}: lower bound {shown}" if use_low else \
                _fmt_cka(entry) if f"{cka:.4f}" == shown else f"{_fmt_cka(entry)} ({shown})"
            parts.append(f"{what} {'>=' if ok else '<'} {t.min_cka}")
        else:
            what = f"{_fmt_cka(entry)}: lower bound {value:.4f}" if use_low else _fmt_cka(entry)
        if t.max_relative_change is not None:
            limit = t.max_relative_change * top
            change = 1.0 - value
            rel_ok = math.isfinite(limit) and change <= limit
            head = "" if t.min_cka is not None else f"{what}: "
            k = _decimals(change, limit) if math.isfinite(limit) else 4  # both sides at the digits that decide
            parts.append(f"{head}change {change:.{k}f} {'<=' if rel_ok else '>'} {t.max_relative_change:g} x "
                         f"top block's change {top:.{k}f} = {limit:.{k}f}")
            ok = ok and rel_ok
    if t.max_drift is not None:
        d = entry.get("weight_drift")
        if d is None or not math.isfinite(d):
            ok = False
            parts.append(f"drift undefined (> {t.max_drift} assumed)")
        elif d > t.max_drift:
            ok = False
            parts.append(f"drift {_beside(d, t.max_drift)} > {t.max_drift}")
        else:
            parts.append(f"drift {_beside(d, t.max_drift)} <= {t.max_drift}")
    return ok, "; ".join(parts)


def _entries_of(x, other_params: int) -> tuple[list[dict], int]:
    """Accept a comparison as well as its entries: a Comparison, its JSON dict, JSON text or a JSON file."""
    import os
    from collections.abc import Iterable, Mapping

    from layerprobe.errors import LayerProbeError
    from layerprobe.io.files import json_loads, load_json

    if hasattr(x, "blocks") and hasattr(x, "recommendation"):  # a Comparison
        x = x.to_dict()
    path = None
    if isinstance(x, (str, os.PathLike)):  # a file is read bounded; bad JSON is one line naming it
        text = os.fspath(x)
        if text.lstrip().startswith("{"):
            x = json_loads(text, None, "comparison JSON")
        else:
            path = text
            x = load_json(path, "comparison JSON")
    if isinstance(x, dict):
        if not isinstance(x.get("blocks"), list):
            raise LayerProbeError(f"expected a comparison JSON with a 'blocks' list, found keys {sorted(x)[:8]}", path)
        if not other_params:
            other_params = int((x.get("other") or {}).get("n_params_compared") or 0)
        x = x["blocks"]
    if not isinstance(x, Iterable) or isinstance(x, bytes):
        from layerprobe.errors import LayerProbeTypeError

        raise LayerProbeTypeError(f"expected a comparison (a Comparison, its JSON dict, JSON text or a comparison.json "
                                  f"path) or its list of entries, got {type(x).__name__}")
    x = list(x)
    if not all(isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in x):
        raise LayerProbeError("expected entries as dicts with a 'name' (a comparison's 'blocks')", path)
    return x, other_params


def recommend(entries: list[dict], thresholds: Thresholds | None = None, other_params: int = 0,
              tolerance: float | None = None, revert: list[dict] | None = None,
              step_cost: list[float] | None = None, prefix_savings: Any = None,
              predictor: Any = None) -> Recommendation:
    """Advise a frozen bottom prefix from per-entry measurements.

    Args:
        entries: in model order (embeddings first), dicts with ``name``, ``kind``, ``n_params``,
            ``weight_drift`` and optionally ``cka`` and ``cka_ci`` ([low, high]); or a whole
            comparison — a :class:`~layerprobe.results.comparison.Comparison`, its JSON dict, JSON text or the
            path of a ``comparison.json`` (its ``blocks``, and ``other`` parameters, are used).
        thresholds: the rule's knobs (defaults: :class:`Thresholds`).
        other_params: parameters outside the entries (pooler, head): they always train and
            count in the denominator of ``frozen_param_fraction``.
        tolerance: the accuracy loss accepted (0.01: keep 99% of full fine-tuning). Given, the advice is the
            largest bottom prefix whose predicted loss, and every smaller prefix's, is within it
            (:mod:`layerprobe.freezing.predict`); None: the best shipped predictor decides at its default
            tolerance once ``predictor.json`` makes the prediction the default rule (``default_rule``) and its
            measurement is here (e.g. the revert test), else the rule on ``thresholds`` does.
            Either way ``candidates`` lists every prefix's prediction.
        revert: rows of a revert test (:func:`layerprobe.freezing.revert.revert_test`), the strongest input.
        step_cost: share of a training step's compute per entry, for the compute saved per prefix
            (default: from ``prefix_savings`` when given, else blocks by parameter count).
        prefix_savings: a :class:`~layerprobe.freezing.step_cost.PrefixSavings` measured on the model
            (:func:`~layerprobe.freezing.step_cost.calibrate_prefix_savings`): ``est_compute_saving``
            is then the measured CPU share a training step saves with the advised prefix frozen and
            served by the prefix cache, a note says so, and
            the candidates' compute saved per prefix are the measured ones; without it, the parameter-count estimate.
        predictor: a :class:`~layerprobe.freezing.predict.Predictor` to predict with instead of the best
            shipped one (e.g. one fit on your own tasks); it decides the advice (at ``tolerance``, default
            the shipped default 1%).

    Returns:
        :class:`Recommendation`.

    >>> e = [dict(name="embeddings", kind="embeddings", n_params=10, weight_drift=.01, cka=.999),
    ...      dict(name="block.0", kind="block", n_params=5, weight_drift=.01, cka=.995),
    ...      dict(name="block.1", kind="block", n_params=5, weight_drift=.01, cka=.5)]
    >>> r = recommend(e)
    >>> r.freeze, r.train, round(r.frozen_param_fraction, 2)
    (['embeddings', 'block.0'], ['block.1'], 0.75)
    """
    entries, other_params = _entries_of(entries, other_params)
    t = thresholds or Thresholds()
    has_cka = any(e.get("cka") is not None for e in entries)
    basis = "cka" if has_cka else ("drift" if t.max_drift is not None else "none")
    notes: list[str] = []
    reasons: dict[str, str] = {}
    freeze: list[str] = []
    n_blocks = sum(e["kind"] == "block" for e in entries)
    max_frozen_blocks = max(0, n_blocks - t.min_train_blocks)
    if basis == "cka" and not any(e.get("cka") is not None and math.isfinite(e["cka"]) for e in entries):
        notes.append("cannot advise: CKA is undefined for every entry (see the reasons), so nothing is frozen")
    if basis == "none":
        notes.append("no CKA (weights only) and no --max-drift: no freeze advice; weight drift alone does not "
                     "separate blocks reliably — rerun with --probe, or set --max-drift")
    stopped = basis == "none"
    frozen_blocks = 0
    top = top_change(entries)
    for e in entries:
        if stopped:
            reasons[e["name"]] = reasons.get(e["name"]) or (
                "train: no measurement to justify freezing" if basis == "none" else "train: above a block that must train"
            )
            continue
        ok, why = _qualifies(e, t, basis, top)
        if ok and e["kind"] == "block" and frozen_blocks >= max_frozen_blocks:
            ok, why = False, why + f"; keeping at least {t.min_train_blocks} block(s) trainable"
        if ok:
            freeze.append(e["name"])
            frozen_blocks += e["kind"] == "block"
            reasons[e["name"]] = f"freeze: {why}"
        else:
            stopped = True
            reasons[e["name"]] = f"train: {why}"
    if step_cost is None and prefix_savings is not None:
        step_cost = prefix_savings.entry_shares([e["name"] for e in entries])
    cands, decided = _predicted(entries, tolerance, revert, step_cost, t, basis, predictor)
    if decided is not None:
        freeze, reasons, extra = decided
        notes += extra
    elif cands.get("notes"):
        notes += cands["notes"]
    train = [e["name"] for e in entries if e["name"] not in freeze]
    saving = estimated_saving(entries, freeze)  # the candidates' estimate: one number for the same prefix
    if prefix_savings is not None and freeze:
        top_entry = freeze[-1]
        if top_entry in prefix_savings.served:
            saving = prefix_savings.saving(top_entry)
            off = prefix_savings.uncached.get(top_entry)
            how = "frozen and cached" if off is None else f"frozen, not cached (the prefix cache is off: {off})"
            notes.append(f"compute saving measured on the model: {saving:.0%} of a training step's CPU time with "
                         f"the prefix {how} (batch {prefix_savings.batch_shape}, "
                         f"{prefix_savings.threads} thread(s)); {prefix_savings.epoch_saving(top_entry, 3):.0%} over "
                         "3 epochs" + (", the first filling the cache" if off is None else ""))
    total = sum(int(e["n_params"]) for e in entries) + int(other_params)
    frozen = sum(int(e["n_params"]) for e in entries if e["name"] in freeze)
    return Recommendation(
        freeze=freeze,
        train=train,
        reasons=reasons,
        thresholds=asdict(t),
        frozen_param_fraction=frozen / total if total else 0.0,
        basis=basis,
        est_compute_saving=saving,
        notes=notes,
        candidates=cands.get("rows", []),
        tolerance=cands.get("tolerance"),
        predictor=cands.get("predictor"),
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def decided_by(basis: str, max_drift: object) -> str:
    """What decided the advice when the prediction did not, in words (the notes and the candidates header).

    >>> decided_by("cka", None), decided_by("drift", 0.05)
    ('the CKA rule decided', 'the drift rule (max_drift 0.05) decided')
    """
    return {"cka": "the CKA rule decided", "drift": f"the drift rule (max_drift {max_drift}) decided"}.get(
        basis, "nothing is advised (no CKA, no max_drift)")


def _predicted(entries: list[dict], tolerance: float | None, revert: list[dict] | None,
               step_cost: list[float] | None, t: Thresholds, basis: str,
               predictor: Any = None) -> tuple[dict, tuple | None]:
    """The per-prefix predictions and, when the prediction decides, ``(freeze, reasons, notes)``."""
    from layerprobe.freezing import predict as pr

    meta = pr.shipped_meta()
    tol = float(tolerance) if tolerance is not None else float(meta.get("tolerance_default", 0.01))
    preds, advised, used = pr.predict_prefixes(entries, tol, revert, step_cost, t.min_train_blocks, predictor)
    decide = tolerance is not None or predictor is not None or (used is not None and pr.decides_by_default(used))
    if used is None:
        out: dict = {"rows": [p.to_dict() for p in preds], "tolerance": tol if decide else None, "predictor": None}
        if tolerance is not None:
            return out, ([], {e["name"]: "train: no measurement to predict the cost of freezing from"
                              for e in entries}, ["no CKA, weight drift or revert test to predict from: nothing frozen"])
        return out, None
    info = {"name": used.name, "fit_on": list(used.fit_on),
            "validated": bool(meta.get("validated")) and used.validated and predictor is None,
            "label_free": used.label_free, "decide": used.decide}
    out = {"rows": [p.to_dict() for p in preds], "tolerance": tol if decide else None, "predictor": info}
    unused = []
    if revert and not used.name.startswith("revert"):  # the rows are kept, but say that nothing read them
        rests = f"the prediction rests on {'CKA' if used.name.startswith('cka') else 'weight drift'}"
        if not any(f.startswith("revert") for f in pr.prefix_features(entries, revert)):
            # rows that miss a prefix are not read at all (before: "no revert predictor is shipped", untrue)
            unused = [f"the revert test's rows do not cover every bottom prefix, so no prediction reads them: {rests}"]
        else:
            unused = [f"the revert test's rows are not used by the {used.name} predictor (no revert predictor "
                      f"{'was given' if predictor is not None else 'is shipped'}): {rests}"]
    if not decide:
        fit = f"{used.label}, fit on {', '.join(used.fit_on)}"
        # what decided instead: without CKA (weights only) the drift rule, or nothing (before: "the CKA rule")
        ruled = decided_by(basis, t.max_drift)
        lead = pr.shipped_lead()
        if meta.get("default_rule") == "predictor" and lead is not None and predictor is None:
            lo = used.loto
            need = "the revert test (the tuned model with its head, the base weights and a probe)" \
                if lead.name.startswith("revert") else f"the {lead.name} measurement"
            out["notes"] = [f"predicted accuracies from {fit} (held out, its advice kept >= 98.5% of full fine-tuning "
                            f"on {lo.get('tasks_ge_985')} of {lo.get('tasks')} tasks): the default prediction "
                            f"({lead.label}) needs {need}, missing here, so {ruled}; pass a tolerance to "
                            "follow these predictions", *unused]
        elif info["validated"]:
            lo = used.loto
            out["notes"] = [f"predicted accuracies from {fit} (held out, its advice kept >= 98.5% of full fine-tuning "
                            f"on {lo.get('tasks_ge_985')} of {lo.get('tasks')} tasks; not yet the default until the "
                            f"study's six tasks are in): {ruled}; pass a tolerance to follow them", *unused]
        else:
            out["notes"] = [f"predicted accuracies are preliminary ({fit}, not validated on held-out tasks): "
                            f"{ruled}; pass a tolerance to follow them", *unused]
        return out, None
    freeze = list(preds[advised].freeze) if advised >= 0 else []
    reasons = {}
    for k, p in enumerate(preds):
        name = p.freeze[-1]
        what = (f"predicted {_pct(p.predicted_rel_acc)} [{_pct(p.interval[0])}, {_pct(p.interval[1])}] of full "
                f"fine-tuning with the prefix up to here frozen ({used.name})")
        if used.decide == "upper":  # the interval's lower end is what is held to the tolerance
            what += ", its interval's lower end"
        if k <= advised:
            reasons[name] = f"freeze: {what} >= {_pct(1 - tol)}"
        elif k == advised + 1:  # the first prefix over the tolerance: the advice stops below it
            reasons[name] = f"train: {what} < {_pct(1 - tol)}"
        else:
            reasons[name] = "train: above a block that must train"
    for e in entries:
        reasons.setdefault(e["name"], "train: at least "
                           f"{t.min_train_blocks} block(s) always train" if e["kind"] == "block" else "train")
    return out, (freeze, reasons, unused)


def estimated_saving(entries: list[dict], freeze: list[str]) -> float:
    """The estimate without a calibration, the same as the candidates' ``compute_saved``: the frozen blocks'
    share of the block parameters — their forward and backward, skipped with the prefix cached; the
    embeddings' lookup counted as free. It ignores the embeddings' gradient and optimizer update, the head
    and the cache fill (MiniLM-L6 at RT's shape: 17% for the embeddings + 1 block, measured 42% per served
    step); ``prefix_savings`` replaces it with a measurement.

    >>> e = [{"name": f"block.{i}", "kind": "block", "n_params": 10} for i in range(4)]
    >>> estimated_saving([{"name": "embeddings", "kind": "embeddings", "n_params": 90}] + e, ["embeddings", "block.0"])
    0.25
    """
    block_params = sum(int(e["n_params"]) for e in entries if e["kind"] == "block")
    frozen = sum(int(e["n_params"]) for e in entries if e["kind"] == "block" and e["name"] in freeze)
    return frozen / block_params if block_params else 0.0
