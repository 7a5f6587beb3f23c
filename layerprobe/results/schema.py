"""The JSON contract of a comparison, as a JSON Schema shipped with the package.

``layerprobe/schemas/comparison.schema.json`` describes what ``Comparison.to_json()`` and
``layerprobe compare --format json`` write; :data:`SCHEMA_VERSION` is the ``schema_version``
field of every comparison JSON. :func:`markdown` renders the field reference in
``docs/json.md`` (a test checks that the page matches the schema). :func:`check` holds a document
read back from disk to the schema without ``jsonschema`` (a one-line error naming the first field
that breaks it); a test checks that it agrees with ``jsonschema``. :func:`check_comparison` adds what
the values mean (:func:`meaning_problem`: CKA, cosines and shares in their range, an interval ordered and
around its estimate, an advice that names each entry once and leaves the blocks the rule keeps training):
the one validation of a comparison read back (``Comparison.load``: ``layerprobe show`` and ``freeze-list``).

>>> load()["properties"]["schema_version"]["const"] == SCHEMA_VERSION
True
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from typing import Any

from layerprobe.errors import LayerProbeError, one_line

__all__ = ["CKA_RANGE", "EPS", "MAX_INT", "SCHEMA_VERSION", "check", "check_comparison", "load", "markdown",
           "meaning_problem", "validate"]

#: the version of the JSON contract; raised when a field changes meaning or goes away
SCHEMA_VERSION = 2


def load() -> dict[str, Any]:
    """The comparison JSON Schema (draft 2020-12) as a dict."""
    text = resources.files("layerprobe").joinpath("schemas/comparison.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return json.dumps(load())


def check(doc: Any, path: Any = None) -> dict[str, Any]:
    """``doc`` if it is a comparison this version can read, else a one-line
    :class:`~layerprobe.errors.LayerProbeError` naming ``path`` and the first field that breaks the
    schema. A schema-1 document (before ``recommendation.candidates``) is read with the fields it lacks
    at their defaults; a newer version is refused.

    >>> check({"schema_version": 2, "blocks": []}, "c.json")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: c.json: not a layerprobe comparison: $ is missing 'recommendation'
    """
    what = "not a layerprobe comparison"
    if not isinstance(doc, dict):
        raise LayerProbeError(f"{what}: expected a JSON object, found {_kind(doc)}", path)
    version = doc.get("schema_version")
    version = version if type(version) is int else None  # noqa: E721 (true is not version 1)
    if version is not None and version > SCHEMA_VERSION:
        raise LayerProbeError(f"comparison schema_version {one_line(str(version), 20)} is newer than this layerprobe reads "
                              f"({SCHEMA_VERSION}): upgrade layerprobe", path)
    if version == 1 and isinstance(doc.get("recommendation"), dict):  # schema 2 added these three fields
        doc = {**doc, "schema_version": SCHEMA_VERSION,
               "recommendation": {"candidates": [], "tolerance": None, "predictor": None, **doc["recommendation"]}}
    schema = json.loads(_schema_text())
    problem = _problem(doc, schema, schema["$defs"], "$")
    if problem:
        raise LayerProbeError(f"{what}: {one_line(problem, 200)}", path)
    return doc


def _kind(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, int) and abs(x) > 2**64:  # no 400-digit number in a one-line message
        return f"an integer of {x.bit_length()} bits"
    if isinstance(x, (int, float)):
        return f"the number {x!r}"
    if isinstance(x, str):
        return f"the string {one_line(repr(x), 40)}"
    return "an array" if isinstance(x, list) else "an object"


_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool)
                          or isinstance(x, float) and math.isfinite(x) and x.is_integer()),  # as JSON Schema: 1.0 too
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and _finite(x),
}


def _finite(x: int | float) -> bool:
    """A finite number: an integer too large for a float (``10**400``) is not one (was: OverflowError)."""
    return abs(x) <= sys.float_info.max if isinstance(x, int) else math.isfinite(x)


def _resolve(spec: Any, defs: dict[str, Any]) -> Any:
    while isinstance(spec, dict) and "$ref" in spec:
        spec = {**defs[spec["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in spec.items() if k != "$ref"}}
    return spec


def _problem(x: Any, spec: Any, defs: dict[str, Any], where: str) -> str | None:
    """The first way ``x`` breaks ``spec`` (the keywords the shipped schema uses), or None."""
    spec = _resolve(spec, defs)
    if spec is True or spec == {}:
        return None
    if spec is False:
        return f"{where} is not allowed"
    if "const" in spec and not (x == spec["const"] and type(x) is type(spec["const"])):
        return f"{where} must be {json.dumps(spec['const'])}, found {_kind(x)}"
    if "enum" in spec and not any(x == v and type(x) is type(v) for v in spec["enum"]):
        return f"{where} must be one of {json.dumps(spec['enum'])}, found {_kind(x)}"
    if "type" in spec:
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        if not any(_TYPES[t](x) for t in types):
            return f"{where} must be {' or '.join(types)}, found {_kind(x)}"
    if "minimum" in spec and _TYPES["number"](x) and x < spec["minimum"]:
        return f"{where} must be at least {spec['minimum']}, found {x!r}"
    for part in spec.get("allOf", []):
        problem = _problem(x, part, defs, where)
        if problem:
            return problem
    if isinstance(x, list):
        if len(x) < spec.get("minItems", 0) or len(x) > spec.get("maxItems", len(x)):
            return f"{where} must have {spec.get('minItems')}..{spec.get('maxItems')} items, found {len(x)}"
        for i, item in enumerate(x):
            problem = _problem(item, spec.get("items", True), defs, f"{where}[{i}]")
            if problem:
                return problem
    if isinstance(x, dict):
        known = dict(spec.get("properties", {}))
        for part in spec.get("allOf", []):
            known.update(_resolve(part, defs).get("properties", {}))
        required = list(spec.get("required", []))
        for part in spec.get("allOf", []):
            required += _resolve(part, defs).get("required", [])
        for key in required:
            if key not in x:
                return f"{where} is missing {key!r}"
        extra = spec.get("additionalProperties", True)
        if spec.get("unevaluatedProperties") is False:
            extra = False
        for key, value in x.items():
            sub = known.get(key, extra)
            if sub is False:
                return f"{where} has an unknown field {one_line(repr(key), 40)}"
            problem = _problem(value, sub, defs, f"{where}.{key}")
            if problem:
                return problem
    return None


def validate(doc: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``doc`` breaks the contract (needs ``jsonschema``)."""
    import jsonschema

    jsonschema.Draft202012Validator(load()).validate(doc)


