"""Compare two models (or snapshots, or checkpoints) entry by entry.

Each side is a :class:`~layerprobe.snapshot.take.Snapshot`, a live model, or a path to a snapshot
``.pt``, a Hugging Face model directory, a ``.safetensors`` file or a plain state-dict ``.pt``.

* Two snapshots: everything comes from the files.
* Models (or model directories) with a probe: each model runs once over the same probe.
* Weights only: drift only; the output says CKA was not computed and why.

Weights are compared tensor by tensor (a checkpoint on disk is read one tensor at a time), so a
weights-only comparison never holds two whole models in memory.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from layerprobe._version import __version__
from layerprobe.comparison.sides import Side, WeightTable, check_inputs, read_probe, resolve_side
from layerprobe.errors import LayerProbeError
from layerprobe.freezing.predict import check_tolerance, shipped_prefers_revert
from layerprobe.freezing.rule import Thresholds, recommend
from layerprobe.io.checkpoints import check_finite
from layerprobe.io.pair_reader import PairReader
from layerprobe.metrics.cka import (
    CKASubsampleWarning,
    CKAUndefinedWarning,
    bootstrap_cka,
    cka_maps,
    debiased_cka,
    linear_cka,
    rbf_cka,
)
from layerprobe.metrics.distinct import MIN_DISTINCT_ROWS, count_distinct_rows
from layerprobe.metrics.drift import DriftAccumulator, param_group, param_update_rank
from layerprobe.model.blocks import OTHER
from layerprobe.options import CKAOptions, ProbeOptions, checked
from layerprobe.results.comparison import Comparison
from layerprobe.snapshot.check import representation_problem
from layerprobe.snapshot.take import Snapshot

__all__ = ["CI_AUTO_MAX_ROWS", "ESTIMATORS", "RANK_MAX_NUMEL", "Comparison", "compare", "compare_sides",
           "weight_stats"]


def attach_weights(side: Side, path: str | os.PathLike) -> None:
    """Read a side's weights from files (a representation-only snapshot of an offloaded model)."""
    from layerprobe.io.checkpoints import open_checkpoint

    if side.weights is not None:  # never replaced silently: the side's own weights are what it measured
        raise LayerProbeError(f"{side.label} already holds weights; extra weight files are only for a "
                              f"representation-only snapshot (an offloaded model)", path)
    table, found = WeightTable.from_source(open_checkpoint(path))
    have = [e["name"] for e in side.meta["entries"]]
    if found.names != have:
        raise LayerProbeError(f"the weight files have entries {found.names}, the snapshot {have}", path)
    side.weights = table
    side.meta.setdefault("weights_from", os.fspath(path))


def _no_weight_stats(side: Side, entry: str) -> dict:
    shapes = (side.meta.get("param_shapes") or {}).get(entry) or {}
    return {"weight_drift": None, "weight_cosine": None, "max_abs_change": None,
            "n_params": int(sum(math.prod(s) for s in shapes.values()))}


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
    assert a.weights is not None and b.weights is not None  # compare_sides refuses weightless sides first
    ia, ib = a.weights.index.get(entry, {}), b.weights.index.get(entry, {})
    only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
    if entry != OTHER and (only_a or only_b):
        def listed(names: list[str]) -> str:
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
        if sa != sb and entry == OTHER:  # e.g. a head for another number of labels: not compared, listed
            continue
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

