"""The JSON contract: every comparison validates against the shipped schema, a golden file pins
its shape and values, and docs/json.md is generated from the schema."""

from __future__ import annotations

import copy
import json
import math
import os
import random

import pytest

from conftest import WORDS, tiny_bert
from layerprobe.options import CKAOptions
from layerprobe import compare
from layerprobe.errors import LayerProbeError
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


def test_check_names_an_integer_too_large_for_a_number():
    """``10**400`` is valid JSON; as a number field it was an OverflowError traceback inside check."""
    from layerprobe.errors import LayerProbeError

    with open(GOLDEN, encoding="utf-8") as f:
        doc = json.load(f)
    doc["blocks"][1]["cka"] = 10**400
    with pytest.raises(LayerProbeError) as info:
        schema.check(doc, "c.json")
    assert str(info.value) == ("c.json: not a layerprobe comparison: $.blocks[1].cka must be number or null, "
                               "found an integer of 1329 bits")
    doc["blocks"][1]["cka"] = 0.5
    doc["blocks"][1]["n_params"] = 10**400  # an integer, as JSON Schema reads it: the range is consistency's
    assert schema.check(doc, "c.json") is doc


# ------------------------------------------------- what the values mean: check_comparison, meaning_problem


def _golden(**advice):
    with open(GOLDEN, encoding="utf-8") as f:
        doc = json.load(f)
    doc["recommendation"].update(advice)
    return doc


def _frozen():
    """The golden comparison advising embeddings + block.0 frozen (a valid advice)."""
    return _golden(freeze=["embeddings", "block.0"], train=["block.1", "block.2", "block.3"])


def _put(doc, path, value):
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return doc


def test_valid_comparisons_pass():
    for doc in (_golden(), _frozen()):
        assert schema.meaning_problem(doc) is None
        assert schema.check_comparison(copy.deepcopy(doc), "c.json") == doc
    doc = _frozen()
    doc["blocks"][1]["cka"] = None  # a missing value stays allowed, its interval too
    doc["blocks"][1]["cka_ci"] = [None, None]
    doc["blocks"][2]["weight_drift"] = doc["blocks"][2]["weight_cosine"] = None
    doc["recommendation"]["frozen_param_fraction"] = None
    assert schema.meaning_problem(doc) is None
    doc["blocks"][3]["weight_cosine"] = 1.0 + 1e-12  # round-off at the end of a range
    doc["blocks"][3]["cka"] = doc["blocks"][3]["cka_ci"][1] + 1e-9
    assert schema.meaning_problem(doc) is None


IMPOSSIBLE = [
    (("blocks", 1, "cka"), 7.5, "$.blocks[1].cka is 7.5, outside [0, 1] (linear CKA)"),
    (("blocks", 1, "cka"), -3.0, "$.blocks[1].cka is -3.0, outside [0, 1] (linear CKA)"),
    (("blocks", 1, "cka"), 1.0001, "$.blocks[1].cka is 1.0001, outside [0, 1]"),
    (("blocks", 1, "cka_ci"), [0.99, 0.1], "$.blocks[1].cka_ci is [0.99, 0.1]: its low end is above its high end"),
    (("blocks", 1, "cka_ci"), [0.1, 0.2], "$.blocks[1].cka 0.6811641138707965 is outside its interval cka_ci [0.1, 0.2]"),
    (("blocks", 1, "cka_ci"), [0.5, 1.5], "$.blocks[1].cka_ci[1] is 1.5, outside [0, 1]"),
    (("blocks", 1, "weight_cosine"), 5.0, "$.blocks[1].weight_cosine is 5.0, outside [-1, 1] (a cosine)"),
    (("blocks", 1, "weight_drift"), -1.0, "$.blocks[1].weight_drift is -1.0, below 0 (a distance)"),
    (("blocks", 1, "max_abs_change"), -0.5, "$.blocks[1].max_abs_change is -0.5, below 0"),
    (("blocks", 1, "groups", "attn.q", "weight_cosine"), -2.0, "$.blocks[1].groups.attn.q.weight_cosine is -2.0"),
    (("blocks", 1, "n_params"), 10**400, "$.blocks[1].n_params is an integer of 1329 bits"),
    (("recommendation", "frozen_param_fraction"), 50.0, "$.recommendation.frozen_param_fraction is 50.0, outside [0, 1]"),
    (("recommendation", "est_compute_saving"), 1.5, "$.recommendation.est_compute_saving is 1.5, above 1"),
    (("recommendation", "tolerance"), 5.0, "$.recommendation.tolerance is 5.0, outside [0, 1)"),
    (("recommendation", "tolerance"), -0.1, "$.recommendation.tolerance is -0.1, outside [0, 1)"),
    (("recommendation", "thresholds", "min_cka"), 2.0, "$.recommendation.thresholds.min_cka must be a number in [0, 1]"),
    (("recommendation", "thresholds", "max_drift"), -1.0, "$.recommendation.thresholds.max_drift must be a finite"),
    (("recommendation", "candidates", 0, "interval"), [2.0, 1.0],
     "$.recommendation.candidates[0].interval is [2.0, 1.0]: its low end"),
    (("meta", "ci", "level"), 1.5, "$.meta.ci.level is 1.5, outside (0, 1)"),
    (("cross_layer", "base", 0, 1), 1.7, "$.cross_layer.base[0][1] is 1.7, outside [0, 1] (linear CKA)"),
    (("recommendation", "freeze"), ["embeddings", "block.0", "block.1"],
     "$.recommendation.train[0] 'block.1' is also in $.recommendation.freeze: an entry cannot both freeze and train"),
    (("recommendation", "freeze"), ["embeddings", "embeddings"],
     "$.recommendation.freeze[1] 'embeddings' is named twice in $.recommendation.freeze"),
    (("recommendation", "freeze"), ["embeddings", "block.0", "block.7"],
     "$.recommendation.freeze[2] 'block.7' is not an entry of $.blocks"),
    (("recommendation", "freeze"), ["block.0"],
     "$.recommendation.freeze[0] is 'block.0' where $.blocks[0] is 'embeddings': the frozen entries must be a bottom"),
    (("blocks", 2, "name"), "block.0", "$.blocks[2].name 'block.0' repeats $.blocks[1].name"),
]


