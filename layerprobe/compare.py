"""Compare two models (or snapshots, or checkpoints) entry by entry.

Each side is a :class:`~layerprobe.snapshot.Snapshot`, a live model, or a path to a snapshot
``.pt``, a Hugging Face model directory, a ``.safetensors`` file or a plain state-dict ``.pt``.

* Two snapshots: everything comes from the files.
* Models (or model directories) with a probe: each model runs once over the same probe.
* Weights only: drift only; the output says CKA was not computed and why.

Weights are compared tensor by tensor (a checkpoint on disk is read one tensor at a time), so a
weights-only comparison never holds two whole models in memory.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from ._version import __version__
from .blocks import OTHER, Blocks, blocks_from_names
from .errors import LayerProbeError
from .metrics.cka import (
    CKASubsampleWarning,
    CKAUndefinedWarning,
    bootstrap_cka,
    cka_maps,
    debiased_cka,
    linear_cka,
    rbf_cka,
)
from .metrics.drift import DriftAccumulator, param_group, update_rank
from .recommend import Recommendation, Thresholds, recommend
from .snapshot import Snapshot, take_snapshot


@dataclass
class WeightTable:
    """Where each entry's parameters are: ``index[entry][relative name] -> key`` for ``get``."""

    index: dict[str, dict[str, str]]
    shapes: dict[str, tuple]
    get: Callable[[str], torch.Tensor]

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> WeightTable:
        flat = {f"{g}\0{k}": t for g, ws in snap.weights.items() for k, t in ws.items()}
        index = {g: {k: f"{g}\0{k}" for k in ws} for g, ws in snap.weights.items()}
        return cls(index, {k: tuple(t.shape) for k, t in flat.items()}, flat.__getitem__)

    @classmethod
    def from_source(cls, source) -> tuple[WeightTable, Blocks]:
        keys = list(source.keys())
        blocks = blocks_from_names(keys)
        index: dict[str, dict[str, str]] = {}
        for k in keys:
            entry = blocks.entry_of(k)
            rel = entry.relative(blocks.canonical(k)) if entry else blocks.canonical(k)
            index.setdefault(entry.name if entry else OTHER, {})[rel] = k
        return cls(index, {k: tuple(source.shape(k)) for k in keys}, source.get), blocks


@dataclass
class Side:
    """One side of a comparison, resolved from whatever the user passed."""

    label: str
    meta: dict
    weights: WeightTable | None
    representations: dict[str, torch.Tensor] = field(default_factory=dict)
    token_examples: torch.Tensor | None = None
    why_no_reps: str | None = None

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.meta["entries"]]


def _side_from_snapshot(snap: Snapshot, label: str) -> Side:
    return Side(label, snap.meta, WeightTable.from_snapshot(snap) if snap.weights else None,
                snap.representations, snap.token_examples,
                None if snap.has_representations else f"{label} is a weights-only snapshot")


