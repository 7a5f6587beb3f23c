"""Comparison files read back (``results/``): freeze-list and recommend on other models' results.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import json

import pytest

from conftest import tiny_bert
from hostile import assert_one_line, run, strict_json


def _fabricated(f3, tmp_path, edit):
    doc = strict_json(f3["cmp"].read_text())
    edit(doc)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    return path


def test_freeze_list_for_another_model_names_the_comparison(f3, capsys, tmp_path):
    c = _fabricated(f3, tmp_path, lambda d: None)
    wide = tmp_path / "wide"
    tiny_bert(0, head=True, hidden_size=64).save_pretrained(wide)  # same entry names, other sizes
    want = sum(p.numel() for p in tiny_bert(0, hidden_size=64).embeddings.parameters())
    capsys.readouterr()  # save_pretrained's progress bar
    rc, out, err = run(["freeze-list", c, wide], capsys)
    assert out == ""
    assert_one_line(rc, err, f"{c}: made on another model than {wide}: ",
                    f"embeddings has {strict_json(c.read_text())['blocks'][0]['n_params']:,} parameters in the "
                    f"comparison, {want:,} in the model")  # was: exit 0 and the other model's names
    deep = tmp_path / "deep"
    tiny_bert(0, head=True, num_hidden_layers=2).save_pretrained(deep)
    capsys.readouterr()
    assert_one_line(*run(["freeze-list", c, deep], capsys)[::2], str(c), str(deep),
                    "block.2 is not an entry of the model")


def test_freeze_list_lists_the_advised_entries_of_its_own_model(f3, capsys, tmp_path):
    from layerprobe.freezing.apply import parameter_names

    c = _fabricated(f3, tmp_path, lambda d: d["recommendation"].update(
        freeze=["embeddings", "block.0"], train=["block.1", "block.2", "block.3"]))
    rc, out, err = run(["freeze-list", c, f3["good"]], capsys)
    assert rc == 0 and err == ""
    assert out.splitlines() == parameter_names(tiny_bert(0, head=True), ["embeddings", "block.0"])
    assert out.splitlines()[0] == "bert.embeddings.word_embeddings.weight" and len(out.splitlines()) == 21


def _set_freeze(names, train=None):
    def edit(d):
        d["recommendation"]["freeze"] = names
        if train is not None:
            d["recommendation"]["train"] = train
    return edit


#: (edit of a valid comparison, what the one line says): freeze-list refuses exactly what show refuses
BAD = {
    "minimal": (lambda d: [d.pop(k) for k in list(d) if k != "recommendation"], "$ is missing 'schema_version'"),
    "version_missing": (lambda d: d.pop("schema_version"), "$ is missing 'schema_version'"),
    "version_string": (lambda d: d.update(schema_version="2"), "$.schema_version must be 2, found the string '2'"),
    "version_newer": (lambda d: d.update(schema_version=3), "schema_version 3 is newer than this layerprobe reads"),
    "unknown_field": (lambda d: d.update(hacker=1), "$ has an unknown field 'hacker'"),
    "n_params_huge": (lambda d: d["blocks"][1].update(n_params=10**400), "$.blocks[1].n_params is an integer of 1329"),
    "freeze_and_train": (_set_freeze(["embeddings", "block.0", "block.1"], ["block.1", "block.2", "block.3"]),
                         "$.recommendation.train[0] 'block.1' is also in $.recommendation.freeze"),
    "freeze_every_block": (_set_freeze(["embeddings", "block.0", "block.1", "block.2", "block.3"], []),
                           "$.recommendation.freeze freezes 4 of the 4 blocks, but at least 1 must train"),
    "cka_out_of_range": (lambda d: d["blocks"][1].update(cka=7.5), "$.blocks[1].cka is 7.5, outside [0, 1]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_freeze_list_validates_the_comparison_as_show_does(f3, capsys, tmp_path, case):
    """was: freeze-list read recommendation.freeze alone, and listed every parameter of a file show refused."""
    edit, needle = BAD[case]
    c = _fabricated(f3, tmp_path, edit)
    rc, out, err = run(["show", c], capsys)
    shown = assert_one_line(rc, err, str(c), needle)
    rc, out, err = run(["freeze-list", c, f3["good"]], capsys)
    assert assert_one_line(rc, err, str(c), needle) == shown and out == ""


def test_recommend_api_reads_comparison_files_safely(f3, tmp_path):
    """was: FileNotFoundError / RecursionError / TypeError from ``recommend(path)``."""
    from layerprobe import recommend
    from layerprobe.errors import LayerProbeError

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "ints.json").write_text('{"blocks": [1, 2]}')
    for path, needle in ((tmp_path / "none.json", "not found"), (tmp_path / "deep.json", "nested too deeply"),
                         (tmp_path / "ints.json", "dicts with a 'name'")):
        with pytest.raises(LayerProbeError, match=needle) as info:
            recommend(str(path))
        assert str(path) in str(info.value)
    assert recommend(str(f3["cmp"])).freeze == strict_json(f3["cmp"].read_text())["recommendation"]["freeze"]