@pytest.mark.parametrize("path, value, want", IMPOSSIBLE)
def test_impossible_values_are_refused_naming_the_field(path, value, want):
    doc = _put(_frozen(), path, value)
    found = schema.meaning_problem(doc)
    assert found is not None and found.startswith(want), found
    with pytest.raises(LayerProbeError) as info:
        schema.check_comparison(doc, "c.json")
    assert str(info.value).startswith("c.json: impossible comparison: $.") and "\n" not in str(info.value)


def test_every_block_frozen_is_refused_unless_the_rule_allowed_it():
    names = ["embeddings", "block.0", "block.1", "block.2", "block.3"]
    doc = _golden(freeze=names, train=[])
    assert schema.meaning_problem(doc) == ("$.recommendation.freeze freezes 4 of the 4 blocks, but at least 1 must "
                                        "train ($.recommendation.thresholds.min_train_blocks)")
    doc = _golden(freeze=names[:4], train=names[4:])
    doc["recommendation"]["thresholds"]["min_train_blocks"] = 2  # 3 of 4 frozen, 2 must train
    assert schema.meaning_problem(doc).startswith("$.recommendation.freeze freezes 3 of the 4 blocks, but at least 2")
    doc = _golden(freeze=names, train=[])
    doc["recommendation"]["thresholds"]["min_train_blocks"] = 0  # compare --min-train-blocks 0 writes this
    assert schema.meaning_problem(doc) is None


def test_ranges_follow_the_estimator_and_the_bootstrap():
    doc = _frozen()
    doc["blocks"][1].update(cka=-0.02, cka_ci=None)
    assert "outside [0, 1] (linear CKA)" in schema.meaning_problem(doc)
    doc["meta"]["estimator"] = "debiased"  # not clipped: slightly negative is a real value
    doc["blocks"][1].pop("cka_ci")
    assert schema.meaning_problem(doc) is None
    doc["blocks"][1]["cka"] = -1.5
    assert schema.meaning_problem(doc) == "$.blocks[1].cka is -1.5, outside [-1, 1] (debiased CKA)"
    doc = _put(_frozen(), ("blocks", 1, "cka_ci"), [0.1, 0.2])
    doc["meta"]["ci"]["subsampled"] = True  # the interval is centred on a subsample's estimate
    assert schema.meaning_problem(doc) is None


def test_measured_saving_may_be_negative():
    """A calibrated step can be slower with the prefix cached; the share saved is then below 0, never above 1."""
    assert schema.meaning_problem(_put(_frozen(), ("recommendation", "est_compute_saving"), -0.2)) is None