def _type(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return {"num": "number or null", "matrix": "array of arrays of number or null"}.get(name, name)
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    t = spec.get("type", "object" if "properties" in spec or "allOf" in spec else "any")
    t = " or ".join(t) if isinstance(t, list) else t
    if t == "array" and "items" in spec:
        t = f"array of {_type(spec['items'], defs)}"
    return t


def _rows(prefix: str, spec: dict[str, Any], defs: dict[str, Any], required: set[str]) -> list[str]:
    rows = []
    props: dict[str, Any] = {}
    for part in spec.get("allOf", []):
        props.update(defs[part["$ref"].rsplit("/", 1)[-1]].get("properties", {}))
        required |= set(defs[part["$ref"].rsplit("/", 1)[-1]].get("required", []))
    props.update({k: v for k, v in spec.get("properties", {}).items() if v is not True})
    required |= set(spec.get("required", []))
    for name, sub in props.items():
        if "$ref" in sub and sub["$ref"].rsplit("/", 1)[-1] in ("entry", "recommendation", "meta", "group"):
            target = defs[sub["$ref"].rsplit("/", 1)[-1]]
            desc = sub.get("description") or target.get("description", "")
            rows.append(f"| `{prefix}{name}` | object | {'yes' if name in required else 'no'} | {desc} |")
            rows += _rows(f"{prefix}{name}.", target, defs, set())
            continue
        desc = sub.get("description", "")
        rows.append(f"| `{prefix}{name}` | {_type(sub, defs)} | {'yes' if name in required else 'no'} | {desc} |")
        if sub.get("type") == "object" or isinstance(sub.get("type"), list) and "object" in sub["type"]:
            if "properties" in sub:
                rows += _rows(f"{prefix}{name}.", sub, defs, set())
            elif isinstance(sub.get("additionalProperties"), dict) and "$ref" in sub["additionalProperties"]:
                rows += _rows(f"{prefix}{name}.*.", defs[sub["additionalProperties"]["$ref"].rsplit("/", 1)[-1]],
                              defs, set())
        if sub.get("type") == "array" and "$ref" in sub.get("items", {}):
            target = defs[sub["items"]["$ref"].rsplit("/", 1)[-1]]
            if "properties" in target:
                rows += _rows(f"{prefix}{name}[].", target, defs, set())
    return rows


def markdown() -> str:
    """The field reference of the contract as a Markdown table (one row per field)."""
    schema = load()
    lines = [f"Schema version {SCHEMA_VERSION} (`layerprobe/schemas/comparison.schema.json`). "
             + schema["description"], "",
             "| field | type | always | meaning |", "|---|---|---|---|",
             *_rows("", schema, schema["$defs"], set())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- what the values mean
# The schema holds a document to its shape; a hand-edited or damaged comparison.json can keep the shape and
# still be impossible (a CKA of 7.5, an interval whose low end is above its high end, a block both frozen
# and trained). check_comparison is the one validation of a comparison read back (Comparison.from_dict and
# Comparison.load, hence layerprobe show and freeze-list): the schema, then meaning_problem.


def check_comparison(doc: Any, path: Any = None) -> dict[str, Any]:
    """:func:`check`, then what the values mean (:func:`meaning_problem`): ``doc`` if it is a comparison this
    version can read and it is possible, else a one-line :class:`~layerprobe.errors.LayerProbeError` naming
    ``path`` and the first field at fault. A missing value (null) stays allowed wherever the schema allows it.

    >>> check_comparison({"schema_version": 2, "blocks": []}, "c.json")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: c.json: not a layerprobe comparison: $ is missing 'recommendation'
    """
    doc = check(doc, path)
    found = meaning_problem(doc)
    if found:
        raise LayerProbeError(f"impossible comparison: {one_line(found, 240)}", path)
    return doc


#: slack for float round-off at the ends of a range (a cosine of 1.0000000000000002 is 1)
EPS = 1e-6
#: the largest integer of a comparison: a signed 64-bit one (``to_frame``'s int64 ``n_params``); no count is larger
MAX_INT = 2**63 - 1
#: the range of each estimator's CKA: linear and RBF CKA are clipped to [0, 1], debiased CKA is not
#: clipped and may be slightly negative (a ratio of inner products: within [-1, 1])
CKA_RANGE = {"linear": (0.0, 1.0), "rbf": (0.0, 1.0), "debiased": (-1.0, 1.0)}


def _value(x: Any) -> float | None:
    """A present, finite number, or None (null, NaN: missing)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:
        return math.inf
    return v if math.isfinite(v) else None


def _shown(x: Any) -> str:
    return one_line(repr(x), 40)


def _in_range(x: Any, lo: float, hi: float, where: str, what: str = "") -> str | None:
    v = _value(x)
    if v is None or lo - EPS <= v <= hi + EPS:
        return None
    bound = (f"below {lo:g}" if hi == math.inf else f"above {hi:g}" if lo == -math.inf
             else f"outside [{lo:g}, {hi:g}]")
    return f"{where} is {_shown(x)}, {bound}" + (f" ({what})" if what else "")


def _at_least(x: Any, lo: float, where: str, what: str = "") -> str | None:
    return _in_range(x, lo, math.inf, where, what)


def _big_ints(x: Any, where: str) -> Iterator[str]:
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_INT:
        yield f"{where} is an integer of {x.bit_length()} bits, beyond a 64-bit integer"
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _big_ints(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _big_ints(v, f"{where}[{i}]")


def _drift(d: dict[str, Any], where: str) -> Iterator[str | None]:
    """Weight drift and max change are distances (>= 0); the cosine is in [-1, 1]."""
    yield _at_least(d.get("weight_drift"), 0.0, f"{where}.weight_drift", "a distance")
    yield _in_range(d.get("weight_cosine"), -1.0, 1.0, f"{where}.weight_cosine", "a cosine")
    yield _at_least(d.get("max_abs_change"), 0.0, f"{where}.max_abs_change", "a distance")


def _entry(e: dict[str, Any], where: str, cka_range: tuple[float, float], estimator: str,
           subsampled: bool) -> Iterator[str | None]:
    lo, hi = cka_range
    yield _in_range(e.get("cka"), lo, hi, f"{where}.cka", f"{estimator} CKA")
    ci = e.get("cka_ci")
    if isinstance(ci, list) and len(ci) == 2:
        yield _in_range(ci[0], lo, hi, f"{where}.cka_ci[0]", f"{estimator} CKA")
        yield _in_range(ci[1], lo, hi, f"{where}.cka_ci[1]", f"{estimator} CKA")
        low, high, cka = _value(ci[0]), _value(ci[1]), _value(e.get("cka"))
        if low is not None and high is not None and low > high + EPS:
            yield f"{where}.cka_ci is [{ci[0]!r}, {ci[1]!r}]: its low end is above its high end"
        # the interval is built around the estimate; a subsampled bootstrap centres on the subsample's
        elif cka is not None and not subsampled and ((low is not None and cka < low - EPS)
                                                     or (high is not None and cka > high + EPS)):
            yield f"{where}.cka {e['cka']!r} is outside its interval cka_ci [{ci[0]!r}, {ci[1]!r}]"
    yield from _drift(e, where)
    for g, s in (e.get("groups") or {}).items():
        if isinstance(s, dict):
            yield from _drift(s, f"{where}.groups.{g}")
            yield _at_least(s.get("stable_rank"), 0.0, f"{where}.groups.{g}.stable_rank")
            yield _at_least(s.get("rank90"), 0.0, f"{where}.groups.{g}.rank90")


def _advice(doc: dict[str, Any]) -> Iterator[str | None]:
    """The recommendation agrees with itself and with the entries it names."""
    from layerprobe.freezing.rule import Thresholds

    r = doc["recommendation"]
    where = "$.recommendation"
    t = r.get("thresholds") or {}
    try:  # the rule's own check of its knobs (as the CLI's --min-cka, --max-drift, ... are held)
        Thresholds(**{k: t[k] for k in ("min_cka", "max_drift", "use_interval", "min_train_blocks",
                                        "max_relative_change") if k in t})
    except LayerProbeError as err:
        yield f"{where}.thresholds.{err.message}"
    kinds = {e["name"]: e["kind"] for e in doc["blocks"]}
    seen: dict[str, str] = {}
    for key in ("freeze", "train"):
        for i, name in enumerate(r[key]):
            at = f"{where}.{key}[{i}]"
            if seen.get(name) == key:
                yield f"{at} {_shown(name)} is named twice in {where}.{key}"
            elif name in seen:
                yield f"{at} {_shown(name)} is also in {where}.{seen[name]}: an entry cannot both freeze and train"
            elif name not in kinds:
                yield f"{at} {_shown(name)} is not an entry of $.blocks"
            seen.setdefault(name, key)
    order = list(kinds)
    for i, name in enumerate(r["freeze"]):  # the advice is always a bottom prefix, bottom-up (the rule's step 3)
        if i >= len(order) or order[i] != name:
            yield (f"{where}.freeze[{i}] is {_shown(name)} where $.blocks[{i}] is "
                   f"{_shown(order[i]) if i < len(order) else 'missing'}: the frozen entries must be a bottom prefix")
            break
    n_blocks = sum(k == "block" for k in kinds.values())
    frozen_blocks = sum(kinds.get(n) == "block" for n in set(r["freeze"]))
    min_train = t.get("min_train_blocks")
    if isinstance(min_train, int) and n_blocks and frozen_blocks > max(0, n_blocks - min_train):
        yield (f"{where}.freeze freezes {frozen_blocks} of the {n_blocks} blocks, but at least {min_train} "
               f"must train ({where}.thresholds.min_train_blocks)")
    yield _in_range(r.get("frozen_param_fraction"), 0.0, 1.0, f"{where}.frozen_param_fraction", "a share")
    # a measured saving can be below 0 (a slower step), never above all of the step
    yield _in_range(r.get("est_compute_saving"), -math.inf, 1.0, f"{where}.est_compute_saving", "a share")
    tol = _value(r.get("tolerance"))
    if tol is not None and not 0.0 <= tol < 1.0:  # as layerprobe.freezing.predict.check_tolerance, --tolerance
        yield f"{where}.tolerance is {_shown(r['tolerance'])}, outside [0, 1) (an accuracy loss accepted)"
    for i, c in enumerate(r.get("candidates") or []):
        at = f"{where}.candidates[{i}]"
        yield _in_range(c.get("compute_saved"), -math.inf, 1.0, f"{at}.compute_saved", "a share")
        yield _at_least(c.get("memory_saved_mb"), 0.0, f"{at}.memory_saved_mb")
        low, high = (_value(v) for v in c.get("interval") or [None, None])
        if low is not None and high is not None and low > high + EPS:
            yield f"{at}.interval is {c['interval']!r}: its low end is above its high end"


def _meta(meta: dict[str, Any]) -> Iterator[str | None]:
    ci = meta.get("ci")
    if isinstance(ci, dict):
        level = _value(ci.get("level"))
        if level is not None and not 0.0 < level < 1.0:  # as --ci-level
            yield f"$.meta.ci.level is {_shown(ci['level'])}, outside (0, 1)"
        yield _at_least(ci.get("n_boot"), 1, "$.meta.ci.n_boot")
    yield _at_least(meta.get("n_examples"), 0, "$.meta.n_examples")
    for i, row in enumerate((meta.get("revert") or {}).get("rows") or []):
        if isinstance(row, dict):
            yield _in_range(row.get("agreement"), 0.0, 1.0, f"$.meta.revert.rows[{i}].agreement", "a share")
            yield _at_least(row.get("kl"), 0.0, f"$.meta.revert.rows[{i}].kl", "a divergence")
            yield _in_range(row.get("tv"), 0.0, 1.0, f"$.meta.revert.rows[{i}].tv", "a total variation")


def _problems(doc: dict[str, Any]) -> Iterator[str | None]:
    yield next(_big_ints(doc, "$"), None)
    meta = doc.get("meta") or {}
    estimator = str(meta.get("estimator")) if meta.get("estimator") in CKA_RANGE else "linear"
    subsampled = bool((meta.get("ci") or {}).get("subsampled"))
    names: dict[str, int] = {}
    for i, e in enumerate(doc.get("blocks") or []):
        if e.get("name") in names:
            yield f"$.blocks[{i}].name {_shown(e['name'])} repeats $.blocks[{names[e['name']]}].name"
        names.setdefault(e.get("name"), i)
        yield from _entry(e, f"$.blocks[{i}]", CKA_RANGE[estimator], estimator, subsampled)
    if isinstance(doc.get("other"), dict):
        yield from _drift(doc["other"], "$.other")
    if isinstance(doc.get("recommendation"), dict):
        yield from _advice(doc)
    yield from _meta(meta)
    cross = doc.get("cross_layer")
    if isinstance(cross, dict):
        for key in ("base_vs_tuned", "base", "tuned"):
            for i, row in enumerate(cross.get(key) or []):
                for j, v in enumerate(row if isinstance(row, list) else []):
                    yield _in_range(v, 0.0, 1.0, f"$.cross_layer.{key}[{i}][{j}]", "linear CKA")


def meaning_problem(doc: dict[str, Any]) -> str | None:
    """The first impossible value or contradiction in a comparison that has the schema's shape, or None.

    Ranges: CKA in [0, 1] (debiased: [-1, 1]) with its interval ``cka_ci`` ordered and around it, weight
    drift and max change >= 0, cosines in [-1, 1], shares in [0, 1], ``tolerance`` in [0, 1) as
    ``--tolerance``, the thresholds as ``--min-cka`` ... accept; integers within 64 bits. Advice: entry
    names unique; every name in ``freeze`` and ``train`` an entry, in one of them only and once; at least
    ``thresholds.min_train_blocks`` blocks train.

    >>> meaning_problem({"blocks": [{"name": "block.0", "kind": "block", "cka": 7.5}], "meta": {"estimator": "linear"},
    ...                  "recommendation": {"freeze": [], "train": ["block.0"]}})
    '$.blocks[0].cka is 7.5, outside [0, 1] (linear CKA)'
    """
    return next((p for p in _problems(doc) if p), None)
