"""Helpers shared by the hostile-input tests (``tests/io/test_*_inputs.py``, ``tests/cli/``, ...).

The fixtures ``f2`` and ``f3`` (a tiny model directory, its snapshots and comparison) are in
``conftest.py``; here are the CLI runner, the one-line check and the builders of broken inputs.
"""

from __future__ import annotations

import io
import json
import os
import sys

from helpers_malicious import model_variant as shared_variant

from layerprobe.cli import main


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(argv, capsys, monkeypatch=None):
    """``main(argv)`` -> ``(rc, stdout, stderr)``; with ``monkeypatch`` stdin answers ``y`` to any prompt
    (a prompt must never be answered)."""
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, err, *needles):
    """Exit 2 and exactly one (non-blank) line on stderr, ``layerprobe: error: ...``, holding every needle."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("layerprobe: error: "), (rc, err)
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


def variant(f2, name, cfg=None, drop=(), files=None):
    """A copy of the good model directory with config edits, files dropped or files added."""
    return str(shared_variant(f2["root"], f2["good"], name, cfg=cfg, drop=drop, files=files))


def commands_for(f2, d, tmp_path):
    return {
        "snapshot": ["snapshot", d, "--probe", f2["probe"], "-o", tmp_path / "x.pt", "--quiet"],
        "compare_probe": ["compare", f2["good"], d, "--probe", f2["probe"], "--quiet"],
        "compare_weights": ["compare", d, f2["good"], "--quiet"],
        "freeze_list": ["freeze-list", f2["cmp"], d],
    }




def strict_json(text):
    def refuse(name):
        raise AssertionError(f"{name} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def model_variant(f3, name, cfg=None, files=None, drop=()):
    return shared_variant(f3["root"], f3["good"], name, cfg=cfg, drop=drop, files=files)


