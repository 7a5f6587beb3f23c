"""Comparison files read back (``results/``): freeze-list and recommend on other models' results.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import json

import pytest

from hostile import assert_one_line, run, strict_json


def test_freeze_list_for_another_model_names_the_comparison(f3, capsys, tmp_path):
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"recommendation": {"freeze": ["block.99"]}}))
    rc, _, err = run(["freeze-list", c, f3["good"]], capsys)
    assert_one_line(rc, err, str(c), "unknown entries ['block.99']")  # was: no file named


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
