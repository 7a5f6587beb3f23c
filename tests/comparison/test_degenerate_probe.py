"""A probe too small to carry a CKA (the comparison boundary): fewer than MIN_DISTINCT_ROWS distinct
examples give exit 2 on the CLI and "cannot advise" in the API, never CKA 1.0 and freeze advice."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from conftest import tiny_bert

from layerprobe import compare, take_snapshot
from layerprobe.cli import main
from layerprobe.errors import LayerProbeError
from layerprobe.metrics import CKAUndefinedWarning
from layerprobe.metrics.distinct import MIN_DISTINCT_ROWS
from layerprobe.options import CKAOptions


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("degenerate")
    for seed in (0, 1):
        tiny_bert(seed).save_pretrained(root / f"m{seed}")
        tokenizer.save_pretrained(root / f"m{seed}")
    return root


def probe(root, name, lines):
    p = root / f"{name}.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def variants(texts):
    t0, t1, t2 = texts[0], texts[1], texts[2]
    return {
        "max_examples_2": (texts, ["--max-examples", "2"], 2),
        "max_examples_3": (texts, ["--max-examples", "3"], 3),
        "95_copies_and_one": ([t0] * 95 + [t1], [], 2),
        "copies_interleaved": ([t0, t1, t2] * 20, [], 3),
        "case_only_differs": ([t0, t0.upper(), t0.title(), t1] * 3, [], 2),  # the tokenizer lower-cases
        "differ_past_max_length": ([t0 + " good" * i for i in range(1, 9)], ["--max-length", "8"], 1),
        "one_text": ([t0], [], 1),
    }


@pytest.mark.parametrize("case", ["max_examples_2", "max_examples_3", "95_copies_and_one", "copies_interleaved",
                                  "case_only_differs", "differ_past_max_length", "one_text"])
def test_cli_refuses_a_probe_of_too_few_distinct_examples(models, texts, capsys, tmp_path, case):
    lines, extra, distinct = variants(texts)[case]
    p = probe(tmp_path, case, lines)
    rc, out, err = cli(["compare", models / "m0", models / "m1", "--probe", p, "--quiet", "--no-ci", *extra,
                        "--out", tmp_path / "res"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and out == "", err
    assert f"needs at least {MIN_DISTINCT_ROWS} distinct probe examples, got {distinct}" in err
    assert "cannot advise" in err and str(models / "m0") in err
    assert not (tmp_path / "res").exists() or list((tmp_path / "res").iterdir()) == []
    n = len(lines) if "--max-examples" not in extra else int(extra[1])
    if n > distinct:
        assert f"(of {n} examples: {n - distinct} duplicates)" in err


@pytest.mark.parametrize("copies", [1, 5])
def test_at_the_minimum_cka_is_given_and_duplicates_are_reported(models, texts, capsys, tmp_path, copies):
    lines = texts[:MIN_DISTINCT_ROWS] * copies
    rc, out, err = cli(["compare", models / "m0", models / "m1", "--probe", probe(tmp_path, "p", lines),
                        "--quiet", "--no-ci", "--format", "json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    blocks = [b for b in res["blocks"] if b["kind"] == "block"]
    assert all(b["cka"] is not None and 0 < b["cka"] < 1 for b in blocks)  # two different models: below 1
    notes = " ".join(res["recommendation"]["notes"])
    if copies > 1:
        assert f"{len(lines) - MIN_DISTINCT_ROWS} duplicate example(s)" in notes
        assert f"rests on {MIN_DISTINCT_ROWS} distinct examples of {len(lines)}" in notes
    else:
        assert "duplicate" not in notes


@pytest.mark.parametrize("probe_texts", [lambda t: [t[0]] * 9 + [t[1]], lambda t: t[:3], lambda t: [t[0]] * 4])
def test_api_cannot_advise(tokenizer, texts, probe_texts):
    sa = take_snapshot(tiny_bert(0), tokenizer, probe_texts(texts), progress=False)
    sb = take_snapshot(tiny_bert(1), tokenizer, probe_texts(texts), progress=False)
    with pytest.warns(CKAUndefinedWarning, match="at least 4 distinct"):
        r = compare(sa, sb, cka_options=CKAOptions(ci=True))
    assert all(math.isnan(b["cka"]) for b in r.blocks)
    assert all(all(math.isnan(v) for v in b["cka_ci"]) for b in r.blocks)
    assert r.recommendation.freeze == [] and any("cannot advise" in n for n in r.recommendation.notes)
    with pytest.raises(LayerProbeError, match="at least 4 distinct"):
        compare(sa, sb, on_undefined="raise")


def test_older_snapshots_are_checked_row_by_row(tokenizer, texts):
    """Snapshots without the recorded count (older files, or the count removed): the rows themselves."""
    lines = [texts[0]] * 6 + [texts[1]] * 6
    sa = take_snapshot(tiny_bert(0), tokenizer, lines, progress=False, batch_size=5)  # other padding per batch
    sb = take_snapshot(tiny_bert(1), tokenizer, lines, progress=False, batch_size=3)
    for s in (sa, sb):
        del s.meta["n_distinct_examples"]
    with pytest.raises(LayerProbeError, match=r"only 2 distinct representation row\(s\) of 12 in embeddings"):
        compare(sa, sb, on_undefined="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CKAUndefinedWarning)
        r = compare(sa, sb)
    assert all(math.isnan(b["cka"]) for b in r.blocks) and r.recommendation.freeze == []
    assert any("cannot advise" in n for n in r.recommendation.notes)


def test_a_layer_that_collapses_the_examples_is_undefined(tokenizer, texts):
    """Distinct examples, but one entry maps them onto three points: that entry alone is undefined."""
    sa = take_snapshot(tiny_bert(0), tokenizer, texts[:12], progress=False)
    sb = take_snapshot(tiny_bert(1), tokenizer, texts[:12], progress=False)
    for s in (sa, sb):
        r = s.representations["block.3"]
        s.representations["block.3"] = r[[0, 1, 2] * 4].clone()
    with pytest.warns(CKAUndefinedWarning, match="only 3 distinct representation row"):
        res = compare(sa, sb)
    by = {b["name"]: b for b in res.blocks}
    assert math.isnan(by["block.3"]["cka"]) and all(math.isfinite(by[n]["cka"]) for n in ("block.0", "block.2"))


def test_a_snapshot_claiming_more_distinct_examples_than_examples_is_refused(tokenizer, texts, tmp_path):
    s = take_snapshot(tiny_bert(0), tokenizer, texts[:6], progress=False)
    s.meta["n_distinct_examples"] = 7
    s.save(tmp_path / "s.pt")
    from layerprobe.snapshot.take import Snapshot

    with pytest.raises(LayerProbeError, match="n_distinct_examples is 7, more than meta.n_examples 6"):
        Snapshot.load(tmp_path / "s.pt")