def weight_stats(a: Side, b: Side, entry: str, anatomy: bool = True, reader: PairReader | None = None) -> dict:
    """Drift of one entry, overall and per parameter group, reading one tensor pair at a time.

    Pairs are read ahead on a background thread into a reused buffer (``reader``: pass one to
    keep the buffer across entries); the values do not depend on it. Memory: at most 2.5 × the
    largest tensor for reading plus fixed-size float64 chunks; update ranks only for matrices up
    to :data:`RANK_MAX_NUMEL` elements.
    """
    assert a.weights is not None and b.weights is not None  # compare_sides refuses weightless sides first
    total = DriftAccumulator()
    groups: dict[str, DriftAccumulator] = {}
    ranks: dict[str, dict] = {}
    params = _match_params(a, b, entry)
    stream = (reader or PairReader()).pairs(a.weights.get, b.weights.get, [(ka, kb) for _, ka, kb in params])
    with contextlib.closing(stream):
        for (rel, _, _), (t0, t1) in zip(params, stream):
            g = param_group(rel) if anatomy else ""
            # each tensor is read and summed once: with anatomy the entry's total merges its groups
            ok = (groups.setdefault(g, DriftAccumulator()) if anatomy else total).add(rel, t0, t1)
            for name, t, finite in ((a.label, t0, ok[0]), (b.label, t1, ok[1])):
                if not finite:  # NaN/Inf showed in the sums: count them for the message
                    check_finite(f"{entry}/{rel}", t, name)
            if (anatomy and t0.dim() >= 2 and t0.numel() <= RANK_MAX_NUMEL
                    and g not in ("embed.word", "embed.position", "embed.type")):
                r = param_update_rank(rel, t1.double() - t0.double())
                if r is not None and (g not in ranks or t0.numel() > ranks[g]["numel"]):
                    ranks[g] = {**r, "numel": t0.numel(), "param": rel}
            del t0, t1  # the reader reuses this pair's bytes for the next ones
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