def _refuse_remote_code(path: str) -> None:
    """Refuse a model directory whose config asks for custom Python code (``auto_map``)."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            if name == "config.json":
                raise LayerProbeError("no config.json: expected a Hugging Face model directory", path)
            continue
        try:
            with open(f, "rb") as fh:
                cfg = json.loads(fh.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LayerProbeError(f"malformed JSON ({str(err).splitlines()[0]})", f) from None
        if not isinstance(cfg, dict):
            raise LayerProbeError(f"expected a JSON object, found {type(cfg).__name__}", f)
        if "auto_map" in cfg:
            raise LayerProbeError(
                "refused: 'auto_map' asks for custom Python code from the model directory "
                "(remote code is never run); use a model whose class ships with transformers", f)


def _check_bin_weights(path: str) -> None:
    """Validate ``pytorch_model.bin`` weights with the weights-only loader before transformers sees them.

    transformers 5.x also loads ``.bin`` files with ``weights_only=True``; checking first gives
    layerprobe's one-line error (suggesting safetensors) instead of a library traceback.
    """
    from .checkpoints import _read_index, load_pt_or_snapshot

    if any(os.path.isfile(os.path.join(path, n)) for n in ("model.safetensors", "model.safetensors.index.json")):
        return
    shards = []
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        shards = ["pytorch_model.bin"]
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin.index.json")):
        shards = sorted(set(_read_index(os.path.join(path, "pytorch_model.bin.index.json")).values()))
    for shard in shards:
        kind, _ = load_pt_or_snapshot(os.path.join(path, shard))  # weights only; memory-mapped
        if kind == "snapshot":
            raise LayerProbeError("is a layerprobe snapshot, expected model weights", os.path.join(path, shard))


def _load_hf_dir(path: str):
    """Load a model directory safely: no remote code (``auto_map`` refused), ``.bin`` weights
    checked with the weights-only loader first; safetensors preferred by transformers."""
    import pickle

    from transformers import AutoModel, AutoTokenizer

    from transformers.utils import logging as hf_logging

    _refuse_remote_code(path)
    _check_bin_weights(path)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stderr carries only layerprobe's own progress and errors
    try:
        model = AutoModel.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        raise LayerProbeError(f"cannot load the model: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                              path) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError):
        tokenizer = None
    return model.eval(), tokenizer


def resolve_side(
    x,
    probe_texts: Sequence[str] | None,
    tokenizer=None,
    snapshot_kwargs: dict | None = None,
    label: str | None = None,
) -> Side:
    """Turn a snapshot, model or path into a :class:`Side`, running the probe where possible."""
    kw = dict(snapshot_kwargs or {})
    if isinstance(x, Snapshot):
        return _side_from_snapshot(x, label or "snapshot")
    if isinstance(x, nn.Module):
        if probe_texts is not None and tokenizer is None:
            raise LayerProbeError("a tokenizer is needed to run the probe through a model object")
        snap = take_snapshot(x, tokenizer, list(probe_texts) if probe_texts is not None else None, **kw)
        side = _side_from_snapshot(snap, label or type(x).__name__)
        if probe_texts is None:
            side.why_no_reps = "no probe given"
        return side
    if not isinstance(x, (str, os.PathLike)):
        raise LayerProbeError(f"cannot compare an object of type {type(x).__name__}")
    from .checkpoints import StateDictSource, load_pt_or_snapshot, open_checkpoint

    path = os.fspath(x)
    label = label or path
    if not os.path.exists(path):
        raise LayerProbeError("no such file or directory", path)
    if os.path.isdir(path) and probe_texts is not None:
        model, tok = _load_hf_dir(path)
        tok = tok or tokenizer
        if tok is None:
            raise LayerProbeError("no tokenizer in the model directory to run the probe", path)
        side = resolve_side(model, probe_texts, tok, kw, label)
        side.meta["source"] = {"path": path, "kind": "hf_dir"}
        return side
    source = None
    if os.path.isfile(path) and not path.endswith(".safetensors"):
        kind, obj = load_pt_or_snapshot(path)  # loaded once, safely
        if kind == "snapshot":
            side = _side_from_snapshot(Snapshot.from_dict(obj, path), label)
            side.meta["source"] = {"path": path, "kind": "snapshot"}
            return side
        source = StateDictSource(path, tensors=obj)
    source = source or open_checkpoint(path)
    table, blocks = WeightTable.from_source(source)
    meta = {
        "entries": [{"name": e.name, "kind": e.kind, "index": e.index, "modules": list(e.modules)} for e in blocks],
        "stack": blocks.stack,
        "prefix": blocks.prefix,
        "source": {"path": path, "kind": "weights"},
    }
    why = "no probe given" if probe_texts is None else "a weights-only file has no architecture to run the probe"
    return Side(label, meta, table, why_no_reps=f"{label}: {why}")


def _check_entries(a: Side, b: Side) -> None:
    ka = [(e["name"], e["kind"]) for e in a.meta["entries"]]
    kb = [(e["name"], e["kind"]) for e in b.meta["entries"]]
    if ka != kb:
        na = sum(k == "block" for _, k in ka)
        nb = sum(k == "block" for _, k in kb)
        if na != nb:
            raise LayerProbeError(f"block count differs: {a.label} has {na} blocks, {b.label} has {nb}")
        raise LayerProbeError(f"entries differ: {a.label} has {[n for n, _ in ka]}, {b.label} has {[n for n, _ in kb]}")


def _match_params(a: Side, b: Side, entry: str) -> list[tuple[str, str, str]]:
    ia, ib = a.weights.index.get(entry, {}), b.weights.index.get(entry, {})
    only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
    if entry != OTHER and (only_a or only_b):
        def listed(names):
            return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

        parts = [f"only in {s.label}: {listed(n)}" for s, n in ((a, only_a), (b, only_b)) if n]
        hint = "; different architectures?" if not (set(ia) & set(ib)) else ""
        raise LayerProbeError(f"parameter keys differ in {entry} between {a.label} and {b.label}: "
                              f"{'; '.join(parts)}{hint}")
    pairs = []
    for rel in ia:
        if rel not in ib:
            continue
        sa, sb = a.weights.shapes[ia[rel]], b.weights.shapes[ib[rel]]
        if sa != sb:
            raise LayerProbeError(f"parameter shapes differ for {entry}/{rel}: {list(sa)} in {a.label} vs {list(sb)} in {b.label}")
        pairs.append((rel, ia[rel], ib[rel]))
    return pairs


def _result(acc: DriftAccumulator) -> dict:
    r = acc.result()
    return {"weight_drift": r["weight_drift"], "weight_cosine": r["cosine"],
            "max_abs_change": r["max_abs_change"], "n_params": r["n_params"]}


#: Update ranks (one float64 SVD each) are computed only for matrices with at most this many
#: elements (2**22, e.g. 2048 x 2048 or 768 x 3072 in BERT-base); a bigger ΔW would need several
#: float64 copies of itself and minutes of SVD, so its group reports no rank (drift is still exact).
RANK_MAX_NUMEL = 1 << 22

#: Elements checked for NaN/Inf at a time (the bool mask never covers a whole huge tensor).
_FINITE_CHUNK = 1 << 24


def _all_finite(t: torch.Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()):
        return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[s:s + _FINITE_CHUNK]).all()) for s in range(0, flat.numel(), _FINITE_CHUNK))


def weight_stats(a: Side, b: Side, entry: str, anatomy: bool = True) -> dict:
    """Drift of one entry, overall and per parameter group, reading one tensor pair at a time.

    Memory: one tensor of each side at a time plus fixed-size float64 chunks; update ranks only
    for matrices up to :data:`RANK_MAX_NUMEL` elements.
    """
    total = DriftAccumulator()
    groups: dict[str, DriftAccumulator] = {}
    ranks: dict[str, dict] = {}
    for rel, ka, kb in _match_params(a, b, entry):
        t0, t1 = a.weights.get(ka), b.weights.get(kb)
        for name, t in ((a.label, t0), (b.label, t1)):
            if not _all_finite(t):
                raise LayerProbeError(f"non-finite values (NaN/Inf) in parameter {entry}/{rel}", name)
        if anatomy:  # each tensor is read and summed once: the block total merges its groups
            g = param_group(rel)
            groups.setdefault(g, DriftAccumulator()).add(rel, t0, t1)
            if (t0.dim() >= 2 and t0.numel() <= RANK_MAX_NUMEL
                    and g not in ("embed.word", "embed.position", "embed.type")):
                r = update_rank(t1.double() - t0.double())
                if r is not None and (g not in ranks or t0.numel() > ranks[g]["numel"]):
                    ranks[g] = {**r, "numel": t0.numel(), "param": rel}
        else:
            total.add(rel, t0, t1)
        del t0, t1, t  # free this pair before the next is read: never two pairs in memory
    for acc in groups.values():
        total.merge(acc)
    out = _result(total)
    if anatomy:
        out["groups"] = {}
        for g, acc in groups.items():
            stats = _result(acc)
            if g in ranks:
                stats["stable_rank"] = ranks[g]["stable_rank"]
                stats["rank90"] = ranks[g]["rank90"]
                stats["rank_param"] = ranks[g]["param"]  # the group's largest matrix, whose ΔW was ranked
            out["groups"][g] = stats
    return out


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


@dataclass
class Comparison:
    """The result of :func:`compare`: per-entry measurements, advice and metadata."""

    blocks: list[dict]
    recommendation: Recommendation
    meta: dict
    other: dict | None = None
    cross_layer: dict | None = None

    def to_dict(self) -> dict:
        d = {"blocks": self.blocks, "recommendation": self.recommendation.to_dict(), "meta": self.meta}
        if self.other is not None:
            d["other"] = self.other
        if self.cross_layer is not None:
            d["cross_layer"] = self.cross_layer
        return _nan_to_none(d)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (NaN becomes null), stable key order: same inputs give the same bytes."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"

    def to_frame(self) -> pd.DataFrame:
        """One row per entry: index, name, kind, cka (and interval), drift, cosine, params, advice."""
        rows = []
        freeze = set(self.recommendation.freeze)
        for e in self.blocks:
            ci = e.get("cka_ci") or [None, None]
            rows.append({
                "index": e["index"], "name": e["name"], "kind": e["kind"],
                "cka": e.get("cka"), "cka_low": ci[0], "cka_high": ci[1],
                "weight_drift": e["weight_drift"], "weight_cosine": e["weight_cosine"],
                "max_abs_change": e["max_abs_change"], "n_params": e["n_params"],
                "advice": "freeze" if e["name"] in freeze else "train",
                "reason": self.recommendation.reasons.get(e["name"], ""),
            })
        return pd.DataFrame(rows)

    def groups_frame(self) -> pd.DataFrame:
        """One row per (entry, parameter group): the anatomy of the weight change."""
        rows = [{"name": e["name"], "group": g, **s} for e in self.blocks for g, s in (e.get("groups") or {}).items()]
        return pd.DataFrame(rows)


def compare(
    a,
    b,
    probe: Sequence[str] | str | os.PathLike | None = None,
    tokenizer=None,
    *,
    text_column: str = "text",
    max_examples: int | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 32,
    thresholds: Thresholds | None = None,
    anatomy: bool = True,
    progress: bool = False,
    estimator: str = "linear",
    ci: bool | None = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    cross_layer: bool = False,
    on_undefined: str = "warn",
) -> Comparison:
    """Compare a base and a tuned model entry by entry and advise what could be frozen.

    Args:
        a, b: base and tuned — each a :class:`Snapshot`, an ``nn.Module``, or a path to a
            snapshot ``.pt``, an HF model directory, a ``.safetensors`` file or a state-dict ``.pt``.
        probe: probe texts (a list, or a probe file path) to run through model sides.
        tokenizer: tokenizer for ``nn.Module`` sides (HF directories bring their own).
        text_column, max_examples: how to read a probe file.
        pooling, max_length, max_tokens, batch_size: probe settings; when one side is a
            snapshot its settings are used for the other side.
        thresholds: the freeze rule's knobs.
        anatomy: also compute per-parameter-group drift and update ranks.
        progress: show progress bars.
        estimator: ``"linear"`` (default; the freeze thresholds are calibrated for it),
            ``"debiased"`` (unbiased HSIC₁) or ``"rbf"`` (median bandwidth, subsampled above
            2048 rows). Recorded in ``meta["estimator"]``.
        ci: bootstrap interval per entry (``"cka_ci": [low, high]``) from the cached
            representations, resampling probe examples (whole examples for token rows). None
            (default) = on when representations exist, the estimator is linear and there are at
            most :data:`CI_AUTO_MAX_ROWS` rows (cheap there; see README benchmarks).
        n_boot, ci_level, seed: bootstrap resamples, coverage and seed (deterministic; every
            entry uses the same resamples).
        cross_layer: also the linear CKA maps between every entry of A and every entry of B,
            and within each model: top-level ``"cross_layer"`` in the JSON.
        on_undefined: an entry whose representation is constant or non-finite gets
            ``cka = nan`` and a :class:`CKAUndefinedWarning` naming it (``"warn"``), or raises
            :class:`LayerProbeError` (``"raise"``, what the CLI uses).

    Returns:
        :class:`Comparison` with ``.to_frame()`` and ``.to_json()``.

    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                  intermediate_size=20, vocab_size=50)
    >>> m = BertModel(cfg)
    >>> c = compare(m, m)  # weights only
    >>> [e["weight_drift"] for e in c.blocks], c.blocks[0]["cka"]
    ([0.0, 0.0, 0.0], None)
    """
    texts = None
    if probe is not None:
        if isinstance(probe, (str, os.PathLike)):
            from .probe import read_probe_texts

            texts = read_probe_texts(probe, text_column=text_column, max_examples=max_examples)
        else:
            texts = list(probe)[:max_examples] if max_examples else list(probe)
    snaps = [x for x in (a, b) if isinstance(x, Snapshot) and x.has_representations]
    ref = snaps[0].meta if snaps else {}
    kw = {
        "pooling": pooling or ref.get("pooling", "mean"),
        "max_length": max_length or ref.get("max_length", 128),
        "max_tokens": max_tokens if max_tokens is not None else ref.get("max_tokens"),
        "batch_size": batch_size,
        "progress": progress,
    }
    sa = resolve_side(a, texts, tokenizer, kw, label=None if not isinstance(a, Snapshot) else "A")
    if sa.representations and sa.meta.get("pooling"):  # the other side follows a snapshot's settings
        kw.update(pooling=sa.meta["pooling"], max_length=sa.meta["max_length"], max_tokens=sa.meta.get("max_tokens"))
    sb = resolve_side(b, texts, tokenizer, kw, label=None if not isinstance(b, Snapshot) else "B")
    return compare_sides(sa, sb, thresholds=thresholds, anatomy=anatomy, estimator=estimator, ci=ci,
                         n_boot=n_boot, ci_level=ci_level, seed=seed, cross_layer=cross_layer,
                         on_undefined=on_undefined)


#: Estimators selectable with ``estimator=`` / ``--estimator``.
ESTIMATORS = {"linear": linear_cka, "debiased": debiased_cka, "rbf": rbf_cka}

#: ``ci=None`` turns the bootstrap on up to this many representation rows (the Gram matrices of
#: the bootstrap are n×n; above this bootstrap_cka would subsample).
CI_AUTO_MAX_ROWS = 2048


def _rep_problem(r: torch.Tensor) -> str | None:
    """Why a representation makes CKA undefined (non-finite or constant), or None."""
    if not bool(torch.isfinite(r).all()):
        return "non-finite values (NaN/Inf) in the representations"
    if not bool((r - r[:1]).abs().amax() > 0):
        return "constant (zero-variance) representation"
    return None


def _find_undefined(sa: Side, sb: Side, names: list[str], on_undefined: str) -> dict[str, str]:
    """Entries whose CKA is undefined, with a message naming the entry and side; warn or raise."""
    out = {}
    for name in names:
        for side in (sa, sb):
            why = _rep_problem(side.representations[name])
            if why:
                msg = f"{why} in {name} of {side.label}: CKA is undefined"
                if on_undefined == "raise":
                    raise LayerProbeError(msg)
                warnings.warn(msg + "; cka = nan for this entry", CKAUndefinedWarning, stacklevel=3)
                out[name] = msg
                break
    return out


def _cross_layer(sa: Side, sb: Side, names: list[str]) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CKAUndefinedWarning)  # already reported per entry
        m = cka_maps([sa.representations[n] for n in names], [sb.representations[n] for n in names])
    return {"estimator": "linear", "names": list(names), "base_vs_tuned": m["xy"].tolist(),
            "base": m["xx"].tolist(), "tuned": m["yy"].tolist()}


def compare_sides(
    sa: Side,
    sb: Side,
    thresholds: Thresholds | None = None,
    anatomy: bool = True,
    *,
    estimator: str = "linear",
    ci: bool | None = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    cross_layer: bool = False,
    on_undefined: str = "warn",
) -> Comparison:
    """The pure core of :func:`compare` once both sides are resolved (same keywords)."""
    if estimator not in ESTIMATORS:
        raise LayerProbeError(f"unknown estimator {estimator!r}; expected one of {sorted(ESTIMATORS)}")
    if on_undefined not in ("warn", "raise"):
        raise LayerProbeError(f"on_undefined must be 'warn' or 'raise', got {on_undefined!r}")
    if ci and estimator != "linear":
        raise LayerProbeError(f"the bootstrap interval is implemented for the linear estimator only, "
                              f"got estimator={estimator!r}")
    if not 0.0 < ci_level < 1.0 or n_boot < 1:
        raise LayerProbeError(f"need 0 < ci_level < 1 and n_boot >= 1, got {ci_level=}, {n_boot=}")
    _check_entries(sa, sb)
    reps_ok, why_not = True, None
    if not (sa.representations and sb.representations):
        reps_ok, why_not = False, sa.why_no_reps or sb.why_no_reps or "no representations"
    else:
        fa, fb = sa.meta.get("probe_fingerprint"), sb.meta.get("probe_fingerprint")
        if fa != fb:
            raise LayerProbeError(
                f"probe fingerprints differ ({str(fa)[:12]} in {sa.label} vs {str(fb)[:12]} in {sb.label}): "
                "CKA needs the same probe examples, tokenized the same way"
            )
        for key in ("pooling", "max_tokens"):
            if sa.meta.get(key) != sb.meta.get(key):
                raise LayerProbeError(f"snapshots differ in {key}: {sa.meta.get(key)!r} in {sa.label} vs "
                                      f"{sb.meta.get(key)!r} in {sb.label}")
    if sa.weights is None or sb.weights is None:
        raise LayerProbeError(f"{(sa if sa.weights is None else sb).label}: snapshot holds no weights")
    names = [e["name"] for e in sa.meta["entries"]]
    if reps_ok:  # same fingerprint, so both sides have the same rows
        n = next(iter(sa.representations.values())).shape[0]
        if n < 2:
            raise LayerProbeError(f"linear CKA needs at least 2 probe examples, got {n}", sa.label)
    # non-finite or constant representations: reported once per entry here (warn, or raise)
    undefined = _find_undefined(sa, sb, names, on_undefined) if reps_ok else {}
    entries = []
    for e in sa.meta["entries"]:
        name = e["name"]
        stats = weight_stats(sa, sb, name, anatomy)
        row = {"index": e["index"], "name": name, "kind": e["kind"], "cka": None}
        if reps_ok and name in undefined:
            row["cka"] = float("nan")
            row["cka_undefined"] = undefined[name]
        elif reps_ok:
            ra, rb = sa.representations[name], sb.representations[name]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CKAUndefinedWarning)
                row["cka"] = ESTIMATORS[estimator](ra, rb)
            if not math.isfinite(row["cka"]):  # e.g. rbf: zero median distance; debiased: HSIC₁ <= 0
                why = next((str(w.message) for w in caught if issubclass(w.category, CKAUndefinedWarning)), "nan")
                msg = f"{estimator} CKA of {name} is undefined ({why.split('; returning')[0]})"
                if on_undefined == "raise":
                    raise LayerProbeError(msg)
                warnings.warn(msg + "; cka = nan for this entry", CKAUndefinedWarning, stacklevel=2)
                row["cka_undefined"] = undefined[name] = msg
        row.update(stats)
        entries.append(row)
    n_rows = next(iter(sa.representations.values())).shape[0] if reps_ok else 0
    do_ci = bool(reps_ok and estimator == "linear" and (ci if ci is not None else n_rows <= CI_AUTO_MAX_ROWS))
    ci_meta = None
    if do_ci:
        groups = sa.token_examples.numpy() if sa.token_examples is not None else None
        subsampled = False
        for row in entries:
            if row["name"] in undefined:
                row["cka_ci"] = [float("nan"), float("nan")]
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CKASubsampleWarning)
                row["cka_ci"] = list(bootstrap_cka(sa.representations[row["name"]], sb.representations[row["name"]],
                                                   n_boot=n_boot, level=ci_level, seed=seed, groups=groups))
            subsampled |= any(issubclass(w.category, CKASubsampleWarning) for w in caught)
        ci_meta = {"method": "percentile bootstrap over probe examples (same resamples for every entry)",
                   "n_boot": n_boot, "level": ci_level, "seed": seed,
                   "resample_unit": "example (all its token rows)" if groups is not None else "example",
                   "subsampled": subsampled}
    xmap = None
    if cross_layer and reps_ok:
        xmap = _cross_layer(sa, sb, names)
    other = None
    if OTHER in sa.weights.index and OTHER in sb.weights.index:
        pairs = _match_params(sa, sb, OTHER)
        only = sorted(set(sa.weights.index[OTHER]) ^ set(sb.weights.index[OTHER]))
        other = {"n_params_compared": 0, "unmatched": only}
        if pairs:
            other.update(weight_stats(sa, sb, OTHER, anatomy=False))
            other["n_params_compared"] = other.pop("n_params")
    other_params = other["n_params_compared"] if other else 0
    rec = recommend(entries, thresholds, other_params=other_params)
    if not reps_ok:
        rec.notes.insert(0, f"CKA not computed: {why_not}")
        if cross_layer:
            rec.notes.append(f"cross-layer maps not computed: {why_not}")
    for msg in undefined.values():
        rec.notes.append(msg)
    if reps_ok and estimator != "linear":
        rec.notes.append(f"estimator {estimator}: the freeze thresholds were calibrated for linear CKA")
    meta = {
        "layerprobe_version": __version__,
        "inputs": {"a": sa.label, "b": sb.label},
        "cka_computed": reps_ok,
        "estimator": estimator,
        "ci": ci_meta,
        "cka_missing_reason": why_not,
        "n_examples": sa.meta.get("n_examples") if reps_ok else None,
        "pooling": sa.meta.get("pooling") if reps_ok else None,
        "max_length": sa.meta.get("max_length") if reps_ok else None,
        "probe_fingerprint": sa.meta.get("probe_fingerprint") if reps_ok else None,
        "model_class": {"a": sa.meta.get("model_class"), "b": sb.meta.get("model_class")},
        "torch_version": torch.__version__.split("+")[0],
    }
    return Comparison(entries, rec, meta, other, xmap)
