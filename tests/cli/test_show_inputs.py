"""layerprobe show on saved comparisons that break the figure or the message, though the schema admits
them (nulls, numbers out of their range), and on huge numbers: one line, exit 2, or a figure, exit 0."""

from __future__ import annotations

import copy
import json
import os

import pytest

from layerprobe.cli import main

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden", "comparison.json")


def _doc():
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


def _set(doc, path, value):
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value", [
    (("recommendation", "candidates", 0, "interval"), [None, None]),  # before: float(None)
    (("recommendation", "candidates", 0, "compute_saved"), None),  # before: float(None)
])
def test_show_plot_takes_what_the_schema_admits(tmp_path, capsys, path, value):
    doc = _set(copy.deepcopy(_doc()), path, value)
    (tmp_path / "c.json").write_text(json.dumps(doc))
    assert main(["show", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


@pytest.mark.parametrize("path, value, field", [
    (("recommendation", "thresholds", "min_cka"), 2 ** 62, "thresholds.min_cka"),  # before: TypeError in matplotlib
    (("recommendation", "thresholds", "min_cka"), 5.0, "thresholds.min_cka must be a number in [0, 1]"),
    (("meta", "ci", "level"), 1e308, "$.meta.ci.level is 1e+308, outside (0, 1)"),  # before: OverflowError
])
def test_show_plot_refuses_values_out_of_their_range(tmp_path, capsys, path, value, field):
    """The schema admits them; what they mean does not (was: exit 0 and a figure)."""
    doc = _set(copy.deepcopy(_doc()), path, value)
    (tmp_path / "c.json").write_text(json.dumps(doc))
    assert main(["show", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "c.json") in err and field in err, err
    assert not (tmp_path / "c.png").exists()


def test_a_huge_schema_version_is_named_briefly(tmp_path, capsys):
    text = json.dumps(_doc()).replace('"schema_version": 2', '"schema_version": 1' + "0" * 400, 1)
    (tmp_path / "c.json").write_text(text)
    assert main(["show", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 200 and "is newer than this layerprobe reads" in err


@pytest.mark.parametrize("make", ["dir", "fifo", "input"])
def test_show_plot_onto_something_in_the_way_writes_nothing(tmp_path, capsys, make):
    (tmp_path / "c.json").write_text(json.dumps(_doc()))
    target = tmp_path / "p.png"
    if make == "dir":
        target.mkdir()
    elif make == "fifo":
        os.mkfifo(target)
    else:
        target = tmp_path / "c.json"
    before = sorted(os.listdir(tmp_path))
    assert main(["show", str(tmp_path / "c.json"), "--plot", str(target)]) == 2
    err = capsys.readouterr()
    assert err.err.count("\n") == 1 and err.out == "" and sorted(os.listdir(tmp_path)) == before


def _frozen_doc():
    doc = _doc()
    doc["recommendation"].update(freeze=["embeddings", "block.0"], train=["block.1", "block.2", "block.3"])
    return doc


@pytest.mark.parametrize("path, value, field", [
    (("blocks", 1, "n_params"), 10 ** 400, "$.blocks[1].n_params is an integer of 1329 bits"),  # was: OverflowError
    (("blocks", 1, "cka"), 10 ** 400, "$.blocks[1].cka must be number or null, found an integer of 1329 bits"),
    (("blocks", 1, "cka"), 7.5, "$.blocks[1].cka is 7.5, outside [0, 1]"),  # was: exit 0, a table with CKA 7.5
    (("blocks", 1, "cka"), -3.0, "$.blocks[1].cka is -3.0, outside [0, 1]"),
    (("blocks", 1, "cka_ci"), [0.99, 0.1], "$.blocks[1].cka_ci is [0.99, 0.1]: its low end is above its high end"),
    (("blocks", 1, "weight_cosine"), 5.0, "$.blocks[1].weight_cosine is 5.0, outside [-1, 1]"),
    (("blocks", 1, "weight_drift"), -1.0, "$.blocks[1].weight_drift is -1.0, below 0"),
    (("recommendation", "frozen_param_fraction"), 50.0, "$.recommendation.frozen_param_fraction is 50.0"),
    (("recommendation", "tolerance"), 5.0, "$.recommendation.tolerance is 5.0, outside [0, 1)"),
    (("recommendation", "train", 0), "block.0", "$.recommendation.train[0] 'block.0' is also in"),
    (("blocks", 2, "name"), "block.0", "$.blocks[2].name 'block.0' repeats $.blocks[1].name"),
])
def test_show_refuses_an_impossible_comparison(tmp_path, capsys, path, value, field):
    """One line naming the file and the field, exit 2, nothing on stdout (was: a confident table, exit 0)."""
    (tmp_path / "c.json").write_text(json.dumps(_set(_frozen_doc(), path, value)))
    for fmt in ("table", "json"):
        assert main(["show", str(tmp_path / "c.json"), "--format", fmt]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"layerprobe: error: {tmp_path / 'c.json'}: ") and field in err, err


def test_show_still_renders_a_valid_comparison(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps(_frozen_doc()))
    assert main(["show", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "advice: freeze embeddings, block.0; train block.1, block.2, block.3" in out
    assert out.splitlines()[3].split()[:2] == ["block.0", "0.6812"]