def compare(
    a: Any,
    b: Any,
    probe: Sequence[str] | str | os.PathLike | None = None,
    tokenizer: Any = None,
    *,
    probe_options: ProbeOptions | None = None,
    cka_options: CKAOptions | None = None,
    text_column: str = "text",
    max_examples: int | None = None,
    thresholds: Thresholds | None = None,
    tolerance: float | None = None,
    revert: bool | None = None,
    calibrate: bool = False,
    anatomy: bool = True,
    progress: bool = False,
    on_undefined: str = "warn",
    device: str | None = None,
    dtype: str | None = None,
    blocks: str | None = None,
    embeddings: str | Sequence[str] | None = None,
    weights_a: str | os.PathLike | None = None,
    weights_b: str | os.PathLike | None = None,
) -> Comparison:
    """Compare a base and a tuned model entry by entry and advise what could be frozen.

    Args:
        a, b: base and tuned — each a :class:`Snapshot`, an ``nn.Module``, or a path to a
            snapshot ``.pt``, an HF model directory, a ``.safetensors`` file or a state-dict ``.pt``.
        probe: probe texts (a list, or a probe file path) to run through model sides.
        tokenizer: tokenizer for ``nn.Module`` sides (HF directories bring their own).
        probe_options: :class:`~layerprobe.options.ProbeOptions` (pooling, max_length,
            max_tokens, batch_size); unset fields follow a snapshot side, then the defaults. A
            setting that contradicts a snapshot side raises (it is never silently replaced).
        cka_options: :class:`~layerprobe.options.CKAOptions` (estimator, ci, n_boot, ci_level,
            seed, cross_layer).
        text_column, max_examples: how to read a probe file.
        thresholds: the freeze rule's knobs.
        tolerance: the accuracy loss accepted: the advice freezes the largest bottom prefix predicted to keep
            ``1 - tolerance`` of full fine-tuning (``recommendation.candidates`` lists every prefix either way).
        revert: run the revert test (the tuned model with each bottom prefix put back to the base weights,
            on the probe; ``meta.revert``), the prediction's strongest input: ``True`` requires it (it needs
            a probe, the tuned side as a model with its output head and the base's weights; else
            :class:`LayerProbeError`), ``False`` skips it, ``None`` (default) runs it where it can when the
            shipped predictor prefers it. Costs ``n_blocks + 2`` forward passes of the probe.
        calibrate: measure what freezing each bottom prefix saves per training step on the tuned model
            (:func:`~layerprobe.freezing.step_cost.calibrate_prefix_savings`, one thread, at a batch of
            ``batch_size`` probe texts) instead of estimating it from parameter counts; the savings in the
            advice and the candidates are then measured (``meta.step_cost``). Needs a probe and the tuned side
            as a model; costs about ``(n_blocks + 2) x 5`` training steps of a copy of the model.
        anatomy: also compute per-parameter-group drift and update ranks.
        progress: show progress bars.
        on_undefined: an entry whose representation is constant or non-finite gets
            ``cka = nan`` and a :class:`CKAUndefinedWarning` naming it (``"warn"``), or raises
            :class:`LayerProbeError` (``"raise"``, what the CLI uses).
        device, dtype: where and in which precision model directories run ("cpu", "cuda", "mps";
            "float32", "bfloat16", "float16"); recorded in ``meta``.
        blocks, embeddings: module-path patterns overriding the block stack and the embeddings
            (as :func:`~layerprobe.model.blocks.find_blocks`); blocks keep the model's own index.
        weights_a, weights_b: weight files for a side that holds none (a representation-only
            snapshot of an offloaded model): drift is read from them.

    A PEFT/LoRA adapter directory as ``b`` is compared with ``a`` as its base
    (:mod:`layerprobe.io.adapters`).

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
    from torch import nn

    from layerprobe.errors import LayerProbeTypeError

    for arg, x, what in (("a", a, "base"), ("b", b, "tuned")):  # checked before anything is read or run
        if not isinstance(x, (Snapshot, nn.Module, str, os.PathLike)):
            raise LayerProbeTypeError(f"compare: {arg} (the {what} side) is a {type(x).__name__}; expected a "
                                      f"Snapshot, a torch.nn.Module or a path")
    if tolerance is not None:
        check_tolerance(tolerance)  # before any model runs
    popts, copts = checked(probe_options, ProbeOptions), checked(cka_options, CKAOptions)
    texts = read_probe(probe, text_column, max_examples)
    _check_run_settings(a, b, texts, blocks=blocks, embeddings=embeddings, dtype=dtype)
    # a snapshot side fixes the probe settings; a setting given that contradicts one raises here,
    # before any model runs (it used to be replaced silently by side A's)
    snaps = [(x, label) for x, label in ((a, "A"), (b, "B")) if isinstance(x, Snapshot) and x.has_representations]
    for x, label in snaps:
        popts.settle(x.meta, label)
    kw = {**popts.settle(snaps[0][0].meta if snaps else None).snapshot_kwargs(), "progress": progress,
          "device": device, "dtype": dtype, "block_pattern": blocks, "embedding_pattern": embeddings,
          "adapter_base": a if isinstance(a, (str, os.PathLike)) else None}
    check_inputs(a, b, probe=texts is not None)  # both sides, before any model runs
    if revert is not None and not isinstance(revert, bool):
        raise LayerProbeTypeError(f"compare: revert must be True, False or None, got {revert!r}")
    if revert and texts is None:
        raise LayerProbeError("the revert test needs a probe (it runs the tuned model with each prefix reverted)")
    if not isinstance(calibrate, bool):
        raise LayerProbeTypeError(f"compare: calibrate must be True or False, got {calibrate!r}")
    if calibrate and texts is None:
        raise LayerProbeError("calibrating the step cost needs a probe (it times training steps on a batch of it)")
    sa = resolve_side(a, texts, tokenizer, kw, label=None if not isinstance(a, Snapshot) else "A")
    sa.model = sa.tokenizer = None  # the base's weights are in its table: its model can go before the tuned one loads
    if sa.representations and sa.meta.get("pooling"):  # e.g. a snapshot file: the other side follows it
        kw.update(popts.settle(sa.meta, sa.label).snapshot_kwargs())
    sb = resolve_side(b, texts, tokenizer, kw, label=None if not isinstance(b, Snapshot) else "B")
    for side, wpath in ((sa, weights_a), (sb, weights_b)):
        if wpath is not None:
            attach_weights(side, wpath)
    rows: list[dict] | None = None
    why: str | None = None
    revert_notes: list[str] = []
    if revert or (revert is None and texts is not None and shipped_prefers_revert()):
        from layerprobe.comparison.revert_sides import side_revert

        _check_entries(sa, sb)  # two architectures are said so before n_blocks + 2 probe passes
        if sa.weights is not None and sb.weights is not None:
            for e in sa.meta["entries"]:
                _match_params(sa, sb, e["name"])  # keys and shapes only: no tensor is read
        rows, why, revert_notes = side_revert(sa, sb, texts,
                                              int(sb.meta.get("max_length") or popts.settle().max_length),
                                              int(popts.batch_size))
        if revert and rows is None:
            raise LayerProbeError(f"the revert test cannot run: {why}")
    savings = _calibrate(sb, texts or [], int(sb.meta.get("max_length") or popts.settle().max_length),
                         int(popts.batch_size), blocks, embeddings) if calibrate else None
    sb.model = sb.tokenizer = None
    return compare_sides(sa, sb, thresholds=thresholds, tolerance=tolerance, anatomy=anatomy, cka_options=copts,
                         on_undefined=on_undefined, revert=rows, revert_skipped=why, revert_notes=revert_notes,
                         prefix_savings=savings)


def _calibrate(sb: Side, texts: Sequence[str], max_length: int, batch_size: int, blocks: str | None,
               embeddings: str | Sequence[str] | None) -> Any:
    """The measured step cost per frozen prefix of the tuned model, at a batch of the probe's first texts."""
    from layerprobe.freezing.step_cost import calibrate_prefix_savings
    from layerprobe.model.batching import collate, encode, pad_id
    from layerprobe.model.blocks import find_blocks

    if sb.model is None or sb.tokenizer is None:
        raise LayerProbeError(f"calibrating the step cost needs the tuned side as a model run here (a model directory "
                              f"or a model object with its tokenizer); {sb.label} is not")
    if sb.meta.get("adapter"):
        raise LayerProbeError(f"calibrating the step cost times full fine-tuning steps; {sb.label} is a LoRA adapter")
    model = sb.model
    device = next(model.parameters()).device
    if device.type != "cpu":  # process CPU time says nothing of a GPU's step
        raise LayerProbeError(f"calibrating the step cost times training steps in CPU time; the tuned model runs on "
                              f"{device}: calibrate with --device cpu (device='cpu')")
    batch = collate(encode(sb.tokenizer, list(texts)[:batch_size], max_length), pad_id(sb.tokenizer), device)
    return calibrate_prefix_savings(model, batch, find_blocks(model, blocks, embeddings))


