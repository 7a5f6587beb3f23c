"""The JSON contract of a comparison, as a JSON Schema shipped with the package.

``layerprobe/schemas/comparison.schema.json`` describes what ``Comparison.to_json()`` and
``layerprobe compare --format json`` write; :data:`SCHEMA_VERSION` is the ``schema_version``
field of every comparison JSON. :func:`markdown` renders the field reference in
``docs/json.md`` (a test checks that the page matches the schema). :func:`check` holds a document
read back from disk to the schema without ``jsonschema`` (a one-line error naming the first field
that breaks it); a test checks that it agrees with ``jsonschema``.

>>> load()["properties"]["schema_version"]["const"] == SCHEMA_VERSION
True
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

from layerprobe.errors import LayerProbeError, one_line

__all__ = ["SCHEMA_VERSION", "check", "load", "markdown", "validate"]

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
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x),
}


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
