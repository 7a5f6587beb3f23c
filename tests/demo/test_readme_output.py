"""README's printed demo output equals what the demo prints today (issue 19 item 10).

The demo takes ~3 min, so the fast test re-renders the table from the demo's stored result
(tests/golden/demo_comparison.json) with today's rule and renderer: a change to the advice rule or
the table format that leaves README stale fails here. The slow test runs the demo and checks that
its numbers still match the stored result and that the table it printed (its log) is README's.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from layerprobe.freezing.rule import recommend
from layerprobe.results.comparison import Comparison
from layerprobe.results.render import render

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GOLDEN = os.path.join(ROOT, "tests", "golden", "demo_comparison.json")


def readme_block() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"the output reads\n\n```\n(.*?)```", text, re.S)
    assert block, "README: the demo output block after 'the output reads' is missing"
    return block.group(1).rstrip("\n").splitlines()


def printed_table(printed: str) -> list[str]:
    """The table lines of what the demo printed, from the header through the advice line (notes and
    reasons left out)."""
    lines = printed.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("entry "))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("advice:"))
    return [ln for ln in lines[start : end + 1] if ln and not ln.startswith("note:")]


@pytest.mark.shipped_default(None)  # README shows what the command prints with the file as shipped
def test_readme_shows_what_todays_rule_and_renderer_print_for_the_demo():
    c = Comparison.load(GOLDEN)
    # today's advice on the stored numbers (the revert test's rows with them: the shipped prediction reads them)
    c.recommendation = recommend(c.to_dict(), revert=(c.meta.get("revert") or {}).get("rows"))
    assert readme_block() == printed_table(render(c, "table"))  # what run_demo logs


@pytest.mark.slow
@pytest.mark.shipped_default(None)
def test_the_demo_still_prints_readmes_table(tmp_path):
    from layerprobe.demo.run import run_demo

    printed: list[str] = []
    run_demo(str(tmp_path), progress=False, log=printed.append)
    got = Comparison.load(tmp_path / "comparison.json")
    with open(GOLDEN, encoding="utf-8") as f:
        want = json.load(f)
    for g, w in zip(got.blocks, want["blocks"]):
        assert g["cka"] == pytest.approx(w["cka"], abs=2e-4) and g["weight_drift"] == pytest.approx(w["weight_drift"],
                                                                                                      rel=1e-3)
    assert readme_block() == printed_table("\n".join(printed))  # what the demo printed, line for line