def _check_run_settings(a: Any, b: Any, texts: Sequence[str] | None, **given: Any) -> None:
    """Refuse settings for running a model when no model runs (they would be silently ignored).

    Block/embedding patterns apply to a model object or a model directory run over the probe;
    ``dtype`` to a model directory run over the probe. Snapshots and weight files (and directories
    compared weights-only) keep the entries and precision they were saved with.
    """
    from torch import nn

    def runs(x: Any, loaded_here: bool) -> bool:
        if isinstance(x, nn.Module):
            return not loaded_here
        return isinstance(x, (str, os.PathLike)) and texts is not None and os.path.isdir(os.fspath(x))

    for name, value in given.items():
        if value is None or any(runs(x, name == "dtype") for x in (a, b)):
            continue
        raise LayerProbeError(f"--{name} ({name}=) applies only to a model run here (a model directory with a "
                              f"probe{'' if name == 'dtype' else ', or a model object'}); snapshots and weight files "
                              f"keep the {'precision' if name == 'dtype' else 'entries'} they were saved with")


#: Estimators selectable with ``estimator=`` / ``--estimator`` (names: :data:`layerprobe.options.ESTIMATORS`).
ESTIMATORS = {"linear": linear_cka, "debiased": debiased_cka, "rbf": rbf_cka}

#: ``ci=None`` turns the bootstrap on up to this many representation rows (the Gram matrices of
#: the bootstrap are n×n; above this bootstrap_cka would subsample).
CI_AUTO_MAX_ROWS = 2048


