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
    (("recommendation", "thresholds", "min_cka"), 2 ** 62),  # before: TypeError inside matplotlib
    (("recommendation", "candidates", 0, "interval"), [None, None]),  # before: float(None)
    (("recommendation", "candidates", 0, "compute_saved"), None),  # before: float(None)
    (("meta", "ci", "level"), 1e308),  # before: OverflowError (round(inf))
])
def test_show_plot_takes_what_the_schema_admits(tmp_path, capsys, path, value):
    doc = _set(copy.deepcopy(_doc()), path, value)
    (tmp_path / "c.json").write_text(json.dumps(doc))
    assert main(["show", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


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
