"""The JSON contract: every comparison validates against the shipped schema, a golden file pins
its shape and values, and docs/json.md is generated from the schema."""

from __future__ import annotations

import json
import math
import os
import random

import pytest

from conftest import WORDS, tiny_bert
from layerprobe.options import CKAOptions
from layerprobe import compare
from layerprobe.results import schema

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "comparison.json")
DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "json.md")
#: fields that name the environment, not the result
VOLATILE = {"layerprobe_version", "torch_version"}


def _golden_comparison(tokenizer):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(24)]
    return compare(tiny_bert(0), tiny_bert(1), texts, tokenizer, cka_options=CKAOptions(cross_layer=True, n_boot=50))


def _same(got, want, path="$"):
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (path, list(got), list(want))
        for k in want:
            if k not in VOLATILE:
                _same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), (path, got, want)
    else:
        assert got == want, (path, got, want)


@pytest.fixture
def pinned_predictor(monkeypatch):
    """The golden file pins the contract, not the freeze study's latest fit: predict with a fixed copy."""
    from layerprobe.freezing import predict as pr

    monkeypatch.setattr(pr, "PREDICTOR_FILE", os.path.join(os.path.dirname(GOLDEN), "predictor.json"))
    pr._shipped.cache_clear()
    yield
    pr._shipped.cache_clear()


def test_golden_comparison(tokenizer, pinned_predictor):
    doc = json.loads(_golden_comparison(tokenizer).to_json())
    schema.validate(doc)
    if os.environ.get("LAYERPROBE_REGOLD"):  # regenerate after an intended change of the contract
        with open(GOLDEN, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
    with open(GOLDEN, encoding="utf-8") as f:
        want = json.load(f)
    assert doc["schema_version"] == want["schema_version"] == schema.SCHEMA_VERSION
    _same(doc, want)


def test_every_output_kind_validates(bert, tokenizer, texts, tmp_path):
    from safetensors.torch import save_file

    schema.validate(json.loads(compare(bert, bert).to_json()))  # weights only: cka null, reason given
    schema.validate(json.loads(compare(bert, bert, texts, tokenizer, anatomy=False, cka_options=CKAOptions(ci=False)).to_json()))
    save_file({k: v.contiguous() for k, v in bert.state_dict().items()}, str(tmp_path / "w.safetensors"))
    schema.validate(json.loads(compare(tmp_path / "w.safetensors", tmp_path / "w.safetensors").to_json()))
    with open(GOLDEN, encoding="utf-8") as f:
        schema.validate(json.load(f))


def test_schema_refuses_a_broken_document():
    import jsonschema

    with open(GOLDEN, encoding="utf-8") as f:
        doc = json.load(f)
    for broken in ({k: v for k, v in doc.items() if k != "schema_version"},
                   {**doc, "blocks": [{**doc["blocks"][0], "cka": "high"}]},
                   {**doc, "surprise": 1}):
        with pytest.raises(jsonschema.ValidationError):
            schema.validate(broken)


def test_docs_page_is_generated_from_the_schema():
    with open(DOC, encoding="utf-8") as f:
        page = f.read()
    start, end = "<!-- generated from the schema: start -->\n", "<!-- generated from the schema: end -->"
    assert start in page and end in page
    assert page.split(start, 1)[1].split(end, 1)[0] == schema.markdown(), (
        "docs/json.md is out of date: paste layerprobe.results.schema.markdown() between the markers")


def _paths(x, at=()):
    """Every field of a document (the first two items of each list), as key paths."""
    yield at
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, at + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x[:2]):
            yield from _paths(v, at + (i,))


def test_check_agrees_with_jsonschema():
    """``schema.check`` (what ``Comparison.load`` holds a file to, without jsonschema) accepts exactly the
    documents jsonschema accepts, over every single-field change of the golden file; it is stricter only
    where a newer schema version or Infinity (``1e999``) is concerned, and it reads schema 1."""
    import copy

    import jsonschema

    from layerprobe.errors import LayerProbeError

    with open(GOLDEN, encoding="utf-8") as f:
        doc = json.load(f)
    doc["blocks"] = doc["blocks"][:2]  # smaller copies, the same fields
    doc["cross_layer"] = {k: [row[:2] for row in v[:2]] if isinstance(v, list) and k != "names" else v
                          for k, v in doc["cross_layer"].items()}
    validator = jsonschema.Draft202012Validator(schema.load())
    for block in doc["blocks"]:  # one parameter group is enough
        block["groups"] = dict(list(block["groups"].items())[:1])
    values = [None, -1, 0.5, 3.0, "x", True, [], {}, [None, None], "DELETE"]
    seen = {True: 0, False: 0}
    for at in list(_paths(doc))[1:]:
        for value in values:
            d = copy.deepcopy(doc)
            parent = d
            for k in at[:-1]:
                parent = parent[k]
            if value == "DELETE":
                if not isinstance(parent, dict):
                    continue
                del parent[at[-1]]
            else:
                parent[at[-1]] = value
            want = validator.is_valid(d)
            try:
                schema.check(d, "c.json")
                got = True
            except LayerProbeError as err:
                got = False
                assert str(err).startswith("c.json: ") and "\n" not in str(err)
            assert got == want, (at, value)
            seen[want] += 1
    assert min(seen.values()) > 100, seen  # both outcomes exercised
    with pytest.raises(LayerProbeError, match="newer"):
        schema.check({**doc, "schema_version": schema.SCHEMA_VERSION + 1})
    with pytest.raises(LayerProbeError, match="must be number or null"):
        schema.check({**doc, "blocks": [{**doc["blocks"][0], "cka": float("inf")}]})
    old = {**doc, "schema_version": 1,
           "recommendation": {k: v for k, v in doc["recommendation"].items() if k not in ("candidates", "tolerance",
                                                                                         "predictor")}}
    assert not validator.is_valid(old) and schema.check(old)["recommendation"]["candidates"] == []