def _distinct_examples(sa: Side, sb: Side) -> int | None:
    """Distinct probe examples (by token ids) as the snapshots recorded them; None for older snapshots."""
    known: list[int] = [c for c in (s.meta.get("n_distinct_examples") for s in (sa, sb))
                        if isinstance(c, int) and not isinstance(c, bool)]
    return min(known) if known else None


def _too_few_examples(sa: Side, sb: Side) -> str | None:
    """Why the probe cannot carry a CKA (fewer than MIN_DISTINCT_ROWS distinct examples), or None."""
    n = int(next(iter(sa.representations.values())).shape[0])
    meta_n = sa.meta.get("n_examples")
    n_ex: int = meta_n if isinstance(meta_n, int) and not isinstance(meta_n, bool) else n
    distinct = _distinct_examples(sa, sb)
    if distinct is None:
        distinct = min(n, n_ex)  # older snapshots: rows are checked per entry instead
    if distinct >= MIN_DISTINCT_ROWS:
        return None
    dup = f" (of {n_ex} examples: {n_ex - distinct} duplicates)" if n_ex > distinct else ""
    why = "; CKA of 2 distinct points is always 1" if distinct == 2 else ""
    return (f"linear CKA needs at least {MIN_DISTINCT_ROWS} distinct probe examples, got {distinct}{dup}{why}: "
            f"cannot advise")


def _duplicates_note(sa: Side, sb: Side) -> str | None:
    distinct, n_ex = _distinct_examples(sa, sb), sa.meta.get("n_examples")
    if distinct is None or not isinstance(n_ex, int) or isinstance(n_ex, bool) or distinct >= n_ex:
        return None
    return (f"the probe holds {n_ex - distinct} duplicate example(s): CKA rests on {distinct} distinct examples of "
            f"{n_ex} (duplicates weigh more)")


