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


# ------------------------------------------------------------------ issue 20: one row per step and entry, in step order

def _trajectory(tmp_path, steps, name="t.csv"):
    rows = ["step,block,cka_to_start,cka_to_previous,weight_drift"]
    for s in steps:
        for b in ("block.0", "block.1"):
            rows.append(f"{s},{b},{1 - s / 1000},,{s / 1000}")
    p = tmp_path / name
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize("steps", [[100, 200, 100], [0, 0], [300, 100, 300, 200]])
def test_a_step_twice_is_refused(capsys, tmp_path, steps):
    """was: duplicate rows drawn without comment."""
    p = _trajectory(tmp_path, steps)
    rc, _, err = run(["plot-trajectory", p, "-o", tmp_path / "t.png"], capsys)
    assert_one_line(rc, err, "t.csv", "twice for 'block.0'", "one row per step and entry")
    assert not (tmp_path / "t.png").exists()


def test_rows_out_of_order_are_read_in_step_order(capsys, tmp_path):
    from layerprobe.results.trajectory import read_trajectory

    df = read_trajectory(_trajectory(tmp_path, [300, 100, 200]))
    assert df["step"].tolist() == [100, 100, 200, 200, 300, 300]
    rc, out, err = run(["plot-trajectory", tmp_path / "t.csv", "-o", tmp_path / "t.png"], capsys)
    assert rc == 0 and (tmp_path / "t.png").exists(), err


def test_a_trajectory_is_read_within_a_bound(capsys, tmp_path, monkeypatch):
    """issue 20 leftover: the CSV was handed to pandas unbounded; now it goes through io.files.read_bounded."""
    from layerprobe.results import trajectory

    p = _trajectory(tmp_path, [0, 100])
    with open(p, "r+b") as f:  # sparse: refused from its size, never read
        f.truncate(trajectory.MAX_TRAJECTORY_BYTES + 1)
    rc, _, err = run(["plot-trajectory", p, "-o", tmp_path / "t.png"], capsys)
    assert_one_line(rc, err, "t.csv", "too large")
    assert not (tmp_path / "t.png").exists()
    monkeypatch.setattr(trajectory, "MAX_TRAJECTORY_BYTES", 10_000)  # the bound is the one the reader holds
    assert len(trajectory.read_trajectory(_trajectory(tmp_path, range(0, 1000, 20), "u.csv"))) == 100


HEADER = "step,block,cka_to_start,cka_to_previous,weight_drift\n"


@pytest.mark.parametrize("text, message", [
    # review-b: pandas' tokenizer message ends with a newline (the error was two lines)
    (HEADER + "0,embeddings,1.0,,0.0\n2,embeddings,0.9,0.9,0.1,extra\n",
     "cannot read the trajectory CSV: Error tokenizing data. C error: Expected 5 fields in line 3, saw 6"),
    # a step column of booleans was read as steps 1 and 0
    (HEADER + "True,embeddings,1.0,,0.0\nFalse,block.0,1.0,,0.0\n", "trajectory column 'step' is not numeric"),
])
def test_a_damaged_trajectory_is_exactly_one_line(capsys, tmp_path, text, message):
    from layerprobe.errors import LayerProbeError
    from layerprobe.results.trajectory import read_trajectory

    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(LayerProbeError) as exc:
        read_trajectory(p)
    assert str(exc.value) == f"{p}: {message}"
    rc, _, err = run(["plot-trajectory", p, "-o", tmp_path / "t.png"], capsys)
    assert rc == 2 and err == f"layerprobe: error: {p}: {message}\n" and not (tmp_path / "t.png").exists()


def test_a_header_of_many_columns_is_named_in_a_bounded_line(tmp_path):
    """review-b: 200,000 unknown columns made a 2 MB error message."""
    from layerprobe.errors import LayerProbeError
    from layerprobe.results.trajectory import read_trajectory

    p = tmp_path / "t.csv"
    p.write_text(",".join(f"c{i}" for i in range(200_000)) + "\n" + ",".join("1" * 200_000) + "\n")
    with pytest.raises(LayerProbeError) as exc:
        read_trajectory(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: trajectory CSV lacks columns ['step', 'block', 'cka_to_start', 'cka_to_previous', "
                          "'weight_drift']; found ['c0', 'c1', ") and msg.endswith("...") and len(msg) < 600
