"""The JSON contract of a comparison, as a JSON Schema shipped with the package.

``layerprobe/schemas/comparison.schema.json`` describes what ``Comparison.to_json()`` and
``layerprobe compare --format json`` write; :data:`SCHEMA_VERSION` is the ``schema_version``
field of every comparison JSON. :func:`markdown` renders the field reference in
``docs/json.md`` (a test checks that the page matches the schema).

>>> load()["properties"]["schema_version"]["const"] == SCHEMA_VERSION
True
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["SCHEMA_VERSION", "load", "markdown", "validate"]

#: the version of the JSON contract; raised when a field changes meaning or goes away
SCHEMA_VERSION = 2


def load() -> dict[str, Any]:
    """The comparison JSON Schema (draft 2020-12) as a dict."""
    text = resources.files("layerprobe").joinpath("schemas/comparison.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


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