def _find_undefined(sa: Side, sb: Side, names: list[str], on_undefined: str) -> dict[str, str]:
    """Entries whose CKA is undefined, with a message naming the entry and side; warn or raise.

    Undefined: non-finite or constant representations on either side, or fewer than
    :data:`~layerprobe.metrics.distinct.MIN_DISTINCT_ROWS` distinct rows of the two side by side (a
    layer that maps the examples onto two or three points).
    """
    out = {}
    for name in names:
        msg = None
        for side in (sa, sb):
            why = representation_problem(side.representations[name])
            if why:
                msg = f"{why} in {name} of {side.label}: CKA is undefined"
                break
        if msg is None:
            ra, rb = sa.representations[name], sb.representations[name]
            k = count_distinct_rows(ra, rb, max_rows=512)  # a lower bound: enough rows to pass, on real data
            if k < MIN_DISTINCT_ROWS and ra.shape[0] > 512:
                k = count_distinct_rows(ra, rb, max_rows=ra.shape[0])
            if k < MIN_DISTINCT_ROWS:
                msg = (f"only {k} distinct representation row(s) of {ra.shape[0]} in {name} of {sa.label} and "
                       f"{sb.label}: CKA needs at least {MIN_DISTINCT_ROWS} distinct rows, it is undefined")
        if msg:
            if on_undefined == "raise":
                raise LayerProbeError(msg)
            warnings.warn(msg + "; cka = nan for this entry", CKAUndefinedWarning, stacklevel=3)
            out[name] = msg
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
    tolerance: float | None = None,
    anatomy: bool = True,
    *,
    cka_options: CKAOptions | None = None,
    on_undefined: str = "warn",
    revert: list[dict] | None = None,
    revert_skipped: str | None = None,
    revert_notes: Sequence[str] = (),
    prefix_savings: Any = None,
) -> Comparison:
    """The core of :func:`compare` once both sides are resolved (same keywords; weights are read
    from the sides' tables, one tensor pair at a time). ``revert``: rows of a revert test run on the
    sides (``meta.revert``; the prediction uses them); ``revert_skipped``: why it could not run;
    ``revert_notes``: what the reader of the rows must know (a head tied to the reverted embeddings)."""
    opts = checked(cka_options, CKAOptions)
    if on_undefined not in ("warn", "raise"):
        raise LayerProbeError(f"on_undefined must be 'warn' or 'raise', got {on_undefined!r}")
    estimator, ci, n_boot, ci_level, seed, cross_layer = (opts.estimator, opts.ci, opts.n_boot, opts.ci_level,
                                                          opts.seed, opts.cross_layer)
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
    weightless = [s for s in (sa, sb) if s.weights is None]
    if weightless and not reps_ok:
        raise LayerProbeError(f"{weightless[0].label}: snapshot holds no weights (and no CKA can be computed)")
    names = [e["name"] for e in sa.meta["entries"]]
    degenerate = _too_few_examples(sa, sb) if reps_ok else None
    if degenerate and on_undefined == "raise":
        raise LayerProbeError(degenerate, sa.label)
    if degenerate:  # every entry undefined: no number is given, and no advice
        warnings.warn(degenerate + "; cka = nan for every entry", CKAUndefinedWarning, stacklevel=2)
        undefined = dict.fromkeys(names, f"{sa.label}: {degenerate}")
    else:  # non-finite, constant or too few distinct rows: reported once per entry here (warn, or raise)
        undefined = _find_undefined(sa, sb, names, on_undefined) if reps_ok else {}
    entries = []
    reader = PairReader()  # one read-ahead buffer for every entry
    for e in sa.meta["entries"]:
        name = e["name"]
        stats = _no_weight_stats(sa if sa.weights is None else sb, name) if weightless else \
            weight_stats(sa, sb, name, anatomy, reader)
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
        ci_meta = {"method": "bias-corrected bootstrap over probe examples (percentiles recentred on the estimate, "
                             "at least the delete-one jackknife interval; same resamples for every entry)",
                   "n_boot": n_boot, "level": ci_level, "seed": seed,
                   "resample_unit": "example (all its token rows)" if groups is not None else "example",
                   "subsampled": subsampled}
    xmap = None
    if cross_layer and reps_ok and not degenerate:
        xmap = _cross_layer(sa, sb, names)
    other: dict[str, Any] | None = None
    other_notes: list[str] = []
    if not weightless and OTHER in sa.weights.index and OTHER in sb.weights.index:  # type: ignore[union-attr]
        pairs = _match_params(sa, sb, OTHER)
        ia, ib = sa.weights.index[OTHER], sb.weights.index[OTHER]  # type: ignore[union-attr]
        reshaped = sorted(r for r in set(ia) & set(ib)
                          if sa.weights.shapes[ia[r]] != sb.weights.shapes[ib[r]])  # type: ignore[union-attr]
        only = sorted((set(ia) ^ set(ib)) | set(reshaped))
        other = {"n_params_compared": 0, "unmatched": only}
        if reshaped:
            r = reshaped[0]
            more = f" (+{len(reshaped) - 1} more)" if len(reshaped) > 1 else ""
            other_notes = [f"{r}{more} outside the entries has another shape in {sa.label} "
                           f"({list(sa.weights.shapes[ia[r]])}) than in {sb.label} "  # type: ignore[union-attr]
                           f"({list(sb.weights.shapes[ib[r]])}), e.g. a head for another number of labels: "  # type: ignore[union-attr]
                           "not compared (listed in other.unmatched)"]
        if pairs:
            other.update(weight_stats(sa, sb, OTHER, anatomy=False, reader=reader))
            other["n_params_compared"] = other.pop("n_params")
    other_params = other["n_params_compared"] if other else 0
    rec = recommend(entries, thresholds, other_params=other_params, tolerance=tolerance, revert=revert,
                    prefix_savings=prefix_savings)
    rec.notes.extend([*other_notes, *revert_notes])
    if revert_skipped:
        rec.notes.append(f"revert test not run: {revert_skipped}; the predictions use CKA and drift")
    if not reps_ok:
        rec.notes.insert(0, f"CKA not computed: {why_not}")
        if cross_layer:
            rec.notes.append(f"cross-layer maps not computed: {why_not}")
    if degenerate:
        rec.notes.append(f"{sa.label}: {degenerate}")
        if cross_layer:
            rec.notes.append("cross-layer maps not computed: too few distinct probe examples")
    else:
        for msg in undefined.values():
            rec.notes.append(msg)
        dup = _duplicates_note(sa, sb) if reps_ok else None
        if dup:
            rec.notes.append(dup)
    for s in weightless:
        rec.notes.append(f"weight drift not computed: {s.label} holds no weights "
                         f"({s.meta.get('weights_missing', 'representation-only snapshot')}); "
                         "give its weight files (weights_a=/weights_b=, --weights-a/--weights-b)")
    dtypes = {"a": sa.meta.get("dtype"), "b": sb.meta.get("dtype")}
    if reps_ok and dtypes["a"] and dtypes["b"] and dtypes["a"] != dtypes["b"]:
        rec.notes.append(f"the sides ran in different dtypes ({dtypes['a']} in {sa.label}, {dtypes['b']} in "
                         f"{sb.label}): part of the representation change is precision, not training")
    if reps_ok and estimator != "linear":
        rec.notes.append(f"estimator {estimator}: the freeze thresholds were calibrated for linear CKA")
    meta: dict[str, Any] = {
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
        "device": {"a": sa.meta.get("device"), "b": sb.meta.get("device")},
        "dtype": dtypes,
    }
    if revert:
        meta["revert"] = {"rows": [{k: r[k] for k in ("k", "agreement", "kl", "tv")} for r in revert]}
    if prefix_savings is not None:
        d = prefix_savings.to_dict()
        meta["step_cost"] = {k: d[k] for k in ("full", "served", "fill", "saving", "fill_saving", "steps", "threads")}
        meta["step_cost"]["batch_shape"] = list(prefix_savings.batch_shape)
    for key in ("progress", "adapter"):
        got = {k: s.meta[key] for k, s in (("a", sa), ("b", sb)) if s.meta.get(key) is not None}
        if got:
            meta[key] = got
    for side_key, adapter in meta.get("adapter", {}).items():
        _adapter_notes(adapter, entries, other, rec.notes, sa.label if side_key == "a" else sb.label)
    if "progress" in meta and "b" in meta["progress"]:
        from layerprobe.io.trainer_state import progress_text

        rec.notes.append(f"tuned side: {progress_text(meta['progress']['b'])}")
    return Comparison(entries, rec, meta, other, xmap)


