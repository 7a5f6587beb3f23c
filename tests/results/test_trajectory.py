"""Trajectory files (``results/trajectory.py``): values checked, steps in order, no step twice.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations


import pytest

from hostile import assert_one_line, run


@pytest.mark.parametrize("rows, needle", [
    ("1e308,b,1,1,0\n-1e308,b,1,1,0\n", "'step'"),  # was: ValueError traceback from matplotlib
    ("0,b,nan,nan,-inf\n", "'weight_drift'"),
    ("0,b,5,1,0\n", "'cka_to_start'"),
])
def test_trajectory_values_checked(capsys, tmp_path, rows, needle):
    p = tmp_path / "t.csv"
    p.write_text("step,block,cka_to_start,cka_to_previous,weight_drift\n" + rows)
    rc, _, err = run(["plot-trajectory", p, "-o", tmp_path / "t.png"], capsys)
    assert_one_line(rc, err, "t.csv", needle)
    assert not (tmp_path / "t.png").exists()