def _adapter_notes(adapter: dict, entries: list[dict], other: dict | None, notes: list[str], label: str) -> None:
    """Cross-check an adapter side: an adapter with an update must show drift somewhere (else it did
    not load: one-line error), and a trained head the base lacks is said, not silently dropped."""
    norm = float(adapter.get("update_norm") or 0.0)
    drifts = [e.get("weight_drift") for e in entries] + [(other or {}).get("weight_drift")]
    if norm > 0 and all(d == 0.0 for d in drifts if d is not None) and any(d is not None for d in drifts):
        raise LayerProbeError(f"the adapter's update norm is {norm:.6g} but no compared weight changed: "
                              "the adapter was not applied to this base model", label)
    if adapter.get("base_note"):  # the result stands: a note, and one warning line (CLI: on stderr)
        from layerprobe.errors import LayerProbeWarning

        notes.append(f"{label}: {adapter['base_note']}")
        warnings.warn(notes[-1], LayerProbeWarning, stacklevel=3)
    for module, info in (adapter.get("modules_to_save") or {}).items():
        if info.get("in_base"):
            notes.append(f"adapter head {module} ({info['n_params']} parameters, modules_to_save): "
                         f"drift {info['weight_drift'] or 0.0:.4g} from the base's copy")
        else:
            notes.append(f"adapter head {module} ({info['n_params']} parameters, modules_to_save) is not in the "
                         "base model: trained from a fresh initialisation, not compared")
